"""A consistent logical backup of one member, streamed to a store.

The flavour's dump tool (`Dialect.dump_options`: one snapshot, its GTID and binlog position written into the dump)
writes to a pipe; its output is compressed (zstd) and uploaded as it comes, never kept whole in memory or on disk;
the manifest (`manifest.publish`) is written only once the dump tool succeeded, the position was found and the data
object is complete.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pymysql
import zstandard

from ..mysql.dialect import SQL, Dialect, DumpPosition
from ..mysql.member import Credentials, Session, connect, describe_error, tls_context
from .manifest import BackupManifest, data_key, publish
from .storage import Progress, Store

READ_CHUNK = 1024 * 1024
POSITION_WINDOW = 1024 * 1024
"""Bytes of the dump's head and of its tail searched for its position (mysqldump writes it before the data,
mariadb-dump its GTID position after it)."""
COMPRESSION_LEVEL = 1
"""zstd level 1: some 3.5 times the speed of level 3 (the default) for a nearly equal ratio (4.0 against 3.8 on the
benchmark's rows); at level 3 the compression, not the dump tool or the store, bounded a backup."""
AHEAD = 16
"""Compressed chunks read ahead of the upload: the dump tool and the compression go on while a part is sent."""
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
_SCHEMAS_WITH_OBJECTS = SQL(
    "SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s WHERE"
    " EXISTS (SELECT 1 FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME)"
    " OR EXISTS (SELECT 1 FROM information_schema.ROUTINES r WHERE r.ROUTINE_SCHEMA = s.SCHEMA_NAME)"
    " OR EXISTS (SELECT 1 FROM information_schema.EVENTS e WHERE e.EVENT_SCHEMA = s.SCHEMA_NAME)"
)
"""Schemas holding a table, a view, a routine or an event. Empty ones are left out: MariaDB lists every directory
in its data dir as a schema (e.g. ``tls/``, where a member may keep its certificates), which holds nothing."""


def data_schemas(session: Session) -> list[str]:
    """The schemas on the session's server that hold objects and are not the server's own, sorted."""
    return sorted(str(name) for (name,) in session.rows(_SCHEMAS_WITH_OBJECTS) if str(name) not in SYSTEM_SCHEMAS)


Programs = Callable[[str], list[str]]
"""The command line that runs a client program by name (default: the program on PATH)."""


class BackupError(RuntimeError):
    """The backup did not complete (nothing usable was published); the message is one readable line."""


def on_path(name: str) -> list[str]:
    return [name]


@dataclass(frozen=True)
class Member:
    """A server to back up or restore into, reached over the network."""

    name: str
    host: str
    port: int
    credentials: Credentials
    """An account with the dump's privileges (SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD, REPLICATION CLIENT;
    restoring: every privilege on the schemas, and setting GTID positions)."""
    dialect: Dialect
    programs: Programs = field(default=on_path, compare=False)
    tls_ca: str | None = None
    """The CA bundle (PEM) the member's certificate is verified with: every connection to it is TLS (the
    replication's ``spec.tls``); None: plaintext."""
    verify_server_name: bool = True
    """The certificate must also name ``host`` (as far as the flavour's tools check: `Dialect.client_options`)."""


@contextmanager
def client_command(member: Member, program: str) -> Iterator[list[str]]:
    """The command line of ``program`` connecting to the member (with TLS when it has ``tls_ca``); the password is
    in an option file readable only by this user (never on a command line), the CA in a file beside it, both
    removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="whm-ha-client-", suffix=".cnf")
    ca_file = None
    try:
        with os.fdopen(fd, "w") as options:
            user, password = _option_value(member.credentials.username), _option_value(member.credentials.password)
            options.write(f"[client]\nuser={user}\npassword={password}\n")
        if member.tls_ca is not None:
            ca_fd, ca_file = tempfile.mkstemp(prefix="whm-ha-client-ca-", suffix=".pem")
            with os.fdopen(ca_fd, "w") as ca:
                ca.write(member.tls_ca)
        yield [
            *member.programs(program),
            f"--defaults-extra-file={path}",
            f"--host={member.host}",
            f"--port={member.port}",
            "--protocol=TCP",
            *member.dialect.client_options(ca_file, member.verify_server_name),
        ]
    finally:
        Path(path).unlink(missing_ok=True)
        if ca_file is not None:
            Path(ca_file).unlink(missing_ok=True)


def _option_value(value: str) -> str:
    """``value`` as an option file reads it back unchanged: quoted, its backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def open_session(member: Member) -> Session:
    """A session to the member; with ``tls_ca``, TLS verifying its certificate against that bundle (and its name
    with ``verify_server_name``) as the operator's sessions do (`tls_context`)."""
    tls = tls_context(member.tls_ca, check_hostname=member.verify_server_name) if member.tls_ca is not None else None
    return connect(member.name, member.host, member.port, member.credentials, member.dialect, timeout=10, tls=tls)


def _schemas(member: Member) -> tuple[str, list[str]]:
    """The server's version and its schemas that hold objects and are not the server's own (`data_schemas`);
    BackupError naming the member when it cannot be read (a certificate refused, a plaintext session refused)."""
    try:
        with open_session(member) as session:
            row = session.row(SQL("SELECT VERSION()"))
            names = data_schemas(session)
    except pymysql.MySQLError as exc:
        raise BackupError(f"{member.name}: {describe_error(exc, member.credentials.password)}") from exc
    return str(row[0] if row else ""), names


@dataclass
class _CompressedDump:
    """The dump tool's output compressed, counted and hashed as it is read; `position` once it is exhausted."""

    stdout: IO[bytes]
    dialect: Dialect
    size: int = 0
    uncompressed_size: int = 0
    head: bytearray = field(default_factory=bytearray)
    tail: tuple[bytes, bytes] = (b"", b"")
    """The last two chunks read (at least `POSITION_WINDOW` bytes once there were two), kept without copying."""
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def chunks(self, finished: Callable[[], None]) -> Iterator[bytes]:
        """Compressed chunks; ``finished`` runs after the output ended and before the last chunk is given, so
        that raising there keeps the upload from completing."""
        compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compressobj()
        while chunk := self.stdout.read(READ_CHUNK):
            self.uncompressed_size += len(chunk)
            if len(self.head) < POSITION_WINDOW:
                self.head += chunk[: POSITION_WINDOW - len(self.head)]
            self.tail = (self.tail[1], chunk)
            if out := compressor.compress(chunk):
                yield self._count(out)
        last = compressor.flush()
        finished()
        yield self._count(last)

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        self.sha256.update(data)
        return data

    def position(self) -> DumpPosition | None:
        # Head and tail apart (a line cut at the head's end stays cut); the two tail chunks joined as they came.
        text = (bytes(self.head) + b"\n" + self.tail[0] + self.tail[1]).decode("utf-8", errors="replace")
        return self.dialect.dump_position(text)


class _ReadAhead:
    """The items of an iterator, produced by a thread of its own up to ``depth`` items ahead of the consumer (the
    producer's exception is raised to the consumer in its place)."""

    def __init__(self, items: Iterator[bytes], depth: int) -> None:
        self._items = items
        self._queue: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="backup-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[bytes | None, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
        except BaseException as exc:
            self._put((None, exc))
            return
        self._put((None, None))

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item

    def close(self) -> None:
        """Stop the producer and wait for it (whatever feeds it must end: its process killed first)."""
        self._stop.set()
        self._thread.join()


def take_backup(
    store: Store,
    name: str,
    member: Member,
    *,
    databases: list[str] | None = None,
    progress: Progress | None = None,
) -> BackupManifest:
    """Dump ``databases`` (default: every schema but the server's own) of ``member`` into ``store`` as the backup
    ``name`` and publish its manifest; BackupError (or the store's StorageError) when anything failed, and then
    no manifest was written."""
    started = datetime.now(UTC)
    version, schemas = _schemas(member)
    if databases is not None:
        schemas = databases
    if not schemas:
        raise BackupError(f"{member.name}: nothing to back up (no schema of its own)")
    dialect = member.dialect
    with (
        client_command(member, dialect.dump_program) as command,
        tempfile.TemporaryFile() as errors,
    ):
        process = subprocess.Popen(
            [*command, *dialect.dump_options(), "--databases", *schemas],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert process.stdout is not None
        dump = _CompressedDump(process.stdout, dialect)
        position: list[DumpPosition] = []

        def finished() -> None:
            code = process.wait()
            if code != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip().splitlines()
                raise BackupError(f"{member.name}: {dialect.dump_program} failed ({code}): {' '.join(message[-3:])}")
            found = dump.position()
            if found is None:
                raise BackupError(f"{member.name}: the dump holds no GTID and binlog position")
            position.append(found)

        ahead = _ReadAhead(dump.chunks(finished), AHEAD)
        try:
            store.upload(data_key(name), ahead, progress)
        finally:
            if process.poll() is None:
                process.kill()
            ahead.close()
            process.wait()
            process.stdout.close()
    manifest = BackupManifest(
        name=name,
        flavor=dialect.flavor,
        server_version=version,
        member=member.name,
        gtid=position[0].gtid,
        binlog_file=position[0].binlog_file,
        binlog_position=position[0].binlog_position,
        databases=schemas,
        tool=f"{dialect.dump_program} {' '.join(dialect.dump_options()[:3])}",
        data=data_key(name),
        size=dump.size,
        sha256=dump.sha256.hexdigest(),
        uncompressed_size=dump.uncompressed_size,
        started=started,
        finished=datetime.now(UTC),
    )
    publish(store, manifest)
    return manifest

"""Writers and the checkers that judge what they saw: the one library the demo's tour, the tests (integration,
scenarios, the fault tier) and the benchmarks use, so that a fix to a checker reaches every place that trusts it.

It lives in the demo, the lab wing the package ships (the product's rooms never import it): the demo cannot
import ``tests/``, which is not installed, and the tests already import the demo's stack.

* ``Writers``: ``count`` threads (8 by default: a fault finds several writes in flight), each inserting ids of its
  own into ``demo.writes`` through a connection source (the applications pool, or one server), recording every
  acknowledged write as an ``Ack``: the id, the member that acknowledged it (``host:port``) and the wall-clock
  times the statement was sent and its answer came back (precise times, comparable across processes).
* ``python -m whm_ha.demo.checkers --port P ...``: the same writers as a process of their own, e.g. beside a
  member in its network namespace, over loopback, or in a pod through the primary's Service; each acknowledgement
  is a line of a file or of its output (``read_acks``, ``parse_acks``: e.g. ``kubectl logs``).
* Checkers: ``missing`` (acknowledged writes absent from the final primary), ``two_acknowledging`` (two members
  accepting writes at once: the order in which members took writes against the order they were made primary),
  ``fenced`` (the read-only the product enforces: ``super_read_only`` on MySQL).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypeAlias

import pymysql

from ..apps.pool import PoolError
from ..mysql.dialect import dialect_for
from .stack import DEMO_SCHEMA

TABLE = f"{DEMO_SCHEMA}.writes"
"""The table every writer inserts into (ids are unique across writers: see ``Writers.first``)."""
Connection: TypeAlias = "pymysql.Connection[Any]"
Source: TypeAlias = "Callable[[], AbstractContextManager[Connection]]"
"""Where a write goes: ``with source() as conn`` (e.g. ``pool.writer``, or a ``Direct``)."""
FAILURES = (pymysql.MySQLError, PoolError, OSError)


@dataclass(frozen=True)
class Ack:
    """One acknowledged write."""

    id: int
    member: str
    """``host:port`` of the server that acknowledged it."""
    sent: float
    """Wall-clock time the statement was sent."""
    acked: float
    """Wall-clock time its answer (the commit) came back."""


class Acks:
    """Acknowledged writes, appended to by many threads."""

    def __init__(self, acks: Iterable[Ack] = ()) -> None:
        self._acks = list(acks)
        self._lock = threading.Lock()

    def add(self, ack: Ack) -> None:
        with self._lock:
            self._acks.append(ack)

    def all(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    def __len__(self) -> int:
        return len(self._acks)

    def between(self, start: float, end: float = float("inf")) -> list[Ack]:
        """The writes acknowledged at or after ``start`` and before ``end`` (wall clock)."""
        return [ack for ack in self.all() if start <= ack.acked < end]

    def ids(self) -> set[int]:
        return {ack.id for ack in self.all()}

    def progressed(self) -> Callable[[], bool]:
        """A condition: a write was acknowledged after this call."""
        now = time.time()
        return lambda: any(ack.acked > now for ack in reversed(self.all()))


def create_table(source: Source, table: str = TABLE) -> None:
    """The writers' table (``schema.table``) and its schema, created on whatever ``source`` connects to (the
    primary) when missing."""
    with source() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {table.split('.', 1)[0]}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT PRIMARY KEY)")


def address(conn: Connection) -> str:
    """``host:port`` a connection was made to."""
    return f"{conn.host}:{conn.port}"


@dataclass
class Writers:
    """``count`` threads inserting into ``table`` through ``source`` until ``stop()``; thread k writes ids
    ``first + k``, ``first + k + count``, ... (an id is never reused, also after a failed insert, which may have
    committed). A failure's message is kept in ``errors``; the thread goes on after ``pause_after_error``, or
    ends there with ``until_error``."""

    source: Source
    count: int = 8
    first: int = 1
    table: str = TABLE
    until_error: bool = False
    pause: float = 0.01
    pause_after_error: float = 0.05
    acks: Acks = field(default_factory=Acks)
    errors: list[str] = field(default_factory=list)
    on_ack: Callable[[Ack], None] | None = None
    member: Callable[[Connection], str] = address
    """The label of the server a connection writes to (e.g. ``Direct.member`` behind a Service)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, *, warm_up: int = 50, timeout: float = 30) -> Writers:
        """Start the threads; return once ``warm_up`` writes were acknowledged (TimeoutError after ``timeout``)."""
        for k in range(self.count):
            thread = threading.Thread(target=self._run, args=(self.first + k,), name=f"writer-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout
        while len(self.acks) < warm_up:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{len(self.acks)} of {warm_up} warm-up writes acknowledged in {timeout} s")
            time.sleep(0.05)
        return self

    def _run(self, first: int) -> None:
        for row_id in itertools.count(first, self.count):
            if self._stop.is_set():
                return
            sent = time.time()
            try:
                with self.source() as conn, conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (row_id,))
                    ack = Ack(row_id, self.member(conn), sent, time.time())
            except FAILURES as exc:
                self.errors.append(str(exc))
                if self.until_error:
                    return
                self._stop.wait(self.pause_after_error)
                continue
            self.acks.add(ack)
            if self.on_ack is not None:
                self.on_ack(ack)
            self._stop.wait(self.pause)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the threads to end by themselves (``until_error``); whether they
        did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 90) -> None:
        """Stop the threads and wait for them (a write in flight ends at its connection's read timeout)."""
        self._stop.set()
        self.join(timeout)


class Direct:
    """A ``Source`` for one server: each thread keeps its own connection, dropped after a failure. With
    ``identify``, each connection asks the server its ``@@hostname:@@port`` once (``member``): behind a Service,
    which server a connection reached."""

    def __init__(
        self, host: str, port: int, user: str, password: str, *, read_timeout: float = 60, identify: bool = False
    ) -> None:
        self._host, self._port, self._user, self._password = host, port, user, password
        self._read_timeout = read_timeout
        self._identify = identify
        self._local = threading.local()

    def member(self, conn: Connection) -> str:
        """The label of the server this thread's connection ``conn`` reached: its own name with ``identify``."""
        identity: str | None = getattr(self._local, "member", None)
        return identity or address(conn)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = pymysql.connect(
                host=self._host,
                port=self._port,
                user=self._user,
                password=self._password,
                autocommit=True,
                connect_timeout=2,
                read_timeout=self._read_timeout,
                write_timeout=self._read_timeout,
            )
            self._local.conn, self._local.member = conn, None
        try:
            if self._identify and self._local.member is None:
                with conn.cursor() as cur:
                    cur.execute("SELECT @@hostname, @@port")
                    host, port = cur.fetchone() or ("?", 0)
                self._local.member = f"{host}:{port}"
            yield conn
        except BaseException:
            self._local.conn = None
            with contextlib.suppress(Exception):
                conn.close()
            raise


# -- checkers -------------------------------------------------------------------------------------------------


def missing(acks: Iterable[Ack], present: set[int]) -> list[int]:
    """The acknowledged ids absent from ``present`` (the final primary's rows): acknowledged writes lost."""
    return sorted({ack.id for ack in acks} - present)


def present_ids(conn: Connection) -> set[int]:
    """The ids in ``TABLE`` on a server."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {TABLE}")
        return {int(row[0]) for row in cur.fetchall()}


def acknowledging_order(acks: Iterable[Ack]) -> list[str]:
    """The members in the order they took writes: a member starts a new entry when it acknowledges a write sent
    after the current entry's first acknowledgement; an answer to a write sent before that moment (in flight at
    the change: it may have committed before) starts none."""
    order: list[str] = []
    start = float("-inf")
    for ack in sorted(acks, key=lambda a: a.acked):
        if (order and ack.member == order[-1]) or ack.sent < start:
            continue
        order.append(ack.member)
        start = ack.acked
    return order


def two_acknowledging(acks: Iterable[Ack], primaries: list[str]) -> list[str]:
    """Empty when the members took writes one after another, in the order ``primaries`` (the initial primary,
    then each new one) were made primary; else the order seen. Two members accepting writes at once show as
    more changes than were made (X, Y, X, ...: one of them acknowledged a write sent after the other had)."""
    order = acknowledging_order(acks)
    remaining = iter(primaries)
    if all(member in remaining for member in order):  # a subsequence: a primary may have taken no write
        return []
    return [f"writes acknowledged by {' -> '.join(order)}; primaries were {' -> '.join(primaries)}"]


def primaries_from(status: dict[str, Any], labels: dict[str, str], initial: str) -> list[str]:
    """The labels of the members made primary, in order, from a MySQLReplication status (its promotion history is
    newest first), starting with ``initial``; ``labels``: member name -> ``host:port``."""
    history = reversed(status.get("promotionHistory", []))
    return [labels[initial], *(labels[record["to"]] for record in history)]


def fenced(conn: Connection, product: Literal["mariadb", "mysql"]) -> bool:
    """Whether a server is fenced as the product fences it: the dialect's read-only variable is on (MySQL's
    ``super_read_only``; ``read_only`` alone still lets SUPER accounts write there)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT @@GLOBAL.{dialect_for(product).read_only_variable}")
        row = cur.fetchone()
    return bool(row and int(row[0]) == 1)


# -- writers as a process of their own ------------------------------------------------------------------------


def parse_acks(text: str) -> Acks:
    """The acknowledgements in a writer process's output (lines ``id member sent acked``; others are skipped)."""
    acks = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            with contextlib.suppress(ValueError):
                acks.append(Ack(int(parts[0]), parts[1], float(parts[2]), float(parts[3])))
    return Acks(acks)


def read_acks(path: Path) -> Acks:
    """The acknowledgements a writer process wrote to ``path`` so far."""
    return parse_acks(path.read_text())


def _write_line(out: TextIO, lock: threading.Lock) -> Callable[[Ack], None]:
    def write(ack: Ack) -> None:
        with lock:
            out.write(f"{ack.id} {ack.member} {ack.sent:.6f} {ack.acked:.6f}\n")
            out.flush()

    return write


def arguments() -> argparse.ArgumentParser:
    """The writer process's command line (``main``)."""
    parser = argparse.ArgumentParser(prog="python -m whm_ha.demo.checkers")
    parser.add_argument("--host", default="127.0.0.1")
    for name in ("--user", "--password"):
        parser.add_argument(name, required=True)
    parser.add_argument("--out", default="-", help="the file to append to; - (the default): standard output")
    parser.add_argument("--label", help="every acknowledgement's member; default: the server's @@hostname:@@port")
    parser.add_argument("--table", default=TABLE)
    parser.add_argument("--create-table", action="store_true", help="create --table first (retried until done)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--read-timeout", type=float, default=60)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Writers on one server until killed, appending ``id member sent acked`` to ``--out`` per acknowledgement
    (the member: ``--label``, else the server that acknowledged, also behind a Service). With ``--create-table``
    the table is created first, retried until the server takes it (e.g. once the Service has a primary)."""
    args = arguments().parse_args(argv)
    label: str | None = args.label
    source = Direct(
        args.host, args.port, args.user, args.password, read_timeout=args.read_timeout, identify=label is None
    )
    while args.create_table:
        try:
            create_table(source, args.table)
            break
        except FAILURES as exc:
            print(f"creating {args.table}: {exc}", file=sys.stderr, flush=True)
            time.sleep(1)
    with contextlib.ExitStack() as stack:
        out = sys.stdout if args.out == "-" else stack.enter_context(open(args.out, "a", buffering=1))
        on_ack = _write_line(out, threading.Lock())
        member = source.member if label is None else (lambda _conn: label)
        writers = Writers(source, args.count, args.first, args.table, on_ack=on_ack, member=member)
        writers.start(warm_up=0)
        threading.Event().wait()


@dataclass
class Beside:
    """A writer process (``main`` above, ``count`` connections as ``user``) started by ``popen`` (e.g. in a
    member's network namespace) on one server; its acknowledgements, labelled ``label`` (the ``host:port`` other
    writers see), in ``out``."""

    process: subprocess.Popen[bytes]
    out: Path

    @classmethod
    def start(
        cls,
        popen: Callable[[list[str]], subprocess.Popen[bytes]],
        *,
        port: int,
        user: str,
        password: str,
        label: str,
        first: int,
        out: Path,
        count: int = 2,
    ) -> Beside:
        out.touch()
        # name=value: a value starting with "-" (a generated password may) is not taken for an option
        options = {"port": port, "user": user, "password": password, "label": label, "first": first, "count": count}
        options["out"] = out
        argv = [sys.executable, "-m", "whm_ha.demo.checkers", *(f"--{k}={v}" for k, v in options.items())]
        return cls(popen(argv), out)

    def acks(self) -> Acks:
        return read_acks(self.out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


if __name__ == "__main__":
    main()

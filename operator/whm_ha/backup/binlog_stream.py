"""The binary log archiver: the primary's binary logs streamed by the flavour's binlog tool and uploaded to a store
in segments (the format: `archive`).

One loop (`BinlogArchiver.step`, called every `ArchiverSettings.poll` seconds) does everything in turn: it follows
the primary it is given, keeps one *run* of the binlog tool copying that primary's binary logs into a spool
directory, scans what the tool wrote, uploads the complete transactions as a segment every
`ArchiverSettings.interval` seconds (data, then index entry), and reads the primary's executed GTIDs to measure the
lag. The tool goes on writing to the spool while an upload is under way or the store is unreachable; an upload
that fails is retried with backoff, from the same bytes, under the same sequence number.

A run always starts right after what the store holds (`archive.resume_point`): after a restart (also after kill
-9), after the tool died, and on a new primary. What a run spooled but did not upload is dropped with it and
fetched again by the next run, so no transaction is missed or archived twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pymysql

from ..lifecycle import die_with_parent
from ..mysql.gtid import GtidSet, parse_gtid_set
from ..mysql.member import Session
from .archive import (
    INDEX,
    ArchiveGap,
    BinlogFormatError,
    BinlogScanner,
    Observation,
    Resume,
    Segment,
    Transaction,
    advance,
    archive_lag,
    data_key,
    index_key,
    last_sequence,
    lines_of,
    resume_point,
    segment_due,
    start_option,
    transactions_set,
)
from .dump import Member, client_command, open_session
from .storage import StorageError, Store

log = logging.getLogger(__name__)

ARCHIVER_SERVER_ID = 4_294_000_001
"""The server id the binlog tool registers with on the primary (a new connection with it ends a stale one's dump
thread there); no member may use it."""
READ_LIMIT = 64 * 1024 * 1024
"""Bytes of the spool read per step at most."""
_BINLOG_FILE = re.compile(r"^(.+)\.(\d+)$")


class ArchiverError(RuntimeError):
    """The run cannot go on (the tool failed, the primary is unreachable); the message is one readable line."""


@dataclass(frozen=True)
class ArchiverSettings:
    spool: Path
    """A directory of the archiver's own for the tool's copies (a run's files go once the run ends)."""
    server_id: int = ARCHIVER_SERVER_ID
    interval: float = 0.5
    """Seconds between segments while transactions come."""
    max_segment: int = 16 * 1024 * 1024
    """Bytes of a segment at most (unless one transaction is larger)."""
    poll: float = 0.1
    """Seconds between steps."""
    backoff: tuple[float, float] = (0.5, 10.0)
    """First and longest wait before retrying after a failure (doubled each time)."""
    observations: float = 0.25
    """Seconds between reads of the primary's executed GTIDs (the lag's resolution)."""


@dataclass(frozen=True)
class ArchiveReport:
    """What the archiver is doing, for metrics and status."""

    state: str
    """Streaming, StorageUnavailable, PrimaryUnavailable or Starting."""
    member: str | None
    lag_seconds: float
    covered: str
    sequence: int | None
    """The newest segment's sequence number."""
    last_upload: datetime | None
    message: str = ""
    segments: int = 0
    """Segments uploaded by this process."""
    bytes: int = 0
    """Bytes uploaded by this process."""


@dataclass
class _Run:
    """One start of the binlog tool against one primary."""

    member: Member
    id: str
    directory: Path
    process: subprocess.Popen[bytes]
    errors: IO[bytes]
    cleanup: ExitStack
    resume: Resume | None
    resumed_from: GtidSet | None
    """What the archive held when the run started (the first run: set from its first file's header)."""
    server_id: int
    server_uuid: str | None
    file: str | None = None
    scanner: BinlogScanner | None = None
    uploaded: int = 0
    """Bytes of the current file uploaded."""
    pending: list[Transaction] = field(default_factory=list)
    """Complete transactions of the current file not uploaded yet."""
    done: bool = False
    """The tool exited and every byte it wrote was read."""

    def files(self) -> list[str]:
        names = [p.name for p in self.directory.iterdir() if _BINLOG_FILE.match(p.name)]
        return sorted(names, key=lambda name: int(_BINLOG_FILE.match(name).group(2)))  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.errors.close()
        self.cleanup.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def error_text(self) -> str:
        self.errors.seek(0)
        lines = self.errors.read().decode(errors="replace").strip().splitlines()
        return " ".join(lines[-3:])


class BinlogArchiver:
    """Archives the binary logs of whatever member ``primary`` names (None: none for now) into ``store``."""

    def __init__(
        self,
        store: Store,
        primary: Callable[[], Member | None],
        settings: ArchiverSettings,
        report: Callable[[ArchiveReport], None] | None = None,
    ) -> None:
        self.store = store
        self.primary = primary
        self.settings = settings
        self.report = report
        self.loaded = False
        self.covered: GtidSet | None = None
        self.lines: dict[str, int] = {}
        self.sequence: int | None = None
        self.last_upload: datetime | None = None
        self.run: _Run | None = None
        self.session: Session | None = None
        self.observations: list[Observation] = []
        self.observed_at = 0.0
        self.uploaded_at = 0.0
        self.retry_at = 0.0
        self.failures = 0
        self.state = "Starting"
        self.message = ""
        self.segments = 0
        self.bytes = 0
        self.lag = 0.0

    # --- the loop ------------------------------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set, then stop the tool."""
        try:
            while not stop.is_set():
                self.step()
                stop.wait(self.settings.poll)
        finally:
            self.close()

    def close(self) -> None:
        self._end_run()
        self._close_session()

    def step(self) -> None:
        """One round: follow the primary, read the spool, upload what is due, measure the lag, report; a failure
        is recorded and retried after a backoff, never raised."""
        now = time.monotonic()
        try:
            if not self.loaded:
                if now < self.retry_at:
                    return
                self._load()
            member = self.primary()
            if member is None:
                self._end_run()
                self._set_state("PrimaryUnavailable", "no primary")
                return
            if self.run is not None and _address(self.run.member) != _address(member):
                log.info("binlog archive: the primary is now %s (was %s)", member.name, self.run.member.name)
                self._flush_run()
                self._end_run()
                self._close_session()
                self.observations.clear()
            self._observe(member, now)
            if self.run is None and now >= self.retry_at:
                self.run = self._start(member)
            if self.run is not None:
                self._read(self.run)
                if now >= self.retry_at:
                    self._upload_due(self.run, force=self.run.done)
                if self.run.done:
                    run = self.run
                    message = f"{run.member.name}: {run.member.dialect.binlog_program} exited: {run.error_text()}"
                    self._end_run()
                    raise ArchiverError(message)
            self._ok()
        except StorageError as exc:
            self._failed("StorageUnavailable", str(exc))
        except (ArchiverError, ArchiveGap, pymysql.Error, OSError) as exc:
            self._end_run()
            self._close_session()
            self._failed("PrimaryUnavailable", str(exc))
        except Exception as exc:
            # A bug must not end archiving for good: the run starts again from what the store holds.
            log.exception("binlog archive: unexpected failure")
            self._end_run()
            self._close_session()
            self._failed("PrimaryUnavailable", f"unexpected failure: {exc}")
        finally:
            self._publish()

    def _ok(self) -> None:
        self.failures = 0
        if self.run is not None:
            self._set_state("Streaming", "")

    def _failed(self, state: str, message: str) -> None:
        first, longest = self.settings.backoff
        wait = min(longest, first * 2**self.failures)
        self.failures += 1
        self.retry_at = time.monotonic() + wait
        self._set_state(state, message)
        log.warning("binlog archive: %s (retrying in %.1f s)", message, wait)

    def _set_state(self, state: str, message: str) -> None:
        self.state, self.message = state, message

    def _publish(self) -> None:
        if self.report is not None:
            self.report(
                ArchiveReport(
                    state=self.state,
                    member=self.run.member.name if self.run is not None else None,
                    lag_seconds=self.lag,
                    covered=str(self.covered) if self.covered is not None else "",
                    sequence=self.sequence,
                    last_upload=self.last_upload,
                    message=self.message,
                    segments=self.segments,
                    bytes=self.bytes,
                )
            )

    # --- the store -----------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """What the store holds: the newest index entry carries the archive's GTIDs. The spool's leftovers (of a
        process that was killed) go: the first run fetches again whatever they held that the store does not."""
        self.settings.spool.mkdir(parents=True, exist_ok=True)
        for leftover in self.settings.spool.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        sequence = last_sequence(self.store.list(INDEX))
        if sequence is not None:
            newest = Segment.model_validate_json(self.store.get(index_key(sequence)))
            self.sequence, self.last_upload = sequence, newest.uploaded
            self.covered = parse_gtid_set(newest.flavor, newest.covered)
            self.lines = lines_of(self.covered)
        self.loaded = True

    def _upload_due(self, run: _Run, *, force: bool) -> None:
        while run.pending:
            pending_bytes = run.pending[-1].end - run.uploaded
            due = segment_due(
                pending_bytes=pending_bytes,
                pending_transactions=len(run.pending),
                since_upload=time.monotonic() - self.uploaded_at,
                interval=self.settings.interval,
                max_bytes=self.settings.max_segment,
            )
            if not (due or force):
                return
            self._upload(run)

    def _upload(self, run: _Run) -> None:
        """Upload the pending transactions (up to `max_segment` bytes, at least one) as the next segment."""
        assert run.file is not None and run.scanner is not None
        limit = run.uploaded + self.settings.max_segment
        count = next((i for i, t in enumerate(run.pending) if t.end > limit), len(run.pending)) or 1
        chosen = run.pending[:count]
        end = chosen[-1].end
        with (run.directory / run.file).open("rb") as spool:
            spool.seek(run.uploaded)
            data = spool.read(end - run.uploaded)
        if len(data) != end - run.uploaded:
            raise ArchiverError(f"the spool file {run.file} is shorter than what was scanned")
        lines = advance(self.lines, chosen)
        flavor = run.member.dialect.flavor
        gtids = transactions_set(flavor, chosen)
        if run.resumed_from is None:
            # The first run: the archive starts after what its first file's header says came before.
            run.resumed_from = parse_gtid_set(flavor, run.scanner.header or "")
        base = self.covered if self.covered is not None else run.resumed_from
        covered = base.union(gtids)
        sequence = 0 if self.sequence is None else self.sequence + 1
        resumed_from = run.resumed_from
        segment = Segment(
            sequence=sequence,
            data=data_key(sequence),
            flavor=flavor,
            member=run.member.name,
            server_id=run.server_id,
            server_uuid=run.server_uuid,
            run=run.id,
            file=run.file,
            stream=f"{run.id}/{run.file}",
            offset=run.uploaded,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            source_start=chosen[0].source_end - (chosen[0].end - chosen[0].start),
            source_end=chosen[-1].source_end,
            transactions=len(chosen),
            first_gtid=chosen[0].gtid.text(flavor),
            last_gtid=chosen[-1].gtid.text(flavor),
            gtids=str(gtids),
            covered=str(covered),
            resumed_from=str(resumed_from),
            superseded=str(run.resume.superseded) if run.resume is not None else "",
            first_time=datetime.fromtimestamp(chosen[0].timestamp, UTC),
            last_time=datetime.fromtimestamp(chosen[-1].timestamp, UTC),
            uploaded=datetime.now(UTC),
        )
        # The data first: the index entry is what makes the segment exist.
        self.store.put(segment.data, data)
        self.store.put(index_key(sequence), segment.model_dump_json(indent=1).encode())
        del run.pending[:count]
        run.uploaded = end
        self.sequence, self.covered, self.lines = sequence, covered, lines
        self.last_upload = segment.uploaded
        self.uploaded_at = time.monotonic()
        self.segments += 1
        self.bytes += len(data)

    # --- the primary ---------------------------------------------------------------------------------------------

    def _session(self, member: Member) -> Session:
        if self.session is None:
            self.session = open_session(member)
        return self.session

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _observe(self, member: Member, now: float) -> None:
        """Read the primary's executed GTIDs (every `observations` seconds) and measure the lag."""
        if now - self.observed_at >= self.settings.observations:
            self.observed_at = now
            try:
                executed = self._session(member).executed()
            except pymysql.Error:
                self._close_session()
                raise
            self.observations.append(Observation(time.time(), lines_of(executed)))
        self.lag, held = archive_lag(self.observations, self.lines if self.covered is not None else None, time.time())
        # The newest observation held stays: the lag is measured from it once the next one is not held.
        del self.observations[: max(0, held - 1)]

    def _start(self, member: Member) -> _Run:
        """Start the binlog tool on ``member``, right after what the archive holds."""
        session = self._session(member)
        dialect = member.dialect
        executed = session.executed()
        identity = session.row(dialect.server_identity())
        files = session.rows(dialect.binary_logs())
        if identity is None or not files:
            raise ArchiverError(f"{member.name}: no binary log to archive")
        resume = None
        start = None
        if self.covered is not None:
            resume = resume_point(self.covered, executed)
            if resume.superseded:
                log.warning(
                    "binlog archive: %s lacks the archived %s (never acknowledged): archiving goes on after %s",
                    member.name,
                    resume.superseded,
                    resume.start,
                )
            self.covered, self.lines = resume.start, lines_of(resume.start)
            start = start_option(dialect.flavor, resume.start) if resume.start else None
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        directory = self.settings.spool / run_id
        directory.mkdir(parents=True)
        cleanup = ExitStack()
        errors = (self.settings.spool / f"{run_id}.errors").open("w+b")
        try:
            command = cleanup.enter_context(client_command(member, dialect.binlog_program))
            options = dialect.binlog_stream_options(self.settings.server_id, f"{directory}/", str(files[0][0]), start)
            process = subprocess.Popen(
                [*command, *options],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads of its own start in the child)
            )
        except BaseException:
            errors.close()
            cleanup.close()
            raise
        (self.settings.spool / f"{run_id}.errors").unlink()
        log.info("binlog archive: run %s on %s after %s", run_id, member.name, start or "the first binary log")
        return _Run(
            member=member,
            id=run_id,
            directory=directory,
            process=process,
            errors=errors,
            cleanup=cleanup,
            resume=resume,
            resumed_from=resume.start if resume is not None else None,
            server_id=int(identity[0]),
            server_uuid=str(identity[1]) if identity[1] else None,
        )

    def _read(self, run: _Run) -> None:
        """Scan what the tool wrote since the last step; a file is done once the tool began the next one."""
        exited = run.process.poll() is not None
        while True:
            files = run.files()
            if run.file is None:
                if not files:
                    break
                run.file, run.scanner, run.uploaded = files[0], BinlogScanner(run.member.dialect.flavor), 0
            assert run.scanner is not None
            later = [name for name in files if _order(name) > _order(run.file)]
            with (run.directory / run.file).open("rb") as spool:
                spool.seek(run.scanner.fed)
                data = spool.read(READ_LIMIT)
            try:
                run.pending += run.scanner.feed(data)
            except BinlogFormatError as exc:
                raise ArchiverError(f"{run.file}: {exc}") from exc
            if len(data) == READ_LIMIT or not later:
                break
            # The tool began the next file, so this one is complete: upload what it holds, then go on.
            self._upload_due(run, force=True)
            run.file, run.scanner, run.uploaded = later[0], BinlogScanner(run.member.dialect.flavor), 0
        run.done = exited

    def _end_run(self) -> None:
        if self.run is not None:
            self.run.stop()
            self.run = None

    def _flush_run(self) -> None:
        """Before leaving a primary: upload what its run spooled, if the store takes it now (else a next run fetches
        it again from the new primary)."""
        run = self.run
        if run is None:
            return
        try:
            self._read(run)
            self._upload_due(run, force=True)
        except (StorageError, ArchiverError, ArchiveGap, OSError) as exc:
            log.warning("binlog archive: %s: left to the next run: %s", run.member.name, exc)


def _order(name: str) -> int:
    match = _BINLOG_FILE.match(name)
    return int(match.group(2)) if match else -1


def _address(member: Member) -> tuple[str, str, int]:
    return (member.name, member.host, member.port)

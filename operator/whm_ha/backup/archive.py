"""The continuous binary log archive: its format in a store, and its pure decisions (no I/O, no clock reads).

Format (version `FORMAT`), for whoever reads the archive back (a point-in-time restore):

* The archiver runs the flavour's binlog tool (``mariadb-binlog``/``mysqlbinlog --read-from-remote-server --raw
  --stop-never``) against the primary. Each start of the tool is a *run* (``run``: an id); it writes one local
  copy per binary log file of the primary, each a valid binary log file of its own: the magic number, the format
  description event and the primary's header events, then the events from where the run started. A run starts
  right after the archive's GTIDs (`resume_point`): MariaDB ``--start-position=GTID-position``, MySQL
  ``--exclude-gtids``; the very first run from the primary's oldest binary log.
* Each such file is a *stream* (``stream`` = ``run/file``), uploaded in *segments*: consecutive byte ranges
  (``offset``, ``length``), each ending where no transaction is open (`BinlogScanner.safe_end`), each holding at
  least one transaction. Concatenating a stream's segments in ``offset`` order (the first one at 0, each next
  where the one before ended) gives a valid binary log file that the flavour's binlog tool replays.
* Segment ``N`` is the object ``binlogs/data/N.binlog`` (N zero-padded, `data_key`) and its index entry
  ``binlogs/index/N.json`` (`index_key`, a `Segment`), written after the data: a segment exists exactly when its
  index entry does, so nothing partial is ever listed (a data object without an index entry is a leftover of an
  interrupted upload; the next segment ``N`` replaces it). Sequence numbers grow by one, with no gap.
* An index entry says where its bytes come from (``member``, ``server_id``, ``server_uuid``, the primary's
  ``file`` and its ``source_start``/``source_end`` positions), which transactions it holds (``gtids``, in the
  flavour's GTID text: MySQL a GTID set, MariaDB ``d-s-first..last`` ranges per domain; ``first_gtid``,
  ``last_gtid``, ``transactions``), their commit times (``first_time``, ``last_time``), the archive's GTIDs
  through this segment (``covered``), the ``sha256`` and ``size`` of the data object, and where its run started
  (``resumed_from``).
* A restore replays the streams in sequence order. A run that followed a failover may have left behind
  transactions of the old primary that the new one never had (written to the old primary's binary log, never
  acknowledged): they are the run's ``superseded`` GTIDs, which a restore skips in the streams before it.

Continuity: per *line* (a MariaDB replication domain, a MySQL source UUID), the sequence numbers of the archived
transactions follow each other without a hole and without a repeat (`advance`); a run resumes from what the archive
holds, so the archive's GTIDs have no gap across restarts, promotions and switchovers.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ..mysql.gtid import Flavor, GtidSet, MariaDBDomain, MariaDBGtidSet, MySQLGtidSet, parse_gtid_set

FORMAT = 1
PREFIX = "binlogs/"
INDEX = f"{PREFIX}index/"
DATA = f"{PREFIX}data/"
_SEQUENCE_DIGITS = 16
_INDEX_KEY = re.compile(rf"^{re.escape(INDEX)}(\d{{{_SEQUENCE_DIGITS}}})\.json$")

MAGIC = b"\xfebin"
_HEADER = struct.Struct("<IBIIIH")
"""Event header: timestamp, type, server id, event size, end position in the source's file, flags."""
HEADER_SIZE = _HEADER.size

# Event types (both flavours share the classic ones; MariaDB's own start at 160).
QUERY = 2
XID = 16
MYSQL_GTID = 33
MYSQL_ANONYMOUS_GTID = 34
MYSQL_PREVIOUS_GTIDS = 35
MYSQL_XA_PREPARE = 38
MYSQL_TRANSACTION_PAYLOAD = 40
MYSQL_TAGGED_GTID = 42
MARIADB_GTID = 162
MARIADB_GTID_LIST = 163
MARIADB_STANDALONE = 0x01
"""GTID event flag: the transaction is the one event after it (a DDL), no COMMIT or XID follows."""
_ENDING_STATEMENTS = (b"COMMIT", b"ROLLBACK", b"XA PREPARE", b"XA COMMIT", b"XA ROLLBACK")


class BinlogFormatError(ValueError):
    """The bytes are not a binary log this scanner understands."""


class ArchiveGap(ValueError):
    """Transactions would be archived out of sequence: a hole or a repeat in a line."""


# --- reading binary logs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gtid:
    """One transaction's GTID: ``line`` is the MariaDB domain or the MySQL source UUID, ``seq`` its number there,
    ``server`` the MariaDB server id that wrote it (MySQL: the UUID again)."""

    line: str
    server: str
    seq: int

    def text(self, flavor: Flavor) -> str:
        return f"{self.line}-{self.server}-{self.seq}" if flavor == "mariadb" else f"{self.line}:{self.seq}"


@dataclass(frozen=True)
class Transaction:
    """A complete transaction in a binary log file: bytes ``start``..``end`` (exclusive), its GTID, the commit
    timestamp of its GTID event and the end position of its last event in the source's own file."""

    gtid: Gtid
    start: int
    end: int
    timestamp: int
    source_end: int


@dataclass
class _Open:
    gtid: Gtid
    start: int
    timestamp: int
    mode: str
    """"one": the next event ends it; "group": an XID or a COMMIT ends it; "decide": the next event tells."""


@dataclass
class BinlogScanner:
    """Finds the transactions of a binary log file fed in pieces of any size (`feed`), and where it may be cut.

    Guarantees: the transactions reported are complete, in file order, each exactly once; `safe_end` is an event
    boundary with no transaction open, after every reported transaction (so ``file[:safe_end]`` is a valid binary
    log file); `header` is the GTIDs the file's header says came before it (MySQL Previous_gtids, MariaDB the last
    Gtid list before the first transaction), once seen."""

    flavor: Flavor
    offset: int = 0
    """Bytes consumed: the end of the last complete event."""
    safe_end: int = 0
    header: str | None = None
    _pending: bytearray = field(default_factory=bytearray)
    _open: _Open | None = None

    @property
    def fed(self) -> int:
        """Bytes fed so far (the next `feed` continues there)."""
        return self.offset + len(self._pending)

    def feed(self, data: bytes) -> list[Transaction]:
        """The transactions completed by ``data`` (the bytes after those fed before)."""
        self._pending += data
        done: list[Transaction] = []
        view = memoryview(bytes(self._pending))
        at = 0
        if self.offset == 0:
            if len(view) < len(MAGIC):
                return done
            if bytes(view[:4]) != MAGIC:
                raise BinlogFormatError("not a binary log file (bad magic number)")
            at = len(MAGIC)
            self.safe_end = len(MAGIC)
        while len(view) - at >= HEADER_SIZE:
            timestamp, kind, server_id, size, end_position, _ = _HEADER.unpack_from(view, at)
            if size < HEADER_SIZE:
                raise BinlogFormatError(f"event of {size} bytes at {self.offset + at}")
            if len(view) - at < size:
                break
            event = view[at : at + size]
            start = self.offset + at
            at += size
            finished = self._event(kind, server_id, timestamp, event, start)
            if finished is not None:
                done.append(Transaction(finished.gtid, finished.start, start + size, finished.timestamp, end_position))
            if self._open is None:
                self.safe_end = start + size
        self.offset += at
        del self._pending[:at]
        return done

    def _event(self, kind: int, server_id: int, timestamp: int, event: memoryview, start: int) -> _Open | None:
        """The transaction this event ends, if any."""
        body = event[HEADER_SIZE:]
        if kind in (MYSQL_GTID, MARIADB_GTID):
            if self._open is not None:
                raise BinlogFormatError(f"a GTID event at {start} inside the transaction of {self._open.gtid}")
            self._open = _gtid_event(self.flavor, kind, server_id, body, timestamp=timestamp, start=start)
            return None
        if kind in (MYSQL_TAGGED_GTID, MYSQL_ANONYMOUS_GTID):
            raise BinlogFormatError(f"event type {kind} at {start}: tagged or anonymous GTIDs are not archived")
        if self._open is None:
            if kind in (MYSQL_PREVIOUS_GTIDS, MARIADB_GTID_LIST):
                self.header = _header_gtids(kind, body)
            return None
        mode = self._open.mode
        if mode == "decide":
            mode = self._open.mode = "group" if kind == QUERY and _statement(body).startswith(b"BEGIN") else "one"
            if mode == "group":
                return None
        ends = (
            mode == "one"
            or kind in (XID, MYSQL_XA_PREPARE, MYSQL_TRANSACTION_PAYLOAD)
            or (kind == QUERY and _statement(body).startswith(_ENDING_STATEMENTS))
        )
        if not ends:
            return None
        finished, self._open = self._open, None
        return finished


def _gtid_event(flavor: Flavor, kind: int, server_id: int, body: memoryview, *, timestamp: int, start: int) -> _Open:
    if kind == MARIADB_GTID:
        if flavor != "mariadb":
            raise BinlogFormatError(f"a MariaDB GTID event at {start} in a {flavor} binary log")
        seq, domain, flags = struct.unpack_from("<QIB", body)
        mode = "one" if flags & MARIADB_STANDALONE else "group"
        return _Open(Gtid(str(domain), str(server_id), seq), start, timestamp, mode)
    if flavor != "mysql":
        raise BinlogFormatError(f"a MySQL GTID event at {start} in a {flavor} binary log")
    source = str(uuid.UUID(bytes=bytes(body[1:17])))
    (gno,) = struct.unpack_from("<q", body, 17)
    return _Open(Gtid(source, source, gno), start, timestamp, "decide")


def _statement(body: memoryview) -> bytes:
    """The leading bytes of a query event's statement (its trailing checksum, if any, does not matter here)."""
    schema_length = body[8]
    (status_length,) = struct.unpack_from("<H", body, 11)
    begin = 13 + status_length + schema_length + 1
    return bytes(body[begin : begin + 16]).upper()


def _header_gtids(kind: int, body: memoryview) -> str:
    """The GTID text of a Previous_gtids (MySQL, untagged) or Gtid list (MariaDB) event."""
    if kind == MARIADB_GTID_LIST:
        (count,) = struct.unpack_from("<I", body)
        items = [struct.unpack_from("<IIQ", body, 4 + 16 * i) for i in range(count & 0x0FFFFFFF)]
        return ",".join(f"{domain}-{server}-{seq}" for domain, server, seq in items)
    (sources,) = struct.unpack_from("<Q", body)
    if sources >> 56:
        raise BinlogFormatError("a tagged Previous_gtids event: tagged GTIDs are not archived")
    at, parts = 8, []
    for _ in range(sources):
        source = str(uuid.UUID(bytes=bytes(body[at : at + 16])))
        (count,) = struct.unpack_from("<Q", body, at + 16)
        at += 24
        intervals = []
        for _ in range(count):
            first, end = struct.unpack_from("<qq", body, at)
            at += 16
            intervals.append(f"{first}-{end - 1}" if end - 1 > first else str(first))
        parts.append(":".join([source, *intervals]))
    return ",".join(parts)


# --- the archive's GTIDs -----------------------------------------------------------------------------------------

Lines = Mapping[str, int]
"""Per line, the last archived sequence number."""


def lines_of(gtids: GtidSet) -> dict[str, int]:
    """Per line, the highest sequence number a GTID set holds."""
    if isinstance(gtids, MariaDBGtidSet):
        return {str(d.domain): d.top for d in gtids.domains}
    assert isinstance(gtids, MySQLGtidSet)
    tops: dict[str, int] = {}
    for (source, tag), intervals in gtids.entries:
        if tag:
            raise ArchiveGap(f"tagged GTIDs ({source}:{tag}) are not archived")
        tops[source] = max(tops.get(source, 0), intervals[-1][1])
    return tops


def advance(lines: Lines, transactions: Iterable[Transaction]) -> dict[str, int]:
    """The lines after ``transactions``, each of which must be the next one of its line (ArchiveGap otherwise: a
    hole means a transaction missing from the archive, a repeat one archived twice)."""
    after = dict(lines)
    for transaction in transactions:
        gtid = transaction.gtid
        expected = after.get(gtid.line, 0) + 1
        if gtid.seq != expected:
            kind = "a repeat" if gtid.seq < expected else "a hole"
            raise ArchiveGap(f"{kind} in line {gtid.line}: transaction {gtid.seq} where {expected} was next")
        after[gtid.line] = gtid.seq
    return after


def transactions_set(flavor: Flavor, transactions: Sequence[Transaction]) -> GtidSet:
    """The GTID set of consecutive transactions (each the next of its line: `advance` checked them)."""
    if flavor == "mysql":
        intervals: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for t in transactions:
            intervals.setdefault((t.gtid.line, ""), []).append((t.gtid.seq, t.gtid.seq))
        return MySQLGtidSet.from_intervals(intervals)
    first: dict[int, int] = {}
    tops: dict[int, dict[int, int]] = {}
    for t in transactions:
        domain = int(t.gtid.line)
        first.setdefault(domain, t.gtid.seq)
        tops.setdefault(domain, {})[int(t.gtid.server)] = t.gtid.seq
    return MariaDBGtidSet(tuple(MariaDBDomain(d, first[d] - 1, tuple(sorted(tops[d].items()))) for d in sorted(first)))


@dataclass(frozen=True)
class Resume:
    """Where a run starts on a primary: right after ``start`` (the archive's GTIDs the primary has too);
    ``superseded`` are archived GTIDs the primary does not have (never acknowledged: a restore skips them)."""

    start: GtidSet
    superseded: GtidSet


def resume_point(archived: GtidSet, primary: GtidSet) -> Resume:
    """Where to resume archiving on ``primary`` (its executed GTIDs) after ``archived``: nothing archived is
    fetched again, nothing the primary holds beyond it is skipped."""
    if isinstance(archived, MySQLGtidSet):
        superseded = archived.difference(primary)
        return Resume(archived.difference(superseded), superseded)
    assert isinstance(archived, MariaDBGtidSet) and isinstance(primary, MariaDBGtidSet)
    theirs = {d.domain: d for d in primary.domains}
    kept: list[MariaDBDomain] = []
    dropped: list[MariaDBDomain] = []
    for mine in archived.domains:
        other = theirs.get(mine.domain)
        shared = mine.agreement(other) if other is not None else 0
        if shared >= mine.top:
            kept.append(mine)
            continue
        rest = mine.above(shared)
        if rest is not None:
            dropped.append(rest)
        if shared > mine.after:
            # The GTID at the agreement point belongs to a server both list with at least that seq.
            assert other is not None
            server = next(s for s, n in sorted(mine.tops) if min(n, dict(other.tops).get(s, 0)) == shared)
            kept.append(MariaDBDomain(mine.domain, mine.after, ((server, shared),)))
    return Resume(MariaDBGtidSet(tuple(kept)), MariaDBGtidSet(tuple(dropped)))


def start_option(flavor: Flavor, start: GtidSet) -> str:
    """The text the binlog tool starts after: MariaDB a GTID position, MySQL the GTID set to exclude."""
    if isinstance(start, MariaDBGtidSet):
        return start.position()
    return str(start)


# --- segments ----------------------------------------------------------------------------------------------------


class Segment(BaseModel):
    """The index entry of one archived segment (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int = FORMAT
    sequence: int = Field(ge=0)
    data: str
    flavor: Flavor
    member: str
    server_id: int = Field(ge=0)
    server_uuid: str | None = None
    run: str
    file: str
    """The primary's binary log file the bytes come from (the local copy is named after it)."""
    stream: str
    """``run/file``: the segments of one stream concatenate into a binary log file."""
    offset: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_start: int = Field(ge=0)
    """Position in the primary's ``file`` of the first transaction."""
    source_end: int = Field(ge=0)
    """Position in the primary's ``file`` after the last transaction."""
    transactions: int = Field(ge=1)
    first_gtid: str
    last_gtid: str
    gtids: str
    """The segment's transactions."""
    covered: str
    """The archive's GTIDs through this segment."""
    resumed_from: str
    """The archive's GTIDs its run started after (the first run: the header of its first file)."""
    superseded: str = ""
    """Archived GTIDs the run's primary does not have, skipped by a restore in the streams before."""
    first_time: datetime
    last_time: datetime
    uploaded: datetime


def index_key(sequence: int) -> str:
    return f"{INDEX}{sequence:0{_SEQUENCE_DIGITS}d}.json"


def data_key(sequence: int) -> str:
    return f"{DATA}{sequence:0{_SEQUENCE_DIGITS}d}.binlog"


def sequence_of(key: str) -> int | None:
    """The sequence number of an index entry's key; None for any other key."""
    match = _INDEX_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


def last_sequence(keys: Iterable[str]) -> int | None:
    """The highest sequence number among index keys (the newest segment); None when there is none."""
    return max((s for s in map(sequence_of, keys) if s is not None), default=None)


@dataclass(frozen=True)
class ChainProblem:
    sequence: int
    problem: str


def check_chain(flavor: Flavor, segments: Sequence[Segment]) -> list[ChainProblem]:
    """What breaks the archive's continuity, in sequence order: a missing sequence number, a stream that does not
    continue where it stopped, a run starting after GTIDs the archive does not hold, a segment whose GTIDs are not
    the next of their lines, a ``covered`` that is not the union of what came before. Empty: no gap."""
    problems: list[ChainProblem] = []
    covered: GtidSet | None = None
    lines: dict[str, int] = {}
    ends: dict[str, int] = {}
    run: str | None = None
    for expected, segment in enumerate(segments, start=segments[0].sequence if segments else 0):
        n = segment.sequence
        if n != expected:
            problems.append(ChainProblem(n, f"segment {expected} is missing"))
        if segment.run != run:
            run = segment.run
            start = parse_gtid_set(flavor, segment.resumed_from)
            if covered is not None and not covered.contains(start):
                problems.append(ChainProblem(n, f"run {run} resumes after {start}, beyond the archive's {covered}"))
            covered, lines = start, lines_of(start)
        if segment.offset != ends.get(segment.stream, 0):
            problems.append(ChainProblem(n, f"stream {segment.stream} continues at {segment.offset}"))
        ends[segment.stream] = segment.offset + segment.size
        gtids = parse_gtid_set(flavor, segment.gtids)
        try:
            lines = _advance_set(lines, gtids)
        except ArchiveGap as exc:
            problems.append(ChainProblem(n, str(exc)))
        assert covered is not None
        covered = covered.union(gtids) if _joinable(covered, gtids) else gtids
        recorded = parse_gtid_set(flavor, segment.covered)
        if not (recorded.contains(covered) and covered.contains(recorded)):
            problems.append(ChainProblem(n, f"covered {recorded} where the chain gives {covered}"))
    return problems


def _joinable(covered: GtidSet, gtids: GtidSet) -> bool:
    try:
        covered.union(gtids)
    except ValueError:
        return False
    return True


def _advance_set(lines: Lines, gtids: GtidSet) -> dict[str, int]:
    """`advance` for a segment's GTID set: per line one range, starting right after the line's last."""
    after = dict(lines)
    if isinstance(gtids, MariaDBGtidSet):
        ranges = {str(d.domain): [(d.after + 1, d.top)] for d in gtids.domains}
    else:
        assert isinstance(gtids, MySQLGtidSet)
        ranges = {source: list(intervals) for (source, _), intervals in gtids.entries}
    for line, intervals in ranges.items():
        expected = after.get(line, 0) + 1
        if len(intervals) != 1 or intervals[0][0] != expected:
            kind = "a repeat" if intervals[0][0] < expected else "a hole"
            raise ArchiveGap(f"{kind} in line {line}: {intervals} where {expected} was next")
        after[line] = intervals[0][1]
    return after


# --- when to upload, how late the archive is ---------------------------------------------------------------------


def segment_due(
    *, pending_bytes: int, pending_transactions: int, since_upload: float, interval: float, max_bytes: int
) -> bool:
    """Whether the complete transactions waiting should be uploaded now as a segment: some are waiting, and the
    last upload is ``interval`` seconds old or they fill a segment."""
    return pending_transactions > 0 and (since_upload >= interval or pending_bytes >= max_bytes)


@dataclass(frozen=True)
class Observation:
    """The lines of the primary's executed GTIDs (`lines_of`) as read at ``time``."""

    time: float
    executed: Lines


def holds(archived: Lines, executed: Lines) -> bool:
    """Whether the archive reaches, in every line, as far as ``executed`` (its lines have no holes)."""
    return all(archived.get(line, 0) >= seq for line, seq in executed.items())


def archive_lag(observations: Sequence[Observation], archived: Lines | None, now: float) -> tuple[float, int]:
    """How late the archive is: the age of the oldest observation of the primary holding a transaction the
    archive does not (0 when it holds them all), and how many leading observations it holds (to drop). Every
    transaction the primary had committed at time t is archived by t + lag (to the observations' period)."""
    held = 0
    for observation in observations:
        if archived is None or not holds(archived, observation.executed):
            return max(0.0, now - observation.time), held
        held += 1
    return 0.0, held

"""Point-in-time recovery: replaying the binary log archive (`archive`) onto a member that holds a backup, up to a
target (`RecoveryTarget`).

`plan` decides, from the archive's index alone, what is replayed: the segments after the backup's GTIDs, each
stream (a valid binary log file once its segments are concatenated) cut where the target or a later run's
``superseded`` GTIDs cut it, and what the flavour's binlog tool must leave out of each (`Dialect.replay_options`).
`replay` streams each planned stream's segments, their sha256 verified, into the binlog tool reading standard
input, piped into the flavour's client on the member with binary logging on: the member's binary log holds the
replayed transactions with their original GTIDs, so its replicas follow from the backup's position.

Targets. A GTID: every transaction up to and including it. A time ``T`` (a whole second, UTC): every transaction
whose binary log timestamp is before ``T``, none from ``T`` on; timestamps are whole seconds of the moment the
transaction's first statement started, so every transaction acknowledged before ``T`` is replayed, none sent at or
after ``T``, and one that started before ``T`` and was acknowledged after it is. The end of the archive: every
transaction it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from ..crd.backup import RecoveryTarget
from ..mysql.gtid import Flavor, GtidSet, MariaDBGtidSet, MySQLGtidSet, parse_gtid_set
from .archive import INDEX, Segment, check_chain
from .dump import Member, client_command
from .storage import Store


class Unreachable(ValueError):
    """The archive cannot take the backup to the target; the message says why."""


class ReplayError(RuntimeError):
    """The replay failed (a segment not matching its index entry, the binlog tool or the client failing)."""


Range = tuple[int, int]
"""The first and last sequence number of a line's transactions."""


def ranges(gtids: GtidSet) -> dict[str, Range]:
    """Per line (MariaDB domain, MySQL source), the one range of sequence numbers a segment's GTIDs hold (the
    chain has one per line: `archive.check_chain`)."""
    if isinstance(gtids, MariaDBGtidSet):
        return {str(d.domain): (d.after + 1, d.top) for d in gtids.domains}
    assert isinstance(gtids, MySQLGtidSet)
    return {source: (intervals[0][0], intervals[-1][1]) for (source, _), intervals in gtids.entries}


def _tops(gtids: GtidSet) -> dict[str, int]:
    """Per line, the highest sequence number ``gtids`` holds: every transaction up to it (gap-free history)."""
    return {line: last for line, (_, last) in ranges(gtids).items()} if gtids.count else {}


@dataclass(frozen=True)
class StreamPlan:
    """One stream to replay: its segments (a prefix of the stream's, in offset order), the transactions of them
    the tool leaves out (``excluded``), and the GTIDs where it stops (``stops``, inclusive: MariaDB, one per line
    cut short)."""

    stream: str
    segments: tuple[Segment, ...]
    excluded: GtidSet
    stops: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    streams: tuple[StreamPlan, ...]
    backup: GtidSet
    stop_time: datetime | None
    """The time target (the tool stops at the first event of this second or later)."""


def _target_gtid(flavor: Flavor, text: str) -> tuple[str, int]:
    try:
        parsed = parse_gtid_set(flavor, text)
    except ValueError as exc:
        raise Unreachable(f"target GTID {text} is not a {flavor} GTID") from exc
    ((line, (_, seq)),) = ranges(parsed).items()
    return line, seq


def plan(flavor: Flavor, backup: str, segments: Sequence[Segment], target: RecoveryTarget) -> Plan:
    """What to replay after a backup at GTIDs ``backup`` to ``target``, from the archive's ``segments`` (its whole
    index, any order). Unreachable when the archive is empty, broken (`check_chain`) where it is used, starts after
    the backup (transactions in between were never archived), or does not reach the target (a time after its last
    transaction, a GTID it does not hold)."""
    chain = sorted(segments, key=lambda s: s.sequence)
    if not chain:
        raise Unreachable("the binary log archive is empty")
    held = parse_gtid_set(flavor, backup)
    floor = _tops(held)
    stop_time = None
    target_line: tuple[str, int] | None = None
    if target.time is not None:
        stop_time = target.stop_time()
        assert stop_time is not None
        ends = chain[-1].last_time
        if ends < stop_time:
            raise Unreachable(
                f"the archive ends at {ends:%Y-%m-%dT%H:%M:%SZ}, before the target {target.time}:"
                " restore to a time before it, or to endOfArchive"
            )
    elif target.gtid is not None:
        target_line = _target_gtid(flavor, target.gtid)
        line, seq = target_line
        if seq <= floor.get(line, 0):
            raise Unreachable(f"the backup already holds {target.gtid}: restore it without a target")
    cuts = _superseded_cuts(flavor, chain)
    needed: list[tuple[Segment, dict[str, Range]]] = []
    reached = target_line is None
    start = None
    for at, segment in enumerate(chain):
        if stop_time is not None and segment.first_time >= stop_time:
            break
        kept: dict[str, Range] = {}
        gtids = parse_gtid_set(flavor, segment.gtids)
        for line, (first, last) in ranges(gtids).items():
            low, high = max(first, floor.get(line, 0) + 1), min(last, cuts[at].get(line, last))
            if target_line is not None and line == target_line[0]:
                if first <= target_line[1] <= high and _wrote(gtids, target.gtid or ""):
                    reached = True
                high = min(high, target_line[1])
            if low <= high:
                kept[line] = (low, high)
        if kept and start is None:
            start = at
            # The stream's bytes before: its header events, and transactions the backup holds (the tool skips them).
            needed = [(earlier, {}) for earlier in chain[:at] if earlier.stream == segment.stream]
        if start is not None:
            needed.append((segment, kept))
        if target_line is not None and reached:
            break
    if not reached:
        raise Unreachable(f"the archive does not hold {target.gtid} after the backup's GTIDs {held}")
    if start is not None:
        _check_reaches_back(flavor, chain, start, floor)
        run_start = next(i for i in range(start, -1, -1) if i == 0 or chain[i - 1].run != chain[start].run)
        problems = check_chain(flavor, chain[run_start : chain.index(needed[-1][0]) + 1])
        if problems:
            raise Unreachable(f"the archive has a gap: segment {problems[0].sequence}: {problems[0].problem}")
    return Plan(_streams(flavor, held, needed), held, stop_time)


def _wrote(gtids: GtidSet, target: str) -> bool:
    """Whether the target's MariaDB server wrote transactions of the segment's ``gtids`` (MySQL: the source is the
    line, always)."""
    if not isinstance(gtids, MariaDBGtidSet):
        return True
    domain, server, _ = (int(part) for part in target.split("-"))
    return any(d.domain == domain and server in dict(d.tops) for d in gtids.domains)


def _superseded_cuts(flavor: Flavor, chain: Sequence[Segment]) -> list[dict[str, int]]:
    """Per segment, per line, the last seq it may replay: the superseded GTIDs of the runs after it (a tail of
    what came before them) are never replayed."""
    cuts: list[dict[str, int]] = []
    later: dict[str, int] = {}
    run, pending = None, ""
    for segment in reversed(chain):
        if segment.run != run:
            if pending:
                for line, (first, _) in ranges(parse_gtid_set(flavor, pending)).items():
                    later[line] = min(later.get(line, first - 1), first - 1)
            run, pending = segment.run, segment.superseded
        cuts.append(dict(later))
    cuts.reverse()
    return cuts


def _check_reaches_back(flavor: Flavor, chain: Sequence[Segment], start: int, floor: dict[str, int]) -> None:
    """Unreachable when the archive holds nothing between the backup's GTIDs and its first segment needed."""
    first = chain[start]
    new_run = start == 0 or chain[start - 1].run != first.run
    before = _tops(parse_gtid_set(flavor, first.resumed_from if new_run else chain[start - 1].covered))
    missing = [line for line, seq in before.items() if seq > floor.get(line, 0)]
    if missing:
        raise Unreachable(
            f"the archive starts after the backup's GTIDs in line {missing[0]} (segment {first.sequence} follows"
            f" {'its run start' if new_run else 'segment ' + str(chain[start - 1].sequence)} at"
            f" {before[missing[0]]}, the backup is at {floor.get(missing[0], 0)}): take a newer backup"
        )


def _streams(
    flavor: Flavor, held: GtidSet, needed: Sequence[tuple[Segment, dict[str, Range]]]
) -> tuple[StreamPlan, ...]:
    """Group the needed segments into streams, in order; a stream with nothing to replay is left out."""
    streams: list[StreamPlan] = []
    order: list[str] = []
    members: dict[str, list[tuple[Segment, dict[str, Range]]]] = {}
    for segment, kept in needed:
        if segment.stream not in members:
            order.append(segment.stream)
        members.setdefault(segment.stream, []).append((segment, kept))
    for stream in order:
        parts = members[stream]
        while parts and not parts[-1][1]:
            parts.pop()  # trailing segments with nothing to replay: the stream is cut before them
        if not parts:
            continue
        excluded: GtidSet = held
        stops: dict[str, str] = {}
        for segment, kept in parts:
            gtids = parse_gtid_set(flavor, segment.gtids)
            for line, (first, last) in ranges(gtids).items():
                low, high = kept.get(line, (last + 1, last))
                for a, b in ((first, low - 1), (high + 1, last)):
                    if a <= b and isinstance(excluded, MySQLGtidSet):
                        excluded = excluded.union(MySQLGtidSet.from_intervals({(line, ""): [(a, b)]}))
                if high < last and isinstance(gtids, MariaDBGtidSet):
                    # mariadb-binlog compares a stop GTID's domain and seq only (checked: any server id stops it).
                    domain = next(d for d in gtids.domains if str(d.domain) == line)
                    stops[line] = f"{line}-{domain.tops[-1][0]}-{high}"
        streams.append(StreamPlan(stream, tuple(s for s, _ in parts), excluded, tuple(stops.values())))
    return tuple(streams)


def index(store: Store) -> list[Segment]:
    """The archive's index entries."""
    return [Segment.model_validate_json(store.get(key)) for key in store.list(INDEX)]


def replay(store: Store, member: Member, plan_: Plan) -> None:
    """Replay the plan's streams, in order, onto ``member`` with binary logging on; ReplayError when a segment does
    not match its index entry or the tool or the client fails (the member then holds part of the replay)."""
    dialect = member.dialect
    env = {**os.environ, "TZ": "UTC"}  # both tools read --stop-datetime in the local time zone
    for stream in plan_.streams:
        options = dialect.replay_options(plan_.backup, stream.excluded, stream.stops, plan_.stop_time)
        with client_command(member, dialect.client_program) as client, tempfile.TemporaryFile() as errors:
            tool = subprocess.Popen(
                [*member.programs(dialect.binlog_program), *options, "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
            )
            loader = subprocess.Popen(
                [*client, "--binary-mode"], stdin=tool.stdout, stdout=subprocess.DEVNULL, stderr=errors
            )
            assert tool.stdin is not None and tool.stdout is not None
            tool.stdout.close()  # the loader holds it now
            # A tool may stop reading before the end (past the target time): the bytes it never read, also those
            # still buffered when its input is closed, are no error; its exit status and the client's decide.
            try:
                _feed(store, stream, tool.stdin)
            except BrokenPipeError:
                pass
            finally:
                with contextlib.suppress(BrokenPipeError):
                    tool.stdin.close()
                codes = tool.wait(), loader.wait()
            if codes != (0, 0):
                errors.seek(0)
                message = " ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
                raise ReplayError(f"replaying {stream.stream} onto {member.name} failed {codes}: {message}")


def _feed(store: Store, stream: StreamPlan, out: IO[bytes]) -> None:
    """Write the stream's segments, each checked against its index entry, to ``out``."""
    offset = 0
    for segment in stream.segments:
        if segment.offset != offset:
            raise ReplayError(f"{stream.stream}: segment {segment.sequence} starts at {segment.offset}, not {offset}")
        data = store.get(segment.data)
        if len(data) != segment.size or hashlib.sha256(data).hexdigest() != segment.sha256:
            raise ReplayError(f"segment {segment.sequence} does not match its index entry (size or sha256)")
        out.write(data)
        offset += segment.size

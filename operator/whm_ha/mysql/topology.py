"""Pure decisions of the replication manager, from inspected member states; no I/O.

Candidates are compared on what they *received*: executed GTIDs plus the relay log (retrieved). Once the IO
threads are stopped nothing new arrives, and the SQL thread applies the relay log, so that is what a candidate
will hold when promoted; `actions.promote` waits for it to be applied before it resets the replica. Comparing
executed sets only would prefer a replica that merely applies faster, and lose what the others received.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..crd.mysqlreplication import Member
from .gtid import GtidSet
from .member import MemberState


@dataclass(frozen=True)
class Verdict:
    """Whether the primary is confirmed dead, and why (or why not)."""

    dead: bool
    reason: str


@dataclass(frozen=True)
class Choice:
    """The member to promote (None if none qualifies) and why each other member was refused."""

    candidate: str | None
    refusals: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RejoinVerdict:
    """Whether a member may replicate from the primary; ``errant`` is what it has that the primary lacks."""

    ok: bool
    reason: str
    errant: GtidSet


CONNECTION_ERRNOS = frozenset({2002, 2003, 2005, 2006, 2013})
"""IO-thread errors that mean the source could not be reached (as opposed to, say, a refused password)."""

Condition = Literal["ReplicationBroken", "LagHigh", "Degraded"]


@dataclass(frozen=True)
class Problem:
    """One reason a replica is not healthy, and the condition it feeds."""

    condition: Condition
    message: str


def _names(states: Sequence[MemberState]) -> str:
    return ", ".join(s.name for s in states)


def _replicates_from(state: MemberState, source: MemberState) -> bool:
    return state.reachable and state.is_replica and (state.source_host, state.source_port) == (source.host, source.port)


def _lost_source(state: MemberState) -> bool:
    """The IO thread is down for want of its source: a connection error, or reconnecting with no error yet."""
    if state.io_running:
        return False
    return state.last_io_errno in CONNECTION_ERRNOS or (state.io_connecting and state.last_io_errno is None)


def primary_confirmed_dead(
    primary: MemberState, consecutive_failures: int, failure_threshold: int, replicas: Sequence[MemberState]
) -> Verdict:
    """Dead only when the operator failed to reach the primary ``failure_threshold`` times in a row and the
    reachable replicas of the primary lost it too (IO thread down with a connection error) while none still
    receives. A replica whose IO thread stopped for another reason (an operator, a wrong password) cannot tell."""
    if primary.reachable:
        return Verdict(False, "the primary answers")
    unreachable = f"the operator cannot reach the primary ({primary.error})"
    if consecutive_failures < failure_threshold:
        return Verdict(False, f"{unreachable}, {consecutive_failures} of {failure_threshold} inspections in a row")
    watchers = [r for r in replicas if _replicates_from(r, primary)]
    if not watchers:
        return Verdict(False, f"{unreachable} and no reachable replica replicates from it to confirm")
    receiving = [r for r in watchers if r.io_running]
    if receiving:
        return Verdict(False, f"{unreachable} but replicas {_names(receiving)} still replicate from it")
    lost = [r for r in watchers if _lost_source(r)]
    if not lost:
        return Verdict(False, f"{unreachable}; replicas {_names(watchers)} are not receiving but none lost it")
    detail = lost[0].last_io_error or "reconnecting"
    return Verdict(
        True,
        f"{unreachable} for {consecutive_failures} inspections and replicas {_names(lost)} lost it too: {detail}",
    )


def _lacked(primary: MemberState, holder: MemberState) -> GtidSet | None:
    """What ``holder`` received that the primary lacks, when some of it is the primary's own (None: none of it is).
    Transactions of other origins alone are the holder's errant writes (quarantined once the primary is open); mixed
    with the primary's, the primary is still behind."""
    have = received(holder)
    if have is None or primary.gtid_executed is None or primary.gtid_executed.contains(have):
        return None
    missing = have.difference(primary.gtid_executed)
    return missing if str(primary.server_id) in missing.origins else None


def primary_behind(primary: MemberState, replicas: Sequence[MemberState]) -> Verdict:
    """A primary found read-only (it restarted) that lacks transactions a reachable replica received must not be
    opened again: a MariaDB started with init_rpl_role=SLAVE drops on recovery what it had binlogged but not
    committed, some of which a replica may hold; reopened, it would write new transactions under the same GTIDs,
    which that replica skips (and the candidate chosen later cannot tell apart), and an acknowledged write is
    lost. ``dead`` (to be replaced) when so, with what each replica holds that it lacks. Only the primary's own
    transactions count (`_lacked`), and MySQL (whose recovery keeps what it binlogged) is never behind so."""
    if not primary.reachable or primary.read_only is not True or primary.gtid_executed is None:
        return Verdict(False, "the primary is not a read-only member that answers")
    ahead = []
    for state in replicas:
        missing = _lacked(primary, state) if state.reachable else None
        if missing is not None:
            ahead.append(f"{state.name} ({missing.count}: {missing})")
    if not ahead:
        return Verdict(False, "the primary holds every transaction the replicas received")
    return Verdict(
        True,
        f"the primary {primary.name} came back read-only without transactions replicas received: {', '.join(ahead)}",
    )


def unaccounted(
    primary: MemberState, others: Sequence[MemberState], answered_since_back: Mapping[str, MemberState]
) -> dict[str, str]:
    """The members that do not answer and may hold transactions of the read-only ``primary`` that it lacks, each
    with why: it is not reopened while there are any (`primary_behind` says why for those that answer). One
    that does not answer is known to hold nothing more only from an answer given after the primary was found
    back read-only (and found so at every inspection since: what it could receive from the primary since is in
    the primary's binary log), in ``answered_since_back``, that held nothing of the primary's that it lacks."""
    if not primary.reachable or primary.read_only is not True or primary.gtid_executed is None:
        return {}
    found = {}
    for state in others:
        if state.reachable:
            continue
        last = answered_since_back.get(state.name)
        if last is None:
            found[state.name] = f"unreachable, not seen since {primary.name} came back read-only: it may hold more"
        elif (missing := _lacked(primary, last)) is not None:
            found[state.name] = f"unreachable, held {missing.count} it lacks when it last answered: {missing}"
    return found


def received(state: MemberState) -> GtidSet | None:
    """Executed plus retrieved GTIDs: what the member will hold once its relay log is applied."""
    if state.gtid_executed is None:
        return None
    if state.gtid_retrieved is None:
        return state.gtid_executed
    return state.gtid_executed.union(state.gtid_retrieved)


def apply_lag(state: MemberState) -> int | None:
    """Seconds behind as reported; 0 when it reports nothing but has applied all it received; else unknown."""
    if state.seconds_behind is not None:
        return state.seconds_behind
    if state.gtid_executed is not None and state.gtid_retrieved is not None:
        return 0 if state.gtid_executed.contains(state.gtid_retrieved) else None
    return None


def choose_candidate(
    states: Sequence[MemberState],
    members: Sequence[Member],
    max_lag_seconds: int,
    *,
    force: bool = False,
    exclude: Mapping[str, str] | None = None,
) -> Choice:
    """The replica to promote: it must have received every GTID that any reachable replica (promotable or not)
    received, else promoting it would lose them. Among equals: lower lag, higher priority, then name. Excluded
    members (name -> reason, e.g. the failed primary) are neither candidates nor compared. ``force`` accepts
    a lag beyond ``max_lag_seconds`` or unknown; nothing else."""
    by_name = {s.name: s for s in states}
    exclude = exclude or {}
    refusals: dict[str, str] = {}
    sets: dict[str, GtidSet] = {}
    ranked: list[tuple[float, int, str]] = []
    for member in members:
        state = by_name.get(member.name)
        have = received(state) if state is not None and state.reachable else None
        if member.name in exclude:
            refusals[member.name] = exclude[member.name]
        elif state is None or have is None:
            refusals[member.name] = f"unreachable: {state.error if state else 'not inspected'}"
        elif not state.is_replica:
            refusals[member.name] = "not a replica"
        else:
            sets[member.name] = have
            reason = _not_promotable(member, state, max_lag_seconds, force)
            if reason:
                refusals[member.name] = reason
            else:
                known = apply_lag(state)
                ranked.append((math.inf if known is None else known, -member.priority, member.name))
    leaders = []
    for rank in sorted(ranked):
        mine = sets[rank[2]]
        lacking = []
        for other, theirs in sets.items():
            if not mine.contains(theirs):
                missing = theirs.difference(mine)
                lacking.append(f"{other} ({missing.count}: {missing})")
        if lacking:
            refusals[rank[2]] = "lacks transactions that others received: " + ", ".join(lacking)
        else:
            leaders.append(rank)
    if not leaders:
        return Choice(None, refusals)
    best_lag, best_priority, best = leaders[0]
    for lag, priority, name in leaders[1:]:
        refusals[name] = (
            f"as up to date as {best}, which ranks first "
            f"(lag {_seconds(lag)} vs {_seconds(best_lag)}, priority {-priority} vs {-best_priority}, then name)"
        )
    return Choice(best, refusals)


def _not_promotable(member: Member, state: MemberState, max_lag_seconds: int, force: bool) -> str | None:
    if member.never_promote:
        return "marked neverPromote"
    if state.sql_running is False and state.last_sql_error:
        return f"its SQL thread failed, its relay log would not apply: {state.last_sql_error}"
    lag = apply_lag(state)
    if force:
        return None
    if lag is None:
        return "lag unknown: it is still applying its relay log"
    if lag > max_lag_seconds:
        return f"lag {lag}s exceeds maxLagSeconds {max_lag_seconds}"
    return None


def _seconds(lag: float) -> str:
    return "unknown" if lag == math.inf else f"{lag:g}s"


def errant_transactions(old_primary_gtid: GtidSet, new_primary_gtid: GtidSet) -> GtidSet:
    """What the old primary has that the new one lacks: it cannot rejoin while it has them."""
    return old_primary_gtid.difference(new_primary_gtid)


def can_rejoin(member_gtid: GtidSet, primary_gtid: GtidSet) -> RejoinVerdict:
    """A member may replicate from the primary only if the primary has every transaction it executed."""
    errant = errant_transactions(member_gtid, primary_gtid)
    if not errant:
        return RejoinVerdict(True, "the primary has all of its transactions", errant)
    return RejoinVerdict(
        False, f"{errant.count} errant transaction(s) the primary lacks: {errant}; rebuild it or remove them", errant
    )


def errant_members(
    states: Mapping[str, MemberState], primary: str, primary_gtid: GtidSet, *, skip: Collection[str] = ()
) -> dict[str, RejoinVerdict]:
    """The reachable members other than the primary (and ``skip``) holding transactions ``primary_gtid`` lacks.

    The primary's set only grows, so it must be read *after* the members' for a verdict: read before, a replica
    that applied a transaction committed in between would look errant."""
    found = {}
    for name, state in states.items():
        if name == primary or name in skip or not state.reachable or state.gtid_executed is None:
            continue
        verdict = can_rejoin(state.gtid_executed, primary_gtid)
        if not verdict.ok:
            found[name] = verdict
    return found


def replica_health(
    state: MemberState, max_lag_seconds: int, expected_source: tuple[str, int] | None = None
) -> list[Problem]:
    """What is wrong with a replica (empty: healthy); ``expected_source`` is the primary's (host, port)."""
    if not state.reachable:
        return [Problem("Degraded", f"{state.name}: unreachable: {state.error}")]
    if not state.is_replica:
        return [Problem("ReplicationBroken", f"{state.name}: no replication source configured")]
    problems = []
    source = (state.source_host, state.source_port)
    if expected_source is not None and source != expected_source:
        problems.append(
            Problem(
                "ReplicationBroken",
                f"{state.name}: replicates from {source[0]}:{source[1]}, "
                f"not the primary {expected_source[0]}:{expected_source[1]}",
            )
        )
    if state.io_connecting:
        problems.append(
            Problem(
                "ReplicationBroken",
                f"{state.name}: IO thread cannot reach its source: {state.last_io_error or 'connecting'}",
            )
        )
    elif not state.io_running:
        detail = f": {state.last_io_error}" if state.last_io_error else ""
        problems.append(Problem("ReplicationBroken", f"{state.name}: IO thread stopped{detail}"))
    if not state.sql_running:
        detail = f": {state.last_sql_error}" if state.last_sql_error else ""
        problems.append(Problem("ReplicationBroken", f"{state.name}: SQL thread stopped{detail}"))
    if state.seconds_behind is not None and state.seconds_behind > max_lag_seconds:
        problems.append(
            Problem("LagHigh", f"{state.name}: lag {state.seconds_behind}s exceeds maxLagSeconds {max_lag_seconds}")
        )
    if state.read_only is False:
        problems.append(Problem("Degraded", f"{state.name}: writable: read-only is off on a replica"))
    elif state.fenced is False:
        problems.append(Problem("Degraded", f"{state.name}: not fenced: super_read_only is off on a replica"))
    return problems

"""Pure decisions of the replication controller, on top of `whm_ha.mysql.topology`: what a reconcile pass fixes,
whether and whom to promote, and the status summary. No I/O."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ..crd.mysqlreplication import Member, MySQLReplicationSpec
from ..mysql.actions import AUTH_ERRNOS
from ..mysql.dialect import SEMI_SYNC_ACKS
from ..mysql.member import MemberState
from ..mysql.topology import (
    Problem,
    choose_candidate,
    primary_behind,
    primary_confirmed_dead,
    replica_health,
    unaccounted,
)

# -- timeouts ----------------------------------------------------------------------------------------------------


def member_timeout(spec: MySQLReplicationSpec) -> float:
    """Seconds to connect to a member and for any reply to a query: at most one period (capped at 5 s), so that
    an unreachable member costs each inspection no more than the period."""
    return float(min(spec.period_seconds, 5))


HEARTBEAT_PERIODS = 4
"""At most this many missed heartbeats (one a second) before a replica gives its source up."""


def replica_net_timeout(spec: MySQLReplicationSpec) -> int:
    """The replicas' slave_net_timeout / replica_net_timeout: a replica that received nothing (no event, no
    heartbeat) for this long reconnects, and so reports its source lost. A few heartbeat periods, never more
    than the operator's own detection time (periodSeconds x failureThreshold), at least 2 s. It also bounds how
    long stopping a replica waits while it tries to reach a vanished source."""
    return max(2, min(HEARTBEAT_PERIODS, spec.period_seconds * spec.failure_threshold))


def waiting_timeout(spec: MySQLReplicationSpec) -> float:
    """Seconds for a reply to a statement that waits on a replication thread (STOP SLAVE while the IO thread
    waits on a vanished source): the thread gives up within the net timeout."""
    return member_timeout(spec) + replica_net_timeout(spec)


# -- reconcile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The fixes of one reconcile pass, applied in this order. Empty for a healthy topology."""

    fence: tuple[str, ...] = ()
    """Writable members other than the primary: made read-only first."""
    ensure_user: bool = False
    """Create or repair the replication and application accounts on the primary."""
    join: tuple[str, ...] = ()
    """Members to (re)attach to the primary: fenced, checked for errant transactions, then made replicas."""
    open_primary: bool = False
    """Turn read-only off on the primary, once every other member answering is read-only (`reopen_held`)."""
    semi_sync: bool = False
    """Enable semi-sync on the primary and on ``replicas`` (always before ``open_primary`` with semi-sync)."""
    replicas: tuple[str, ...] = ()
    """The reachable members that are to replicate (for semi-sync)."""
    source_off: tuple[str, ...] = ()
    """Members whose source side of semi-sync must be off (replicas; the primary when semi-sync is not wanted)."""
    net_timeout: tuple[str, ...] = ()
    """Members whose net timeout differs from the wanted one (set it, and reconnect a running IO thread)."""
    secure_transport: tuple[str, ...] = ()
    """Members that accept clients without TLS although the spec asks them to refuse them."""
    plaintext_allowed: tuple[str, ...] = ()
    """Members that refuse clients without TLS although the spec no longer asks them to: turned off while TLS is
    still on (the operator reaches them), so that TLS can be disabled afterwards without locking it out."""

    def __bool__(self) -> bool:
        return bool(
            self.fence
            or self.ensure_user
            or self.join
            or self.open_primary
            or self.semi_sync
            or self.source_off
            or self.net_timeout
            or self.secure_transport
            or self.plaintext_allowed
        )


def in_order(state: MemberState, primary: MemberState) -> bool:
    """A replica that needs nothing: read-only, replicating from the primary with threads running (or retrying).
    A SQL thread stopped on an error is left to a human: starting it again would only fail again."""
    return (
        state.is_replica
        and (state.source_host, state.source_port) == (primary.host, primary.port)
        and state.fenced is True
        and state.last_io_errno not in AUTH_ERRNOS
        and (state.io_running is True or state.io_connecting)
        and (state.sql_running is True or bool(state.last_sql_error))
    )


def converge_plan(
    primary: str,
    states: Mapping[str, MemberState],
    *,
    semi_sync: bool,
    full: bool = False,
    quarantined: Collection[str] = (),
    net_timeout: int | None = None,
    secure_transport: bool = False,
    answered_since_back: Mapping[str, MemberState] | None = None,
) -> Plan:
    """What to fix, from the last inspection. ``full`` checks everything (after a start, a spec or Secret change,
    a promotion): each action reads first, so that costs reads, never needless writes. ``answered_since_back``:
    see `reopen_held`. ``secure_transport``: every member reached must refuse clients without TLS (False: must
    accept them, and members read as refusing them are set back)."""
    head = states.get(primary)
    others = [s for name, s in states.items() if name != primary and s.reachable]
    fence = tuple(s.name for s in others if s.fenced is False)
    timeouts = tuple(
        s.name
        for s in states.values()
        if net_timeout is not None and s.reachable and s.net_timeout is not None and s.net_timeout != net_timeout
    )
    plaintext = tuple(s.name for s in states.values() if secure_transport and s.secure_transport is False)
    refusing = tuple(s.name for s in states.values() if not secure_transport and s.secure_transport is True)
    if head is None or not head.reachable or head.is_replica:
        return Plan(fence=fence, net_timeout=timeouts, secure_transport=plaintext, plaintext_allowed=refusing)
    join = tuple(s.name for s in others if full or s.name in quarantined or not in_order(s, head))
    replicas = tuple(s.name for s in others)
    replica_off = [s for s in others if full or (s.semi_sync is not None and s.semi_sync.source_active)]
    head_semi = head.semi_sync
    opening = head.read_only is True and not reopen_held(primary, states, answered_since_back or {})
    wants_semi = semi_sync and (
        full
        or opening  # its source side goes on before it opens
        or head_semi is None
        or not head_semi.source_active
        or any(s.semi_sync is None or not s.semi_sync.replica_active for s in others if s.name not in quarantined)
    )
    head_off = not semi_sync and (full or (head_semi is not None and head_semi.source_active))
    return Plan(
        fence=fence,
        ensure_user=full or any(s.last_io_errno in AUTH_ERRNOS for s in others),
        join=join,
        open_primary=opening,
        semi_sync=wants_semi,
        replicas=replicas,
        source_off=tuple(s.name for s in replica_off) + ((primary,) if head_off else ()),
        net_timeout=timeouts,
        secure_transport=plaintext,
        plaintext_allowed=refusing,
    )


def reopen_held(primary: str, states: Mapping[str, MemberState], answered_since_back: Mapping[str, MemberState]) -> str:
    """Why the primary, found read-only, may not be opened again ("" when it may): a replica that answers holds
    transactions of its that it lacks (it is switched over from instead: `primary_behind`), or one that does not
    answer may (`unaccounted`; ``answered_since_back``: each member's last answer since the primary was found back
    read-only). An acknowledged write would be lost: the primary would reuse those GTIDs for new ones."""
    head = states.get(primary)
    if head is None:
        return ""
    others = [s for name, s in states.items() if name != primary]
    behind = primary_behind(head, others)
    if behind.dead:
        return behind.reason
    unknown = unaccounted(head, others, answered_since_back)
    if unknown:
        return "; ".join(f"{name} {why}" for name, why in sorted(unknown.items()))
    return ""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_replicas(
    spec: MySQLReplicationSpec, primary: str, not_receiving_since: Mapping[str, float], failing_since: float | None
) -> dict[str, str]:
    """The replicas that had stopped receiving from the primary more than failureThreshold x periodSeconds
    before it started failing (``not_receiving_since``: wall-clock times seen while the primary answered)."""
    if failing_since is None:
        return {}
    window = spec.failure_threshold * spec.period_seconds
    return {
        name: f"stale: not receiving from {primary} since {_iso(since)}"
        for name, since in not_receiving_since.items()
        if name != primary and since + window < failing_since
    }


# -- bootstrap -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """The member to record as primary when status has none, or None and why not."""

    primary: str | None
    reason: str


def choose_bootstrap(spec: MySQLReplicationSpec, states: Mapping[str, MemberState]) -> Bootstrap:
    """The first primary, also when a MySQLReplication is created again over running servers (GitOps, a
    restore): every member must answer; a writable member is the primary if it is the only one and holds
    everything the others executed; with none writable, the member holding everything the others executed,
    ``spec.primary`` first among equals. A new group (no member has a transaction) takes ``spec.primary``.
    Anything else is refused: choosing would roll back or fence the real primary."""
    names = [m.name for m in spec.members]
    missing = [n for n in names if n not in states or not states[n].reachable]
    if missing:
        why = "; ".join(f"{n}: {states[n].error if n in states else 'not inspected yet'}" for n in missing)
        return Bootstrap(None, f"every member must answer to choose the first primary ({why})")
    if all(not states[n].gtid_executed for n in names):
        return Bootstrap(spec.primary, f"a new group: no member has transactions; {spec.primary} is spec.primary")
    writable = [n for n in names if states[n].read_only is False]
    if len(writable) > 1:
        return Bootstrap(None, f"{', '.join(writable)} are all writable: fence all but one by hand")

    def holds_all(name: str) -> bool:
        mine = states[name].gtid_executed
        return mine is not None and all(
            (other := states[n].gtid_executed) is not None and mine.contains(other) for n in names
        )

    if writable:
        only = writable[0]
        if holds_all(only):
            return Bootstrap(only, f"{only} is the only writable member and holds every member's transactions")
        return Bootstrap(None, f"{only} is writable but lacks transactions other members executed")
    ordered = [spec.primary, *(n for n in names if n != spec.primary)]
    chosen = next((n for n in ordered if holds_all(n)), None)
    if chosen is None:
        return Bootstrap(None, "no member holds every other member's transactions: their histories diverged")
    why = "spec.primary" if chosen == spec.primary else f"it holds transactions {spec.primary} lacks"
    return Bootstrap(chosen, f"{chosen} holds every member's transactions ({why})")


# -- failover and requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failover:
    """What to do about the primary: promote ``candidate``, or nothing (``reason`` says why). ``blocked_by`` is set
    when the primary is confirmed dead and yet nobody is promoted; ``refusals`` name each member and why."""

    candidate: str | None
    reason: str
    dead: bool = False
    blocked_by: str = ""
    refusals: Mapping[str, str] = field(default_factory=dict)
    planned: bool = False
    """The primary answers (it came back behind a replica): a switchover from it, not a failover."""


def exclusions(primary: str, quarantined: Mapping[str, str]) -> dict[str, str]:
    """Members that are never candidates: the failed primary and the quarantined."""
    return {primary: "the failed primary", **{name: f"quarantined: {why}" for name, why in quarantined.items()}}


def decide_failover(
    spec: MySQLReplicationSpec,
    primary: str,
    states: Mapping[str, MemberState],
    *,
    failures: int,
    seconds_since_automatic: float | None,
    quarantined: Mapping[str, str],
    stale: Mapping[str, str] | None = None,
) -> Failover:
    """Promote only when the primary is confirmed dead (by the operator and by the replicas that were receiving
    from it) or came back read-only behind a replica (`primary_behind`), automatic failover is on, the last
    automatic promotion is old enough, enough replicas answer, and a candidate that was receiving has everything
    any replica received. ``stale``: replicas that had stopped receiving from the primary well before it failed,
    with why: they neither confirm its death nor are chosen."""
    stale = stale or {}
    replicas = [s for name, s in states.items() if name != primary]
    verdict = primary_behind(states[primary], replicas)
    planned = verdict.dead
    if not verdict.dead:
        verdict = primary_confirmed_dead(states[primary], failures, spec.failure_threshold, replicas)
        if verdict.dead and stale:  # a stale replica may veto (it receives after all), never confirm
            fresh = [s for s in replicas if s.name not in stale]
            verdict = primary_confirmed_dead(states[primary], failures, spec.failure_threshold, fresh)
    if not verdict.dead:
        left_out = "; ".join(f"{name} left out, {why}" for name, why in sorted(stale.items()))
        return Failover(None, f"{verdict.reason} ({left_out})" if left_out else verdict.reason)
    if not spec.automatic_failover:
        return Failover(None, verdict.reason, True, "automaticFailover is off")
    if seconds_since_automatic is not None and seconds_since_automatic < spec.min_interval_seconds:
        return Failover(
            None,
            verdict.reason,
            True,
            f"the last automatic promotion was {seconds_since_automatic:.0f}s ago, "
            f"minIntervalSeconds is {spec.min_interval_seconds}",
        )
    short = quorum_shortfall(spec, primary, states)
    if short:
        return Failover(None, verdict.reason, True, short)
    choice = choose_candidate(
        list(states.values()),
        spec.members,
        spec.max_lag_seconds,
        exclude={**exclusions(primary, quarantined), **stale},
    )
    if choice.candidate is None:
        return Failover(None, verdict.reason, True, "no member can take over", choice.refusals)
    return Failover(choice.candidate, verdict.reason, True, refusals=choice.refusals, planned=planned)


def quorum_shortfall(spec: MySQLReplicationSpec, primary: str, states: Mapping[str, MemberState]) -> str:
    """Why the reachable replicas cannot be known to hold every acknowledged commit ("" when they can).

    With semi-sync, an acknowledged commit is on at least SEMI_SYNC_ACKS replicas, any of them: only when more
    than (replicas - SEMI_SYNC_ACKS) are reachable is one of them sure to hold it, and the candidate must hold
    what they received. Without semi-sync nothing is sure anyway (asynchronous: the README says so)."""
    if not spec.semi_sync:
        return ""
    replicas = [m.name for m in spec.members if m.name != primary]
    reachable = [n for n in replicas if (s := states.get(n)) is not None and s.reachable]
    needed = len(replicas) - SEMI_SYNC_ACKS + 1
    if len(reachable) >= needed:
        return ""
    missing = sorted(set(replicas) - set(reachable))
    return (
        f"only {len(reachable)} of {len(replicas)} replicas reachable ({', '.join(missing)} not): with semi-sync, "
        f"{needed} are needed to be sure one holds every acknowledged commit"
    )


def only_candidate(members: list[Member], target: str) -> list[Member]:
    """The members with all but ``target`` marked neverPromote: compared with, never chosen."""
    return [m if m.name == target else m.model_copy(update={"never_promote": True}) for m in members]


@dataclass(frozen=True)
class RequestDecision:
    """A manual promotion: refused, already satisfied (keep), or a promotion, planned when the primary answers."""

    action: Literal["refuse", "keep", "promote"]
    reason: str
    planned: bool = False


def decide_request(
    spec: MySQLReplicationSpec,
    primary: str,
    states: Mapping[str, MemberState],
    failures: int,
    target: str,
    *,
    force: bool,
    quarantined: Mapping[str, str],
) -> RequestDecision:
    """A requested promotion is not limited by minIntervalSeconds; ``force`` lifts the lag limit and the semi-sync
    quorum. With the primary answering it is a planned switchover; without, the replicas must confirm the primary
    is gone (else promoting would leave two primaries), enough replicas must answer (``quorum_shortfall``) and
    the target must hold everything any replica received."""
    members = {m.name: m for m in spec.members}
    if target not in members:
        return RequestDecision("refuse", f"{target} is not a member")
    if target == primary:
        return RequestDecision("keep", f"{target} is already the primary")
    if target in quarantined:
        return RequestDecision("refuse", f"{target} is quarantined: {quarantined[target]}")
    head, wanted = states.get(primary), states.get(target)
    if head is None or wanted is None:
        return RequestDecision("refuse", "the members have not been inspected yet")
    if head.reachable:
        choice = choose_candidate([wanted], [members[target]], spec.max_lag_seconds, force=force)
        if choice.candidate is None:
            return RequestDecision("refuse", f"{target}: {choice.refusals[target]}")
        if (wanted.source_host, wanted.source_port) != (head.host, head.port) or not wanted.io_running:
            return RequestDecision("refuse", f"{target}: not receiving from the primary {primary}")
        return RequestDecision("promote", f"switchover from {primary} to {target} requested", planned=True)
    replicas = [s for name, s in states.items() if name != primary]
    verdict = primary_confirmed_dead(head, max(failures, 1), 1, replicas)
    if not verdict.dead:
        return RequestDecision("refuse", f"the primary {primary} may still be alive: {verdict.reason}")
    short = quorum_shortfall(spec, primary, states)
    if short and not force:
        return RequestDecision("refuse", f"{short}; ha.whm.io/force promotes anyway, accepting that loss")
    choice = choose_candidate(
        list(states.values()),
        only_candidate(spec.members, target),
        spec.max_lag_seconds,
        force=force,
        exclude=exclusions(primary, quarantined),
    )
    if choice.candidate != target:
        return RequestDecision("refuse", f"{target}: {choice.refusals[target]}")
    return RequestDecision("promote", f"promotion of {target} requested: {verdict.reason}")


# -- status ----------------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Healthy", "Degraded", "Broken"]


@dataclass(frozen=True)
class ConditionValue:
    """One condition to set: type, status, reason, message."""

    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Summary:
    """The status the last inspection supports, and the replicas fit to serve reads."""

    phase: Phase
    reason: str
    members: list[dict[str, Any]]
    ready: tuple[str, ...]
    max_lag: int | None
    conditions: tuple[ConditionValue, ...]


def _member_status(member: Member, state: MemberState | None, role: str, quarantine: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": member.name, "role": role, "reachable": bool(state and state.reachable)}
    if state is not None and state.reachable:
        entry.update(
            readOnly=state.read_only,
            ioRunning=state.io_running,
            sqlRunning=state.sql_running,
            lagSeconds=state.seconds_behind,
            gtidExecuted=str(state.gtid_executed) if state.gtid_executed is not None else None,
        )
    error = quarantine or (state and (state.error or state.last_sql_error or state.last_io_error))
    if error:
        entry["lastError"] = error[:4096]
    return {k: v for k, v in entry.items() if v is not None}


def _role(name: str, primary: str | None, state: MemberState | None, quarantined: Mapping[str, str]) -> str:
    if name == primary:
        return "Primary"
    if name in quarantined:
        return "Quarantined"
    return "Replica" if state is not None and state.reachable else "Unknown"


def summarize(
    spec: MySQLReplicationSpec,
    primary: str | None,
    states: Mapping[str, MemberState],
    *,
    quarantined: Mapping[str, str],
    failover: Failover | None = None,
    pending: str = "",
    answered_since_back: Mapping[str, MemberState] | None = None,
) -> Summary:
    """Phase, reason, members, ready replicas, conditions. ``pending`` explains a missing primary (bootstrap);
    ``answered_since_back`` why a read-only primary is not opened again (`reopen_held`)."""
    members = [
        _member_status(
            m, states.get(m.name), _role(m.name, primary, states.get(m.name), quarantined), quarantined.get(m.name)
        )
        for m in spec.members
    ]
    head = states.get(primary) if primary else None
    problems: list[Problem] = []
    ready: list[str] = []
    lags: list[int] = []
    for member in spec.members:
        state = states.get(member.name)
        if member.name == primary or member.name in quarantined or state is None:
            continue
        found = replica_health(state, spec.max_lag_seconds, (head.host, head.port) if head else None)
        problems += found
        if not found:
            ready.append(member.name)
        if state.seconds_behind is not None:
            lags.append(state.seconds_behind)
    writable = head is not None and head.reachable and not head.is_replica and head.read_only is False
    issues = [p.message for p in problems] + [f"{name}: quarantined: {why}" for name, why in quarantined.items()]
    replicas = len(spec.members) - 1
    blocked = failover.blocked_by if failover is not None else ""
    phase: Phase
    if primary is None or head is None:
        phase, reason = "Pending", pending or "waiting for the first inspection"
    elif not head.reachable:
        phase = "Broken" if blocked else "Degraded"
        reason = failover.reason if failover is not None else f"the operator cannot reach the primary {primary}"
        if blocked:
            reason += f"; not promoting: {blocked}"
    elif head.is_replica:
        phase, reason = "Broken", f"the primary {primary} replicates from {head.source_host}:{head.source_port}"
    elif not writable:
        held = reopen_held(primary, states, answered_since_back or {})
        phase, reason = (
            "Pending",
            f"the primary {primary} is read-only: " + (f"not opened again, {held}" if held else "being set up"),
        )
    elif issues:
        phase, reason = "Degraded", f"{len(ready)} of {replicas} replicas ready: " + "; ".join(issues)
    else:
        phase, reason = "Healthy", f"{primary} is primary; {len(ready)} of {replicas} replicas ready"

    def about(kind: str) -> list[str]:
        return [p.message for p in problems if p.condition == kind]

    broken, lagging = about("ReplicationBroken"), about("LagHigh")
    refusals = "; ".join(f"{n}: {why}" for n, why in sorted((failover.refusals if failover else {}).items()))
    unreachable = head is not None and not head.reachable
    conditions = (
        ConditionValue(
            "Ready",
            writable,
            "PrimaryWritable" if writable else phase,
            f"{primary} accepts writes" if writable else reason,
        ),
        ConditionValue(
            "Degraded",
            phase != "Healthy",
            "FailoverBlocked" if blocked else phase,
            reason + (f" (candidates: {refusals})" if blocked and refusals else ""),
        ),
        ConditionValue(
            "ReplicationBroken",
            bool(broken),
            "ReplicationBroken" if broken else "Replicating",
            "; ".join(broken) or "every replica replicates from the primary",
        ),
        ConditionValue(
            "LagHigh",
            bool(lagging),
            "LagHigh" if lagging else "WithinLimit",
            "; ".join(lagging) or f"every replica within maxLagSeconds {spec.max_lag_seconds}",
        ),
        ConditionValue(
            "ErrantTransactions",
            bool(quarantined),
            "Quarantined" if quarantined else "None",
            "; ".join(f"{n}: {why}" for n, why in sorted(quarantined.items())) or "no member has errant transactions",
        ),
        ConditionValue(
            "PrimaryUnreachable",
            unreachable,
            ("ConfirmedDead" if failover is not None and failover.dead else "Unreachable")
            if unreachable
            else "Reachable",
            (failover.reason if failover is not None else "") if unreachable else "the operator reaches the primary",
        ),
    )
    return Summary(phase, reason, members, tuple(ready), max(lags) if lags else None, conditions)

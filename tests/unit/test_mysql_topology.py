"""The pure decisions: is the primary dead, whom to promote, who may rejoin, which replica is unhealthy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.crd.mysqlreplication import Member
from whm_ha.mysql.gtid import GtidSet, MariaDBGtidSet, MySQLGtidSet
from whm_ha.mysql.member import MemberState
from whm_ha.mysql.topology import (
    Problem,
    apply_lag,
    can_rejoin,
    choose_candidate,
    errant_members,
    errant_transactions,
    primary_confirmed_dead,
    received,
    replica_health,
    unaccounted,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4f22ab58-82db-22f2-af44-d91bb0530673"
PRIMARY = MemberState.unreachable("m0", "m0.db", 3306, "Can't connect to server on 'm0.db' (2003)")
LOST = "error reconnecting to master 'repl@m0.db:3306' - message: Connection refused"


def gtids(text: str) -> MySQLGtidSet:
    return MySQLGtidSet.parse(text)


def replica(name: str, executed: str = f"{U1}:1-10", **changes: Any) -> MemberState:
    """A healthy, caught-up replica of m0."""
    state = MemberState(
        name=name,
        host=f"{name}.db",
        port=3306,
        reachable=True,
        server_id=int(name[1:]) + 1,
        read_only=True,
        is_replica=True,
        source_host="m0.db",
        source_port=3306,
        io_running=True,
        sql_running=True,
        seconds_behind=0,
        gtid_executed=gtids(executed),
        gtid_retrieved=gtids(executed),
    )
    return replace(state, **changes)


def lost(state: MemberState) -> MemberState:
    """The replica after its IO thread lost the primary."""
    return replace(
        state, io_running=False, io_connecting=True, last_io_errno=2003, last_io_error=LOST, seconds_behind=None
    )


def members(*names: str, **overrides: dict[str, Any]) -> list[Member]:
    return [Member(name=n, host=f"{n}.db", **overrides.get(n, {})) for n in ("m0", *names)]


# --- primary_confirmed_dead ------------------------------------------------------------------------------------


def test_reachable_primary_is_alive() -> None:
    verdict = primary_confirmed_dead(replica("m0", is_replica=False), 0, 3, [replica("m1")])
    assert verdict.dead is False and verdict.reason == "the primary answers"


def test_below_the_failure_threshold_is_not_dead() -> None:
    verdict = primary_confirmed_dead(PRIMARY, 2, 3, [lost(replica("m1"))])
    assert not verdict.dead
    assert (
        verdict.reason
        == "the operator cannot reach the primary (Can't connect to server on 'm0.db' (2003)), 2 of 3 inspections in a row"
    )


def test_replicas_that_still_receive_overrule_the_operator() -> None:
    verdict = primary_confirmed_dead(PRIMARY, 5, 3, [lost(replica("m1")), replica("m2")])
    assert not verdict.dead
    assert "but replicas m2 still replicate from it" in verdict.reason


def test_without_a_reachable_replica_nothing_is_confirmed() -> None:
    unreachable = MemberState.unreachable("m1", "m1.db", 3306, "timed out")
    elsewhere = replica("m2", source_host="other.db", io_running=False, io_connecting=True)
    verdict = primary_confirmed_dead(PRIMARY, 5, 3, [unreachable, elsewhere])
    assert not verdict.dead
    assert "no reachable replica replicates from it to confirm" in verdict.reason


def test_io_threads_down_for_other_reasons_do_not_confirm() -> None:
    stopped = replica("m1", io_running=False)
    refused = replace(lost(replica("m2")), last_io_errno=1045, last_io_error="Access denied for user 'repl'")
    verdict = primary_confirmed_dead(PRIMARY, 3, 3, [stopped, refused])
    assert not verdict.dead
    assert verdict.reason.endswith("; replicas m1, m2 are not receiving but none lost it")
    just_reconnecting = replace(lost(replica("m3")), last_io_errno=None, last_io_error=None)
    verdict = primary_confirmed_dead(PRIMARY, 3, 3, [stopped, just_reconnecting])
    assert verdict.dead
    assert verdict.reason.endswith("replicas m3 lost it too: reconnecting")


def test_dead_when_replicas_lost_it_too() -> None:
    verdict = primary_confirmed_dead(PRIMARY, 3, 3, [lost(replica("m1")), replica("m2", io_running=False)])
    assert verdict.dead
    assert verdict.reason.endswith(f"for 3 inspections and replicas m1 lost it too: {LOST}")


watcher = st.builds(
    lambda name, reachable, io, connecting, errno, source: replace(
        replica(name, source_host=source),
        reachable=reachable,
        io_running=io,
        io_connecting=connecting and not io,
        last_io_errno=errno,
        last_io_error=None if errno is None else f"error {errno}",
    ),
    st.sampled_from(["m1", "m2", "m3"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 2003, 2013, 1045]),
    st.sampled_from(["m0.db", "other.db"]),
)


@given(st.integers(0, 6), st.integers(1, 4), st.lists(watcher, max_size=4))
def test_dead_only_with_enough_failures_and_no_replica_receiving(
    failures: int, threshold: int, replicas: list[MemberState]
) -> None:
    verdict = primary_confirmed_dead(PRIMARY, failures, threshold, replicas)
    watchers = [r for r in replicas if r.reachable and r.source_host == "m0.db"]
    confirming = [w for w in watchers if w.last_io_errno in (2003, 2013) or (w.io_connecting and not w.last_io_errno)]
    expected = failures >= threshold and not any(w.io_running for w in watchers) and bool(confirming)
    assert verdict.dead == expected


# --- choose_candidate ------------------------------------------------------------------------------------------


def test_the_replica_that_received_most_is_chosen_and_the_other_told_what_it_lacks() -> None:
    states = [PRIMARY, replica("m1", f"{U1}:1-12"), replica("m2", f"{U1}:1-10")]
    choice = choose_candidate(states, members("m1", "m2"), 30, exclude={"m0": "the failed primary"})
    assert choice.candidate == "m1"
    assert choice.refusals == {
        "m0": "the failed primary",
        "m2": f"lacks transactions that others received: m1 (2: {U1}:11-12)",
    }


def test_the_relay_log_counts() -> None:
    behind_on_apply = replica("m1", f"{U1}:1-8", gtid_retrieved=gtids(f"{U1}:1-12"), seconds_behind=4)
    choice = choose_candidate([behind_on_apply, replica("m2", f"{U1}:1-10")], members("m1", "m2"), 30)
    assert choice.candidate == "m1"
    assert received(behind_on_apply) == gtids(f"{U1}:1-12")


def test_equals_are_ranked_by_lag_then_priority_then_name() -> None:
    spec = members("m1", "m2", "m3", m2={"priority": 200})
    states = [replica("m1", seconds_behind=1), replica("m2", seconds_behind=1), replica("m3", seconds_behind=0)]
    choice = choose_candidate(states, spec, 30)
    assert choice.candidate == "m3"
    assert (
        choice.refusals["m2"] == "as up to date as m3, which ranks first (lag 1s vs 0s, priority 200 vs 100, then name)"
    )
    assert choose_candidate(states[:2], spec, 30).candidate == "m2"
    same_priority = [states[0], replica("m4", seconds_behind=1)]
    assert choose_candidate(same_priority, members("m1", "m4"), 30).candidate == "m1"


def test_a_more_advanced_member_that_may_not_be_promoted_blocks_the_others() -> None:
    spec = members("m1", "m2", m1={"never_promote": True})
    choice = choose_candidate([replica("m1", f"{U1}:1-12"), replica("m2", f"{U1}:1-10")], spec, 30)
    assert choice.candidate is None
    assert choice.refusals["m1"] == "marked neverPromote"
    assert choice.refusals["m2"].startswith("lacks transactions that others received: m1 (2:")


def test_lag_limits_unless_forced() -> None:
    states = [replica("m1", seconds_behind=45)]
    assert choose_candidate(states, members("m1"), 30).refusals["m1"] == "lag 45s exceeds maxLagSeconds 30"
    assert choose_candidate(states, members("m1"), 30, force=True).candidate == "m1"


def test_lag_is_zero_without_a_report_once_the_relay_log_is_applied() -> None:
    applied = lost(replica("m1"))
    applying = lost(replica("m2", f"{U1}:1-8", gtid_retrieved=gtids(f"{U1}:1-10")))
    assert (apply_lag(applied), apply_lag(applying)) == (0, None)
    choice = choose_candidate([applied, applying], members("m1", "m2"), 30)
    assert choice.candidate == "m1"
    assert choice.refusals["m2"] == "lag unknown: it is still applying its relay log"


def test_unreachable_standalone_and_broken_members_are_refused() -> None:
    states = [
        MemberState.unreachable("m1", "m1.db", 3306, "timed out"),
        replica("m2", is_replica=False),
        replica("m3", sql_running=False, last_sql_error="Duplicate entry '1' for key 'PRIMARY'"),
    ]
    choice = choose_candidate(states, members("m1", "m2", "m3", "m4"), 30)
    assert choice.candidate is None
    assert choice.refusals == {
        "m0": "unreachable: not inspected",
        "m1": "unreachable: timed out",
        "m2": "not a replica",
        "m3": "its SQL thread failed, its relay log would not apply: Duplicate entry '1' for key 'PRIMARY'",
        "m4": "unreachable: not inspected",
    }


def test_divergent_replicas_leave_no_candidate() -> None:
    states = [replica("m1", f"{U1}:1-10,{U2}:1"), replica("m2", f"{U1}:1-11")]
    choice = choose_candidate(states, members("m1", "m2"), 30)
    assert choice.candidate is None
    assert choice.refusals["m1"] == f"lacks transactions that others received: m2 (1: {U1}:11)"
    assert choice.refusals["m2"] == f"lacks transactions that others received: m1 (1: {U2}:1)"


names = ["m1", "m2", "m3", "m4"]
mostly = st.sampled_from([True, True, True, False])


def random_replica(name: str) -> st.SearchStrategy[MemberState]:
    return st.builds(
        lambda reachable, is_replica, executed, relay, extra, lag, sql_ok: replace(
            replica(name, f"{U1}:1-{executed}" + (f",{U2}:{extra}" if extra else "")),
            reachable=reachable,
            is_replica=is_replica,
            gtid_retrieved=gtids(f"{U1}:1-{executed + relay}"),
            seconds_behind=lag,
            sql_running=sql_ok,
            last_sql_error=None if sql_ok else "error",
        ),
        mostly,
        mostly,
        st.integers(1, 4),
        st.integers(0, 2),
        st.sampled_from([0, 0, 0, 1]),
        st.sampled_from([None, 0, 0, 5, 40]),
        mostly,
    )


random_states = st.tuples(*(random_replica(n) for n in names)).map(list)
random_spec = st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.booleans()), min_size=4, max_size=4).map(
    lambda specs: [
        Member(name=n, host=f"{n}.db", priority=p, never_promote=never and rare)
        for n, (p, never, rare) in zip(names, specs, strict=True)
    ]
)


@given(random_states, random_spec, st.booleans(), st.randoms())
def test_choice_properties(states: list[MemberState], spec: list[Member], force: bool, rnd: Any) -> None:
    choice = choose_candidate(states, spec, 30, force=force)
    assert set(choice.refusals) | {choice.candidate} - {None} == set(names)
    assert choice.candidate not in choice.refusals
    shuffled = list(states)
    rnd.shuffle(shuffled)
    assert choose_candidate(shuffled, list(reversed(spec)), 30, force=force).candidate == choice.candidate
    if choice.candidate is None:
        return
    assert choose_candidate(states, spec, 30, force=True).candidate is not None
    chosen = next(s for s in states if s.name == choice.candidate)
    member = next(m for m in spec if m.name == choice.candidate)
    assert chosen.reachable and chosen.is_replica and not member.never_promote and not chosen.last_sql_error
    lag = apply_lag(chosen)
    assert force or (lag is not None and lag <= 30)
    mine = received(chosen)
    assert mine is not None
    for other in states:
        theirs = received(other)
        if other.reachable and other.is_replica and theirs is not None:
            assert mine.contains(theirs)


# --- rejoin ----------------------------------------------------------------------------------------------------


def test_old_primary_with_unreplicated_writes_may_not_rejoin() -> None:
    old, new = MariaDBGtidSet.parse("0-1-101"), MariaDBGtidSet.parse("0-1-98,0-2-105")
    assert str(errant_transactions(old, new)) == "0-1-99..101"
    verdict = can_rejoin(old, new)
    assert not verdict.ok
    assert verdict.reason == "3 errant transaction(s) the primary lacks: 0-1-99..101; rebuild it or remove them"
    assert verdict.errant.count == 3


def test_member_behind_the_primary_may_rejoin() -> None:
    verdict = can_rejoin(MariaDBGtidSet.parse("0-1-98"), MariaDBGtidSet.parse("0-1-98,0-2-105"))
    assert verdict.ok and not verdict.errant
    assert verdict.reason == "the primary has all of its transactions"


# --- errant_members: the cases of a switchover whose old primary kept taking writes ---------------------------

MARIA = MariaDBGtidSet.parse


def at(name: str, executed: GtidSet) -> MemberState:
    return replace(replica(name), gtid_executed=executed, gtid_retrieved=executed)


@pytest.mark.parametrize(
    ("flavor_set", "primary", "members", "errant"),
    [
        # one domain: the old primary (server 1) wrote 54..86 after the new primary (server 2) took over at 53
        (MARIA, "0-1-53,0-2-56", {"m1": "0-1-86", "m2": "0-1-53,0-2-56"}, {"m1": "0-1-54..86"}),
        # the other replica replicated 24..30 from the old primary before it was repointed
        (MARIA, "0-1-23,0-2-40", {"m1": "0-1-30", "m2": "0-1-30"}, {"m1": "0-1-24..30", "m2": "0-1-24..30"}),
        # several server ids in the history; a replica merely behind is not errant
        (MARIA, "0-1-10,0-3-20,0-2-31", {"m1": "0-1-10,0-3-20", "m2": "0-1-10,0-3-22"}, {"m2": "0-3-21..22"}),
        # two domains: only the diverged one is named (no server in common: all of it is unknown to the primary)
        (MARIA, "0-2-31,1-2-5", {"m1": "0-2-31,1-1-6"}, {"m1": "1-1-6"}),
        # MySQL: the old primary's uuid continued after the fence
        (gtids, f"{U1}:1-53,{U2}:1-3", {"m1": f"{U1}:1-86", "m2": f"{U1}:1-53,{U2}:1-2"}, {"m1": f"{U1}:54-86"}),
        # MySQL with gaps: only the missing intervals are errant
        (gtids, f"{U1}:1-53:60-70", {"m1": f"{U1}:1-70", "m2": f"{U1}:1-40:60-65"}, {"m1": f"{U1}:54-59"}),
    ],
)
def test_errant_members_name_exactly_what_the_primary_lacks(
    flavor_set: Callable[[str], GtidSet], primary: str, members: dict[str, str], errant: dict[str, str]
) -> None:
    states = {"m0": at("m0", flavor_set(primary))} | {n: at(n, flavor_set(g)) for n, g in members.items()}
    found = errant_members(states, "m0", flavor_set(primary))
    assert {n: str(v.errant) for n, v in found.items()} == errant
    for verdict in found.values():
        assert str(verdict.errant) in verdict.reason and f"{verdict.errant.count} errant" in verdict.reason


def test_errant_members_skip_the_quarantined_and_the_unreachable() -> None:
    states = {
        "m0": at("m0", MARIA("0-2-56")),
        "m1": at("m1", MARIA("0-1-86")),
        "m2": MemberState.unreachable("m2", "m2.db", 3306, "gone"),
    }
    assert errant_members(states, "m0", MARIA("0-1-53,0-2-56"), skip=["m1"]) == {}


def test_a_replica_read_after_the_primary_is_not_errant_against_a_fresh_read() -> None:
    """The inspection reads members concurrently: a replica may hold what the primary committed after its read."""
    stale, fresh = MARIA("0-1-100"), MARIA("0-1-103")
    states = {"m0": at("m0", stale), "m1": at("m1", MARIA("0-1-102"))}
    assert set(errant_members(states, "m0", stale)) == {"m1"}
    assert errant_members(states, "m0", fresh) == {}


def test_members_that_do_not_answer_are_accounted_for_only_by_an_answer_since_the_primary_came_back() -> None:
    head = at("m0", MARIA("0-1-10"))
    head = replace(head, read_only=True, server_id=1, is_replica=False)
    down = [MemberState.unreachable(n, f"{n}.db", 3306, "down") for n in ("m1", "m2", "m3")]
    since = {"m1": at("m1", MARIA("0-1-10,0-2-3")), "m2": at("m2", MARIA("0-1-11"))}  # m1: its own errant writes
    assert unaccounted(head, down, since) == {
        "m2": "unreachable, held 1 it lacks when it last answered: 0-1-11..11",
        "m3": "unreachable, not seen since m0 came back read-only: it may hold more",
    }
    assert unaccounted(replace(head, read_only=False), down, {}) == {}, "only about a primary back read-only"


# --- replica_health --------------------------------------------------------------------------------------------


def test_healthy_replica_has_no_problems() -> None:
    assert replica_health(replica("m1"), 30, ("m0.db", 3306)) == []


def test_replica_problems_and_their_conditions() -> None:
    broken = replica(
        "m1",
        source_host="m9.db",
        io_running=False,
        last_io_error="Got fatal error 1236",
        sql_running=False,
        seconds_behind=None,
        read_only=False,
    )
    assert replica_health(broken, 30, ("m0.db", 3306)) == [
        Problem("ReplicationBroken", "m1: replicates from m9.db:3306, not the primary m0.db:3306"),
        Problem("ReplicationBroken", "m1: IO thread stopped: Got fatal error 1236"),
        Problem("ReplicationBroken", "m1: SQL thread stopped"),
        Problem("Degraded", "m1: writable: read-only is off on a replica"),
    ]
    assert replica_health(lost(replica("m1")), 30) == [
        Problem("ReplicationBroken", f"m1: IO thread cannot reach its source: {LOST}")
    ]
    assert replica_health(replica("m1", seconds_behind=31), 30) == [
        Problem("LagHigh", "m1: lag 31s exceeds maxLagSeconds 30")
    ]
    assert replica_health(MemberState.unreachable("m1", "h", 1, "timed out"), 30) == [
        Problem("Degraded", "m1: unreachable: timed out")
    ]
    assert replica_health(replica("m1", is_replica=False), 30) == [
        Problem("ReplicationBroken", "m1: no replication source configured")
    ]


def test_a_replica_read_only_but_not_fenced_is_degraded() -> None:
    """MySQL ``read_only=ON`` without ``super_read_only``: applications cannot write, accounts with SUPER can."""
    assert replica_health(replica("m1", fenced=False), 30) == [
        Problem("Degraded", "m1: not fenced: super_read_only is off on a replica")
    ]
    assert replica_health(replica("m1", fenced=True), 30) == []

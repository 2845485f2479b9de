"""The replication controller's pure decisions: what to fix, whether and whom to promote, the status summary."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.crd.mysqlreplication import MySQLReplicationSpec
from whm_ha.mysql.dialect import SemiSyncStatus
from whm_ha.mysql.gtid import MariaDBGtidSet
from whm_ha.mysql.member import MemberState
from whm_ha.replication.plan import (
    Plan,
    choose_bootstrap,
    converge_plan,
    decide_failover,
    decide_request,
    member_timeout,
    replica_net_timeout,
    stale_replicas,
    summarize,
    waiting_timeout,
)

LOST = "error reconnecting to master 'repl@m0.db:3306' - message: Connection refused"
SEMI = SemiSyncStatus(source_active=False, replica_active=True, source_clients=0)
DEAD = MemberState.unreachable("m0", "m0.db", 3306, "Can't connect to server on 'm0.db' (2003)")


def primary(**changes: Any) -> MemberState:
    """A writable primary with semi-sync on and two clients."""
    state = MemberState(
        name="m0",
        host="m0.db",
        port=3306,
        reachable=True,
        server_id=1,
        read_only=False,
        fenced=False,
        gtid_executed=MariaDBGtidSet.parse("0-1-10"),
        semi_sync=SemiSyncStatus(source_active=True, replica_active=False, source_clients=2),
    )
    return replace(state, **{"fenced": changes.get("read_only", False), **changes})


def replica(name: str, executed: str = "0-1-10", **changes: Any) -> MemberState:
    """A healthy, caught-up, read-only replica of m0 with semi-sync on."""
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
        gtid_executed=MariaDBGtidSet.parse(executed),
        gtid_retrieved=MariaDBGtidSet.parse(executed),
        semi_sync=SEMI,
    )
    return replace(state, **{"fenced": changes.get("read_only", True), **changes})


def lost(state: MemberState) -> MemberState:
    return replace(
        state, io_running=False, io_connecting=True, last_io_errno=2003, last_io_error=LOST, seconds_behind=None
    )


def topology(*states: MemberState) -> dict[str, MemberState]:
    return {s.name: s for s in states}


def healthy() -> dict[str, MemberState]:
    return topology(primary(), replica("m1"), replica("m2"))


def spec(**fields: Any) -> MySQLReplicationSpec:
    members = fields.pop("members", [{"name": f"m{i}", "host": f"m{i}.db"} for i in range(3)])
    return MySQLReplicationSpec.model_validate(
        {
            "primary": "m0",
            "members": members,
            "credentialsSecret": {"name": "admin"},
            "replicationSecret": {"name": "repl"},
            **fields,
        }
    )


# --- converge_plan -----------------------------------------------------------------------------------------------


def test_a_healthy_topology_needs_nothing() -> None:
    plan = converge_plan("m0", healthy(), semi_sync=True)
    assert not plan
    assert plan == Plan(replicas=("m1", "m2"))


def test_a_full_pass_checks_everything() -> None:
    plan = converge_plan("m0", healthy(), semi_sync=True, full=True)
    assert plan.ensure_user and plan.semi_sync
    assert plan.join == ("m1", "m2") and plan.source_off == ("m1", "m2")
    assert not plan.fence and not plan.open_primary
    assert converge_plan("m0", healthy(), semi_sync=False, full=True).source_off == ("m1", "m2", "m0")


def test_bootstrap_fences_joins_and_opens_the_primary() -> None:
    fresh = [replace(replica(n), is_replica=False, source_host=None, source_port=None) for n in ("m1", "m2")]
    writable = replace(fresh[1], read_only=False, fenced=False)
    plan = converge_plan("m0", topology(primary(read_only=True), fresh[0], writable), semi_sync=False)
    assert plan.fence == ("m2",) and plan.join == ("m1", "m2") and plan.open_primary


def test_replicas_out_of_order_are_joined_and_a_failed_sql_thread_is_left_alone() -> None:
    states = topology(
        primary(),
        replica("m1", source_port=3307),
        replica("m2", sql_running=False),
        replica("m3", sql_running=False, last_sql_error="Duplicate entry"),
        replica("m4", io_running=False),
        lost(replica("m5")),
        replica("m6", read_only=False),
    )
    plan = converge_plan("m0", states, semi_sync=False)
    assert plan.join == ("m1", "m2", "m4", "m6") and plan.fence == ("m6",)
    assert not plan.ensure_user


def test_an_auth_error_repairs_the_replication_account() -> None:
    plan = converge_plan(
        "m0", topology(primary(), replica("m1", io_running=False, last_io_errno=1045)), semi_sync=False
    )
    assert plan.ensure_user and plan.join == ("m1",)


def test_semi_sync_is_enabled_where_inactive_and_turned_off_where_unwanted() -> None:
    inactive = replica("m2", semi_sync=replace(SEMI, replica_active=False))
    assert converge_plan("m0", topology(primary(), replica("m1"), inactive), semi_sync=True).semi_sync
    plan = converge_plan(
        "m0", topology(primary(), replica("m1", semi_sync=replace(SEMI, source_active=True))), semi_sync=True
    )
    assert plan.source_off == ("m1",)
    assert converge_plan("m0", healthy(), semi_sync=False).source_off == ("m0",)


def test_quarantined_members_are_checked_again_every_pass() -> None:
    assert converge_plan("m0", healthy(), semi_sync=True, quarantined={"m2"}).join == ("m2",)


def test_without_a_reachable_primary_only_fencing() -> None:
    plan = converge_plan("m0", topology(DEAD, lost(replica("m1")), replica("m2", read_only=False)), semi_sync=True)
    assert plan == Plan(fence=("m2",))
    assert converge_plan("m0", topology(primary(is_replica=True), replica("m1")), semi_sync=True) == Plan()


member_state = st.builds(
    lambda name, reachable, read_only, is_replica, port, io, sql, error: (
        replica(
            name,
            read_only=read_only,
            is_replica=is_replica,
            source_port=port,
            io_running=io,
            sql_running=sql,
            last_sql_error=error,
        )
        if reachable
        else MemberState.unreachable(name, f"{name}.db", 3306, "down")
    ),
    st.sampled_from(["m1", "m2", "m3"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([3306, 3307]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, "boom"]),
)


@given(
    head=st.sampled_from([primary(), primary(read_only=True), DEAD, primary(is_replica=True)]),
    others=st.lists(member_state, max_size=3, unique_by=lambda s: s.name),
    full=st.booleans(),
    semi=st.booleans(),
)
def test_plans_never_touch_the_primary_as_a_replica_and_fence_every_writable_member(
    head: MemberState, others: list[MemberState], full: bool, semi: bool
) -> None:
    states = topology(head, *others)
    plan = converge_plan("m0", states, semi_sync=semi, full=full)
    writable = {s.name for s in others if s.reachable and s.read_only is False}
    assert set(plan.fence) == writable
    assert "m0" not in plan.fence + plan.join + plan.replicas
    assert set(plan.join) <= {s.name for s in others if s.reachable}
    usable = head.reachable and not head.is_replica
    if not usable:
        assert plan == Plan(fence=plan.fence)
    all_answer = all(s.reachable for s in others)  # and none holds more: a read-only primary may be reopened
    assert plan.open_primary == (usable and head.read_only is True and all_answer)


# --- decide_failover -------------------------------------------------------------------------------------------


def dead_topology() -> dict[str, MemberState]:
    return topology(DEAD, lost(replica("m1")), lost(replica("m2", "0-1-9")))


def failover(states: dict[str, MemberState], *, since: float | None = None, **fields: Any) -> Any:
    return decide_failover(spec(**fields), "m0", states, failures=3, seconds_since_automatic=since, quarantined={})


def test_a_live_primary_is_kept() -> None:
    decision = failover(healthy())
    assert decision.candidate is None and not decision.dead and decision.reason == "the primary answers"


def test_a_dead_primary_is_replaced_by_the_most_advanced_replica() -> None:
    decision = failover(dead_topology())
    assert decision.candidate == "m1" and decision.dead and not decision.blocked_by
    assert "replicas m1, m2 lost it too" in decision.reason


def test_a_primary_back_read_only_behind_a_replica_is_switched_over_from_never_reopened() -> None:
    # MariaDB with init_rpl_role=SLAVE dropped 0-1-11 on recovery; m1 had received it.
    states = topology(primary(read_only=True), replica("m1", "0-1-11"), replica("m2"))
    assert not converge_plan("m0", states, semi_sync=True).open_primary
    decision = failover(states)
    assert (decision.candidate, decision.dead, decision.planned) == ("m1", True, True)
    assert "m0 came back read-only without transactions replicas received: m1 (1: 0-1-11..11)" in decision.reason
    blocked = failover(states, since=5.0, minIntervalSeconds=60)
    assert blocked.candidate is None and blocked.blocked_by.startswith("the last automatic promotion")


def test_a_primary_back_read_only_with_everything_is_opened_again() -> None:
    states = topology(primary(read_only=True, gtid_executed=MariaDBGtidSet.parse("0-1-12")), replica("m1", "0-1-11"))
    assert converge_plan("m0", states, semi_sync=True).open_primary
    assert failover(states).candidate is None


def test_a_primary_back_read_only_is_not_reopened_while_a_member_that_may_hold_more_does_not_answer() -> None:
    """The issue's case: m2 holds 0-1-11, which m0 dropped at recovery; unreachable, it must hold m0 up too."""
    ahead = replica("m2", "0-1-11")
    down = MemberState.unreachable("m2", "m2.db", 3306, "Can't connect to server on 'm2.db' (2003)")
    states = topology(primary(read_only=True), replica("m1"), down)
    assert not converge_plan("m0", topology(primary(read_only=True), replica("m1"), ahead), semi_sync=True).open_primary
    assert not converge_plan("m0", states, semi_sync=True).open_primary, "m2 was not seen since m0 came back"
    assert not converge_plan("m0", states, semi_sync=True, answered_since_back={"m2": ahead}).open_primary
    assert failover(states).candidate is None, "nobody to switch over to while m2 does not answer"
    summary = summarize(spec(), "m0", states, quarantined={}, answered_since_back={"m2": ahead})
    assert summary.phase == "Pending"
    assert summary.reason == (
        "the primary m0 is read-only: not opened again, m2 unreachable, held 1 it lacks when it last answered: "
        "0-1-11..11"
    )
    plan = converge_plan("m0", states, semi_sync=True, answered_since_back={"m2": replica("m2")})
    assert plan.open_primary and plan.semi_sync, "known to hold nothing more: opened, its source side on first"


@given(
    head=st.integers(8, 12),
    others=st.lists(
        st.tuples(st.integers(8, 12), st.booleans(), st.one_of(st.none(), st.integers(8, 12))), min_size=1, max_size=3
    ),
)
def test_a_primary_back_read_only_is_reopened_only_when_every_member_is_accounted_for(
    head: int, others: list[tuple[int, bool, int | None]]
) -> None:
    """Each other member: what it holds of m0's (0-1-1..seq), whether it answers, and what it held when it last
    answered since m0 came back (None: not seen since). Reopened exactly when each that answers holds nothing
    more, and each that does not was seen since holding nothing more."""
    states = {"m0": primary(read_only=True, gtid_executed=MariaDBGtidSet.parse(f"0-1-{head}"))}
    answered = {}
    for index, (seq, reachable, last) in enumerate(others, start=1):
        name = f"m{index}"
        state = replica(name, f"0-1-{seq}")
        states[name] = state if reachable else MemberState.unreachable(name, f"{name}.db", 3306, "down")
        if last is not None:
            answered[name] = replica(name, f"0-1-{last}")
    expected = all(seq <= head if reachable else last is not None and last <= head for seq, reachable, last in others)
    assert converge_plan("m0", states, semi_sync=False, answered_since_back=answered).open_primary == expected


def test_a_read_only_primary_is_not_behind_a_replicas_own_errant_writes() -> None:
    states = topology(primary(read_only=True), replica("m1", "0-1-10,0-2-11"), replica("m2"))
    assert converge_plan("m0", states, semi_sync=True).open_primary
    assert failover(states).candidate is None


def test_a_read_only_primary_is_behind_a_replica_holding_its_dropped_transactions_beside_errant_writes() -> None:
    """m1 received 0-1-11, which m0 dropped, and also has writes of its own in another domain: m0 is still behind."""
    states = topology(primary(read_only=True), replica("m1", "0-1-11,1-2-5"), replica("m2"))
    assert not converge_plan("m0", states, semi_sync=True).open_primary


def test_replicas_that_still_replicate_veto_the_promotion() -> None:
    decision = failover(topology(DEAD, replica("m1"), lost(replica("m2"))))
    assert decision.candidate is None and not decision.dead
    assert "replicas m1 still replicate from it" in decision.reason


def test_replicas_an_abandoned_attempt_stopped_confirm_nothing_until_they_reconnect() -> None:
    """What an abandoned failover leaves when nothing restarts the replicas: it stopped their IO threads while they
    were reconnecting to the vanished primary, with no error yet (as a fault-tier run left them, then promoted
    nobody for 55 s). A stopped thread cannot tell a lost source from a stop, so they confirm nothing: the
    abandoning `procedures.prepare` starts them again, and reconnecting they confirm it at the next pass."""
    reconnecting = [replace(lost(replica(n)), last_io_errno=None, last_io_error=None) for n in ("m1", "m2")]
    assert failover(topology(DEAD, *reconnecting)).candidate == "m1"
    decision = failover(topology(DEAD, *(replace(s, io_connecting=False) for s in reconnecting)))
    assert decision.candidate is None and not decision.dead
    assert decision.reason.endswith("replicas m1, m2 are not receiving but none lost it")


def test_automatic_failover_off_or_too_soon_blocks() -> None:
    off = failover(dead_topology(), automaticFailover=False)
    assert (off.candidate, off.blocked_by) == (None, "automaticFailover is off")
    soon = failover(dead_topology(), since=10, minIntervalSeconds=300)
    assert soon.candidate is None
    assert soon.blocked_by == "the last automatic promotion was 10s ago, minIntervalSeconds is 300"
    assert failover(dead_topology(), since=301, minIntervalSeconds=300).candidate == "m1"


def test_no_candidate_blocks_and_names_each_member() -> None:
    states = topology(DEAD, lost(replica("m1", "0-1-9")), lost(replica("m2", "0-1-10")))
    members = [
        {"name": "m0", "host": "m0.db"},
        {"name": "m1", "host": "m1.db"},
        {"name": "m2", "host": "m2.db", "neverPromote": True},
    ]
    decision = failover(states, members=members)
    assert decision.candidate is None and decision.blocked_by == "no member can take over"
    assert decision.refusals["m0"] == "the failed primary"
    assert decision.refusals["m2"] == "marked neverPromote"
    assert decision.refusals["m1"].startswith("lacks transactions that others received: m2")


def test_quarantined_members_are_never_candidates() -> None:
    decision = decide_failover(
        spec(), "m0", dead_topology(), failures=3, seconds_since_automatic=None, quarantined={"m1": "errant"}
    )
    assert decision.candidate == "m2" and decision.refusals["m1"] == "quarantined: errant"


# --- decide_request --------------------------------------------------------------------------------------------


def request(states: dict[str, MemberState], target: str, *, force: bool = False, **fields: Any) -> Any:
    quarantined = fields.pop("q", {})
    return decide_request(spec(**fields), "m0", states, 0, target, force=force, quarantined=quarantined)


def test_requests_for_strangers_the_primary_and_the_quarantined() -> None:
    assert (request(healthy(), "m9").action, request(healthy(), "m9").reason) == ("refuse", "m9 is not a member")
    assert request(healthy(), "m0").action == "keep"
    assert request(healthy(), "m1", q={"m1": "errant"}).reason == "m1 is quarantined: errant"


def test_a_live_primary_means_a_planned_switchover() -> None:
    decision = request(healthy(), "m2")
    assert (decision.action, decision.planned) == ("promote", True)
    assert decision.reason == "switchover from m0 to m2 requested"


def test_a_switchover_needs_a_receiving_replica_within_the_lag() -> None:
    lagging = topology(primary(), replica("m1", seconds_behind=60))
    assert request(lagging, "m1").reason == "m1: lag 60s exceeds maxLagSeconds 30"
    assert request(lagging, "m1", force=True).action == "promote", "force lifts the lag limit"
    elsewhere = topology(primary(), replica("m1", source_port=3307))
    assert request(elsewhere, "m1").reason == "m1: not receiving from the primary m0"
    members = [{"name": "m0", "host": "m0.db"}, {"name": "m1", "host": "m1.db", "neverPromote": True}]
    assert request(topology(primary(), replica("m1")), "m1", members=members).reason == "m1: marked neverPromote"


def test_with_the_primary_unreachable_the_replicas_must_confirm() -> None:
    alive = topology(DEAD, replica("m1"), replica("m2"))
    decision = request(alive, "m1")
    assert decision.action == "refuse" and decision.reason.startswith("the primary m0 may still be alive: ")
    assert request(dead_topology(), "m2").reason.startswith("m2: lacks transactions that others received: m1")
    decision = request(dead_topology(), "m1")
    assert (decision.action, decision.planned) == ("promote", False)


# --- summarize -------------------------------------------------------------------------------------------------


def condition_map(summary: Any) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in summary.conditions}


def test_a_healthy_summary() -> None:
    summary = summarize(spec(), "m0", healthy(), quarantined={})
    assert (summary.phase, summary.reason) == ("Healthy", "m0 is primary; 2 of 2 replicas ready")
    assert summary.ready == ("m1", "m2") and summary.max_lag == 0
    assert condition_map(summary) == {
        "Ready": (True, "PrimaryWritable"),
        "Degraded": (False, "Healthy"),
        "ReplicationBroken": (False, "Replicating"),
        "LagHigh": (False, "WithinLimit"),
        "ErrantTransactions": (False, "None"),
        "PrimaryUnreachable": (False, "Reachable"),
    }
    assert summary.members[0] == {
        "name": "m0",
        "role": "Primary",
        "reachable": True,
        "readOnly": False,
        "gtidExecuted": "0-1-10",
    }
    assert summary.members[1]["role"] == "Replica" and summary.members[1]["lagSeconds"] == 0


def test_broken_lagging_and_quarantined_replicas_degrade() -> None:
    states = topology(
        primary(), replica("m1", sql_running=False, last_sql_error="Duplicate entry"), replica("m2", seconds_behind=99)
    )
    summary = summarize(spec(), "m0", states, quarantined={})
    assert summary.phase == "Degraded" and summary.ready == () and summary.max_lag == 99
    assert summary.reason == (
        "0 of 2 replicas ready: m1: SQL thread stopped: Duplicate entry; m2: lag 99s exceeds maxLagSeconds 30"
    )
    assert condition_map(summary)["ReplicationBroken"] == (True, "ReplicationBroken")
    assert condition_map(summary)["LagHigh"] == (True, "LagHigh")
    assert summary.members[1]["lastError"] == "Duplicate entry"

    quarantined = summarize(spec(), "m0", healthy(), quarantined={"m2": "1 errant transaction(s): 0-3-4..4"})
    assert quarantined.ready == ("m1",) and quarantined.members[2]["role"] == "Quarantined"
    errant = next(c for c in quarantined.conditions if c.type == "ErrantTransactions")
    assert errant.status and errant.message == "m2: 1 errant transaction(s): 0-3-4..4"


def test_an_unreachable_primary_is_degraded_until_confirmed_dead_and_blocked() -> None:
    alive = topology(DEAD, replica("m1"), replica("m2"))
    decision = failover(alive)
    summary = summarize(spec(), "m0", alive, quarantined={}, failover=decision)
    assert summary.phase == "Degraded" and condition_map(summary)["PrimaryUnreachable"] == (True, "Unreachable")
    assert condition_map(summary)["Ready"][0] is False
    blocked = failover(dead_topology(), automaticFailover=False)
    summary = summarize(spec(), "m0", dead_topology(), quarantined={}, failover=blocked)
    assert summary.phase == "Broken" and summary.reason.endswith("; not promoting: automaticFailover is off")
    assert condition_map(summary)["PrimaryUnreachable"] == (True, "ConfirmedDead")
    members = [{"name": "m0", "host": "m0.db"}, {"name": "m1", "host": "m1.db", "neverPromote": True}]
    alone = topology(DEAD, lost(replica("m1")))
    summary = summarize(spec(members=members), "m0", alone, quarantined={}, failover=failover(alone, members=members))
    degraded = next(c for c in summary.conditions if c.type == "Degraded")
    assert degraded.reason == "FailoverBlocked"
    assert degraded.message.endswith(
        "not promoting: no member can take over (candidates: m0: the failed primary; m1: marked neverPromote)"
    )


def test_pending_without_a_primary_or_while_it_is_read_only() -> None:
    assert summarize(spec(), None, {}, quarantined={}, pending="waiting").phase == "Pending"
    summary = summarize(spec(), "m0", topology(primary(read_only=True), replica("m1")), quarantined={})
    assert (summary.phase, summary.reason) == ("Pending", "the primary m0 is read-only: being set up")


@given(
    others=st.lists(member_state, min_size=1, max_size=3, unique_by=lambda s: s.name),
    quarantined=st.sets(st.sampled_from(["m1", "m2", "m3"])),
)
def test_summaries_serve_only_healthy_replicas(others: list[MemberState], quarantined: set[str]) -> None:
    names = ["m0", *(s.name for s in others)]
    states = topology(primary(), *others)
    summary = summarize(
        spec(members=[{"name": n, "host": f"{n}.db"} for n in names]),
        "m0",
        states,
        quarantined={q: "errant" for q in quarantined if q in names},
    )
    ready = set(summary.ready)
    assert "m0" not in ready and not ready & quarantined
    for name in ready:
        state = states[name]
        assert state.reachable and state.sql_running and state.io_running and state.read_only
        assert state.source_port == 3306
    assert [m["role"] for m in summary.members].count("Primary") == 1
    assert (summary.phase == "Healthy") == (len(ready) == len(others))
    if summary.phase == "Healthy":
        assert all(not c.status for c in summary.conditions if c.type != "Ready")


# -- timeouts --------------------------------------------------------------------------------------------------


def test_timeouts_follow_the_detection_settings() -> None:
    fast, default = spec(periodSeconds=1, failureThreshold=2), spec()
    assert (member_timeout(fast), replica_net_timeout(fast), waiting_timeout(fast)) == (1.0, 2, 3.0)
    assert (member_timeout(default), replica_net_timeout(default), waiting_timeout(default)) == (5.0, 4, 9.0)
    assert member_timeout(spec(periodSeconds=60)) == 5.0, "an unreachable member never costs more than 5 s"
    assert replica_net_timeout(spec(periodSeconds=1, failureThreshold=1)) == 2, "above the 1 s heartbeat"


def test_members_with_another_net_timeout_get_the_wanted_one_even_without_a_primary() -> None:
    states = topology(primary(net_timeout=60), replica("m1", net_timeout=2), replica("m2", net_timeout=60))
    assert converge_plan("m0", states, semi_sync=True, net_timeout=2).net_timeout == ("m0", "m2")
    states["m0"] = DEAD
    assert converge_plan("m0", states, semi_sync=True, net_timeout=2).net_timeout == ("m2",)
    healthy_states = topology(primary(net_timeout=2), replica("m1", net_timeout=2), replica("m2", net_timeout=2))
    assert not converge_plan("m0", healthy_states, semi_sync=True, net_timeout=2)


@given(
    head=st.sampled_from([primary(), primary(read_only=True), DEAD, primary(is_replica=True)]),
    others=st.lists(member_state, max_size=3, unique_by=lambda s: s.name),
    secure=st.lists(st.sampled_from([None, False, True]), min_size=4, max_size=4),
    asked=st.booleans(),
    full=st.booleans(),
)
def test_exactly_the_members_found_accepting_plaintext_are_made_to_refuse_it_when_asked(
    head: MemberState, others: list[MemberState], secure: list[bool | None], asked: bool, full: bool
) -> None:
    """Whatever the topology: every member read as accepting plaintext, and no other (an unreachable member's
    setting is unknown, None), and only when the spec asks."""
    states = {
        s.name: replace(s, secure_transport=found if s.reachable else None)
        for s, found in zip((head, *others), secure, strict=False)
    }
    plan = converge_plan("m0", states, semi_sync=False, full=full, secure_transport=asked)
    expected = {s.name for s in states.values() if asked and s.secure_transport is False}
    assert set(plan.secure_transport) == expected
    assert bool(plan) or not expected
    refusing = {s.name for s in states.values() if not asked and s.secure_transport is True}
    assert set(plan.plaintext_allowed) == refusing, "not asked (any more): set back, else TLS off locks it out"
    assert bool(plan) or not refusing
    assert not set(plan.secure_transport) & set(plan.plaintext_allowed)


def test_members_accepting_plaintext_are_made_to_refuse_it_when_asked_even_without_a_primary() -> None:
    states = topology(
        primary(secure_transport=False), replica("m1", secure_transport=True), replica("m2", secure_transport=False)
    )
    assert converge_plan("m0", states, semi_sync=True, secure_transport=True).secure_transport == ("m0", "m2")
    assert not converge_plan("m0", states, semi_sync=True).secure_transport, "not asked: none made to refuse it"
    states["m0"] = DEAD
    assert converge_plan("m0", states, semi_sync=True, secure_transport=True).secure_transport == ("m2",)
    states["m2"] = replace(states["m2"], secure_transport=True)
    assert not converge_plan(
        "m0", states | {"m0": primary(secure_transport=True)}, semi_sync=True, secure_transport=True
    )


def test_members_refusing_plaintext_accept_it_again_once_the_spec_no_longer_asks() -> None:
    """requireSecureTransport true -> false: left on, the members would refuse the operator's plaintext sessions
    once TLS is disabled (3159), and no failover would be possible."""
    states = topology(
        primary(secure_transport=True), replica("m1", secure_transport=True), replica("m2", secure_transport=False)
    )
    assert converge_plan("m0", states, semi_sync=True).plaintext_allowed == ("m0", "m1")
    assert not converge_plan("m0", states, semi_sync=True, secure_transport=True).plaintext_allowed
    states["m0"] = DEAD
    assert converge_plan("m0", states, semi_sync=True).plaintext_allowed == ("m1",), "even without a primary"
    states["m1"] = replace(states["m1"], secure_transport=False)
    assert not converge_plan("m0", states | {"m0": primary(secure_transport=False)}, semi_sync=True)


# -- quorum ----------------------------------------------------------------------------------------------------


def test_with_semi_sync_every_replica_must_answer_before_a_failover() -> None:
    """One acknowledgement per commit, from either replica: with m2 unreachable, m1 may lack acknowledged commits."""
    states = topology(DEAD, lost(replica("m1")), MemberState.unreachable("m2", "m2.db", 3306, "gone"))
    blocked = decide_failover(
        spec(semiSync=True), "m0", states, failures=3, seconds_since_automatic=None, quarantined={}
    )
    assert blocked.candidate is None and blocked.dead
    assert blocked.blocked_by.startswith("only 1 of 2 replicas reachable (m2 not): with semi-sync, 2 are needed")
    asynchronous = decide_failover(spec(), "m0", states, failures=3, seconds_since_automatic=None, quarantined={})
    assert asynchronous.candidate == "m1", "without semi-sync nothing is sure anyway"
    full = topology(DEAD, lost(replica("m1")), lost(replica("m2")))
    assert (
        decide_failover(
            spec(semiSync=True), "m0", full, failures=3, seconds_since_automatic=None, quarantined={}
        ).candidate
        is not None
    )


def test_a_requested_promotion_without_quorum_is_refused_unless_forced() -> None:
    states = topology(DEAD, lost(replica("m1")), MemberState.unreachable("m2", "m2.db", 3306, "gone"))
    refused = decide_request(spec(semiSync=True), "m0", states, 3, "m1", force=False, quarantined={})
    assert refused.action == "refuse" and "only 1 of 2 replicas reachable" in refused.reason
    forced = decide_request(spec(semiSync=True), "m0", states, 3, "m1", force=True, quarantined={})
    assert forced.action == "promote"


# -- bootstrap -------------------------------------------------------------------------------------------------


def test_bootstrap_of_a_new_group_takes_spec_primary() -> None:
    empty = MariaDBGtidSet.parse("")
    states = topology(*(replica(f"m{i}", "", gtid_executed=empty, read_only=False) for i in range(3)))
    assert choose_bootstrap(spec(), states).primary == "m0"


def test_bootstrap_over_running_servers_never_rolls_back() -> None:
    """Re-created after a switchover to m1: m1 is writable and holds everything; spec.primary m0 is behind."""
    states = topology(
        replica("m0", "0-1-10", is_replica=False),
        primary(name="m1", gtid_executed=MariaDBGtidSet.parse("0-1-10,0-2-15")),
        replica("m2", "0-1-10,0-2-15"),
    )
    assert choose_bootstrap(spec(), states).primary == "m1"
    read_only = {n: replace(s, read_only=True) for n, s in states.items()}
    assert choose_bootstrap(spec(), read_only).primary == "m1", "the member holding everything, not spec.primary"
    two = {**states, "m0": replace(states["m0"], read_only=False)}
    assert choose_bootstrap(spec(), two).reason == "m0, m1 are all writable: fence all but one by hand"
    diverged = {**read_only, "m0": replace(read_only["m0"], gtid_executed=MariaDBGtidSet.parse("0-1-12"))}
    assert choose_bootstrap(spec(), diverged).primary is None
    gone = {**states, "m2": MemberState.unreachable("m2", "m2.db", 3306, "gone")}
    assert choose_bootstrap(spec(), gone).reason.startswith("every member must answer")


# -- staleness -------------------------------------------------------------------------------------------------


def test_a_replica_cut_off_long_before_the_failure_neither_confirms_it_nor_is_chosen() -> None:
    fast = spec(periodSeconds=1, failureThreshold=2)
    stale = stale_replicas(fast, "m0", {"m2": 1000.0, "m1": 1099.0}, failing_since=1100.0)
    assert stale == {"m2": "stale: not receiving from m0 since 1970-01-01T00:16:40Z"}, "m1 stopped within 2 s"
    states = topology(DEAD, MemberState.unreachable("m1", "m1.db", 3306, "gone"), lost(replica("m2")))
    before = decide_failover(fast, "m0", states, failures=3, seconds_since_automatic=None, quarantined={})
    assert before.candidate == "m2", "without staleness, the cut-off replica confirms and is promoted"
    after = decide_failover(fast, "m0", states, failures=3, seconds_since_automatic=None, quarantined={}, stale=stale)
    assert after.candidate is None and not after.dead
    assert stale_replicas(fast, "m0", {"m2": 1000.0}, failing_since=None) == {}


def test_a_stale_replica_that_receives_again_still_vetoes_a_failover() -> None:
    """Stale entries are about confirming; a replica seen receiving from the primary proves it alive."""
    fast = spec(periodSeconds=1, failureThreshold=2)
    states = topology(DEAD, lost(replica("m1")), replica("m2"))
    decision = decide_failover(
        fast, "m0", states, failures=3, seconds_since_automatic=None, quarantined={}, stale={"m2": "stale: ..."}
    )
    assert decision.candidate is None and not decision.dead
    assert "still replicate from it" in decision.reason


def test_a_read_only_replica_that_is_not_fenced_is_fenced_and_rejoined() -> None:
    """MySQL: read_only=ON alone lets SUPER accounts write; only super_read_only fences. Such a replica is fenced
    and counts as out of order."""
    plan = converge_plan("m0", topology(primary(), replica("m1", fenced=False), replica("m2")), semi_sync=False)
    assert plan.fence == ("m1",) and plan.join == ("m1",)

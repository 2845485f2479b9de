"""Election and anti-flapping as pure functions: examples and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whm_ha.nodes.election import Candidate, Policy, best, elect, manual, refusal

healths = st.sampled_from(["Healthy", "Unhealthy", "Unknown"])
candidates = st.lists(
    st.builds(
        Candidate,
        name=st.sampled_from([f"n{i}" for i in range(8)]),
        priority=st.integers(0, 5),
        health=healths,
        maintenance=st.booleans(),
        deleting=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda c: c.name,
)
policies = st.builds(
    Policy,
    automatic=st.booleans(),
    paused=st.booleans(),
    failback=st.booleans(),
    min_interval_seconds=st.sampled_from([0.0, 60.0]),
    seconds_since_last_automatic=st.one_of(st.none(), st.sampled_from([1.0, 600.0])),
    seconds_since_last_change=st.one_of(st.none(), st.sampled_from([1.0, 600.0])),
)


def node(name: str, priority: int = 100, health: str = "Healthy", **flags: bool) -> Candidate:
    return Candidate(name, priority, health, **flags)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(nodes=candidates, policy=policies, data=st.data())
def test_a_change_always_lands_on_an_eligible_node(nodes: list[Candidate], policy: Policy, data: st.DataObject) -> None:
    current = data.draw(st.one_of(st.none(), st.sampled_from([n.name for n in nodes] or ["gone"])))
    decision = elect(nodes, current, policy)
    by_name = {n.name: n for n in nodes}
    if decision.changed:
        assert decision.primary in by_name
        assert refusal(by_name[decision.primary]) is None
        assert decision.primary != current
    else:
        assert decision.primary in (current, None)


@settings(max_examples=500)
@given(nodes=candidates, policy=policies, data=st.data())
def test_a_healthy_primary_is_kept_unless_failback_or_drain(
    nodes: list[Candidate], policy: Policy, data: st.DataObject
) -> None:
    healthy = [n for n in nodes if refusal(n) is None]
    if not healthy:
        return
    current = data.draw(st.sampled_from(healthy))
    decision = elect(nodes, current.name, policy)
    if not policy.failback or policy.paused:
        assert decision.primary == current.name and not decision.changed
    elif decision.changed:
        assert decision.primary is not None
        assert next(n for n in nodes if n.name == decision.primary).priority > current.priority


@settings(max_examples=300)
@given(nodes=candidates)
def test_best_is_the_highest_priority_then_the_name(nodes: list[Candidate]) -> None:
    choice, refusals = best(nodes)
    eligible = [n for n in nodes if refusal(n) is None]
    assert set(refusals) == {n.name for n in nodes} - {n.name for n in eligible}
    if choice is None:
        assert eligible == []
    else:
        assert (-choice.priority, choice.name) == min((-n.priority, n.name) for n in eligible)


@given(nodes=candidates, policy=policies)
def test_anti_flapping_blocks_only_automatic_failover(nodes: list[Candidate], policy: Policy) -> None:
    primary = Candidate("p", 5, "Unhealthy")
    recent = Policy(policy.automatic, False, policy.failback, 60.0, 1.0)
    assert elect([primary, *nodes], "p", recent).primary == "p"
    for target in nodes:
        decision = manual([primary, *nodes], "p", target.name)
        assert decision.changed == (refusal(target) is None)


def test_unhealthy_primary_fails_over_to_the_best_candidate() -> None:
    nodes = [node("a", 100, "Unhealthy"), node("b", 50), node("c", 80, maintenance=True), node("d", 50)]
    decision = elect(nodes, "a", Policy())
    assert (decision.primary, decision.kind) == ("b", "automatic")
    assert decision.refusals == {"c": "in maintenance"}


def test_no_candidate_names_every_refusal() -> None:
    nodes = [node("a", 100, "Unhealthy"), node("b", 0), node("c", 50, "Unknown"), node("d", 70, deleting=True)]
    decision = elect(nodes, "a", Policy())
    assert (decision.primary, decision.kind) == ("a", "keep")
    assert "b: priority 0 (never primary)" in decision.reason
    assert "c: health is Unknown" in decision.reason
    assert "d: being deleted" in decision.reason


def test_unknown_health_never_triggers_a_failover() -> None:
    assert elect([node("a", 100, "Unknown"), node("b", 50)], "a", Policy()).primary == "a"


def test_paused_and_manual_only() -> None:
    nodes = [node("a", 100, "Unhealthy"), node("b", 50)]
    assert "paused" in elect(nodes, "a", Policy(paused=True)).reason
    assert "automatic failover is off" in elect(nodes, "a", Policy(automatic=False)).reason
    assert manual(nodes, "a", "b").primary == "b"


def test_anti_flapping_reason_says_when() -> None:
    decision = elect(
        [node("a", 100, "Unhealthy"), node("b")], "a", Policy(min_interval_seconds=60, seconds_since_last_automatic=20)
    )
    assert decision.primary == "a"
    assert "20s ago" in decision.reason and "40s" in decision.reason


def test_drain_hands_over_even_within_the_interval() -> None:
    decision = elect([node("a", 100, maintenance=True), node("b", 50)], "a", Policy(seconds_since_last_automatic=1))
    assert (decision.primary, decision.kind) == ("b", "handover")


def test_initial_election_and_ties() -> None:
    decision = elect([node("b", 50), node("a", 50), node("c", 10)], None, Policy())
    assert (decision.primary, decision.kind) == ("a", "initial")
    assert elect([node("x", 0)], None, Policy()).primary is None


def test_manual_refusals() -> None:
    nodes = [node("a"), node("b", maintenance=True), node("c", health="Unhealthy")]
    assert "in maintenance" in manual(nodes, "a", "b").reason
    assert "health is Unhealthy" in manual(nodes, "a", "c").reason
    assert "not part of the cluster" in manual(nodes, "a", "z").reason
    assert manual(nodes, "a", "a").kind == "keep"


# -- failback: an automatic change that honours anti-flapping and never blocks a failover ----------------------

FAILBACK = {"failback": True, "min_interval_seconds": 30.0}


def test_failback_waits_for_the_minimum_interval_since_the_last_automatic_change() -> None:
    nodes = [node("a", 100), node("b", 50)]
    held = elect(nodes, "b", Policy(**FAILBACK, seconds_since_last_automatic=5, seconds_since_last_change=5))
    assert (held.primary, held.kind) == ("b", "keep") and "failback to a in 25s" in held.reason
    done = elect(nodes, "b", Policy(**FAILBACK, seconds_since_last_automatic=31, seconds_since_last_change=31))
    assert (done.primary, done.kind, done.changed) == ("a", "failback", True)


@pytest.mark.parametrize("policy", [Policy(**FAILBACK, automatic=False), Policy(**FAILBACK, paused=True)])
def test_failback_needs_automatic_failover_and_no_pause(policy: Policy) -> None:
    assert elect([node("a", 100), node("b", 50)], "b", policy).kind == "keep"


def test_a_failback_never_delays_the_next_failover() -> None:
    """The reproduced case: a dies (failover to b), comes back (failback to a), dies again: b takes over at once,
    since the last *failover* is older than the interval, whatever the failback's age."""
    nodes = [node("a", 100, "Unhealthy"), node("b", 50)]
    policy = Policy(**FAILBACK, seconds_since_last_automatic=40, seconds_since_last_change=2)
    decision = elect(nodes, "a", policy)
    assert (decision.primary, decision.kind) == ("b", "automatic")


@given(nodes=candidates, policy=policies)
def test_failback_is_never_more_often_than_the_interval(nodes: list[Candidate], policy: Policy) -> None:
    primary = Candidate("p", 1, "Healthy")
    decision = elect([primary, *nodes], "p", policy)
    if decision.kind == "failback":
        assert policy.failback and policy.automatic and not policy.paused
        since = policy.seconds_since_last_change
        assert since is None or since >= policy.min_interval_seconds

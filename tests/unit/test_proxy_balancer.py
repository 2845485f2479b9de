"""The proxy's balancer: distribution and fairness of each algorithm, sticky sessions, ejection rules."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whm_ha_proxy.balancer import ALGORITHMS, Algorithm, Backend, Balancer, EjectionPolicy, NodeSpec

names = st.sampled_from([f"n{i}" for i in range(8)])
weights = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6)


def specs(ws: list[int], **overrides: object) -> list[NodeSpec]:
    return [NodeSpec(f"n{i}", "127.0.0.1", 4000 + i, weight=w, **overrides) for i, w in enumerate(ws)]  # type: ignore[arg-type]


def balancer(algorithm: Algorithm, nodes: list[NodeSpec], **policy: float) -> Balancer:
    b = Balancer(policy=EjectionPolicy(**policy))  # type: ignore[arg-type]
    b.configure(algorithm, nodes)
    return b


def picks(b: Balancer, count: int, now: float = 0.0) -> list[str]:
    chosen = []
    for _ in range(count):
        backend = b.pick(now)
        assert backend is not None
        chosen.append(backend.name)
    return chosen


@given(weights, st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=4))
def test_weighted_any_window_of_total_weight_gives_each_node_its_weight(ws: list[int], start: int, cycles: int) -> None:
    b = balancer("weighted", specs(ws))
    total = sum(ws)
    sequence = picks(b, start + total * cycles)
    for offset in range(start, start + total * (cycles - 1) + 1):
        window = Counter(sequence[offset : offset + total])
        assert window == {f"n{i}": w for i, w in enumerate(ws)}


@given(weights)
def test_weighted_is_smooth_like_nginx(ws: list[int]) -> None:
    """The reference sequence computed independently, step by step, as nginx does it."""
    b = balancer("weighted", specs(ws))
    current = [0] * len(ws)
    for _ in range(sum(ws) * 2):
        current = [c + w for c, w in zip(current, ws, strict=True)]
        best = max(range(len(ws)), key=lambda i: (current[i], -i))
        current[best] -= sum(ws)
        assert picks(b, 1) == [f"n{best}"]


@given(weights, weights, st.integers(min_value=0, max_value=30))
def test_weighted_fair_after_a_weight_change_in_place(before: list[int], after: list[int], warmup: int) -> None:
    b = balancer("weighted", specs(before))
    picks(b, warmup)
    held = b.pick(0.0)
    assert held is not None
    b.acquire(held)
    b.configure("weighted", specs(after))
    sequence = picks(b, sum(after))
    assert Counter(sequence) == {f"n{i}": w for i, w in enumerate(after)}
    survivor = b.backends.get(held.name)
    if survivor is not None:
        assert survivor is held and survivor.active == 1, "in-flight accounting lost on reconfiguration"


@given(
    st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=7)
)
def test_round_robin_is_even(count: int, rounds: int, start: int) -> None:
    b = balancer("roundRobin", specs([1] * count))
    picks(b, start)
    assert set(Counter(picks(b, count * rounds)).values()) == {rounds}


@given(st.lists(st.tuples(st.booleans(), names), min_size=1, max_size=200), st.integers(min_value=2, max_value=6))
def test_least_connections_never_picks_a_busier_node(ops: list[tuple[bool, str]], count: int) -> None:
    b = balancer("leastConnections", specs([1] * count))
    held: list[Backend] = []
    for start, name in ops:
        if start or not held:
            chosen = b.pick(0.0)
            assert chosen is not None
            assert chosen.active == min(x.active for x in b.routable(0.0))
            b.acquire(chosen)
            held.append(chosen)
        else:
            victim = next((x for x in held if x.name == name), held[0])
            held.remove(victim)
            b.release(victim)


def test_least_connections_ties_rotate() -> None:
    b = balancer("leastConnections", specs([1, 1, 1]))
    assert Counter(picks(b, 30)) == {"n0": 10, "n1": 10, "n2": 10}


@given(
    st.sampled_from(ALGORITHMS),
    st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(min_value=0, max_value=3)), min_size=1, max_size=6),
)
def test_never_picks_an_unroutable_node(algorithm: Algorithm, flags: list[tuple[bool, bool, int]]) -> None:
    nodes = [
        NodeSpec(f"n{i}", "127.0.0.1", 4000 + i, weight=w, healthy=h, maintenance=m)
        for i, (h, m, w) in enumerate(flags)
    ]
    b = balancer(algorithm, nodes)
    allowed = {n.name for n in nodes if n.healthy and not n.maintenance and n.weight > 0}
    for _ in range(20):
        chosen = b.pick(0.0, sticky="n0")
        if not allowed:
            assert chosen is None
        else:
            assert chosen is not None and chosen.name in allowed


@given(st.sampled_from(ALGORITHMS), st.integers(min_value=2, max_value=5))
def test_a_node_turned_unhealthy_gets_no_new_requests_at_once_and_drains(algorithm: Algorithm, count: int) -> None:
    b = balancer(algorithm, specs([1] * count))
    busy = b.backends["n0"]
    b.acquire(busy)
    b.configure(algorithm, [NodeSpec("n0", "127.0.0.1", 4000, healthy=False), *specs([1] * count)[1:]])
    assert "n0" not in picks(b, 3 * count)
    assert b.backends["n0"] is busy and busy.active == 1
    b.configure(algorithm, specs([1] * count)[1:])  # removed: still releasable
    b.release(busy)
    assert busy.active == 0 and "n0" not in b.backends


def test_sticky_uses_the_pinned_node_then_falls_back() -> None:
    b = balancer("roundRobin", specs([1, 1, 1]))
    assert {b.pick(0.0, sticky="n2").name for _ in range(10)} == {"n2"}  # type: ignore[union-attr]
    b.configure("roundRobin", [*specs([1, 1]), NodeSpec("n2", "127.0.0.1", 4002, maintenance=True)])
    fallback = {b.pick(0.0, sticky="n2").name for _ in range(10)}  # type: ignore[union-attr]
    assert fallback == {"n0", "n1"}
    assert b.pick(0.0, sticky="unknown") is not None


def test_retries_exclude_tried_nodes() -> None:
    b = balancer("roundRobin", specs([1, 1]))
    first = b.pick(0.0)
    assert first is not None
    second = b.pick(0.0, exclude=(first,))
    assert second is not None and second is not first
    assert b.pick(0.0, exclude=(first, second)) is None


def test_refused_connection_ejects_at_once_with_doubling_backoff() -> None:
    b = balancer("roundRobin", specs([1, 1]), base_seconds=5, max_seconds=300)
    n0 = b.backends["n0"]
    expected_now = 0.0
    for expected in (5, 10, 20, 40, 80, 160, 300, 300):
        assert b.failed(n0, expected_now, refused=True)
        assert n0.ejected_until == expected_now + expected
        assert "n0" not in picks(b, 4, expected_now)
        assert "n0" not in picks(b, 4, expected_now + expected - 0.001)
        expected_now += expected
        assert "n0" in picks(b, 2, expected_now), "back after the backoff"
    b.succeeded(n0)
    assert b.failed(n0, expected_now, refused=True)
    assert n0.ejected_until == expected_now + 5, "a success resets the backoff"
    assert n0.ejections_total == 9


@given(st.integers(min_value=1, max_value=10))
def test_consecutive_5xx_eject_after_the_threshold(threshold: int) -> None:
    b = balancer("roundRobin", specs([1, 1]), failures=threshold)
    n0 = b.backends["n0"]
    for _ in range(threshold - 1):
        assert not b.failed(n0, 0.0)
    b.succeeded(n0)  # a good answer breaks the run
    for _ in range(threshold - 1):
        assert not b.failed(n0, 0.0)
    assert b.failed(n0, 0.0)
    assert n0 not in b.routable(0.0)


@given(st.sampled_from(ALGORITHMS), st.integers(min_value=1, max_value=5), st.lists(st.integers(0, 4), max_size=30))
def test_never_ejects_the_last_routable_node(algorithm: Algorithm, count: int, victims: list[int]) -> None:
    b = balancer(algorithm, specs([1] * count))
    for index in victims:
        backend = b.backends[f"n{index % count}"]
        b.failed(backend, 1.0, refused=True)
        assert b.routable(1.0), "every node ejected"
    assert b.pick(1.0) is not None


def test_reset_ejections_brings_every_node_back() -> None:
    b = balancer("roundRobin", specs([1, 1]))
    assert b.failed(b.backends["n0"], 0.0, refused=True)
    b.reset_ejections()
    assert set(picks(b, 2)) == {"n0", "n1"}


@settings(max_examples=50)
@given(st.sampled_from(ALGORITHMS), weights)
def test_algorithm_change_in_place_keeps_in_flight_counts(algorithm: Algorithm, ws: list[int]) -> None:
    b = balancer("roundRobin", specs(ws))
    held = [b.pick(0.0) for _ in range(len(ws) * 2)]
    for backend in held:
        assert backend is not None
        b.acquire(backend)
    b.configure(algorithm, specs(ws))
    assert sum(x.active for x in b.backends.values()) == len(held)


@pytest.mark.parametrize(("address", "authority"), [("10.0.0.1", b"10.0.0.1:80"), ("::1", b"[::1]:80")])
def test_backend_authority(address: str, authority: bytes) -> None:
    assert Backend(NodeSpec("n", address, 80)).authority == authority

"""Probe outcomes to health, and when a node's status is written."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.nodes.health import HEARTBEAT_SECONDS, NodeHealth, ProbeResult, heartbeat_due, status_changed

OK = ProbeResult(True, 1.0, "HTTP 200")
FAIL = ProbeResult(False, 2.0, "refused")


def run(results: list[ProbeResult], failure: int = 3, success: int = 1) -> NodeHealth:
    state = NodeHealth()
    for t, result in enumerate(results):
        state = state.observe(result, failure, success, float(t))
    return state


def test_thresholds_as_kubernetes_probes() -> None:
    assert run([]).health == "Unknown"
    assert run([FAIL, FAIL]).health == "Unknown"
    assert run([FAIL, FAIL, FAIL]).health == "Unhealthy"
    assert run([OK]).health == "Healthy"
    assert run([OK, FAIL, FAIL]).health == "Healthy"
    assert run([OK, FAIL, FAIL, FAIL]).health == "Unhealthy"
    assert run([FAIL, FAIL, FAIL, OK], success=2).health == "Unhealthy"
    assert run([FAIL, FAIL, FAIL, OK, OK], success=2).health == "Healthy"


def test_failing_since_marks_the_first_failure_of_a_run() -> None:
    state = run([OK, FAIL, FAIL, FAIL])
    assert state.failing_since == 1.0
    assert run([OK, FAIL, OK]).failing_since is None


@given(st.lists(st.booleans(), max_size=30), st.integers(1, 5), st.integers(1, 5))
def test_counters_and_health_agree(outcomes: list[bool], failure: int, success: int) -> None:
    state = run([OK if ok else FAIL for ok in outcomes], failure, success)
    assert state.failures == 0 or state.successes == 0
    if state.failures >= failure:
        assert state.health == "Unhealthy"
    if state.successes >= success:
        assert state.health == "Healthy"


def test_status_writes_follow_changes_not_probes() -> None:
    written = {
        "health": "Healthy",
        "role": "Primary",
        "nodeId": 1,
        "message": "HTTP 200",
        "consecutiveFailures": 0,
        "consecutiveSuccesses": 1,
    }
    same = {**written, "consecutiveSuccesses": 7}
    assert not status_changed(written, same, failure_threshold=3, success_threshold=1)
    assert status_changed(written, {**written, "health": "Unhealthy"}, failure_threshold=3, success_threshold=1)
    assert status_changed(written, {**written, "role": "Secondary"}, failure_threshold=3, success_threshold=1)
    failing = {**written, "message": "HTTP 200", "consecutiveFailures": 3, "consecutiveSuccesses": 0}
    assert status_changed(written, failing, failure_threshold=3, success_threshold=1), "threshold crossed"
    assert heartbeat_due(None, 0.0)
    assert not heartbeat_due(100.0, 100.0 + HEARTBEAT_SECONDS - 1)
    assert heartbeat_due(100.0, 100.0 + HEARTBEAT_SECONDS)

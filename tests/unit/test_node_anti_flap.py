"""The anti-flap interval as the node controller measures it from the failover records it wrote."""

from __future__ import annotations

from typing import Any

import pytest

from whm_ha.crd.whmcluster import WHMClusterSpec
from whm_ha.nodes import controller
from whm_ha.nodes.controller import ClusterController, _iso
from whm_ha.nodes.health import NodeHealth

INTERVAL = 10


def decide(monkeypatch: pytest.MonkeyPatch, failed_over_at: float, now: float) -> str:
    """Who is primary at ``now`` when n1 is Unhealthy, n2 Healthy, and the last automatic failover (to n1)
    was recorded at ``failed_over_at``, as the controller records it."""
    state = ClusterController(kube=None, namespace="ns", name="whm")  # type: ignore[arg-type]
    state.health = {"n1": NodeHealth(health="Unhealthy"), "n2": NodeHealth(health="Healthy")}
    spec = WHMClusterSpec.model_validate({"failover": {"minIntervalSeconds": INTERVAL}})
    record = {"time": _iso(failed_over_at), "from": "n2", "to": "n1", "type": "automatic", "reason": "r"}
    status: dict[str, Any] = {"primaryNode": "n1", "failoverHistory": [record]}
    nodes = [{"metadata": {"name": name}, "spec": {"priority": 100}} for name in ("n1", "n2")]
    monkeypatch.setattr(controller.time, "time", lambda: now)
    decision = state._decide(spec, status, nodes, None)
    return str(decision.primary)


def test_a_failover_waits_the_whole_interval_although_its_record_has_whole_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record says 12:00:00 for a failover at 12:00:00.9: 9.6 s later is still within the interval."""
    failed_over_at = 1_700_000_000.9
    assert decide(monkeypatch, failed_over_at, failed_over_at + INTERVAL - 0.4) == "n1"
    assert decide(monkeypatch, failed_over_at, failed_over_at + INTERVAL - 0.01) == "n1"


def test_a_failover_comes_within_a_second_of_the_interval_s_end(monkeypatch: pytest.MonkeyPatch) -> None:
    for failed_over_at in (1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.99):
        assert decide(monkeypatch, failed_over_at, failed_over_at + INTERVAL + 1) == "n2"

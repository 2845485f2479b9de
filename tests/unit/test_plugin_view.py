"""What ``kubectl whm`` shows, from objects as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime

from whm_ha.plugin.view import history, problems, render_status, status_report

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
CLUSTER = {
    "kind": "WHMCluster",
    "metadata": {"name": "whm", "namespace": "apps"},
    "status": {
        "phase": "Degraded",
        "primaryNode": "n1",
        "primarySince": "2026-11-30T11:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "HasPrimary", "message": "n1 serves"},
            {"type": "Degraded", "status": "True", "reason": "NodesUnhealthy", "message": "n2 is Unhealthy"},
            {"type": "FailoverInProgress", "status": "False", "reason": "Idle", "message": ""},
        ],
        "failoverHistory": [
            {"time": "2026-11-30T11:00:00Z", "from": "n2", "to": "n1", "type": "automatic", "durationMs": 2100}
        ],
    },
}
NODES = [
    {"metadata": {"name": n}, "spec": {"address": f"10.0.0.{i}", "port": 4000}, "status": {"role": r, "health": h}}
    for i, (n, r, h) in enumerate((("n2", "Secondary", "Unhealthy"), ("n1", "Primary", "Healthy")), start=1)
]
REPLICATION = {
    "kind": "MySQLReplication",
    "metadata": {"name": "db"},
    "status": {
        "phase": "Healthy",
        "currentPrimary": "m0",
        "members": [{"name": "m0", "role": "Primary", "reachable": True, "readOnly": False, "gtidExecuted": "0-1-9"}],
        "conditions": [{"type": "LagHigh", "status": "False", "reason": "WithinLimit", "message": ""}],
        "promotionHistory": [{"time": "2026-11-30T11:30:00Z", "from": "m1", "to": "m0", "type": "manual"}],
    },
}


def test_problems_are_the_conditions_not_as_they_should_be() -> None:
    assert problems(CLUSTER) == ["WHMCluster/whm Degraded: NodesUnhealthy: n2 is Unhealthy"]
    assert problems(REPLICATION) == [] and problems(None) == []
    broken = {**CLUSTER, "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NoPrimary"}]}}
    assert problems(broken) == ["WHMCluster/whm Ready: NoPrimary: "]


def test_history_is_newest_first_across_both_kinds() -> None:
    assert [(e["what"], e["to"]) for e in history(CLUSTER, REPLICATION)] == [("promotion", "m0"), ("failover", "n1")]


def test_the_text_view() -> None:
    text = render_status(status_report(CLUSTER, NODES, REPLICATION), NOW)
    lines = text.splitlines()
    assert lines[0] == "WHMCluster apps/whm: Degraded, primary n1 for 1h"
    assert [line.split()[:4] for line in lines[2:5]] == [
        ["NODE", "ADDRESS", "ROLE", "HEALTH"],
        ["n1", "10.0.0.2:4000", "Primary", "Healthy"],
        ["n2", "10.0.0.1:4000", "Secondary", "Unhealthy"],
    ]
    assert "MySQLReplication db: Healthy, primary m0" in text
    assert lines[lines.index("RECENT") + 1].split()[:5] == ["30m", "promotion", "db", "m1", "m0"]
    assert lines[-1] == "  WHMCluster/whm Degraded: NodesUnhealthy: n2 is Unhealthy"

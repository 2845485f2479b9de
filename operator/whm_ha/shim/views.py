"""The custom resources in the JSON shapes legacy tools parse."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def node_view(node: Obj, cluster: Obj) -> Obj:
    """One WHMNode as the legacy node list shows it. Its last health check is its cluster's last probe round
    once it has been probed (its own status is rewritten only when it changes)."""
    spec, status, meta = node.get("spec") or {}, node.get("status") or {}, node["metadata"]
    checked = status.get("lastProbeTime")
    if checked:
        checked = max(checked, (cluster.get("status") or {}).get("lastProbeTime") or "")
    health = str(status.get("health") or "Unknown").lower()
    return {
        "id": status.get("nodeId"),
        "name": meta["name"],
        "hostname": spec.get("hostname") or meta["name"],
        "ip": spec.get("address"),
        "port": spec.get("port", 4000),
        "priority": spec.get("priority", 100),
        "weight": spec.get("weight", 1),
        "role": str(status.get("role") or "Secondary").lower(),
        "status": "maintenance" if spec.get("maintenance") else health,
        "lastHealthCheck": checked,
        "latencyMs": status.get("latencyMs"),
        "message": status.get("message"),
    }


def replication_view(replication: Obj | None) -> Obj | None:
    """A MySQLReplication as the legacy database section shows it: master and slaves."""
    if replication is None:
        return None
    spec, status = replication.get("spec") or {}, replication.get("status") or {}
    hosts = {m["name"]: m["host"] for m in spec.get("members", [])}
    primary = status.get("currentPrimary") or spec.get("primary")
    slaves = [
        {
            "name": m["name"],
            "host": hosts.get(m["name"]),
            "role": str(m.get("role", "Unknown")).lower(),
            "reachable": m.get("reachable", False),
            "ioRunning": m.get("ioRunning"),
            "sqlRunning": m.get("sqlRunning"),
            "lagSeconds": m.get("lagSeconds"),
        }
        for m in status.get("members", [])
        if m["name"] != primary
    ]
    return {
        "name": replication["metadata"]["name"],
        "master": hosts.get(primary) if primary else None,
        "masterMember": primary,
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "slaves": slaves,
    }


def cluster_view(cluster: Obj, nodes: list[Obj]) -> Obj:
    """The legacy cluster section: counts and the primary node."""
    status = cluster.get("status") or {}
    by_name = {n["metadata"]["name"]: node_view(n, cluster) for n in nodes}
    primary = by_name.get(status.get("primaryNode") or "")
    return {
        "name": cluster["metadata"]["name"],
        "totalNodes": status.get("totalNodes", len(nodes)),
        "healthyNodes": status.get("healthyNodes", sum(1 for n in by_name.values() if n["status"] == "healthy")),
        "primaryNode": {"id": primary["id"], "hostname": primary["hostname"], "status": primary["status"]}
        if primary
        else None,
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "lastFailover": status.get("lastFailover"),
    }

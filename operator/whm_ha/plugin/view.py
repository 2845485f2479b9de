"""What ``kubectl whm status`` and ``history`` show, built from the objects as the API returns them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

GOOD_WHEN_TRUE = frozenset({"Ready", "Healthy", "Available"})
"""Condition types that should be True; every other type of ours should be False (Degraded, LagHigh, ...)."""


def status_report(cluster: Obj, nodes: list[Obj], replication: Obj | None) -> Obj:
    """One cluster's state as plain data (what ``-o json|yaml`` prints and the text view renders)."""
    status = cluster.get("status") or {}
    report: Obj = {
        "cluster": cluster["metadata"]["name"],
        "namespace": cluster["metadata"].get("namespace"),
        "phase": status.get("phase"),
        "primary": status.get("primaryNode"),
        "primarySince": status.get("primarySince"),
        "nodes": [_node(n) for n in sorted(nodes, key=lambda n: str(n["metadata"]["name"]))],
        "database": _database(replication) if replication is not None else None,
        "recent": history(cluster, replication)[:5],
        "problems": problems(cluster) + problems(replication) + [p for n in nodes for p in problems(n)],
    }
    return report


def _node(node: Obj) -> Obj:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    return {
        "name": node["metadata"]["name"],
        "address": f"{spec.get('address', '')}:{spec.get('port', '')}",
        "role": status.get("role"),
        "health": status.get("health"),
        "latencyMs": status.get("latencyMs"),
        "maintenance": bool(spec.get("maintenance")),
    }


def _database(replication: Obj) -> Obj:
    status = replication.get("status") or {}
    return {
        "replication": replication["metadata"]["name"],
        "phase": status.get("phase"),
        "primary": status.get("currentPrimary"),
        "members": [
            {
                "name": m.get("name"),
                "role": m.get("role"),
                "reachable": m.get("reachable"),
                "readOnly": m.get("readOnly"),
                "lagSeconds": m.get("lagSeconds"),
                "gtidExecuted": m.get("gtidExecuted"),
            }
            for m in status.get("members") or []
        ],
    }


def problems(obj: Obj | None) -> list[str]:
    """The conditions that are not as they should be, as "<kind>/<name> <type>: <reason>: <message>"."""
    if obj is None:
        return []
    found = []
    for condition in (obj.get("status") or {}).get("conditions") or []:
        good = (condition.get("status") == "True") == (condition.get("type") in GOOD_WHEN_TRUE)
        if not good:
            found.append(
                f"{obj.get('kind', '')}/{obj['metadata']['name']} {condition.get('type')}: "
                f"{condition.get('reason', '')}: {condition.get('message', '')}"
            )
    return found


def history(cluster: Obj, replication: Obj | None) -> list[Obj]:
    """Failovers of the WHM primary and promotions of the database, newest first."""
    events = [
        {**record, "what": "failover", "of": cluster["metadata"]["name"]}
        for record in (cluster.get("status") or {}).get("failoverHistory") or []
    ]
    if replication is not None:
        events += [
            {**record, "what": "promotion", "of": replication["metadata"]["name"]}
            for record in (replication.get("status") or {}).get("promotionHistory") or []
        ]
    return sorted(events, key=lambda e: str(e.get("time", "")), reverse=True)


def _ago(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "-"
    seconds = int((now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def render_status(report: Obj, now: datetime | None = None) -> str:
    """The one-screen text view of a ``status_report``."""
    now = now or datetime.now(UTC)
    lines = [
        f"WHMCluster {report['namespace']}/{report['cluster']}: {_text(report['phase'])}, primary "
        f"{_text(report['primary'])} for {_ago(report['primarySince'], now)}",
        "",
    ]
    rows = [["NODE", "ADDRESS", "ROLE", "HEALTH", "LATENCY", "MAINTENANCE"]]
    for node in report["nodes"]:
        latency = f"{node['latencyMs']:.0f}ms" if node["latencyMs"] is not None else "-"
        maintenance = "on" if node["maintenance"] else "-"
        rows.append([node["name"], node["address"], _text(node["role"]), _text(node["health"]), latency, maintenance])
    lines += _table(rows)
    database = report["database"]
    if database is not None:
        lines += [
            "",
            f"MySQLReplication {database['replication']}: {_text(database['phase'])}, primary "
            f"{_text(database['primary'])}",
        ]
        rows = [["MEMBER", "ROLE", "REACHABLE", "READ-ONLY", "LAG", "GTID EXECUTED"]]
        for member in database["members"]:
            lag = f"{member['lagSeconds']}s" if member["lagSeconds"] is not None else "-"
            rows.append(
                [
                    _text(member["name"]),
                    _text(member["role"]),
                    "yes" if member["reachable"] else "no",
                    {True: "yes", False: "no"}.get(member["readOnly"], "-"),
                    lag,
                    _text(member["gtidExecuted"]),
                ]
            )
        lines += _table(rows)
    lines += ["", "RECENT"] + (render_history(report["recent"], now).splitlines()[1:] or ["  none"])
    lines += ["", "PROBLEMS"] + ([f"  {p}" for p in report["problems"]] or ["  none"])
    return "\n".join(lines)


def render_history(events: list[Obj], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = [["AGE", "WHAT", "OF", "FROM", "TO", "TYPE", "TOOK", "REASON"]]
    for event in events:
        took = f"{event.get('durationMs', 0) / 1000:.1f}s"
        rows.append(
            [
                _ago(event.get("time"), now),
                event["what"],
                event["of"],
                _text(event.get("from")),
                _text(event.get("to")),
                _text(event.get("type")),
                took,
                _text(event.get("reason")),
            ]
        )
    return "\n".join(_table(rows))


def backups_report(backups: list[Obj]) -> list[Obj]:
    """The MySQLBackups newest first, each with what a person asks of it."""
    rows = []
    for backup in backups:
        meta, status = backup["metadata"], backup.get("status") or {}
        rows.append(
            {
                "name": meta["name"],
                "replication": (backup.get("spec") or {}).get("replication"),
                "scheduled": (meta.get("labels") or {}).get("ha.whm.io/scheduled") == "true",
                "phase": status.get("phase") or "Pending",
                "member": status.get("member"),
                "sizeBytes": status.get("sizeBytes"),
                "completedAt": status.get("completedAt"),
                "created": meta.get("creationTimestamp"),
                "gtid": status.get("gtid"),
                "message": status.get("message"),
            }
        )
    return sorted(rows, key=lambda row: (row["created"] or "", row["name"]), reverse=True)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def render_backups(rows: list[Obj], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    table = [["NAME", "REPLICATION", "PHASE", "MEMBER", "SIZE", "COMPLETED", "AGE", "SCHEDULED", "MESSAGE"]]
    for row in rows:
        table.append(
            [
                row["name"],
                _text(row["replication"]),
                row["phase"],
                _text(row["member"]),
                _size(row["sizeBytes"]),
                _ago(row["completedAt"], now),
                _ago(row["created"], now),
                "yes" if row["scheduled"] else "no",
                _text(row["message"]),
            ]
        )
    return "\n".join(_table(table))

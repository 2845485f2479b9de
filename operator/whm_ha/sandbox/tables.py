"""Server-side printing (``meta.k8s.io/v1`` Table), which ``kubectl get`` asks for."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .catalogue import ResourceType

_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath of printer columns (``.a.b[0].c``)."""
    value = obj
    for field, index in _SEGMENT.findall(path):
        if field:
            value = value.get(field) if isinstance(value, dict) else None
        else:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        if value is None:
            return None
    return value


def age(timestamp: str | None) -> str:
    """Kubernetes' short human duration (e.g. 45s, 3m, 5h, 2d)."""
    if not timestamp:
        return "<unknown>"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    value = json_path(obj, column["jsonPath"])
    if column["type"] == "date":
        return age(value)
    return value


EVENT_COLUMNS = (
    ("Last Seen", 0),
    ("Type", 0),
    ("Reason", 0),
    ("Object", 0),
    ("Subobject", 1),
    ("Source", 1),
    ("Message", 0),
    ("First Seen", 1),
    ("Count", 1),
    ("Name", 1),
)
"""The API server's columns for core Events (priority 1: only with ``-o wide``)."""


def _event_cells(event: dict[str, Any]) -> list[Any]:
    first = event.get("firstTimestamp") or event.get("eventTime")
    last = event.get("lastTimestamp") or event.get("eventTime") or first
    count = int(event.get("count") or 1)
    seen = f"{age(last)} (x{count} over {age(first)})" if count > 1 else age(last)
    involved = event.get("involvedObject") or {}
    source = event.get("source") or {}
    origin = ", ".join(p for p in (source.get("component") or event.get("reportingComponent"), source.get("host")) if p)
    return [
        seen,
        event.get("type", ""),
        event.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        involved.get("fieldPath", ""),
        origin,
        (event.get("message") or "").strip(),
        age(first),
        count,
        event["metadata"]["name"],
    ]


def _rows(rt: ResourceType, objects: list[dict[str, Any]], cells: Any, include: str) -> list[dict[str, Any]]:
    """Each object's cells, and the object as ``includeObject`` asks: Metadata (the default), Object (whole:
    ``kubectl --sort-by`` sorts by it) or None."""

    def embedded(obj: dict[str, Any]) -> dict[str, Any] | None:
        if include == "None":
            return None
        if include == "Object":
            return {"kind": rt.kind, "apiVersion": rt.api_version, **obj}
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}

    return [{"cells": cells(obj), "object": embedded(obj)} for obj in objects]


def _table(definitions: list[dict[str, Any]], rows: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }


def table(
    rt: ResourceType, objects: list[dict[str, Any]], resource_version: str, include: str = "Metadata"
) -> dict[str, Any]:
    if rt.key == ("", "events"):
        definitions = [
            {"name": name, "type": "string", "format": "", "description": "", "priority": priority}
            for name, priority in EVENT_COLUMNS
        ]
        return _table(definitions, _rows(rt, objects, _event_cells, include), resource_version)
    columns = [dict(c) for c in rt.columns] if rt.columns else []
    if not any(c.get("jsonPath") == AGE_COLUMN["jsonPath"] for c in columns):
        columns.append(AGE_COLUMN)
    definitions = [NAME_COLUMN] + [
        {
            "name": c["name"],
            "type": "string" if c["type"] == "date" else c["type"],
            "format": "",
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = _rows(rt, objects, lambda obj: [obj["metadata"]["name"], *(_cell(obj, c) for c in columns)], include)
    return _table(definitions, rows, resource_version)

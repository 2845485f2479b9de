"""Label and field selectors, as the API server parses them from query strings."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")
FIELDS = ("metadata.name", "metadata.namespace")
RESOURCE_FIELDS = {
    ("", "events"): (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    )
}
"""The fields each resource may be selected by besides FIELDS, as the API server's field label conversions."""
FIELD_PATHS = {"source": "source.component"}


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Matcher:
    if match := _SET.match(text):
        key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negate, key = match.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {text.strip()!r}")


def label_selector(text: str | None) -> Matcher:
    """A predicate on objects from a labelSelector query parameter."""
    if not text:
        return lambda obj: True
    requirements = [_requirement(part) for part in _split(text)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement(labels) for requirement in requirements)

    return matches


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in FIELD_PATHS.get(path, path).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_selector(text: str | None, resource: tuple[str, str] = ("", "")) -> Matcher:
    """A predicate on objects from a fieldSelector query parameter: metadata.name and metadata.namespace, and
    the resource's own fields (``resource`` is its (group, plural); Events: involvedObject.*, reason, type...)."""
    if not text:
        return lambda obj: True
    supported = FIELDS + RESOURCE_FIELDS.get(resource, ())
    checks = []
    for part in _split(text):
        match = _EQ.match(part)
        if not match or match.group(1) not in supported:
            raise bad_request(f'field label not supported: "{part.strip()}"')
        path, op, value = match.group(1), match.group(2), match.group(3)
        checks.append((path, op == "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((_field(obj, path) == value) != negate for path, negate, value in checks)

    return matches

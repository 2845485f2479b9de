"""Which node or member a legacy request names. Names and ids are unique; a host may be shared (several members
on one server, on different ports), so a host that matches several is ambiguous and never guessed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import errors

Obj = dict[str, Any]


def _one(found: list[Obj], what: str, ident: str, names: list[str]) -> Obj:
    if not found:
        raise errors.not_found(f"no {what} {ident!r}")
    if len(found) > 1:
        raise errors.conflict(
            f"{ident!r} matches {len(found)} {what}s: {', '.join(names)}; name one by its name"
            + (" or host:port" if what == "member" else " or node id"),
            code="AMBIGUOUS",
            matches=names,
        )
    return found[0]


def find_member(members: Sequence[Obj], ident: str) -> Obj:
    """A MySQLReplication member by name, ``host:port`` or host; 404 when none, 409 when a host is shared."""
    by_name = [m for m in members if m["name"] == ident]
    if by_name:
        return by_name[0]
    host, sep, port = ident.rpartition(":")
    if sep and port.isdigit():
        exact = [m for m in members if (m["host"], int(m.get("port", 3306))) == (host.strip("[]"), int(port))]
        if exact:
            return exact[0]
    found = [m for m in members if m["host"] == ident]
    return _one(found, "member", ident, [f"{m['name']} ({m['host']}:{m.get('port', 3306)})" for m in found])


def find_node(nodes: Sequence[Obj], ident: str) -> Obj:
    """A WHMNode by name, node id, hostname or address; 404 when none, 409 when a hostname or address is
    shared by several nodes."""
    for node in nodes:
        if node["metadata"]["name"] == ident or str((node.get("status") or {}).get("nodeId")) == ident:
            return node
    found = [n for n in nodes if ident in (n["spec"].get("hostname"), n["spec"].get("address"))]
    return _one(found, "node", ident, [n["metadata"]["name"] for n in found])

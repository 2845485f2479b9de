"""Which member or node a legacy request names: unique names and ids, shared hosts refused, never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from whm_ha.shim.errors import ShimError
from whm_ha.shim.lookup import find_member, find_node

MEMBERS = [
    {"name": "db-0", "host": "127.0.0.1", "port": 3306},
    {"name": "db-1", "host": "127.0.0.1", "port": 3307},
    {"name": "db-2", "host": "10.0.0.22"},
]


def node(name: str, node_id: int, hostname: str, address: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"hostname": hostname, "address": address},
        "status": {"nodeId": node_id},
    }


NODES = [node("n1", 1, "web", "10.0.0.1"), node("n2", 2, "web", "10.0.0.2"), node("n3", 3, "db", "10.0.0.2")]


@pytest.mark.parametrize(
    ("ident", "name"), [("db-1", "db-1"), ("127.0.0.1:3307", "db-1"), ("10.0.0.22", "db-2"), ("10.0.0.22:3306", "db-2")]
)
def test_a_member_by_name_host_port_or_unique_host(ident: str, name: str) -> None:
    assert find_member(MEMBERS, ident)["name"] == name


def test_a_shared_host_is_409_naming_every_member_it_matches() -> None:
    with pytest.raises(ShimError) as caught:
        find_member(MEMBERS, "127.0.0.1")
    assert caught.value.status == 409 and caught.value.code == "AMBIGUOUS"
    assert caught.value.details["matches"] == ["db-0 (127.0.0.1:3306)", "db-1 (127.0.0.1:3307)"]


@pytest.mark.parametrize("ident", ["10.9.9.9", "127.0.0.1:3399", "db-9"])
def test_an_unknown_member_is_404(ident: str) -> None:
    with pytest.raises(ShimError) as caught:
        find_member(MEMBERS, ident)
    assert caught.value.status == 404


@pytest.mark.parametrize(("ident", "name"), [("n2", "n2"), ("3", "n3"), ("db", "n3"), ("10.0.0.1", "n1")])
def test_a_node_by_name_id_or_unique_hostname_or_address(ident: str, name: str) -> None:
    assert find_node(NODES, ident)["metadata"]["name"] == name


@pytest.mark.parametrize(("ident", "matches"), [("web", ["n1", "n2"]), ("10.0.0.2", ["n2", "n3"])])
def test_a_shared_hostname_or_address_is_409(ident: str, matches: list[str]) -> None:
    with pytest.raises(ShimError) as caught:
        find_node(NODES, ident)
    assert caught.value.status == 409 and caught.value.details["matches"] == matches

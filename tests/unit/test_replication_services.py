"""The desired Services and EndpointSlices of a MySQLReplication."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.crd.mysqlreplication import Member
from whm_ha.replication.services import address_type, contains, desired_objects, literal_address, resolve

OWNER = {"apiVersion": "ha.whm.io/v1alpha1", "metadata": {"name": "db", "uid": "u-1"}}


def test_address_types() -> None:
    assert [address_type(a) for a in ("10.0.0.1", "fd00::1")] == ["IPv4", "IPv6"]
    assert [literal_address(h) for h in ("10.0.0.1", "[fd00::1]", "db-0.db.svc")] == ["10.0.0.1", "fd00::1", None]


async def test_members_named_by_host_name_are_published_by_their_address() -> None:
    """kube-proxy ignores FQDN slices: a name is resolved; one that does not resolve is left out."""
    assert await resolve("10.0.0.7") == "10.0.0.7"
    assert await resolve("localhost") == "127.0.0.1"
    assert await resolve("no-such-host.invalid") is None


def test_one_service_per_role_and_one_slice_per_address_type_and_port() -> None:
    primary = Member(name="m0", host="10.0.0.1")
    replicas = [Member(name="m1", host="10.0.0.2"), Member(name="m2", host="db-2.db.svc", port=3307)]
    addresses = {"10.0.0.1": "10.0.0.1", "10.0.0.2": "10.0.0.2", "db-2.db.svc": "10.0.0.3"}
    objects = desired_objects(OWNER, primary, replicas, addresses)
    assert sorted(objects) == [
        ("endpointslices", "db-primary-ipv4-3306"),
        ("endpointslices", "db-replicas-ipv4-3306"),
        ("endpointslices", "db-replicas-ipv4-3307"),
        ("services", "db-primary"),
        ("services", "db-replicas"),
    ]
    service = objects[("services", "db-primary")]
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"] == [{"name": "mysql", "port": 3306, "protocol": "TCP"}]
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "ha.whm.io/v1alpha1", "kind": "MySQLReplication", "name": "db", "uid": "u-1", "controller": True}
    ]
    named = objects[("endpointslices", "db-replicas-ipv4-3307")]
    assert named["addressType"] == "IPv4" and named["ports"] == [{"name": "mysql", "port": 3307, "protocol": "TCP"}]
    assert named["endpoints"] == [{"addresses": ["10.0.0.3"], "conditions": {"ready": True}}]
    assert named["metadata"]["labels"] == {
        "ha.whm.io/replication": "db",
        "kubernetes.io/service-name": "db-replicas",
        "endpointslice.kubernetes.io/managed-by": "whm-ha-operator",
    }


def test_no_endpoints_no_slices_but_the_services_stay() -> None:
    unresolved = [Member(name="m1", host="db-1.db.svc")]
    assert sorted(desired_objects(OWNER, None, unresolved, {})) == [
        ("services", "db-primary"),
        ("services", "db-replicas"),
    ]


def test_contains_ignores_what_the_api_server_adds() -> None:
    wanted = {"spec": {"ports": [{"name": "mysql", "port": 3306}]}, "metadata": {"labels": {"a": "1"}}}
    current: dict[str, Any] = {
        "spec": {"ports": [{"name": "mysql", "port": 3306, "targetPort": 3306}], "clusterIP": "10.96.0.9"},
        "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "x"},
    }
    assert contains(current, wanted)
    assert not contains(current, {"spec": {"ports": [{"name": "mysql", "port": 3307}]}})
    assert not contains(current, {"spec": {"ports": []}})
    assert not contains({}, wanted)


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@given(st.lists(st.tuples(addresses, st.integers(1, 65535)), max_size=6))
def test_every_replica_is_in_exactly_one_slice_of_its_type_and_port(endpoints: list[tuple[str, int]]) -> None:
    replicas = [Member(name=f"m{i}", host=f"db-{i}.db.svc", port=p) for i, (_, p) in enumerate(endpoints)]
    resolved = {f"db-{i}.db.svc": address for i, (address, _) in enumerate(endpoints)}
    objects = desired_objects(OWNER, None, replicas, resolved)
    seen = []
    for (kind, _), body in objects.items():
        if kind == "endpointslices":
            assert len(body["ports"]) == 1
            for endpoint in body["endpoints"]:
                seen.append((endpoint["addresses"][0], body["ports"][0]["port"]))
                assert body["addressType"] == address_type(endpoint["addresses"][0])
    assert sorted(seen) == sorted(endpoints)

"""Examples pass the schema; invalid objects are rejected with their field paths."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from whm_ha.crd.generate import resource_schema
from whm_ha.crd.resources import ALL, MYSQL_REPLICATION, WHM_CLUSTER, WHM_NODE
from whm_ha.crd.validation import admit, schema_problems
from whm_ha.crd.whmcluster import WHMClusterSpec

ROOT = Path(__file__).resolve().parents[2]
BY_KIND = {r.kind: r for r in ALL}


def example_objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in BY_KIND]
    return docs


EXAMPLES = example_objects()


def test_examples_cover_every_kind() -> None:
    assert {d["kind"] for d in EXAMPLES} == set(BY_KIND)


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_example_is_valid_and_parses_into_the_models(obj: dict[str, Any]) -> None:
    resource = BY_KIND[obj["kind"]]
    admitted, errors = admit(resource_schema(resource), obj)
    assert errors == []
    spec = resource.spec.model_validate(admitted["spec"])
    assert spec.to_k8s() == admitted["spec"], "model and schema disagree on defaults or names"


def _example(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in EXAMPLES if d["kind"] == kind))


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target: Any = obj
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


DELETE = object()

INVALID = [
    # (kind, path to change, new value, field path expected in the error, text expected in the message)
    ("WHMNode", "spec.priority", 1001, "spec.priority", "maximum"),
    ("WHMNode", "spec.priority", -1, "spec.priority", "minimum"),
    ("WHMNode", "spec.port", 0, "spec.port", "minimum"),
    ("WHMNode", "spec.port", 70000, "spec.port", "maximum"),
    ("WHMNode", "spec.port", "http", "spec.port", "must be of type integer"),
    ("WHMNode", "spec.cluster", DELETE, "spec.cluster", "Required value"),
    ("WHMNode", "spec.address", DELETE, "spec.address", "Required value"),
    ("WHMNode", "spec.maintenance", "yes", "spec.maintenance", "must be of type boolean"),
    ("WHMNode", "spec.cluster", "Not_A_Name", "spec.cluster", "does not match"),
    (
        "WHMCluster",
        "spec.loadBalancer.algorithm",
        "random",
        "spec.loadBalancer.algorithm",
        "Unsupported value",
    ),
    ("WHMCluster", "spec.healthCheck.type", "icmp", "spec.healthCheck.type", "Unsupported value"),
    ("WHMCluster", "spec.healthCheck.periodSeconds", 0, "spec.healthCheck.periodSeconds", "minimum"),
    (
        "WHMCluster",
        "spec.healthCheck.timeoutSeconds",
        9,
        "spec.healthCheck.timeoutSeconds",
        "must not exceed",
    ),
    ("WHMCluster", "spec.healthCheck.path", "healthz", "spec.healthCheck.path", "does not match"),
    ("WHMCluster", "spec.healthCheck.scheme", "ftp", "spec.healthCheck.scheme", "Unsupported value"),
    (
        "WHMCluster",
        "spec.healthCheck",
        {"type": "tcp", "scheme": "https"},
        "spec.healthCheck.scheme",
        "scheme applies to http probes only",
    ),
    (
        "WHMCluster",
        "spec.nodeTLS",
        {"enabled": True, "insecureSkipVerify": True, "caSecret": {"name": "node-ca"}},
        "spec.nodeTLS.insecureSkipVerify",
        "insecureSkipVerify and caSecret are exclusive",
    ),
    ("WHMCluster", "spec.nodeTLS", {"serverName": "WHM_node"}, "spec.nodeTLS.serverName", "does not match"),
    ("WHMCluster", "spec.nodeTLS", {"enabled": "yes"}, "spec.nodeTLS.enabled", "must be of type boolean"),
    ("WHMCluster", "spec.nodeTLS", {"caSecret": {"key": "ca.crt"}}, "spec.nodeTLS.caSecret.name", "Required value"),
    ("WHMCluster", "spec.loadBalancer.retries", 11, "spec.loadBalancer.retries", "maximum"),
    (
        "WHMCluster",
        "spec.loadBalancer.tls",
        {"certificates": [{"secretName": "web"}, {"secretName": "web"}]},
        "spec.loadBalancer.tls.certificates",
        "each Secret may be named once",
    ),
    (
        "WHMCluster",
        "spec.loadBalancer.tls",
        {"certificates": [{"secretName": "Web_TLS"}]},
        "spec.loadBalancer.tls.certificates[0].secretName",
        "does not match",
    ),
    (
        "WHMCluster",
        "spec.loadBalancer.tls",
        {"hsts": {"includeSubDomains": True}},
        "spec.loadBalancer.tls.hsts.includeSubDomains",
        "needs a maxAgeSeconds above 0",
    ),
    (
        "WHMCluster",
        "spec.loadBalancer.tls",
        {"hsts": {"maxAgeSeconds": 63072001}},
        "spec.loadBalancer.tls.hsts.maxAgeSeconds",
        "maximum",
    ),
    (
        "WHMCluster",
        "spec.loadBalancer.clientAddress",
        {"trustedNetworks": ["10.0.0.0/8", "10.0.0.1"]},
        "spec.loadBalancer.clientAddress.trustedNetworks[1]",
        "must be a CIDR",
    ),
    (
        "WHMCluster",
        "spec.loadBalancer.clientAddress",
        {"trustedNetworks": ["lb.example/32"]},
        "spec.loadBalancer.clientAddress.trustedNetworks[0]",
        "must be a CIDR",
    ),
    ("WHMCluster", "spec.database.replicationRef", DELETE, "spec.database.replicationRef", "Required value"),
    ("WHMCluster", "spec", DELETE, "spec", "Required value"),
    ("MySQLReplication", "spec.members", [], "spec.members", "should be non-empty"),
    ("MySQLReplication", "spec.members.0.port", 65536, "spec.members[0].port", "maximum"),
    ("MySQLReplication", "spec.members.0.host", DELETE, "spec.members[0].host", "Required value"),
    ("MySQLReplication", "spec.flavor", "postgres", "spec.flavor", "Unsupported value"),
    ("MySQLReplication", "spec.primary", "db-9", "spec.primary", "primary must name one of the members"),
    (
        "MySQLReplication",
        "spec.members.0.neverPromote",
        True,
        "spec.primary",
        "must not be marked neverPromote",
    ),
    ("MySQLReplication", "spec.tls", {"enabled": True}, "spec.tls.caSecret", "caSecret is required"),
    (
        "MySQLReplication",
        "spec.tls",
        {"enabled": True, "caSecret": {"name": "db-ca"}},
        "spec.tls.caFile",
        "caFile is required",
    ),
    (
        "MySQLReplication",
        "spec.tls",
        {"requireSecureTransport": True},
        "spec.tls.requireSecureTransport",
        "needs tls.enabled",
    ),
    ("MySQLReplication", "spec.tls", {"caFile": "/etc/my ca.pem"}, "spec.tls.caFile", "does not match"),
    ("MySQLReplication", "spec.credentialsSecret", DELETE, "spec.credentialsSecret", "Required value"),
    ("MySQLReplication", "spec.maxLagSeconds", "30s", "spec.maxLagSeconds", "must be of type integer"),
    (
        "MySQLReplication",
        "spec.backup.storage",
        {
            "filesystem": {"path": "/b"},
            "s3": {"endpoint": "https://s3", "bucket": "bkt", "credentialsSecret": {"name": "s"}},
        },
        "spec.backup.storage",
        "set exactly one of s3 and filesystem",
    ),
    ("MySQLReplication", "spec.backup.storage", {}, "spec.backup.storage", "set exactly one of s3 and filesystem"),
    ("MySQLReplication", "spec.backup.storage", DELETE, "spec.backup.storage", "Required value"),
    ("MySQLReplication", "spec.backup.schedule", "every day", "spec.backup.schedule", "does not match"),
    ("MySQLReplication", "spec.backup.schedule", "@often", "spec.backup.schedule", "does not match"),
    ("MySQLReplication", "spec.backup.retention.keep", 0, "spec.backup.retention.keep", "minimum"),
    ("MySQLReplication", "spec.backup.retention.maxAge", "30 days", "spec.backup.retention.maxAge", "does not match"),
    ("MySQLReplication", "spec.backup.maxAge", "0h", "spec.backup.maxAge", "does not match"),
    ("MySQLReplication", "spec.backup.target", "Replica", "spec.backup.target", "Unsupported value"),
    (
        "MySQLReplication",
        "spec.backup.storage.s3.bucket",
        "My_Bucket",
        "spec.backup.storage.s3.bucket",
        "does not match",
    ),
    (
        "MySQLReplication",
        "spec.backup.storage.s3.endpoint",
        "s3.example.com",
        "spec.backup.storage.s3.endpoint",
        "does not match",
    ),
    ("MySQLReplication", "spec.backup.storage.s3.prefix", "../x/", "spec.backup.storage.s3.prefix", "does not match"),
    (
        "MySQLReplication",
        "spec",
        {k: v for k, v in _example("MySQLReplication")["spec"].items() if k != "backup"}
        | {"bootstrap": {"recovery": {}}},
        "spec.bootstrap.recovery.storage",
        "bootstrap.recovery needs its storage, or spec.backup.storage",
    ),
    (
        "MySQLReplication",
        "spec.bootstrap",
        {"recovery": {"backup": "Latest"}},
        "spec.bootstrap.recovery.backup",
        "does not match",
    ),
    (
        "MySQLReplication",
        "spec.bootstrap",
        {"recovery": {"target": {"time": "2026-12-07T19:30:00Z", "endOfArchive": True}}},
        "spec.bootstrap.recovery.target",
        "set at most one of time, gtid and endOfArchive",
    ),
    (
        "MySQLReplication",
        "spec.bootstrap",
        {"recovery": {"target": {"time": "2026-12-07T19:30:00.5Z"}}},
        "spec.bootstrap.recovery.target.time",
        "does not match",
    ),
    (
        "MySQLReplication",
        "spec.bootstrap",
        {"recovery": {"target": {"gtid": "0-1"}}},
        "spec.bootstrap.recovery.target.gtid",
        "does not match",
    ),
    ("MySQLBackup", "spec.replication", DELETE, "spec.replication", "Required value"),
    ("MySQLBackup", "spec.replication", "Whm_DB", "spec.replication", "does not match"),
    ("MySQLBackup", "spec.target", "Any", "spec.target", "Unsupported value"),
    ("MySQLBackup", "spec.attempts", 0, "spec.attempts", "minimum"),
]


@pytest.mark.parametrize(
    ("kind", "path", "value", "field", "text"),
    INVALID,
    ids=[f"{c[0]}:{c[1]}={'<deleted>' if c[2] is DELETE else repr(c[2])}" for c in INVALID],
)
def test_invalid_object_is_rejected_with_field_path(kind: str, path: str, value: Any, field: str, text: str) -> None:
    obj = _set(_example(kind), path, value)
    _, errors = admit(resource_schema(BY_KIND[kind]), obj)
    assert errors, f"{kind} with {path}={value!r} was accepted"
    assert any(e.field == field and text in e.message for e in errors), [str(e) for e in errors]


def test_unknown_fields_are_pruned() -> None:
    obj = _example("WHMNode")
    obj["spec"]["colour"] = "blue"
    obj["spec"]["podRef"] = {"name": "p", "extra": 1}
    admitted, errors = admit(resource_schema(WHM_NODE), obj)
    assert errors == []
    assert "colour" not in admitted["spec"]
    assert admitted["spec"]["podRef"] == {"name": "p"}
    assert admitted["metadata"] == obj["metadata"]


def test_cluster_of_a_node_is_immutable() -> None:
    old = _example("WHMNode")
    new = _set(copy.deepcopy(old), "spec.cluster", "other")
    schema = resource_schema(WHM_NODE)
    _, errors = admit(schema, new, old=old)
    assert [str(e) for e in errors] == ["spec.cluster: Invalid value: cluster is immutable"]
    assert admit(schema, new)[1] == [], "transition rules apply only to updates"


def test_defaults_fill_an_empty_cluster_spec() -> None:
    admitted, errors = admit(resource_schema(WHM_CLUSTER), {"kind": "WHMCluster", "spec": {}})
    assert errors == []
    assert admitted["spec"]["healthCheck"]["periodSeconds"] == 5
    assert admitted["spec"]["failover"]["automatic"] is True
    assert admitted["spec"]["loadBalancer"]["stickySessions"]["cookieName"] == "WHMHA_NODE"
    assert admitted["spec"]["nodeTLS"] == {"enabled": False, "insecureSkipVerify": False}
    assert "scheme" not in admitted["spec"]["healthCheck"]


def test_probe_scheme_follows_node_tls_unless_set() -> None:
    def scheme(spec: dict[str, Any]) -> str:
        return WHMClusterSpec.model_validate(spec).probe_scheme

    assert scheme({}) == "http"
    assert scheme({"nodeTLS": {"enabled": True}}) == "https"
    assert scheme({"nodeTLS": {"enabled": True}, "healthCheck": {"scheme": "http"}}) == "http"
    assert scheme({"healthCheck": {"scheme": "https"}}) == "https"
    admitted, errors = admit(
        resource_schema(WHM_CLUSTER),
        {"kind": "WHMCluster", "spec": {"nodeTLS": {"enabled": True, "caSecret": {"name": "node-ca"}}}},
    )
    assert errors == []
    assert admitted["spec"]["nodeTLS"]["caSecret"] == {"name": "node-ca", "key": "ca.crt"}


def test_replication_defaults() -> None:
    obj = _example("MySQLReplication")
    del obj["spec"]["members"][1]["port"]
    admitted, errors = admit(resource_schema(MYSQL_REPLICATION), obj)
    assert errors == []
    assert admitted["spec"]["members"][1]["port"] == 3306
    assert admitted["spec"]["tls"] == {"enabled": False, "requireSecureTransport": False, "verifyServerName": True}


def test_our_crd_schemas_have_no_problem_kube_apiserver_would_refuse() -> None:
    for resource in ALL:
        assert schema_problems(resource_schema(resource)) == []


def test_schema_problems_finds_what_kube_apiserver_refuses() -> None:
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "description": "not allowed"},
            "spec": {
                "type": "object",
                "properties": {
                    "probe": {
                        "type": "object",
                        "default": {},
                        "properties": {"a": {"type": "integer", "default": 1}, "b": {"type": "integer", "default": 2}},
                        "x-kubernetes-validations": [{"rule": "self.a <= self.b", "message": "a > b"}],
                    }
                },
            },
        },
    }
    fields = [p.field for p in schema_problems(schema)]
    assert fields == [
        "spec.validation.openAPIV3Schema.properties[metadata]",
        "spec.validation.openAPIV3Schema.properties[spec].properties[probe].default",
    ]


LOCKOUT = "turn requireSecureTransport off and let the operator apply it before disabling TLS"


@pytest.mark.parametrize("still_required", [True, False])
def test_tls_is_not_disabled_in_the_change_that_requires_or_stops_requiring_secure_transport(
    still_required: bool,
) -> None:
    """Members still refusing plaintext would refuse the operator's plaintext sessions: requireSecureTransport goes
    off (and the operator applies it) in one change, TLS in a later one."""
    schema = resource_schema(MYSQL_REPLICATION)
    tls = {"enabled": True, "caSecret": {"name": "db-ca"}, "caFile": "ca.pem"}
    old, _ = admit(schema, _set(_example("MySQLReplication"), "spec.tls", tls | {"requireSecureTransport": True}))
    off = _set(copy.deepcopy(old), "spec.tls", tls | {"enabled": False, "requireSecureTransport": still_required})
    _, errors = admit(schema, off, old=old)
    assert LOCKOUT in " ".join(str(e) for e in errors), errors
    assert [e.field for e in errors if LOCKOUT in str(e)] == ["spec.tls.enabled"]
    step, errors = admit(schema, _set(copy.deepcopy(old), "spec.tls", tls | {"requireSecureTransport": False}), old=old)
    assert errors == []
    assert admit(schema, _set(copy.deepcopy(step), "spec.tls", tls | {"enabled": False}), old=step)[1] == []

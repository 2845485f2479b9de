"""Kubernetes API semantics this project relies on; the same tests run on the sandbox and (--real-api) a real server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_helpers import GROUP, VERSION, create_node, error_of, node, raw_request, stream_nodes, wait_for


@pytest.fixture
def custom(kube_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_client)


@pytest.fixture
def core(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


def test_version_and_discovery(kube_client: client.ApiClient) -> None:
    version = client.VersionApi(kube_client).get_code()
    assert version.major == "1"
    groups = {g.name for g in client.ApisApi(kube_client).get_api_versions().groups}
    assert {"ha.whm.io", "apiextensions.k8s.io", "coordination.k8s.io", "discovery.k8s.io"} <= groups
    core_resources = {r.name for r in client.CoreV1Api(kube_client).get_api_resources().resources}
    assert {
        "namespaces",
        "events",
        "secrets",
        "configmaps",
        "services",
        "endpoints",
        "pods",
        "pods/status",
    } <= core_resources
    ours = client.CustomObjectsApi(kube_client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in ours.resources}
    assert set(by_name) == {
        f"{p}{s}" for p in ("whmclusters", "whmnodes", "mysqlreplications", "mysqlbackups") for s in ("", "/status")
    }
    assert by_name["mysqlbackups"].short_names == ["mybk"]
    assert by_name["whmnodes"].short_names == ["whmn"]
    assert by_name["whmnodes"].namespaced is True


def test_crd_created_at_run_time_appears_and_disappears(kube_client: client.ApiClient, kube_namespace: str) -> None:
    ext = client.ApiextensionsV1Api(kube_client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition("widgets.example.com").status.conditions or []
        return {c.type: c.status for c in conditions}.get("Established") == "True"

    wait_for(established, 30, "the CRD to be Established")
    custom = client.CustomObjectsApi(kube_client)

    def served() -> bool:
        try:
            custom.list_namespaced_custom_object("example.com", "v1", kube_namespace, "widgets")
        except ApiException as exc:
            return exc.status != 404
        return True

    wait_for(served, 30, "the new resource to be served")
    custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        kube_namespace,
        "widgets",
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 3, "colour": "red"},
        },
    )
    stored = custom.get_namespaced_custom_object("example.com", "v1", kube_namespace, "widgets", "w")
    assert stored["spec"] == {"size": 3}, "unknown fields are pruned"
    ext.delete_custom_resource_definition("widgets.example.com")
    wait_for(lambda: not served(), 30, "the deleted CRD's resource to vanish")
    wait_for(
        lambda: "example.com" not in {g.name for g in client.ApisApi(kube_client).get_api_versions().groups},
        30,
        "the group to leave discovery",
    )


def test_builtin_resources_are_stored_as_plain_objects(kube_client: client.ApiClient, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    core.create_namespaced_secret(
        kube_namespace, {"metadata": {"name": "s"}, "type": "kubernetes.io/basic-auth", "stringData": {"username": "u"}}
    )
    core.create_namespaced_service(kube_namespace, {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
    core.create_namespaced_endpoints(
        kube_namespace,
        {"metadata": {"name": "svc"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]},
    )
    core.create_namespaced_pod(
        kube_namespace,
        {"metadata": {"name": "p", "labels": {"app": "whm"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
    )
    core.create_namespaced_event(
        kube_namespace,
        {
            "metadata": {"name": "e"},
            "involvedObject": {"name": "p", "namespace": kube_namespace},
            "reason": "Test",
            "message": "m",
        },
    )
    client.DiscoveryV1Api(kube_client).create_namespaced_endpoint_slice(
        kube_namespace,
        {"metadata": {"name": "svc-1"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]},
    )
    client.CoordinationV1Api(kube_client).create_namespaced_lease(
        kube_namespace, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}}
    )
    assert core.read_namespaced_config_map("cm", kube_namespace).data == {"a": "1"}
    assert core.read_namespaced_endpoints("svc", kube_namespace).subsets[0].addresses[0].ip == "10.0.0.1"
    assert [p.metadata.name for p in core.list_namespaced_pod(kube_namespace).items] == ["p"]
    core.patch_namespaced_pod_status("p", kube_namespace, {"status": {"podIP": "10.1.0.5", "phase": "Running"}})
    assert core.read_namespaced_pod("p", kube_namespace).status.pod_ip == "10.1.0.5"
    assert client.CoordinationV1Api(kube_client).read_namespaced_lease("l", kube_namespace).spec.holder_identity == "me"


def test_secret_string_data_is_stored_as_base64_data(core: client.CoreV1Api, kube_namespace: str) -> None:
    core.create_namespaced_secret(
        kube_namespace,
        {"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"username": "root", "a": "y"}},
    )
    secret = core.read_namespaced_secret("s", kube_namespace)
    assert secret.data == {"a": "eQ==", "username": "cm9vdA=="}, "stringData wins over data, then disappears"
    assert secret.string_data is None


def test_objects_in_a_missing_namespace_are_refused(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "cm"}})
    assert refused.value.status == 404
    assert error_of(refused.value)["reason"] == "NotFound"


def test_metadata_is_set_as_a_real_server_does(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    first = create_node(custom, kube_namespace, "n1")
    second = create_node(custom, kube_namespace, "n2")
    meta = first["metadata"]
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert meta["namespace"] == kube_namespace
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert first["spec"]["port"] == 4000 and first["spec"]["priority"] == 100, "defaults applied"


def test_generation_changes_only_with_spec(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    create_node(custom, kube_namespace, "n1")
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"status": {"health": "Healthy"}}
    )
    assert status["metadata"]["generation"] == 1
    respec = custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"spec": {"priority": 7}}
    )
    assert respec["metadata"]["generation"] == 2
    assert int(respec["metadata"]["resourceVersion"]) > int(status["metadata"]["resourceVersion"])


def test_no_op_write_keeps_resource_version(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = create_node(custom, kube_namespace, "n1")
    same = custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"spec": {"port": 4000}}
    )
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_namespace_scoping(custom: client.CustomObjectsApi, core: client.CoreV1Api, kube_namespace: str) -> None:
    other = f"{kube_namespace}-b"
    core.create_namespace({"metadata": {"name": other}})
    create_node(custom, kube_namespace, "same")
    create_node(custom, other, "same")
    assert len(custom.list_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes")["items"]) == 1
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, "whmnodes")["items"]
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere} >= {
        (kube_namespace, "same"),
        (other, "same"),
    }


def test_list_with_label_and_field_selectors(core: client.CoreV1Api, kube_namespace: str) -> None:
    for name, labels in (
        ("a", {"role": "primary", "tier": "web"}),
        ("b", {"role": "secondary", "tier": "web"}),
        ("c", {"tier": "db"}),
    ):
        core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        return [cm.metadata.name for cm in core.list_namespaced_config_map(kube_namespace, **kwargs).items]

    assert names(label_selector="role=primary") == ["a"]
    assert names(label_selector="tier=web,role!=primary") == ["b"]
    assert names(label_selector="role in (primary,secondary)") == ["a", "b"]
    assert names(label_selector="role notin (primary)") == ["b", "c"]
    assert names(label_selector="role") == ["a", "b"]
    assert names(label_selector="!role") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    all_namespaces = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={kube_namespace}")
    assert len(all_namespaces.items) == 3
    for unsupported in ("spec.nodeName=x", "involvedObject.name=a"):  # the second is an Event's field
        with pytest.raises(ApiException) as bad:
            names(field_selector=unsupported)
        assert bad.value.status == 400


def test_create_existing_is_409_already_exists(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    create_node(custom, kube_namespace, "n1")
    with pytest.raises(ApiException) as exists:
        create_node(custom, kube_namespace, "n1")
    assert exists.value.status == 409
    assert error_of(exists.value)["reason"] == "AlreadyExists"


def test_update_with_stale_resource_version_is_409_conflict(
    custom: client.CustomObjectsApi, kube_namespace: str
) -> None:
    created = create_node(custom, kube_namespace, "n1")
    fresh = copy.deepcopy(created)
    fresh["spec"]["priority"] = 5
    custom.replace_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1", fresh)
    stale = copy.deepcopy(created)
    stale["spec"]["priority"] = 6
    with pytest.raises(ApiException) as conflict:
        custom.replace_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1", stale)
    assert conflict.value.status == 409
    assert error_of(conflict.value)["reason"] == "Conflict"
    stale_status = {**stale, "status": {"health": "Healthy"}}
    with pytest.raises(ApiException) as status_conflict:
        custom.replace_namespaced_custom_object_status(GROUP, VERSION, kube_namespace, "whmnodes", "n1", stale_status)
    assert status_conflict.value.status == 409


def test_update_of_a_custom_resource_needs_a_resource_version(
    custom: client.CustomObjectsApi, kube_namespace: str
) -> None:
    created = create_node(custom, kube_namespace, "n1")
    del created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as invalid:
        custom.replace_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1", created)
    assert invalid.value.status == 422


def test_merge_patch_and_resource_version_precondition(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = create_node(custom, kube_namespace, "n1", weight=3)
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"spec": {"hostname": "h", "weight": None}}
    )
    assert patched["spec"]["hostname"] == "h"
    assert patched["spec"]["weight"] == 1, "null removes the field, and the default comes back"
    with pytest.raises(ApiException) as conflict:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            kube_namespace,
            "whmnodes",
            "n1",
            {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"priority": 1}},
        )
    assert conflict.value.status == 409


def test_json_patch_with_failing_test_is_422(
    kube_client: client.ApiClient, custom: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create_node(custom, kube_namespace, "n1")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/whmnodes/n1"

    def test_then_replace(expected: int, value: int) -> tuple[int, dict[str, Any]]:
        ops = [
            {"op": "test", "path": "/spec/priority", "value": expected},
            {"op": "replace", "path": "/spec/priority", "value": value},
        ]
        return raw_request(kube_client, "PATCH", path, ops, content_type="application/json-patch+json")

    status, body = test_then_replace(100, 9)
    assert status == 200 and body["spec"]["priority"] == 9
    status, body = test_then_replace(100, 1)
    assert status == 422 and body["kind"] == "Status"
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")["spec"]["priority"] == 9
    )


def test_strategic_merge_patch_is_415_for_custom_resources_and_a_patch_for_builtins(
    kube_client: client.ApiClient, custom: client.CustomObjectsApi, core: client.CoreV1Api, kube_namespace: str
) -> None:
    create_node(custom, kube_namespace, "n1")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/whmnodes/n1"
    status, body = raw_request(
        kube_client,
        "PATCH",
        path,
        {"spec": {"maintenance": True}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 415, "kube-apiserver refuses strategic merge patches of custom resources"
    assert body["reason"] == "UnsupportedMediaType"
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    status, body = raw_request(
        kube_client,
        "PATCH",
        f"/api/v1/namespaces/{kube_namespace}/configmaps/cm",
        {"data": {"b": "2"}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200 and body["data"] == {"a": "1", "b": "2"}


def test_delete_honours_finalizers(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    obj = node("n1")
    obj["metadata"]["finalizers"] = ["ha.whm.io/test"]
    custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", obj)
    custom.delete_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    pending = custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    assert pending["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    assert gone.value.status == 404
    with pytest.raises(ApiException) as missing:
        custom.delete_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    assert missing.value.status == 404
    assert error_of(missing.value)["reason"] == "NotFound"


def test_status_subresource_separation(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    created = node("n1")
    created["status"] = {"health": "Healthy"}
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", created)
    assert "status" not in stored, "status is ignored on create"
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"status": {"health": "Healthy"}, "spec": {"priority": 1}}
    )
    after_status = custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    assert after_status["status"] == {"health": "Healthy"}
    assert after_status["spec"]["priority"] == 100, "a status write leaves spec alone"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"status": {"health": "Unhealthy"}, "spec": {"priority": 2}}
    )
    after_main = custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    assert after_main["status"] == {"health": "Healthy"}, "a main write leaves status alone"
    assert after_main["spec"]["priority"] == 2


def test_status_is_validated_too(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    create_node(custom, kube_namespace, "n1")
    with pytest.raises(ApiException) as invalid:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"status": {"health": "Great"}}
        )
    assert invalid.value.status == 422
    assert error_of(invalid.value)["details"]["causes"][0]["field"] == "status.health"


def test_invalid_object_is_422_with_field_paths(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    with pytest.raises(ApiException) as invalid:
        create_node(custom, kube_namespace, "n1", port=70000, priority=-1)
    status = error_of(invalid.value)
    assert invalid.value.status == 422
    assert status["reason"] == "Invalid"
    assert {c["field"] for c in status["details"]["causes"]} == {"spec.port", "spec.priority"}
    assert 'WHMNode.ha.whm.io "n1" is invalid' in status["message"]


def replication(primary: str, **spec: Any) -> dict[str, Any]:
    """MySQLReplication ``db`` with member db-0 and ``spec`` besides."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MySQLReplication",
        "metadata": {"name": "db"},
        "spec": {
            "primary": primary,
            "members": [{"name": "db-0", "host": "h"}],
            "credentialsSecret": {"name": "a"},
            "replicationSecret": {"name": "b"},
            **spec,
        },
    }


def test_cel_rules_are_enforced(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    repl = replication("db-9")
    with pytest.raises(ApiException) as invalid:
        custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "mysqlreplications", repl)
    assert "primary must name one of the members" in error_of(invalid.value)["message"]
    create_node(custom, kube_namespace, "n1")
    with pytest.raises(ApiException) as immutable:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"spec": {"cluster": "other"}}
        )
    assert "cluster is immutable" in error_of(immutable.value)["message"]


def test_tls_is_disabled_only_after_secure_transport_is_no_longer_required(
    custom: client.CustomObjectsApi, kube_namespace: str
) -> None:
    """A transition rule (``oldSelf``): evaluated on updates only, as kube-apiserver does."""
    tls = {"enabled": True, "caSecret": {"name": "db-ca"}, "caFile": "ca.pem", "requireSecureTransport": True}
    repl = replication("db-0", tls=tls)
    custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "mysqlreplications", repl)

    def patch(change: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, "mysqlreplications", "db", {"spec": {"tls": change}}
        )

    with pytest.raises(ApiException) as refused:
        patch({"enabled": False, "requireSecureTransport": False})
    assert "let the operator apply it before disabling TLS" in error_of(refused.value)["message"]
    patch({"requireSecureTransport": False})
    patch({"enabled": False})


def test_bootstrap_is_immutable(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    """A transition rule on the whole spec: bootstrap can be neither changed, added nor removed."""
    storage = {"filesystem": {"path": "/backups"}}
    repl = replication("db-0", bootstrap={"recovery": {"backup": "base", "storage": storage}})
    custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "mysqlreplications", repl)

    def patch(change: Any) -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, "mysqlreplications", "db", {"spec": {"bootstrap": change}}
        )

    for change in ({"recovery": {"backup": "other"}}, None):
        with pytest.raises(ApiException) as refused:
            patch(change)
        assert "bootstrap is immutable" in error_of(refused.value)["message"]
    patch({"recovery": {"backup": "base"}})  # the same: accepted
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "mysqlreplications", "db", {"spec": {"maxLagSeconds": 60}}
    )


def test_strict_field_validation_refuses_unknown_fields(kube_client: client.ApiClient, kube_namespace: str) -> None:
    body = node("n1")
    body["spec"]["colour"] = "red"
    status, answer = raw_request(
        kube_client,
        "POST",
        f"/apis/{GROUP}/{VERSION}/namespaces/{kube_namespace}/whmnodes?fieldValidation=Strict",
        body,
    )
    assert status == 400, "kube-apiserver answers strict decoding errors with 400"
    assert 'strict decoding error: unknown field "spec.colour"' in answer["message"]


def test_watch_resumes_from_a_resource_version(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes")["metadata"][
        "resourceVersion"
    ]
    create_node(custom, kube_namespace, "n1")
    custom.patch_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"spec": {"priority": 1}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "n1")
    events = stream_nodes(custom, kube_namespace, resource_version=start, timeout_seconds=1)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]
    versions = [int(rv) for _, _, rv in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_watch_without_version_starts_with_current_objects(
    custom: client.CustomObjectsApi, kube_namespace: str
) -> None:
    create_node(custom, kube_namespace, "n1")
    create_node(custom, kube_namespace, "n2")
    assert [(t, n) for t, n, _ in stream_nodes(custom, kube_namespace, timeout_seconds=1)] == [
        ("ADDED", "n1"),
        ("ADDED", "n2"),
    ]


def test_watch_with_label_selector_sees_objects_leave_it(custom: client.CustomObjectsApi, kube_namespace: str) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes")["metadata"][
        "resourceVersion"
    ]
    obj = node("n1")
    obj["metadata"]["labels"] = {"role": "primary"}
    custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", obj)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, "whmnodes", "n1", {"metadata": {"labels": {"role": "secondary"}}}
    )
    events = stream_nodes(
        custom, kube_namespace, resource_version=start, timeout_seconds=1, label_selector="role=primary"
    )
    assert [(t, n) for t, n, _ in events] == [("ADDED", "n1"), ("DELETED", "n1")]


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"metadata": {"type": "object", "description": "metadata"}}, "openAPIV3Schema.properties[metadata]"),
        (
            {
                "spec": {
                    "type": "object",
                    "default": {},
                    "properties": {"a": {"type": "integer", "default": 3}, "b": {"type": "integer", "default": 5}},
                    "x-kubernetes-validations": [{"rule": "self.a <= self.b", "message": "a must not exceed b"}],
                }
            },
            "openAPIV3Schema.properties[spec].default",
        ),
    ],
    ids=["metadata-described", "default-failing-its-rule"],
)
def test_crd_schemas_kube_apiserver_refuses(
    kube_client: client.ApiClient, properties: dict[str, Any], field: str
) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Gadget", "plural": "gadgets"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": properties}},
                }
            ],
        },
    }
    with pytest.raises(ApiException) as refused:
        client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(crd)
    assert refused.value.status == 422
    assert field in error_of(refused.value)["message"]

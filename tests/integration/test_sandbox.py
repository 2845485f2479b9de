"""The sandbox API server, one test per semantic, driven through the official kubernetes client."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fixtures.sandbox import BOOKMARK_INTERVAL, SandboxProcess

GROUP, VERSION = "ha.whm.io", "v1alpha1"


def node(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WHMNode",
        "metadata": {"name": name},
        "spec": {"cluster": "whm", "address": "10.0.0.1", **spec},
    }


def error_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


@pytest.fixture
def custom(sandbox_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(sandbox_client)


@pytest.fixture
def core(sandbox_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(sandbox_client)


def create_node(custom: client.CustomObjectsApi, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", node(name, **spec)
    )
    return result


# -- discovery ------------------------------------------------------------------------------------


def test_version_and_discovery(sandbox_client: client.ApiClient) -> None:
    version = client.VersionApi(sandbox_client).get_code()
    assert version.major == "1"
    groups = {g.name for g in client.ApisApi(sandbox_client).get_api_versions().groups}
    assert {"ha.whm.io", "apiextensions.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "kopf.dev"} <= groups
    core_resources = {r.name for r in client.CoreV1Api(sandbox_client).get_api_resources().resources}
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
    ours = client.CustomObjectsApi(sandbox_client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in ours.resources}
    assert set(by_name) == {
        f"{p}{s}" for p in ("whmclusters", "whmnodes", "mysqlreplications") for s in ("", "/status")
    }
    assert by_name["whmnodes"].short_names == ["whmn"]
    assert by_name["whmnodes"].namespaced is True


def test_crd_created_at_run_time_appears_and_disappears(sandbox_client: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(sandbox_client)
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
    established = ext.read_custom_resource_definition("widgets.example.com")
    assert {c.type: c.status for c in established.status.conditions}["Established"] == "True"
    custom = client.CustomObjectsApi(sandbox_client)
    custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        namespace,
        "widgets",
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 3, "colour": "red"},
        },
    )
    stored = custom.get_namespaced_custom_object("example.com", "v1", namespace, "widgets", "w")
    assert stored["spec"] == {"size": 3}, "unknown fields are pruned"
    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(ApiException) as gone:
        custom.list_namespaced_custom_object("example.com", "v1", namespace, "widgets")
    assert gone.value.status == 404
    groups = {g.name for g in client.ApisApi(sandbox_client).get_api_versions().groups}
    assert "example.com" not in groups


# -- built-in resources ---------------------------------------------------------------------------


def test_builtin_resources_are_stored_as_plain_objects(sandbox_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(sandbox_client)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s"}, "type": "kubernetes.io/basic-auth", "stringData": {"username": "u"}}
    )
    core.create_namespaced_service(namespace, {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
    core.create_namespaced_endpoints(
        namespace,
        {"metadata": {"name": "svc"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]},
    )
    core.create_namespaced_pod(
        namespace,
        {"metadata": {"name": "p", "labels": {"app": "whm"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
    )
    core.create_namespaced_event(
        namespace, {"metadata": {"name": "e"}, "involvedObject": {"name": "p"}, "reason": "Test", "message": "m"}
    )
    client.DiscoveryV1Api(sandbox_client).create_namespaced_endpoint_slice(
        namespace, {"metadata": {"name": "svc-1"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}
    )
    client.CoordinationV1Api(sandbox_client).create_namespaced_lease(
        namespace, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}}
    )
    assert core.read_namespaced_config_map("cm", namespace).data == {"a": "1"}
    assert core.read_namespaced_endpoints("svc", namespace).subsets[0].addresses[0].ip == "10.0.0.1"
    assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["p"]
    core.patch_namespaced_pod_status("p", namespace, {"status": {"podIP": "10.1.0.5", "phase": "Running"}})
    assert core.read_namespaced_pod("p", namespace).status.pod_ip == "10.1.0.5"
    assert client.CoordinationV1Api(sandbox_client).read_namespaced_lease("l", namespace).spec.holder_identity == "me"


def test_objects_in_a_missing_namespace_are_refused(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map("no-such-ns", {"metadata": {"name": "cm"}})
    assert refused.value.status == 404
    assert error_of(refused.value)["reason"] == "NotFound"


# -- metadata ------------------------------------------------------------------------------------


def test_metadata_is_set_as_a_real_server_does(custom: client.CustomObjectsApi, namespace: str) -> None:
    first = create_node(custom, namespace, "n1")
    second = create_node(custom, namespace, "n2")
    meta = first["metadata"]
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert meta["namespace"] == namespace
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert first["spec"]["port"] == 4000 and first["spec"]["priority"] == 100, "defaults applied"


def test_generation_changes_only_with_spec(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_node(custom, namespace, "n1")
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"status": {"health": "Healthy"}}
    )
    assert status["metadata"]["generation"] == 1
    respec = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"spec": {"priority": 7}}
    )
    assert respec["metadata"]["generation"] == 2
    assert int(respec["metadata"]["resourceVersion"]) > int(status["metadata"]["resourceVersion"])


def test_no_op_write_keeps_resource_version(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_node(custom, namespace, "n1")
    same = custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1", {"spec": {"port": 4000}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_namespace_scoping(custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str) -> None:
    other = f"{namespace}-b"
    core.create_namespace({"metadata": {"name": other}})
    create_node(custom, namespace, "same")
    create_node(custom, other, "same")
    assert len(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")["items"]) == 1
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, "whmnodes")["items"]
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere} >= {
        (namespace, "same"),
        (other, "same"),
    }


# -- verbs ----------------------------------------------------------------------------------------


def test_list_with_label_and_field_selectors(core: client.CoreV1Api, namespace: str) -> None:
    for name, labels in (
        ("a", {"role": "primary", "tier": "web"}),
        ("b", {"role": "secondary", "tier": "web"}),
        ("c", {"tier": "db"}),
    ):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        return [cm.metadata.name for cm in core.list_namespaced_config_map(namespace, **kwargs).items]

    assert names(label_selector="role=primary") == ["a"]
    assert names(label_selector="tier=web,role!=primary") == ["b"]
    assert names(label_selector="role in (primary,secondary)") == ["a", "b"]
    assert names(label_selector="role notin (primary)") == ["b", "c"]
    assert names(label_selector="role") == ["a", "b"]
    assert names(label_selector="!role") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    all_namespaces = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={namespace}")
    assert len(all_namespaces.items) == 3
    with pytest.raises(ApiException) as bad:
        names(field_selector="spec.nodeName=x")
    assert bad.value.status == 400


def test_create_existing_is_409_already_exists(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_node(custom, namespace, "n1")
    with pytest.raises(ApiException) as exists:
        create_node(custom, namespace, "n1")
    assert exists.value.status == 409
    assert error_of(exists.value)["reason"] == "AlreadyExists"


def test_update_with_stale_resource_version_is_409_conflict(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_node(custom, namespace, "n1")
    fresh = copy.deepcopy(created)
    fresh["spec"]["priority"] = 5
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1", fresh)
    stale = copy.deepcopy(created)
    stale["spec"]["priority"] = 6
    with pytest.raises(ApiException) as conflict:
        custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1", stale)
    assert conflict.value.status == 409
    assert error_of(conflict.value)["reason"] == "Conflict"
    stale_status = {**stale, "status": {"health": "Healthy"}}
    with pytest.raises(ApiException) as status_conflict:
        custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, "whmnodes", "n1", stale_status)
    assert status_conflict.value.status == 409


def test_update_of_a_custom_resource_needs_a_resource_version(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_node(custom, namespace, "n1")
    del created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as invalid:
        custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1", created)
    assert invalid.value.status == 422


def test_merge_patch_and_resource_version_precondition(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_node(custom, namespace, "n1", weight=3)
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"spec": {"hostname": "h", "weight": None}}
    )
    assert patched["spec"]["hostname"] == "h"
    assert patched["spec"]["weight"] == 1, "null removes the field, and the default comes back"
    with pytest.raises(ApiException) as conflict:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "whmnodes",
            "n1",
            {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"priority": 1}},
        )
    assert conflict.value.status == 409


def _patch(sandbox_client: client.ApiClient, path: str, content_type: str, body: Any) -> tuple[int, dict[str, Any]]:
    configuration = sandbox_client.configuration
    response = urllib3.PoolManager().request(
        "PATCH", configuration.host + path, body=json.dumps(body).encode(), headers={"Content-Type": content_type}
    )
    return response.status, json.loads(response.data)


def test_json_patch_with_failing_test_is_422(
    sandbox_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_node(custom, namespace, "n1")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/whmnodes/n1"
    status, body = _patch(
        sandbox_client,
        path,
        "application/json-patch+json",
        [
            {"op": "test", "path": "/spec/priority", "value": 100},
            {"op": "replace", "path": "/spec/priority", "value": 9},
        ],
    )
    assert status == 200 and body["spec"]["priority"] == 9
    status, body = _patch(
        sandbox_client,
        path,
        "application/json-patch+json",
        [
            {"op": "test", "path": "/spec/priority", "value": 100},
            {"op": "replace", "path": "/spec/priority", "value": 1},
        ],
    )
    assert status == 422 and body["kind"] == "Status"
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")["spec"]["priority"] == 9


def test_strategic_merge_patch_is_a_merge_patch_for_custom_resources(
    sandbox_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_node(custom, namespace, "n1")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/whmnodes/n1"
    status, body = _patch(
        sandbox_client, path, "application/strategic-merge-patch+json", {"spec": {"maintenance": True}}
    )
    assert status == 200 and body["spec"]["maintenance"] is True
    status, body = _patch(sandbox_client, path, "application/apply-patch+yaml", {"spec": {}})
    assert status == 415


def test_delete_honours_finalizers(custom: client.CustomObjectsApi, namespace: str) -> None:
    obj = node("n1")
    obj["metadata"]["finalizers"] = ["ha.whm.io/test"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", obj)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    pending = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    assert pending["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    assert gone.value.status == 404
    with pytest.raises(ApiException) as missing:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    assert missing.value.status == 404
    assert error_of(missing.value)["reason"] == "NotFound"


def test_owner_references_cascade(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str) -> None:
    owner = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "whmclusters",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WHMCluster", "metadata": {"name": "whm"}, "spec": {}},
    )
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WHMCluster", "name": "whm", "uid": owner["metadata"]["uid"]}
    dependent = node("n1")
    dependent["metadata"]["ownerReferences"] = [ref]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", dependent)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "kept", "ownerReferences": [ref, {**ref, "uid": "other"}]}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "whmclusters", "whm")
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")["items"] == []
    kept = core.read_namespaced_config_map("kept", namespace)
    assert [r.uid for r in kept.metadata.owner_references] == ["other"], "other owners keep it alive"


# -- status subresource ---------------------------------------------------------------------------


def test_status_subresource_separation(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = node("n1")
    created["status"] = {"health": "Healthy"}
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", created)
    assert "status" not in stored, "status is ignored on create"
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"status": {"health": "Healthy"}, "spec": {"priority": 1}}
    )
    after_status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    assert after_status["status"] == {"health": "Healthy"}
    assert after_status["spec"]["priority"] == 100, "a status write leaves spec alone"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"status": {"health": "Unhealthy"}, "spec": {"priority": 2}}
    )
    after_main = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    assert after_main["status"] == {"health": "Healthy"}, "a main write leaves status alone"
    assert after_main["spec"]["priority"] == 2


def test_status_is_validated_too(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_node(custom, namespace, "n1")
    with pytest.raises(ApiException) as invalid:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "whmnodes", "n1", {"status": {"health": "Great"}}
        )
    assert invalid.value.status == 422
    assert error_of(invalid.value)["details"]["causes"][0]["field"] == "status.health"


# -- validation and defaulting --------------------------------------------------------------------


def test_invalid_object_is_422_with_field_paths(custom: client.CustomObjectsApi, namespace: str) -> None:
    with pytest.raises(ApiException) as invalid:
        create_node(custom, namespace, "n1", port=70000, priority=-1)
    status = error_of(invalid.value)
    assert invalid.value.status == 422
    assert status["reason"] == "Invalid"
    assert {c["field"] for c in status["details"]["causes"]} == {"spec.port", "spec.priority"}
    assert 'WHMNode.ha.whm.io "n1" is invalid' in status["message"]


def test_cel_rules_are_enforced(custom: client.CustomObjectsApi, namespace: str) -> None:
    repl = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MySQLReplication",
        "metadata": {"name": "db"},
        "spec": {
            "primary": "db-9",
            "members": [{"name": "db-0", "host": "h"}],
            "credentialsSecret": {"name": "a"},
            "replicationSecret": {"name": "b"},
        },
    }
    with pytest.raises(ApiException) as invalid:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "mysqlreplications", repl)
    assert "primary must name one of the members" in error_of(invalid.value)["message"]
    create_node(custom, namespace, "n1")
    with pytest.raises(ApiException) as immutable:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "whmnodes", "n1", {"spec": {"cluster": "other"}}
        )
    assert "cluster is immutable" in error_of(immutable.value)["message"]


def test_strict_field_validation_refuses_unknown_fields(sandbox_client: client.ApiClient, namespace: str) -> None:
    body = node("n1")
    body["spec"]["colour"] = "red"
    response = urllib3.PoolManager().request(
        "POST",
        f"{sandbox_client.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/whmnodes?fieldValidation=Strict",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 422
    assert 'unknown field "spec.colour"' in json.loads(response.data)["message"]


# -- watch ----------------------------------------------------------------------------------------


def _stream(custom: client.CustomObjectsApi, namespace: str, **kwargs: Any) -> list[tuple[str, str, str]]:
    events = []
    for event in watch.Watch().stream(
        custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "whmnodes", **kwargs
    ):
        obj = event["object"]
        events.append((event["type"], obj["metadata"].get("name", ""), obj["metadata"]["resourceVersion"]))
    return events


def test_watch_resumes_from_a_resource_version(custom: client.CustomObjectsApi, namespace: str) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")["metadata"]["resourceVersion"]
    create_node(custom, namespace, "n1")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1", {"spec": {"priority": 1}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "n1")
    events = _stream(custom, namespace, resource_version=start, timeout_seconds=1)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]
    versions = [int(rv) for _, _, rv in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_watch_without_version_starts_with_current_objects(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_node(custom, namespace, "n1")
    create_node(custom, namespace, "n2")
    assert [(t, n) for t, n, _ in _stream(custom, namespace, timeout_seconds=1)] == [("ADDED", "n1"), ("ADDED", "n2")]


def test_watch_with_label_selector_sees_objects_leave_it(custom: client.CustomObjectsApi, namespace: str) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")["metadata"]["resourceVersion"]
    obj = node("n1")
    obj["metadata"]["labels"] = {"role": "primary"}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", obj)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", "n1", {"metadata": {"labels": {"role": "secondary"}}}
    )
    events = _stream(custom, namespace, resource_version=start, timeout_seconds=1, label_selector="role=primary")
    assert [(t, n) for t, n, _ in events] == [("ADDED", "n1"), ("DELETED", "n1")]


def test_watch_timeout_and_bookmarks(sandbox_client: client.ApiClient, namespace: str) -> None:
    url = f"{sandbox_client.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/whmnodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=2"
    started = time.monotonic()
    response = urllib3.PoolManager().request("GET", url, preload_content=True, timeout=10)
    elapsed = time.monotonic() - started
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert 1.5 < elapsed < 5, f"timeoutSeconds=2 ended the watch after {elapsed:.1f}s"
    bookmarks = [e for e in lines if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= int(2 / BOOKMARK_INTERVAL) - 2
    assert bookmarks[0]["object"]["kind"] == "WHMNode"
    assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) > 0


def test_watch_from_a_compacted_version_is_410_gone(
    sandbox_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    old = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")["metadata"]["resourceVersion"]
    create_node(custom, namespace, "n1")
    urllib3.PoolManager().request("POST", f"{sandbox_client.configuration.host}/_sandbox/compact")
    with pytest.raises(ApiException) as gone:
        _stream(custom, namespace, resource_version=old, timeout_seconds=1)
    assert gone.value.status == 410


def test_restart_keeps_objects_and_expires_old_watches(restartable_sandbox: SandboxProcess) -> None:
    api = restartable_sandbox.api_client()
    custom = client.CustomObjectsApi(api)
    created = create_node(custom, "default", "n1")
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", "whmnodes", "n1", {"spec": {"priority": 1}})
    restartable_sandbox.restart()
    api = restartable_sandbox.api_client()
    custom = client.CustomObjectsApi(api)
    assert (
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", "whmnodes", "n1")["metadata"]["uid"]
        == created["metadata"]["uid"]
    )
    with pytest.raises(ApiException) as gone:
        _stream(custom, "default", resource_version=created["metadata"]["resourceVersion"], timeout_seconds=1)
    assert gone.value.status == 410
    later = create_node(custom, "default", "n2")
    assert int(later["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


# -- reviews --------------------------------------------------------------------------------------


def test_token_review_from_the_users_file(sandbox_client: client.ApiClient) -> None:
    auth = client.AuthenticationV1Api(sandbox_client)
    good = auth.create_token_review({"spec": {"token": "reader-token"}})
    assert good.status.authenticated is True
    assert good.status.user.username == "reader"
    assert "whm-ha:readers" in good.status.user.groups
    bad = auth.create_token_review({"spec": {"token": "nope"}})
    assert bad.status.authenticated is False


@pytest.mark.parametrize(
    ("user", "groups", "verb", "resource", "subresource", "allowed"),
    [
        ("admin", ["system:masters"], "delete", "whmnodes", "", True),
        ("reader", ["whm-ha:readers"], "list", "whmnodes", "", True),
        ("reader", ["whm-ha:readers"], "patch", "whmclusters", "", False),
        ("operator", [], "patch", "whmclusters", "status", True),
        ("operator", [], "delete", "whmclusters", "", False),
        ("stranger", [], "get", "whmnodes", "", False),
    ],
)
def test_subject_access_review_from_the_users_file(
    sandbox_client: client.ApiClient,
    user: str,
    groups: list[str],
    verb: str,
    resource: str,
    subresource: str,
    allowed: bool,
) -> None:
    review = client.AuthorizationV1Api(sandbox_client).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": groups,
                "resourceAttributes": {
                    "namespace": "default",
                    "verb": verb,
                    "group": GROUP,
                    "resource": resource,
                    "subresource": subresource,
                },
            }
        }
    )
    assert review.status.allowed is allowed

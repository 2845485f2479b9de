"""What only the sandbox has: compaction, restarts with a state file, bookmarks at a set interval, immediate
garbage collection, and reviews answered from its permissions file."""

from __future__ import annotations

import json
import time

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fixtures.sandbox import BOOKMARK_INTERVAL, SandboxProcess
from tests.kube_helpers import GROUP, VERSION, create_node, node, raw_request, stream_nodes


@pytest.fixture
def custom(sandbox_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(sandbox_client)


@pytest.fixture
def core(sandbox_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(sandbox_client)


def test_server_side_apply_is_not_supported(sandbox_client: client.ApiClient, namespace: str) -> None:
    create_node(client.CustomObjectsApi(sandbox_client), namespace, "n1")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/whmnodes/n1?fieldManager=test"
    status, _ = raw_request(sandbox_client, "PATCH", path, {"spec": {}}, content_type="application/apply-patch+yaml")
    assert status == 415


def test_kopf_peering_resources_are_preinstalled(sandbox_client: client.ApiClient) -> None:
    resources = client.CustomObjectsApi(sandbox_client).get_api_resources("kopf.dev", "v1").resources
    assert {r.name for r in resources} == {"clusterkopfpeerings", "kopfpeerings"}


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
        stream_nodes(custom, namespace, resource_version=old, timeout_seconds=1)
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
        stream_nodes(custom, "default", resource_version=created["metadata"]["resourceVersion"], timeout_seconds=1)
    assert gone.value.status == 410
    later = create_node(custom, "default", "n2")
    assert int(later["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


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

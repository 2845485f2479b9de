"""Our CRDs, examples and RBAC against a real kube-apiserver (the ``real_control_plane`` fixture)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.control_plane import ControlPlane

pytestmark = pytest.mark.real_api

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "ha.whm.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {
    "WHMCluster": "whmclusters",
    "WHMNode": "whmnodes",
    "MySQLReplication": "mysqlreplications",
    "MySQLBackup": "mysqlbackups",
}


def _pinned_kubernetes_version() -> str:
    for line in (REPO_ROOT / "hack" / "control-plane" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.partition("=")[2].strip()
    raise AssertionError("KUBERNETES_VERSION not pinned in versions.env")


@pytest.fixture
def api(real_control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An API client with the admin identity."""
    with real_control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> str:
    """A fresh namespace (never deleted: without a namespace controller deletion never completes)."""
    name = f"test-{secrets.token_hex(4)}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create one of our custom objects in ``namespace``."""
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    created = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body
    )
    assert isinstance(created, dict)
    return created


def _rejection(call: Callable[[], object]) -> tuple[str, list[str]]:
    """Run ``call``, expect a 422; return the message and the field paths of its causes."""
    with pytest.raises(ApiException) as info:
        call()
    assert info.value.status == 422, info.value.body
    status = json.loads(info.value.body or "{}")
    return status["message"], [cause.get("field", "") for cause in status["details"]["causes"]]


def _node(name: str, **spec: object) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WHMNode",
        "metadata": {"name": name},
        "spec": {"cluster": "whm", "address": "10.0.0.11", **spec},
    }


def test_admin_kubeconfig_reaches_pinned_apiserver(api: client.ApiClient) -> None:
    names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items if ns.metadata]
    assert "default" in names
    assert client.VersionApi(api).get_code().git_version == _pinned_kubernetes_version()


def test_crds_are_established(api: client.ApiClient) -> None:
    for plural in PLURALS.values():
        status = client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{plural}.{GROUP}").status
        assert status is not None
        conditions = {c.type: c.status for c in status.conditions or []}
        assert conditions["Established"] == "True", conditions
        assert conditions["NamesAccepted"] == "True", conditions


def test_examples_are_accepted(api: client.ApiClient, namespace: str) -> None:
    created: list[tuple[str, str]] = []
    for path in sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            doc["metadata"]["namespace"] = namespace
            if doc["apiVersion"] == API_VERSION:
                _create(api, namespace, doc)
            elif doc["apiVersion"] == "v1" and doc["kind"] == "Secret":
                client.CoreV1Api(api).create_namespaced_secret(namespace, doc)
            else:
                pytest.fail(f"{path.name}: no creation rule for {doc['apiVersion']} {doc['kind']}")
            created.append((doc["kind"], doc["metadata"]["name"]))
    assert {kind for kind, _ in created} >= {*PLURALS, "Secret"}
    # Structural defaults are applied by the server, nested ones included.
    replication = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mysqlreplications", "whm-db"
    )
    assert isinstance(replication, dict)
    assert replication["spec"]["tls"] == {"enabled": False, "verifyServerName": True, "requireSecureTransport": False}


@pytest.mark.parametrize(
    ("body", "expected_message", "expected_field"),
    [
        pytest.param(_node("bad-port", port=70000), "should be less than or equal to 65535", "spec.port", id="port"),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "MySQLReplication",
                "metadata": {"name": "bad-primary"},
                "spec": {
                    "members": [{"name": "db-0", "host": "10.0.0.21"}],
                    "primary": "db-9",
                    "credentialsSecret": {"name": "admin"},
                    "replicationSecret": {"name": "repl"},
                },
            },
            "primary must name one of the members",
            "spec.primary",
            id="cel-primary",
        ),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "WHMCluster",
                "metadata": {"name": "bad-timeout"},
                "spec": {"healthCheck": {"periodSeconds": 5, "timeoutSeconds": 9}},
            },
            "timeoutSeconds must not exceed periodSeconds",
            "spec.healthCheck.timeoutSeconds",
            id="cel-timeout",
        ),
    ],
)
def test_invalid_objects_are_rejected(
    api: client.ApiClient, namespace: str, body: dict[str, Any], expected_message: str, expected_field: str
) -> None:
    message, fields = _rejection(lambda: _create(api, namespace, body))
    assert expected_message in message
    assert expected_field in message
    assert expected_field in fields


def test_node_cluster_is_immutable(api: client.ApiClient, namespace: str) -> None:
    node = _create(api, namespace, _node("immutable"))
    node["spec"]["cluster"] = "other"
    objects = client.CustomObjectsApi(api)
    message, fields = _rejection(
        lambda: objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", "immutable", node)
    )
    assert "cluster is immutable" in message
    assert fields == ["spec.cluster"]


def test_reader_is_read_only_and_operator_has_no_access(real_control_plane: ControlPlane, namespace: str) -> None:
    with real_control_plane.api_client("reader") as reader:
        objects = client.CustomObjectsApi(reader)
        listed = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")
        assert isinstance(listed, dict)
        assert listed["items"] == []
        with pytest.raises(ApiException) as info:
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", _node("nope"))
        assert info.value.status == 403
    with real_control_plane.api_client("operator") as operator:
        with pytest.raises(ApiException) as info:
            client.CustomObjectsApi(operator).list_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes")
        assert info.value.status == 403


def test_pod_can_be_created_without_controllers(api: client.ApiClient) -> None:
    """No ServiceAccount admission, so no ``default`` ServiceAccount is needed (pod discovery tests create pods)."""
    container = client.V1Container(name="c", image="example.invalid/whm:1")
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"pod-{secrets.token_hex(4)}"), spec=client.V1PodSpec(containers=[container])
    )
    created = client.CoreV1Api(api).create_namespaced_pod("default", pod)
    assert created.status is not None
    assert created.status.phase == "Pending"


def test_kubectl_explain_shows_field_description(real_control_plane: ControlPlane) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(real_control_plane.kubeconfig),
            "explain",
            "whmcluster.spec.healthCheck.periodSeconds",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "How often to probe, in seconds." in result.stdout

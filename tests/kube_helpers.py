"""Helpers shared by the tests that talk to a Kubernetes API (either tier)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB
from whm_ha.mysql.actions import ensure_application_user
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials, connect

GROUP, VERSION = "ha.whm.io", "v1alpha1"


def node(name: str, **spec: Any) -> dict[str, Any]:
    """A WHMNode manifest."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WHMNode",
        "metadata": {"name": name},
        "spec": {"cluster": "whm", "address": "10.0.0.1", **spec},
    }


def create_node(custom: client.CustomObjectsApi, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "whmnodes", node(name, **spec)
    )
    return result


def error_of(exc: ApiException) -> dict[str, Any]:
    """The Status object of an API error."""
    body: dict[str, Any] = json.loads(exc.body)
    return body


def raw_request(
    api: client.ApiClient, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """A request with the client's credentials but any content type; returns (status, JSON body)."""
    configuration = api.configuration
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    bearer = configuration.auth_settings().get("BearerToken")
    if bearer and bearer.get("value"):
        headers["Authorization"] = str(bearer["value"])
    response = api.rest_client.pool_manager.request(
        method,
        configuration.host + path,
        body=json.dumps(body).encode() if body is not None else None,
        headers=headers,
    )
    return response.status, json.loads(response.data)


def stream_nodes(custom: client.CustomObjectsApi, namespace: str, **kwargs: Any) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of the WHMNode watch events until the server ends the watch."""
    events = []
    for event in watch.Watch().stream(
        custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "whmnodes", **kwargs
    ):
        obj = event["object"]
        events.append((event["type"], obj["metadata"].get("name", ""), obj["metadata"]["resourceVersion"]))
    return events


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until condition() is truthy; fail with what was awaited after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def create_replication(
    custom: client.CustomObjectsApi,
    namespace: str,
    members: list[dict[str, Any]],
    *,
    credentials: str,
    replication: str,
    name: str = "db",
    schemas: tuple[str, ...] = ("whm_ha",),
    flavor: str = "mariadb",
) -> None:
    """A MySQLReplication of the flavor (its members' product) whose bootstrap primary is the first member."""
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "mysqlreplications",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLReplication",
            "metadata": {"name": name},
            "spec": {
                "flavor": flavor,
                "primary": members[0]["name"],
                "members": members,
                "credentialsSecret": {"name": credentials},
                "replicationSecret": {"name": replication},
                "applicationAccount": {"schemas": list(schemas)},
            },
        },
    )


APP_USER, APP_PASSWORD = "whm_ha_app", "app-pw"


def create_application_account(
    core: client.CoreV1Api,
    namespace: str,
    server: LocalMariaDB,
    replication: str = "db",
    schemas: tuple[str, ...] = ("whm_ha",),
) -> None:
    """What the operator does for a MySQLReplication: the ``<name>-app`` Secret and its account on the server."""
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": f"{replication}-app"}, "stringData": {"username": APP_USER, "password": APP_PASSWORD}},
    )
    admin = Credentials(ADMIN_USER, ADMIN_PASSWORD)
    with connect("admin", server.host, server.port, admin, dialect_for("mariadb")) as session:
        ensure_application_user(session, APP_USER, APP_PASSWORD, schemas)

"""The database of a WHMCluster: its MySQLReplication's current primary, with credentials from a Secret."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from ..crd.mysqlreplication import ApplicationAccount, application_secret_name
from ..kube.client import MYSQLREPLICATIONS, SECRETS, ApiError, KubeClient
from .dsn import DSN

APPLICATION_USER = "whm_ha_app"
"""The user name of an application account the operator creates."""


class DatabaseUnavailable(RuntimeError):
    """The cluster's database cannot be located or its credentials read."""


async def secret_credentials(kube: KubeClient, namespace: str, name: str) -> tuple[str, str]:
    """(username, password) from a basic-auth style Secret."""
    secret = await kube.get(SECRETS, namespace, name)
    data = secret.get("data") or {}
    try:
        username = base64.b64decode(data["username"]).decode()
        password = base64.b64decode(data.get("password", "")).decode()
    except (KeyError, ValueError) as exc:
        raise DatabaseUnavailable(f"Secret {namespace}/{name} lacks username/password") from exc
    return username, password


def application_secret(replication: str, name: str, uid: str) -> dict[str, object]:
    """A new Secret for the application account of ``replication``, with a random password, owned by it so that
    it goes with the MySQLReplication."""
    owner = {"apiVersion": "ha.whm.io/v1alpha1", "kind": "MySQLReplication", "name": replication, "uid": uid}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "whm-ha", "ha.whm.io/replication": replication},
            "ownerReferences": [owner] if uid else [],
        },
        "type": "kubernetes.io/basic-auth",
        "data": {
            "username": base64.b64encode(APPLICATION_USER.encode()).decode(),
            "password": base64.b64encode(secrets.token_urlsafe(24).encode()).decode(),
        },
    }


@dataclass(frozen=True)
class PrimaryAddress:
    """Where the application data of a MySQLReplication is written, and the Secret of the account to use."""

    host: str
    port: int
    secret: str


def primary_address(replication: dict[str, Any], schema: str) -> PrimaryAddress:
    """The current primary (the bootstrap primary before the first status) of a MySQLReplication object."""
    spec, status = replication.get("spec") or {}, replication.get("status") or {}
    namespace, name = replication["metadata"].get("namespace", ""), replication["metadata"]["name"]
    primary = status.get("currentPrimary") or spec.get("primary")
    member = next((m for m in spec.get("members", []) if m["name"] == primary), None)
    if member is None:
        raise DatabaseUnavailable(f"MySQLReplication {namespace}/{name} has no member {primary!r}")
    account = ApplicationAccount.model_validate(spec.get("applicationAccount") or {})
    if schema not in account.schemas:
        raise DatabaseUnavailable(
            f"schema {schema} is not in MySQLReplication {namespace}/{name} spec.applicationAccount.schemas"
        )
    return PrimaryAddress(member["host"], int(member.get("port", 3306)), application_secret_name(name, account))


async def application_credentials(kube: KubeClient, namespace: str, secret: str) -> tuple[str, str]:
    """(username, password) of the application account; DatabaseUnavailable until the operator created it."""
    try:
        return await secret_credentials(kube, namespace, secret)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise DatabaseUnavailable(f"Secret {namespace}/{secret} not created yet (the operator creates it)") from exc


async def primary_dsn(kube: KubeClient, namespace: str, replication: str, schema: str) -> DSN:
    """Where and as whom to write application data now: the replication's current primary, as the application
    account, which read-only members refuse."""
    where = primary_address(await kube.get(MYSQLREPLICATIONS, namespace, replication), schema)
    username, password = await application_credentials(kube, namespace, where.secret)
    return DSN(where.host, where.port, username, schema, password)

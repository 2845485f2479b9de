"""The database of a WHMCluster: its MySQLReplication's current primary, with credentials from a Secret."""

from __future__ import annotations

import base64

from ..kube.client import MYSQLREPLICATIONS, SECRETS, KubeClient
from .dsn import DSN


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


async def primary_dsn(kube: KubeClient, namespace: str, replication: str, schema: str) -> DSN:
    """Where to write: the replication's current primary (the bootstrap primary before the first status)."""
    obj = await kube.get(MYSQLREPLICATIONS, namespace, replication)
    spec, status = obj.get("spec", {}), obj.get("status") or {}
    primary = status.get("currentPrimary") or spec.get("primary")
    member = next((m for m in spec.get("members", []) if m["name"] == primary), None)
    if member is None:
        raise DatabaseUnavailable(f"MySQLReplication {namespace}/{replication} has no member {primary!r}")
    username, password = await secret_credentials(kube, namespace, spec["credentialsSecret"]["name"])
    return DSN(member["host"], int(member.get("port", 3306)), username, schema, password)

"""Read/write splitting: ``<name>-primary`` and ``<name>-replicas`` Services without selectors, each with
EndpointSlices naming the current primary and the replicas fit to serve reads. Owned by the MySQLReplication.

kube-proxy routes to IP addresses only (it ignores FQDN slices), so a member named by a host name (a
StatefulSet pod's DNS name, say) is published by the address it resolves to at each pass: a pod that comes back
with a new IP is followed within a pass."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..crd.mysqlreplication import Member
from ..kube.client import ENDPOINTSLICES, SERVICES, ApiError, KubeClient, Resource

log = logging.getLogger(__name__)
Obj = dict[str, Any]

PORT_NAME = "mysql"
SERVICE_PORT = 3306
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "whm-ha-operator"
REPLICATION_LABEL = "ha.whm.io/replication"
RESOLVE_TIMEOUT = 2.0
RESYNC_SECONDS = 60.0
"""How often the objects are read back, should someone have changed or deleted them."""

Key = tuple[str, str]
"""(plural, name) of an object."""


def address_type(address: str) -> str:
    """IPv4 or IPv6."""
    return "IPv4" if ipaddress.ip_address(address).version == 4 else "IPv6"


def literal_address(host: str) -> str | None:
    """The IP address ``host`` is written as, or None for a host name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def desired_objects(
    owner: Obj, primary: Member | None, replicas: Sequence[Member], addresses: Mapping[str, str]
) -> dict[Key, Obj]:
    """The Services and EndpointSlices that should exist: one slice per address type and port, since a slice has
    one of each for all its endpoints. ``addresses`` maps a member's host to its IP address; a member without
    one (a name that did not resolve) is left out."""
    meta = owner["metadata"]
    name = meta["name"]
    reference = {
        "apiVersion": owner.get("apiVersion", "ha.whm.io/v1alpha1"),
        "kind": "MySQLReplication",
        "name": name,
        "uid": meta["uid"],
        "controller": True,
    }
    objects: dict[Key, Obj] = {}
    for role, members in (("primary", [primary] if primary else []), ("replicas", list(replicas))):
        service = f"{name}-{role}"
        labels = {REPLICATION_LABEL: name}
        objects[(SERVICES.plural, service)] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "labels": labels, "ownerReferences": [reference]},
            "spec": {"ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "protocol": "TCP"}]},
        }
        groups: dict[tuple[str, int], list[str]] = {}
        for member in members:
            if (address := addresses.get(member.host)) is not None:
                groups.setdefault((address_type(address), member.port), []).append(address)
        for (kind, port), hosts in sorted(groups.items()):
            slice_name = f"{service}-{kind.lower()}-{port}"
            objects[(ENDPOINTSLICES.plural, slice_name)] = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "labels": {**labels, SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
                    "ownerReferences": [reference],
                },
                "addressType": kind,
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}} for host in hosts],
                "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
            }
    return objects


async def resolve(host: str) -> str | None:
    """The IP address to publish for a member's host: the host itself when it is one, else the first address
    it resolves to (IPv4 first); None when it does not resolve in time."""
    if (address := literal_address(host)) is not None:
        return address
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    found = sorted((info[0] != socket.AF_INET, str(info[4][0])) for info in infos)
    return found[0][1] if found else None


def contains(current: Any, wanted: Any) -> bool:
    """Whether ``current`` has everything ``wanted`` has (the API server adds defaults of its own)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(contains(current.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(current, list)
            and len(current) == len(wanted)
            and all(contains(c, w) for c, w in zip(current, wanted, strict=True))
        )
    return bool(current == wanted)


RESOURCES = {SERVICES.plural: SERVICES, ENDPOINTSLICES.plural: ENDPOINTSLICES}


@dataclass
class ServicePublisher:
    """Keeps the objects of one MySQLReplication as desired; remembers what it applied, so a steady topology
    costs no API calls but a read-back every RESYNC_SECONDS."""

    kube: KubeClient
    namespace: str
    name: str
    applied: dict[Key, Obj | None] = field(default_factory=dict)
    """What each object was last made to match; None: it exists, content unknown."""
    synced_at: float = float("-inf")
    refused: dict[Key, str] = field(default_factory=dict)
    """Objects the API server refused (say, a loopback address), with why, so that it is logged once."""

    async def publish(self, owner: Obj, primary: Member | None, replicas: Sequence[Member] | None) -> None:
        """Make the objects match; ``replicas`` None leaves the replicas' objects as they are. Stale objects go
        first, so the primary Service never names two members."""
        now = time.monotonic()
        if now - self.synced_at > RESYNC_SECONDS:
            listed = await self.kube.list(
                ENDPOINTSLICES, self.namespace, label_selector=f"{REPLICATION_LABEL}={self.name}"
            )
            self.applied = {(ENDPOINTSLICES.plural, i["metadata"]["name"]): None for i in listed.get("items", [])}
            self.synced_at = now
        members = ([primary] if primary else []) + list(replicas or [])
        hosts = sorted({member.host for member in members})
        resolved = dict(zip(hosts, await asyncio.gather(*(resolve(host) for host in hosts)), strict=True))
        for host in [h for h, address in resolved.items() if address is None]:
            if self.refused.get(("hosts", host)) is None:
                log.warning("%s/%s: %s does not resolve; left out of the Services", self.namespace, self.name, host)
                self.refused[("hosts", host)] = "unresolved"
        for host in [h for h, address in resolved.items() if address is not None]:
            self.refused.pop(("hosts", host), None)
        addresses = {host: address for host, address in resolved.items() if address is not None}
        wanted = desired_objects(owner, primary, replicas or [], addresses)
        if replicas is None:
            kept = f"{self.name}-replicas"
            wanted = {k: v for k, v in wanted.items() if not k[1].startswith(kept)}
            managed = [k for k in self.applied if not k[1].startswith(kept)]
        else:
            managed = list(self.applied)
        for key in [k for k in managed if k not in wanted]:
            try:
                await self.kube.delete(RESOURCES[key[0]], self.namespace, key[1])
            except ApiError as exc:
                if exc.status != 404:
                    raise
            log.info("%s/%s: deleted %s %s", self.namespace, self.name, key[0], key[1])
            del self.applied[key]
        for key, body in wanted.items():
            if self.applied.get(key) != body:
                try:
                    await self._apply(RESOURCES[key[0]], body)
                except ApiError as exc:
                    if exc.status != 422:
                        raise
                    if self.refused.get(key) != str(exc):
                        log.warning("%s/%s: %s %s refused: %s", self.namespace, self.name, key[0], key[1], exc)
                        self.refused[key] = str(exc)
                    continue
                self.applied[key] = body
                self.refused.pop(key, None)

    async def _apply(self, resource: Resource, body: Obj) -> None:
        name = body["metadata"]["name"]
        try:
            current = await self.kube.get(resource, self.namespace, name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.kube.create(resource, self.namespace, body)
            log.info("%s/%s: created %s %s", self.namespace, self.name, resource.plural, name)
            return
        if not contains(current, body):
            patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
            await self.kube.patch(resource, self.namespace, name, patch)
            log.info("%s/%s: updated %s %s", self.namespace, self.name, resource.plural, name)

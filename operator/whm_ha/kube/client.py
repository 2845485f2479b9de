"""A small asyncio Kubernetes API client on aiohttp, for the operator, the proxy and the shim.

It does what these components need and nothing more: get, list, watch (with resume), create,
merge and JSON patches (with resourceVersion preconditions), delete and events. Errors are
``ApiError`` carrying the Kubernetes ``Status``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .config import ApiEndpoint, endpoint

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, body: Obj) -> None:
        self.status = status
        self.body = body
        self.reason = str(body.get("reason", ""))
        super().__init__(f"{status} {self.reason}: {body.get('message', '')}")


@dataclass(frozen=True)
class Resource:
    """Where a kind of object lives in the API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


WHMCLUSTERS = Resource("ha.whm.io", "v1alpha1", "whmclusters")
WHMNODES = Resource("ha.whm.io", "v1alpha1", "whmnodes")
MYSQLREPLICATIONS = Resource("ha.whm.io", "v1alpha1", "mysqlreplications")
MYSQLBACKUPS = Resource("ha.whm.io", "v1alpha1", "mysqlbackups")
PODS = Resource("", "v1", "pods")
SECRETS = Resource("", "v1", "secrets")
SERVICES = Resource("", "v1", "services")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
EVENTS = Resource("", "v1", "events")
JOBS = Resource("batch", "v1", "jobs")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
KOPF_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")
CLUSTER_KOPF_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)


def _ssl_context(api: ApiEndpoint) -> ssl.SSLContext | bool:
    if not api.server.startswith("https"):
        return False
    if not api.verify_tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=api.ca_file)
    if api.cert_file:
        context.load_cert_chain(api.cert_file, api.key_file)
    return context


class KubeClient:
    """One connection pool to the API server; use as an async context manager."""

    def __init__(self, api: ApiEndpoint | None = None, *, timeout: float = 10) -> None:
        self.api = api or endpoint()
        headers = {"Accept": "application/json"}
        if self.api.token:
            headers["Authorization"] = f"Bearer {self.api.token}"
        self._headers = headers
        self._ssl = _ssl_context(self.api)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            self._session = aiohttp.ClientSession(self.api.server, headers=self._headers, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None, content_type: str = ""
    ) -> Obj:
        headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        async with self.session.request(
            method, path, data=data, params=params, headers=headers, timeout=self._timeout
        ) as response:
            text = await response.text()
            try:
                payload: Obj = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text[:500]}
            if response.status >= 400:
                raise ApiError(response.status, payload)
            return payload

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: str = "", field_selector: str = ""
    ) -> Obj:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return await self.request("GET", resource.path(namespace), params=params or None)

    async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        return await self.request("POST", resource.path(namespace), body=body)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        resource_version: str | None = None,
        content_type: str = MERGE,
    ) -> Obj:
        """Merge patch (default) or JSON patch; with resource_version, a 409 if the object has changed."""
        if resource_version is not None:
            if content_type == MERGE:
                patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
            else:
                patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}, *patch]
        return await self.request(
            "PATCH", resource.path(namespace, name, subresource), body=patch, content_type=content_type
        )

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("DELETE", resource.path(namespace, name))

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        timeout: int = 60,
    ) -> AsyncIterator[Obj]:
        """Events after resource_version until the server ends the watch; 410 Gone raises ApiError."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        client_timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout + 30)
        async with self.session.get(resource.path(namespace), params=params, timeout=client_timeout) as response:
            if response.status >= 400:
                raise ApiError(response.status, json.loads(await response.text() or "{}"))
            async for line in response.content:
                if not line.strip():
                    continue
                event: Obj = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), status)
                yield event

    async def event(self, involved: Obj, kind: str, reason: str, message: str, *, warning: bool = False) -> None:
        """Post a core/v1 Event about an object."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.create(
            EVENTS,
            meta["namespace"],
            {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": involved.get("apiVersion", ""),
                    "kind": kind,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid", ""),
                },
                "reason": reason,
                "message": message[:1024],
                "type": "Warning" if warning else "Normal",
                "source": {"component": "whm-ha-operator"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )

"""The aiohttp application: the 12 legacy endpoints, each authorized, mutations audited.

The custom resources are the only state: requests become WHMNode creations and deletions or request
annotations the operator acts on, and answers are read back from statuses. Any number of replicas agree.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import aiohttp
import pymysql
from aiohttp import web
from pydantic import BaseModel, Field, Strict, ValidationError, field_validator

from ..crd.annotations import FAILOVER_TO, FORCE, PROMOTE, RELOAD, REQUEST_ID
from ..db.cluster_database import DatabaseUnavailable, primary_dsn
from ..kube.client import MYSQLREPLICATIONS, PODS, WHMCLUSTERS, WHMNODES, ApiError, KubeClient
from . import errors
from .auth import ANONYMOUS, Authorizer, Caller, Permission
from .lookup import find_member, find_node
from .openapi import document
from .views import cluster_view, node_view, replication_view

log = logging.getLogger("whm_ha.shim")
audit_log = logging.getLogger("whm_ha.shim.audit")
Obj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LABEL = re.compile(r"[^a-z0-9-]+")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MAX_BODY = 1024 * 1024
MAX_JSON_DEPTH = 32
BODY_TIMEOUT = 60.0
"""Seconds to receive a request body, as nginx's client_body_timeout (here for the whole body)."""
StrictInt = Annotated[int, Strict()]


class NewNode(BaseModel):
    """POST /api/ha/nodes."""

    model_config = {"extra": "forbid"}

    hostname: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    ip: str = Field(min_length=1, max_length=253)
    """An IP address or a DNS name."""
    port: StrictInt = Field(default=4000, ge=1, le=65535)
    priority: StrictInt = Field(default=100, ge=0, le=1000)
    weight: StrictInt = Field(default=1, ge=0, le=1000)

    @field_validator("ip")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value) or value.replace(".", "").isdigit():
                raise ValueError("must be an IP address or a DNS name") from None
        return value

    name: str | None = Field(default=None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class FailoverRequest(BaseModel):
    """POST /api/ha/failover."""

    model_config = {"extra": "forbid"}

    targetNodeId: StrictInt | Annotated[str, Strict(), Field(min_length=1, max_length=253)]
    """A node id (an integer, not true or 2.0), or a name, hostname or address."""


class PromoteRequest(BaseModel):
    """POST /api/ha/database/promote."""

    model_config = {"extra": "forbid"}

    slaveHost: str = Field(min_length=1, max_length=253)
    force: Annotated[bool, Strict()] = False


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: json.loads accepts more levels than Python recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _label(hostname: str) -> str:
    """A WHMNode name from a host name: its first label, lowercased, invalid characters as dashes."""
    return _LABEL.sub("-", hostname.split(".", maxsplit=1)[0].lower()).strip("-")[:63] or "node"


NODE_ID_WAIT = 5.0
"""How long POST /api/ha/nodes waits for the operator to number the new node."""
NO_ID_YET = "the operator has not numbered the node yet; GET /api/ha/nodes shows its id once it has probed it"


def _ok(body: Obj, status: int = 200) -> web.Response:
    return web.json_response({"success": True, **body}, status=status)


@dataclass
class ShimApp:
    """State shared by the handlers: the API client, the authorizer and the settings."""

    kube: KubeClient
    authorizer: Authorizer
    namespace: str
    cluster_name: str | None = None
    request_timeout: float = 30.0
    proxy_admins: list[str] = field(default_factory=list)
    proxy_pods: str | None = None
    """``<label selector>:<admin port>``: the proxy replicas, found as pods (in a cluster)."""

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        read = Permission("get", "whmclusters")
        routes: list[tuple[str, str, Handler, Permission]] = [
            ("GET", "/api/ha/status", self.status, read),
            ("GET", "/api/ha/nodes", self.list_nodes, Permission("list", "whmnodes")),
            ("POST", "/api/ha/nodes", self.add_node, Permission("create", "whmnodes")),
            ("DELETE", "/api/ha/nodes/{id}", self.remove_node, Permission("delete", "whmnodes")),
            ("POST", "/api/ha/failover", self.failover, Permission("patch", "whmclusters")),
            ("GET", "/api/ha/failover/history", self.failover_history, read),
            ("GET", "/api/ha/database/replication", self.replication, Permission("get", "mysqlreplications")),
            ("POST", "/api/ha/database/promote", self.promote, Permission("patch", "mysqlreplications")),
            ("GET", "/api/ha/loadbalancer/stats", self.loadbalancer_stats, read),
            ("POST", "/api/ha/loadbalancer/reload", self.reload, Permission("patch", "whmclusters")),
            ("GET", "/api/ha/sessions/stats", self.session_stats, read),
            ("POST", "/api/ha/sessions/cleanup", self.session_cleanup, Permission("update", "whmclusters")),
        ]
        for method, path, handler, permission in routes:
            app.router.add_route(method, path, self._guarded(handler, permission))
        app.router.add_get("/api/ha/openapi.json", self.openapi)
        app.router.add_get("/healthz", self.healthz)
        return app

    # -- plumbing --------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.version < (1, 0):
            return errors.bad_request("HTTP/0.9 requests are not served").response()
        if request.version > (1, 1):
            return errors.ShimError(505, "HTTP_VERSION_NOT_SUPPORTED", "only HTTP/1.0 and HTTP/1.1").response()
        if request.method in ("CONNECT", "TRACE"):
            response = errors.ShimError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not served").response()
            response.headers["Allow"] = "GET, POST, DELETE"
            return response
        try:
            return await handler(request)
        except errors.ShimError as exc:
            return exc.response()
        except web.HTTPException as exc:
            code = "NOT_FOUND" if exc.status == 404 else "METHOD_NOT_ALLOWED" if exc.status == 405 else "HTTP_ERROR"
            response = errors.ShimError(exc.status, code, exc.reason).response()
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Kubernetes API trouble on %s %s: %s", request.method, request.path, exc)
            return errors.ShimError(503, "API_UNAVAILABLE", "the Kubernetes API did not answer as expected").response()

    def _guarded(self, handler: Handler, permission: Permission) -> Handler:
        read_only = permission.verb in ("get", "list")

        async def guarded(request: web.Request) -> web.StreamResponse:
            caller = await self.authorizer.authenticate(request.headers.get("Authorization"), read_only=read_only)
            if caller.username != ANONYMOUS:  # anonymous callers exist only when reads are opened explicitly
                await self.authorizer.authorize(caller, permission)
            request["caller"] = caller
            if read_only:
                return await handler(request)
            try:
                response = await handler(request)
            except errors.ShimError as exc:
                await self._audit(request, caller, f"{exc.status} {exc.code}: {exc.message}")
                raise
            await self._audit(request, caller, str(response.status))
            return response

        return guarded

    async def _audit(self, request: web.Request, caller: Caller, result: str) -> None:
        """A structured log line and an Event for every mutating call."""
        action = f"{request.method} {request.path}"
        target = request.get("target", "")
        entry = {
            "audit": True,
            "user": caller.username,
            "groups": list(caller.groups),
            "action": action,
            "target": target,
            "result": result,
            "time": datetime.now(UTC).isoformat(),
        }
        audit_log.info(json.dumps(entry))
        try:
            cluster = await self._cluster()
            await self.kube.event(
                cluster, "WHMCluster", "LegacyAPI", f"{caller.username}: {action} {target} -> {result}"
            )
        except (errors.ShimError, ApiError, aiohttp.ClientError) as exc:
            log.warning("audit event not posted: %s", exc)

    async def _json(self, request: web.Request, model: type[BaseModel]) -> Any:
        try:
            body = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
        except TimeoutError as exc:
            raise errors.ShimError(408, "REQUEST_TIMEOUT", f"no whole body within {BODY_TIMEOUT:g}s") from exc
        except web.HTTPRequestEntityTooLarge as exc:
            raise errors.ShimError(413, "BODY_TOO_LARGE", f"a body is at most {MAX_BODY} bytes") from exc
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise errors.bad_request("the body must be JSON") from exc
        except RecursionError as exc:
            raise errors.bad_request("the body is nested too deeply") from exc
        if _depth(raw) > MAX_JSON_DEPTH:
            raise errors.bad_request(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
            raise errors.unprocessable("invalid fields: " + ", ".join(sorted(fields)), fields) from exc

    async def _cluster(self) -> Obj:
        if self.cluster_name:
            try:
                return await self.kube.get(WHMCLUSTERS, self.namespace, self.cluster_name)
            except ApiError as exc:
                if exc.status == 404:
                    raise errors.not_found(f"WHMCluster {self.namespace}/{self.cluster_name} not found") from exc
                raise
        items = (await self.kube.list(WHMCLUSTERS, self.namespace))["items"]
        if len(items) != 1:
            raise errors.not_found(f"{len(items)} WHMClusters in {self.namespace}: start the shim with --cluster")
        cluster: Obj = items[0]
        return cluster

    async def _nodes(self, cluster: Obj) -> list[Obj]:
        name = cluster["metadata"]["name"]
        items = (await self.kube.list(WHMNODES, self.namespace))["items"]
        return sorted((n for n in items if n["spec"].get("cluster") == name), key=lambda n: n["metadata"]["name"])

    async def _replication(self, cluster: Obj) -> Obj | None:
        database = (cluster.get("spec") or {}).get("database")
        if not database:
            return None
        try:
            replication: Obj = await self.kube.get(
                MYSQLREPLICATIONS, self.namespace, database["replicationRef"]["name"]
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return replication

    # -- endpoints -------------------------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(document())

    async def status(self, _: web.Request) -> web.Response:
        cluster = await self._cluster()
        nodes = await self._nodes(cluster)
        return _ok(
            {"cluster": cluster_view(cluster, nodes), "database": replication_view(await self._replication(cluster))}
        )

    async def list_nodes(self, _: web.Request) -> web.Response:
        cluster = await self._cluster()
        return _ok({"nodes": [node_view(n, cluster) for n in await self._nodes(cluster)]})

    async def add_node(self, request: web.Request) -> web.Response:
        new: NewNode = await self._json(request, NewNode)
        cluster = await self._cluster()
        name = new.name or _label(new.hostname)
        request["target"] = name
        body = {
            "apiVersion": "ha.whm.io/v1alpha1",
            "kind": "WHMNode",
            "metadata": {"name": name},
            "spec": {
                "cluster": cluster["metadata"]["name"],
                "hostname": new.hostname,
                "address": new.ip,
                "port": new.port,
                "priority": new.priority,
                "weight": new.weight,
            },
        }
        try:
            created = await self.kube.create(WHMNODES, self.namespace, body)
        except ApiError as exc:
            if exc.status == 409:
                raise errors.conflict(f"node {name} already exists", code="DUPLICATE_NODE") from exc
            if exc.status == 422:
                causes = (exc.body.get("details") or {}).get("causes") or []
                fields = {c.get("field", "?"): c.get("message", "") for c in causes}
                raise errors.unprocessable(str(exc.body.get("message", "invalid node")), fields) from exc
            raise
        numbered = await self._numbered(created)
        view = node_view(numbered, cluster)
        if view["id"] is None:
            del view["id"]
            return _ok({"node": view, "message": NO_ID_YET}, status=201)
        return _ok({"node": view}, status=201)

    async def _numbered(self, node: Obj) -> Obj:
        """The node once the operator has given it its id (``status.nodeId``), or as it is after NODE_ID_WAIT.
        It is read by listing, which the shim's RBAC grants (get on WHMNodes it does not need otherwise)."""
        deadline = time.monotonic() + min(NODE_ID_WAIT, self.request_timeout)
        name = node["metadata"]["name"]
        while not (node.get("status") or {}).get("nodeId") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            listed = (await self.kube.list(WHMNODES, self.namespace))["items"]
            node = next((n for n in listed if n["metadata"]["name"] == name), node)
        return node

    async def _find_node(self, cluster: Obj, ident: str) -> Obj:
        try:
            return find_node(await self._nodes(cluster), ident)
        except errors.ShimError as exc:
            if exc.status == 404:
                raise errors.not_found(f"no node {ident!r} in cluster {cluster['metadata']['name']}") from exc
            raise

    async def remove_node(self, request: web.Request) -> web.Response:
        cluster = await self._cluster()
        node = await self._find_node(cluster, request.match_info["id"])
        name = node["metadata"]["name"]
        request["target"] = name
        try:
            await self.kube.delete(WHMNODES, self.namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                raise errors.not_found(f"node {name} is already gone") from exc
            raise
        return _ok({"removed": node_view(node, cluster)})

    async def _request(self, resource: Any, name: str, annotation: str, target: str, extra: dict[str, str]) -> str:
        """Set a request annotation unless one is pending (409); returns the request id."""
        request_id = str(uuid.uuid4())
        for _ in range(10):
            obj = await self.kube.get(resource, self.namespace, name)
            pending = (obj["metadata"].get("annotations") or {}).get(annotation)
            if pending:
                raise errors.conflict(
                    f"a request for {pending} is already in progress", code="IN_PROGRESS", pending=pending
                )
            annotations = {annotation: target, REQUEST_ID: request_id, **extra}
            try:
                await self.kube.patch(
                    resource,
                    self.namespace,
                    name,
                    {"metadata": {"annotations": annotations}},
                    resource_version=obj["metadata"]["resourceVersion"],
                )
                return request_id
            except ApiError as exc:
                if exc.status != 409:
                    raise
        raise errors.conflict("the object keeps changing; try again", code="BUSY")

    async def _outcome(self, resource: Any, name: str, request_id: str) -> Obj:
        """Wait for the operator's answer to a request, up to the request timeout (then 504)."""
        deadline = time.monotonic() + self.request_timeout
        while time.monotonic() < deadline:
            obj = await self.kube.get(resource, self.namespace, name)
            outcome: Obj = (obj.get("status") or {}).get("lastRequest") or {}
            if outcome.get("id") == request_id:
                return outcome
            await asyncio.sleep(0.1)
        raise errors.ShimError(
            504,
            "TIMEOUT",
            f"no answer from the operator within {self.request_timeout:g}s; the request is pending",
            requestId=request_id,
        )

    @staticmethod
    def _answer(outcome: Obj, body: Obj) -> web.Response:
        if outcome.get("result") == "Succeeded":
            return _ok({**body, "result": outcome})
        code = "REFUSED" if outcome.get("result") == "Refused" else "FAILED"
        status = 422 if code == "REFUSED" else 409
        raise errors.ShimError(status, code, outcome.get("reason") or code.lower(), result=outcome)

    async def failover(self, request: web.Request) -> web.Response:
        wanted: FailoverRequest = await self._json(request, FailoverRequest)
        cluster = await self._cluster()
        node = await self._find_node(cluster, str(wanted.targetNodeId))
        target = node["metadata"]["name"]
        request["target"] = target
        name = cluster["metadata"]["name"]
        request_id = await self._request(WHMCLUSTERS, name, FAILOVER_TO, target, {})
        outcome = await self._outcome(WHMCLUSTERS, name, request_id)
        return self._answer(outcome, {"primaryNode": target})

    async def failover_history(self, _: web.Request) -> web.Response:
        cluster = await self._cluster()
        replication = await self._replication(cluster)
        promotions = ((replication or {}).get("status") or {}).get("promotionHistory", [])
        return _ok({"history": (cluster.get("status") or {}).get("failoverHistory", []), "database": promotions})

    async def replication(self, _: web.Request) -> web.Response:
        cluster = await self._cluster()
        replication = await self._replication(cluster)
        if replication is None:
            raise errors.not_found("this cluster has no database (spec.database)")
        status = replication.get("status") or {}
        return _ok(
            {
                **(replication_view(replication) or {}),
                "members": status.get("members", []),
                "conditions": status.get("conditions", []),
            }
        )

    async def promote(self, request: web.Request) -> web.Response:
        wanted: PromoteRequest = await self._json(request, PromoteRequest)
        cluster = await self._cluster()
        replication = await self._replication(cluster)
        if replication is None:
            raise errors.not_found("this cluster has no database (spec.database)")
        members = replication["spec"].get("members", [])
        member = find_member(members, wanted.slaveHost)
        request["target"] = member["name"]
        name = replication["metadata"]["name"]
        extra = {FORCE: "true"} if wanted.force else {}
        request_id = await self._request(MYSQLREPLICATIONS, name, PROMOTE, member["name"], extra)
        outcome = await self._outcome(MYSQLREPLICATIONS, name, request_id)
        return self._answer(outcome, {"master": member["host"], "masterMember": member["name"]})

    async def loadbalancer_stats(self, _: web.Request) -> web.Response:
        async def one(session: aiohttp.ClientSession, url: str) -> Obj:
            try:
                async with session.get(f"{url.rstrip('/')}/stats") as response:
                    return {"url": url, "stats": await response.json()}
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                return {"url": url, "error": f"{exc.__class__.__name__}: {exc}"}

        urls = list(self.proxy_admins)
        if self.proxy_pods:
            selector, _sep, port = self.proxy_pods.rpartition(":")
            pods = (await self.kube.list(PODS, self.namespace, label_selector=selector))["items"]
            urls += [f"http://{p['status']['podIP']}:{port}" for p in pods if (p.get("status") or {}).get("podIP")]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            proxies = await asyncio.gather(*(one(session, url) for url in urls))
        return _ok({"proxies": list(proxies)})

    async def reload(self, request: web.Request) -> web.Response:
        cluster = await self._cluster()
        name = cluster["metadata"]["name"]
        request["target"] = name
        token = str(uuid.uuid4())
        await self.kube.patch(WHMCLUSTERS, self.namespace, name, {"metadata": {"annotations": {RELOAD: token}}})
        return _ok({"reload": token})

    async def _database(self, cluster: Obj) -> Any:
        database = (cluster.get("spec") or {}).get("database")
        if not database:
            raise errors.conflict("this cluster has no database (spec.database)", code="NO_DATABASE")
        try:
            return await primary_dsn(
                self.kube, self.namespace, database["replicationRef"]["name"], database.get("schemaName", "whm_ha")
            )
        except DatabaseUnavailable as exc:
            raise errors.ShimError(503, "DATABASE_UNAVAILABLE", str(exc)) from exc

    async def _sql(self, cluster: Obj, sql: str) -> tuple[Any, ...]:
        dsn = await self._database(cluster)

        def run() -> tuple[Any, ...]:
            conn = dsn.connect(connect_timeout=3, read_timeout=10)
            try:
                with conn.cursor() as cur:
                    count = cur.execute(sql)
                    row = cur.fetchone()
                    return tuple(row) if row else (count,)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else ""
            why = "the legacy tables are not created yet (the operator creates them)" if code == 1146 else ""
            raise errors.ShimError(503, "DATABASE_UNAVAILABLE", why or f"database error {code}") from exc

    async def session_stats(self, _: web.Request) -> web.Response:
        cluster = await self._cluster()
        total, active, expired, users = await self._sql(
            cluster,
            "SELECT COUNT(*), COALESCE(SUM(expires_at >= NOW(3)), 0), COALESCE(SUM(expires_at < NOW(3)), 0),"
            " COUNT(DISTINCT CASE WHEN expires_at >= NOW(3) THEN user_id END) FROM ha_sessions",
        )
        return _ok(
            {"stats": {"total": int(total), "active": int(active), "expired": int(expired), "activeUsers": int(users)}}
        )

    async def session_cleanup(self, request: web.Request) -> web.Response:
        cluster = await self._cluster()
        request["target"] = "ha_sessions"
        (deleted,) = await self._sql(cluster, "DELETE FROM ha_sessions WHERE expires_at < NOW(3)")
        return _ok({"deleted": int(deleted)})

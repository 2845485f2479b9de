"""The sandbox's HTTP API: discovery, resource verbs, watches, reviews and Tables, on aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import __version__
from . import errors
from .auth import Directory
from .catalogue import ResourceType
from .selectors import field_selector, label_selector
from .store import Event, Store, Watcher
from .tables import table, wants_table

REVIEWS = {
    ("authentication.k8s.io", "tokenreviews"): "token_review",
    ("authorization.k8s.io", "subjectaccessreviews"): "subject_access_review",
}
NAMESPACE_SUBRESOURCES = ("status", "finalize")
KUBE_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0-whm-ha-sandbox",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-11-01T00:00:00Z",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class Target:
    """What a resource URL names."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _error(exc: errors.ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


class SandboxAPI:
    """The aiohttp application around a Store."""

    def __init__(self, store: Store, directory: Directory | None = None, bookmark_interval: float = 30.0) -> None:
        self.store = store
        self.directory = directory or Directory()
        self.bookmark_interval = bookmark_interval
        self.app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.app.on_shutdown.append(self._close_watches)
        self._streams: set[web.StreamResponse] = set()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except errors.ApiError as exc:
            return _error(exc)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(errors.bad_request(f"the request body is not valid JSON: {exc}"))

    async def _close_watches(self, _: web.Application) -> None:
        for watcher in list(self.store.watchers):
            self.store.watchers.discard(watcher)
            watcher.queue.put_nowait(Event(0, "CLOSE", watcher.key, {}))

    # -- routing --------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json({**KUBE_VERSION, "goVersion": f"whm-ha {__version__}"})
        if path == "/_sandbox/compact" and request.method == "POST":
            return _json({"compactedResourceVersion": str(self.store.compact())})
        if path == "/openapi/v3":
            return _json(self._openapi_root())
        if path.startswith("/openapi/v3/"):
            return _json(self._openapi_group_version(path.removeprefix("/openapi/v3/")))
        parts = [p for p in path.split("/") if p]
        if parts == ["api"]:
            return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if parts == ["apis"]:
            return _json(self._group_list())
        if parts[:1] == ["api"] and len(parts) >= 2:
            return await self._resource_request(request, "", parts[1], parts[2:])
        if parts[:1] == ["apis"] and len(parts) == 2:
            group = next((g for g in self._group_list()["groups"] if g["name"] == parts[1]), None)
            if group is None:
                raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json({"kind": "APIGroup", "apiVersion": "v1", **group})
        if parts[:1] == ["apis"] and len(parts) >= 3:
            return await self._resource_request(request, parts[1], parts[2], parts[3:])
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")

    def _openapi_root(self) -> dict[str, Any]:
        """OpenAPI v3 discovery: one document per group version."""
        paths = {}
        for group, versions in self.store.catalogue.groups().items():
            for version in versions:
                key = f"apis/{group}/{version}" if group else f"api/{version}"
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}"}
        return {"paths": paths}

    def _openapi_group_version(self, key: str) -> dict[str, Any]:
        """A group version's document: PATCH operations accepting fieldValidation (so kubectl validates
        on the server), and the custom resources' schemas (so kubectl explain works)."""
        parts = key.split("/")
        group, version = ("", parts[1]) if parts[0] == "api" and len(parts) == 2 else (parts[1], parts[-1])
        types = self.store.catalogue.in_group_version(group, version)
        if not types:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        for rt in types:
            gvk = [{"group": group, "version": version, "kind": rt.kind}]
            scope = "/namespaces/{namespace}" if rt.namespaced else ""
            paths[f"/{key}{scope}/{rt.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": gvk[0],
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                }
            }
            if rt.schema is not None:
                reversed_group = ".".join(reversed(group.split(".")))
                schemas[f"{reversed_group}.{version}.{rt.kind}"] = {**rt.schema, "x-kubernetes-group-version-kind": gvk}
        return {
            "openapi": "3.0.0",
            "info": {"title": "whm-ha sandbox", "version": version},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    def _group_list(self) -> dict[str, Any]:
        groups = []
        for group, versions in sorted(self.store.catalogue.groups().items()):
            if not group:
                continue
            entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        types = self.store.catalogue.in_group_version(group, version)
        if not types:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = [entry for rt in types for entry in rt.discovery()]
        group_version = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        catalogue = self.store.catalogue
        namespace: str | None = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in NAMESPACE_SUBRESOURCES:
            namespace, rest = rest[1], rest[2:]
        rt = catalogue.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not rt.namespaced:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and not (subresource == "status" and rt.has_status):
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(rt, namespace, name, subresource)

    # -- verbs ----------------------------------------------------------------------------------

    async def _resource_request(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        if not rest:
            if request.method != "GET":
                raise errors.ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return _json(self._resource_list(group, version))
        target = self._target(group, version, rest)
        rt, query = target.rt, request.query
        dry_run = query.get("dryRun") == "All"
        strict = query.get("fieldValidation") == "Strict"
        method = request.method
        if target.name is None:
            if method == "GET":
                if query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, target)
                return self._list(request, target)
            if method == "POST":
                body = await request.json()
                review = REVIEWS.get(rt.key)
                if review is not None:
                    return _json(getattr(self.directory, review)(body), 201)
                return _json(self.store.create(rt, target.namespace, body, strict=strict, dry_run=dry_run), 201)
            if method == "DELETE":
                return self._delete_collection(request, target)
        else:
            if method == "GET":
                obj = self.store.get(rt, target.namespace, target.name)
                if wants_table(request.headers.get("Accept", "")):
                    include = request.query.get("includeObject", "Metadata")
                    return _json(table(rt, [obj], obj["metadata"]["resourceVersion"], include))
                return _json(obj)
            if method == "PUT":
                body = await request.json()
                return _json(
                    self.store.update(
                        rt,
                        target.namespace,
                        target.name,
                        body,
                        subresource=target.subresource,
                        strict=strict,
                        dry_run=dry_run,
                    )
                )
            if method == "PATCH":
                content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
                patch = await request.json()
                return _json(
                    self.store.patch(
                        rt,
                        target.namespace,
                        target.name,
                        content_type,
                        patch,
                        subresource=target.subresource,
                        strict=strict,
                        dry_run=dry_run,
                    )
                )
            if method == "DELETE" and target.subresource is None:
                options = await request.json() if request.can_read_body else {}
                if "propagationPolicy" in query:
                    options["propagationPolicy"] = query["propagationPolicy"]
                obj, gone = self.store.delete(rt, target.namespace, target.name, options, dry_run=dry_run)
                return _json(obj, 200 if gone else 202)
        raise errors.ApiError(405, "MethodNotAllowed", f"the server does not allow {method} here")

    def _matcher(self, request: web.Request, rt: ResourceType) -> Any:
        labels = label_selector(request.query.get("labelSelector"))
        fields = field_selector(request.query.get("fieldSelector"), rt.key)
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, request: web.Request, target: Target) -> web.Response:
        items, rv = self.store.list_objects(target.rt, target.namespace, self._matcher(request, target.rt))
        offset = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0)
        page = items[offset : offset + limit] if limit else items[offset:]
        more = bool(limit) and offset + limit < len(items)
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if more:
            metadata["continue"] = str(offset + limit)
            metadata["remainingItemCount"] = len(items) - offset - limit
        if wants_table(request.headers.get("Accept", "")):
            result = table(target.rt, page, str(rv), request.query.get("includeObject", "Metadata"))
            result["metadata"].update(metadata)
            return _json(result)
        return _json(
            {"kind": f"{target.rt.kind}List", "apiVersion": target.rt.api_version, "metadata": metadata, "items": page}
        )

    def _delete_collection(self, request: web.Request, target: Target) -> web.Response:
        items, _ = self.store.list_objects(target.rt, target.namespace, self._matcher(request, target.rt))
        for obj in items:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(target.rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        return _json(
            {"kind": f"{target.rt.kind}List", "apiVersion": target.rt.api_version, "metadata": {}, "items": items}
        )

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt = target.rt
        since = request.query.get("resourceVersion")
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(request.query.get("timeoutSeconds") or 0) or None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher, initial = self.store.watch(rt, target.namespace, self._matcher(request, rt), since)
        except errors.ApiError as exc:
            if exc.code != 410:
                raise
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        await response.prepare(request)
        self._streams.add(response)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            for event in initial:
                await self._send(response, event)
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    wait = min(wait, remaining) if wait is not None else remaining
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    if bookmarks and watcher.queue.empty():
                        await self._bookmark(response, rt)
                    continue
                if event.type == "CLOSE":
                    break
                await self._send(response, event)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.watchers.discard(watcher)
            self._streams.discard(response)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event: Event) -> None:
        await response.write(json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n")

    async def _bookmark(self, response: web.StreamResponse, rt: ResourceType) -> None:
        bookmark = {
            "type": "BOOKMARK",
            "object": {
                "kind": rt.kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
            },
        }
        await response.write(json.dumps(bookmark).encode() + b"\n")


__all__ = ["SandboxAPI", "Watcher"]

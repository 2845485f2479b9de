"""The sandbox's object store: metadata, optimistic concurrency, subresources, finalizers, watches.

All operations are synchronous and run on the server's event loop, so each is atomic. Every change
takes the next value of one monotonic resourceVersion counter and is appended to a bounded event
history, from which watches resume; a watch from before the history's start gets 410 Gone.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import string
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonpatch

from ..crd.kopf_peering import PEERING_CRDS
from ..crd.validation import admit, schema_problems, unknown_fields
from . import errors
from .catalogue import Catalogue, CRDError, ResourceType, types_from_crd
from .selectors import Matcher

Obj = dict[str, Any]
TypeKey = tuple[str, str]
ObjKey = tuple[str, str]  # (namespace or "", name)

CRD_KEY: TypeKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY: TypeKey = ("", "namespaces")
SECRET_KEY: TypeKey = ("", "secrets")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IMMUTABLE_METADATA = ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "generation")
MERGE_PATCH_TYPE = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH_TYPE = "application/strategic-merge-patch+json"
JSON_PATCH_TYPE = "application/json-patch+json"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Event:
    """One change, as watches see it."""

    rv: int
    type: str
    key: TypeKey
    obj: Obj
    old: Obj | None = None


@dataclass(eq=False)
class Watcher:
    """A live watch: its filter and the queue its events go to."""

    key: TypeKey
    namespace: str | None
    matches: Matcher
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        if event.key != self.key:
            return
        meta = event.obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return
        now_matches = self.matches(event.obj)
        was_matching = event.old is not None and self.matches(event.old)
        if event.type == "MODIFIED":
            if now_matches and not was_matching:
                self.queue.put_nowait(Event(event.rv, "ADDED", event.key, event.obj))
            elif was_matching and not now_matches:
                self.queue.put_nowait(Event(event.rv, "DELETED", event.key, event.obj))
            elif now_matches:
                self.queue.put_nowait(event)
        elif now_matches:
            self.queue.put_nowait(event)


class Store:
    """Objects of every served type, and the history of their changes."""

    def __init__(self, catalogue: Catalogue | None = None, history_limit: int = 10_000) -> None:
        self.catalogue = catalogue or Catalogue.with_builtins()
        self.rv = 0
        self.objects: dict[TypeKey, dict[ObjKey, Obj]] = {}
        self.history: deque[Event] = deque(maxlen=history_limit)
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()
        for name in INITIAL_NAMESPACES:
            self._insert(self._type(NAMESPACE_KEY), {"metadata": {"name": name}})
        for crd in PEERING_CRDS:
            self.create(self._type(CRD_KEY), None, copy.deepcopy(crd))

    # -- lookups -------------------------------------------------------------------------------

    def _type(self, key: TypeKey) -> ResourceType:
        for resource_type in self.catalogue.types.values():
            if resource_type.key == key:
                return resource_type
        raise KeyError(key)

    def _bucket(self, rt: ResourceType) -> dict[ObjKey, Obj]:
        return self.objects.setdefault(rt.key, {})

    @staticmethod
    def _obj_key(rt: ResourceType, namespace: str | None, name: str) -> ObjKey:
        return ((namespace or "") if rt.namespaced else "", name)

    def _current(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._bucket(rt).get(self._obj_key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return obj

    def _served(self, rt: ResourceType, obj: Obj) -> Obj:
        served = copy.deepcopy(obj)
        served["apiVersion"] = rt.api_version
        served["kind"] = rt.kind
        return served

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        return self._served(rt, self._current(rt, namespace, name))

    def list_objects(self, rt: ResourceType, namespace: str | None, matches: Matcher) -> tuple[list[Obj], int]:
        items = [
            self._served(rt, obj)
            for (ns, _), obj in sorted(self._bucket(rt).items())
            if (namespace is None or not rt.namespaced or ns == namespace) and matches(obj)
        ]
        return items, self.rv

    def iter_all(self) -> Iterator[tuple[TypeKey, Obj]]:
        for key, bucket in self.objects.items():
            for obj in bucket.values():
                yield key, obj

    # -- changes -------------------------------------------------------------------------------

    def _emit(self, rt: ResourceType, kind: str, obj: Obj, old: Obj | None = None) -> None:
        event = Event(self.rv, kind, rt.key, self._served(rt, obj), self._served(rt, old) if old else None)
        self.history.append(event)
        for watcher in list(self.watchers):
            watcher.offer(event)

    def _next_rv(self, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _insert(self, rt: ResourceType, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        if rt.key == NAMESPACE_KEY:
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        self._next_rv(obj)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        self._bucket(rt)[self._obj_key(rt, meta.get("namespace"), meta["name"])] = obj
        self._emit(rt, "ADDED", obj)
        return obj

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None, strict: bool) -> Obj:
        """Custom resources: prune, default and validate against the CRD schema. Secrets: stringData
        becomes base64 data, as the real server writes it."""
        if rt.key == SECRET_KEY and "stringData" in obj:
            encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in (obj.pop("stringData") or {}).items()}
            obj["data"] = {**(obj.get("data") or {}), **encoded}
        if not rt.custom or rt.schema is None:
            return obj
        name = obj.get("metadata", {}).get("name", "")
        candidate = {**obj, "apiVersion": rt.api_version, "kind": rt.kind}
        if strict:
            unknown = unknown_fields(rt.schema, candidate)
            if unknown:
                listed = ", ".join(f'unknown field "{path}"' for path in unknown)
                raise errors.bad_request(f"strict decoding error: {listed}")
        admitted, field_errors = admit(rt.schema, candidate, old)
        causes = [{"reason": e.reason, "message": e.message, "field": e.field} for e in field_errors]
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        admitted.pop("apiVersion", None)
        admitted.pop("kind", None)
        return admitted

    def create(
        self, rt: ResourceType, namespace: str | None, body: Obj, *, strict: bool = False, dry_run: bool = False
    ) -> Obj:
        obj = copy.deepcopy(body)
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request must be an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
                meta["name"] = meta["generateName"] + suffix
            else:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    "",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "message": "name or generateName is required",
                            "field": "metadata.name",
                        }
                    ],
                )
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace or body_ns or "default"
            if self._object_or_none(self._type(NAMESPACE_KEY), None, meta["namespace"]) is None:
                raise errors.not_found("namespaces", "", meta["namespace"])
        else:
            meta.pop("namespace", None)
        for transient in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(transient, None)
        if self._object_or_none(rt, meta.get("namespace"), meta["name"]) is not None:
            raise errors.already_exists(rt.plural, rt.group, meta["name"])
        if rt.has_status and rt.key != CRD_KEY:
            obj.pop("status", None)
        obj = self._admit(rt, obj, None, strict)
        if rt.key == CRD_KEY:
            obj = self._accept_crd(obj)
        if dry_run:
            return self._served(rt, obj)
        stored = self._insert(rt, obj)
        if rt.key == CRD_KEY:
            self._register_crd(stored)
        return self._served(rt, stored)

    def _object_or_none(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        return self._bucket(rt).get(self._obj_key(rt, namespace, name))

    def _check_rv(self, rt: ResourceType, current: Obj, wanted: str | None, required: bool) -> None:
        name = current["metadata"]["name"]
        if not wanted:
            if required:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        {
                            "reason": "FieldValueInvalid",
                            "message": "Invalid value: 0x0: must be specified for an update",
                            "field": "metadata.resourceVersion",
                        }
                    ],
                )
            return
        if wanted != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name)

    def _write(
        self, rt: ResourceType, current: Obj, proposed: Obj, *, subresource: str | None, strict: bool, dry_run: bool
    ) -> Obj:
        """Shared tail of update and patch: subresource rules, metadata, generation, finalizers."""
        old_meta = current["metadata"]
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in proposed:
                new["status"] = proposed["status"]
            else:
                new.pop("status", None)
        elif subresource is None:
            new = copy.deepcopy(proposed)
            if rt.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
        else:
            raise errors.not_found(f"{rt.plural}/{subresource}", rt.group, old_meta["name"])
        new.pop("apiVersion", None)
        new.pop("kind", None)
        meta = new.setdefault("metadata", {})
        for key in IMMUTABLE_METADATA:
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if subresource is None:
            new = self._admit(rt, new, self._served(rt, current), strict)
        else:
            self._admit(rt, new, self._served(rt, current), False)
        meta = new["metadata"]
        if rt.key == CRD_KEY:
            new = self._accept_crd(new)
        if new == current:
            return self._served(rt, current)
        if self._spec_changed(current, new):
            meta["generation"] = old_meta.get("generation", 1) + 1
        if dry_run:
            return self._served(rt, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(rt, current, new)
        self._next_rv(new)
        self._bucket(rt)[self._obj_key(rt, meta.get("namespace"), meta["name"])] = new
        if rt.key == CRD_KEY:
            self._register_crd(new)
        self._emit(rt, "MODIFIED", new, current)
        return self._served(rt, new)

    @staticmethod
    def _spec_changed(old: Obj, new: Obj) -> bool:
        def body(obj: Obj) -> Obj:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

        return body(old) != body(new)

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        current = self._current(rt, namespace, name)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be an object")
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        self._check_rv(rt, current, meta.get("resourceVersion"), required=rt.custom)
        return self._write(rt, current, body, subresource=subresource, strict=strict, dry_run=dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        current = self._current(rt, namespace, name)
        served = self._served(rt, current)
        if content_type == STRATEGIC_MERGE_PATCH_TYPE and rt.custom:
            raise errors.ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{JSON_PATCH_TYPE}, {MERGE_PATCH_TYPE}, application/apply-patch+yaml",
            )
        if content_type in (MERGE_PATCH_TYPE, STRATEGIC_MERGE_PATCH_TYPE):
            if not isinstance(patch, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            patched = merge_patch(served, patch)
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
        elif content_type == JSON_PATCH_TYPE:
            try:
                patched = jsonpatch.apply_patch(served, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise errors.ApiError(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
                ) from exc
            except (TypeError, ValueError, KeyError) as exc:
                raise errors.bad_request(f"invalid JSON patch: {exc}") from exc
            wanted = None
            if patched.get("metadata", {}).get("resourceVersion") != served["metadata"]["resourceVersion"]:
                wanted = patched.get("metadata", {}).get("resourceVersion")
        else:
            raise errors.ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        if not isinstance(patched, dict):
            raise errors.bad_request("the patched object is not an object")
        self._check_rv(rt, current, wanted, required=False)
        return self._write(rt, current, patched, subresource=subresource, strict=strict, dry_run=dry_run)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: Obj | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete, or mark for deletion while finalizers remain. Returns (object, gone now)."""
        current = self._current(rt, namespace, name)
        options = options or {}
        preconditions = options.get("preconditions") or {}
        meta = current["metadata"]
        if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
            raise errors.conflict(rt.plural, rt.group, name)
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name)
        if dry_run:
            return self._served(rt, current), not meta.get("finalizers")
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return self._served(rt, current), False
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = meta.get("generation", 1) + 1
            self._next_rv(new)
            self._bucket(rt)[self._obj_key(rt, namespace, name)] = new
            self._emit(rt, "MODIFIED", new, current)
            return self._served(rt, new), False
        policy = options.get("propagationPolicy") or "Background"
        return self._remove(rt, current, current, policy), True

    def _remove(self, rt: ResourceType, current: Obj, final: Obj, policy: str = "Background") -> Obj:
        meta = final["metadata"]
        gone = copy.deepcopy(final)
        del self._bucket(rt)[self._obj_key(rt, meta.get("namespace"), meta["name"])]
        self._next_rv(gone)
        self._emit(rt, "DELETED", gone)
        if rt.key == CRD_KEY:
            self._unregister_crd(gone)
        if rt.key == NAMESPACE_KEY:
            self._empty_namespace(meta["name"])
        self._collect_dependents(meta["uid"], orphan=policy == "Orphan")
        return self._served(rt, gone)

    # -- garbage collection, namespaces and CRDs ------------------------------------------------

    def _collect_dependents(self, owner_uid: str, *, orphan: bool) -> None:
        """Delete (or orphan) objects whose ownerReferences point at a removed owner."""
        for key, obj in list(self.iter_all()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            rt = self._type(key)
            meta = obj["metadata"]
            if self._object_or_none(rt, meta.get("namespace"), meta["name"]) is not obj:
                continue
            remaining = [ref for ref in refs if ref.get("uid") != owner_uid]
            if orphan or remaining:
                self.patch(
                    rt,
                    meta.get("namespace"),
                    meta["name"],
                    JSON_PATCH_TYPE,
                    [{"op": "replace", "path": "/metadata/ownerReferences", "value": remaining}],
                )
            else:
                self.delete(rt, meta.get("namespace"), meta["name"])

    def _empty_namespace(self, namespace: str) -> None:
        for key, obj in list(self.iter_all()):
            meta = obj["metadata"]
            if meta.get("namespace") != namespace:
                continue
            rt = self._type(key)
            if self._object_or_none(rt, namespace, meta["name"]) is obj:
                stripped = copy.deepcopy(obj)
                stripped["metadata"].pop("finalizers", None)
                self._remove(rt, obj, stripped)

    def _accept_crd(self, crd: Obj) -> Obj:
        try:
            types = types_from_crd(crd)
        except CRDError as exc:
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                crd.get("metadata", {}).get("name", ""),
                [{"reason": "FieldValueInvalid", "message": str(exc), "field": "spec"}],
            ) from exc
        problems = [p for rt in types if rt.schema is not None for p in schema_problems(rt.schema)]
        if problems:
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                crd["metadata"]["name"],
                [{"reason": p.reason, "message": p.message, "field": p.field} for p in problems],
            )
        names = crd["spec"]["names"]
        accepted = {
            "kind": names["kind"],
            "listKind": names.get("listKind", f"{names['kind']}List"),
            "plural": names["plural"],
            "singular": names.get("singular", names["kind"].lower()),
            **({"shortNames": names["shortNames"]} if names.get("shortNames") else {}),
            **({"categories": names["categories"]} if names.get("categories") else {}),
        }
        existing = {c["type"]: c for c in (crd.get("status") or {}).get("conditions", [])}
        conditions = []
        for kind, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ):
            previous = existing.get(kind)
            conditions.append(
                previous
                if previous and previous.get("status") == "True"
                else {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}
            )
        crd["status"] = {
            "conditions": conditions,
            "acceptedNames": accepted,
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
        }
        return crd

    def _register_crd(self, crd: Obj) -> None:
        self.catalogue.remove_crd(crd["metadata"]["name"])
        for resource_type in types_from_crd(crd):
            self.catalogue.add(resource_type)

    def _unregister_crd(self, crd: Obj) -> None:
        types = types_from_crd(crd)
        if types:
            rt = types[0]
            for obj in list(self._bucket(rt).values()):
                stripped = copy.deepcopy(obj)
                stripped["metadata"].pop("finalizers", None)
                self._remove(rt, obj, stripped)
            self.objects.pop(rt.key, None)
        self.catalogue.remove_crd(crd["metadata"]["name"])

    # -- watches --------------------------------------------------------------------------------

    def watch(
        self, rt: ResourceType, namespace: str | None, matches: Matcher, since: str | None
    ) -> tuple[Watcher, list[Event]]:
        """Register a watcher; returns it with the events to send first (or raises 410 Gone)."""
        watcher = Watcher(rt.key, namespace if rt.namespaced else None, matches)
        if since in (None, "", "0"):
            initial = [Event(self.rv, "ADDED", rt.key, obj) for obj in self.list_objects(rt, namespace, matches)[0]]
        else:
            try:
                start = int(since or 0)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resourceVersion: {since!r}") from exc
            oldest = self.history[0].rv if self.history else self.rv + 1
            if start < self.compacted_rv or start < oldest - 1:
                raise errors.gone(f"too old resource version: {start} ({max(self.compacted_rv, oldest - 1)})")
            probe = Watcher(rt.key, watcher.namespace, matches)
            for event in self.history:
                if event.rv > start:
                    probe.offer(event)
            initial = []
            while not probe.queue.empty():
                initial.append(probe.queue.get_nowait())
        self.watchers.add(watcher)
        return watcher, initial

    def compact(self) -> int:
        """Forget the event history: watches from an older resourceVersion get 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv
        return self.rv

    # -- persistence ----------------------------------------------------------------------------

    def dump(self, path: Path) -> None:
        """Save objects and the resourceVersion counter (the event history is not kept)."""
        data = {
            "resourceVersion": self.rv,
            "objects": [{"group": g, "plural": p, "object": obj} for (g, p), obj in self.iter_all()],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        """Restore what dump saved; watches from before the restart get 410 Gone."""
        data = json.loads(path.read_text())
        self.objects.clear()
        crds = [e for e in data["objects"] if (e["group"], e["plural"]) == CRD_KEY]
        for entry in crds:
            self._register_crd(entry["object"])
        for entry in data["objects"]:
            self.objects.setdefault((entry["group"], entry["plural"]), {})
            obj = entry["object"]
            rt = self._type((entry["group"], entry["plural"]))
            meta = obj["metadata"]
            self._bucket(rt)[self._obj_key(rt, meta.get("namespace"), meta["name"])] = obj
        self.rv = int(data["resourceVersion"])
        self.history.clear()
        self.compacted_rv = self.rv

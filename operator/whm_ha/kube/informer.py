"""A local copy of one kind of object, kept by LIST then WATCH (client-go's informer, for what kopf's indices
cannot carry: kopf gates every handler on all indexed objects, and that gate costs time quadratic in their
number, minutes for 10,000 WHMNodes).

``synced`` is set once the first LIST has landed: a reader that must not act on a partial view (an election)
waits for it. After a broken watch (410 Gone, a dropped connection, an API error) the informer lists again,
with a backoff, and reports what changed meanwhile, deletions included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from .client import ApiError, KubeClient, Obj, Resource

log = logging.getLogger(__name__)
WATCH_SECONDS = 300
"""How long one watch request runs before the server ends it (it is then resumed from its last version)."""
Key = tuple[str, str]
"""(namespace, name)."""


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


class Informer:
    """The objects of ``resource`` in ``namespace`` (all namespaces when None); ``on_change(old, new)`` runs for
    every change (old None: added; new None: deleted)."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        on_change: Callable[[Obj | None, Obj | None], None],
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.on_change = on_change
        self.objects: dict[Key, Obj] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = 0.5
        while True:
            try:
                version = await self._list()
                backoff = 0.5
                await self._watch(version)
            except ApiError as exc:
                if exc.status != 410:
                    log.warning("%s: API error %s; listing again in %.1fs", self.resource.plural, exc, backoff)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("%s: API unreachable (%r); listing again in %.1fs", self.resource.plural, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _list(self) -> str:
        listed = await self.client.list(self.resource, self.namespace)
        fresh = {key_of(obj): obj for obj in listed["items"]}
        for key in self.objects.keys() - fresh.keys():
            self.on_change(self.objects.pop(key), None)
        for key, obj in fresh.items():
            old = self.objects.get(key)
            self.objects[key] = obj
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.on_change(old, obj)
        self.synced.set()
        return str(listed["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        while True:
            async for event in self.client.watch(self.resource, self.namespace, version, timeout=WATCH_SECONDS):
                obj = event["object"]
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if event["type"] == "BOOKMARK":
                    continue
                key = key_of(obj)
                old = self.objects.pop(key, None)
                if event["type"] == "DELETED":
                    if old is not None:
                        self.on_change(old, None)
                else:
                    self.objects[key] = obj
                    self.on_change(old, obj)

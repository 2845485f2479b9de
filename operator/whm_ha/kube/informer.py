"""A local copy of one kind of object, kept by LIST then WATCH (client-go's informer, for what kopf's indices
cannot carry: kopf gates every handler on all indexed objects, and that gate costs time quadratic in their
number, minutes for 10,000 WHMNodes).

``synced`` is set once the first LIST has landed: a reader that must not act on a partial view (an election)
waits for it. After a broken watch (410 Gone, a dropped connection, an API error) the informer lists again
and reports what changed meanwhile, deletions included. ``relisting`` and ``follow`` are that loop and that
watch on their own, for a reader of several kinds (the proxy's configuration).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from .client import ApiError, KubeClient, Obj, Resource

log = logging.getLogger(__name__)
WATCH_SECONDS = 300
"""How long one watch request runs before the server ends it (it is then resumed from its last version)."""
Key = tuple[str, str]
"""(namespace, name)."""
Listed = TypeVar("Listed")
FIRST_BACKOFF = 0.25
LAST_BACKOFF = 5.0


async def relisting(
    what: str, list_: Callable[[], Awaitable[Listed]], watch: Callable[[Listed], Awaitable[None]]
) -> None:
    """List, then watch from what the list returned, until cancelled. A watch that ends (or 410 Gone) lists
    again at once; an API error or an unreachable API after a backoff that doubles from 0.25 s to 5 s and
    starts again after a good list."""
    backoff = FIRST_BACKOFF
    while True:
        try:
            listed = await list_()
            backoff = FIRST_BACKOFF
            await watch(listed)
            continue
        except ApiError as exc:
            if exc.status == 410:
                log.info("%s: watch expired (410 Gone); listing again", what)
                continue
            log.warning("%s: API error %s; listing again in %.2fs", what, exc, backoff)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("%s: API unreachable (%r); listing again in %.2fs", what, exc, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, LAST_BACKOFF)


async def follow(
    client: KubeClient,
    resource: Resource,
    namespace: str | None,
    version: str,
    apply: Callable[[str, Obj], None],
    *,
    seconds: int = WATCH_SECONDS,
    field_selector: str = "",
) -> None:
    """Watch from ``version``, each watch request resumed from the last version seen, until the API ends it
    abnormally (raises); ``apply(type, obj)`` for every event but bookmarks."""
    while True:
        async for event in client.watch(resource, namespace, version, field_selector=field_selector, timeout=seconds):
            obj = event["object"]
            version = obj.get("metadata", {}).get("resourceVersion", version)
            if event["type"] != "BOOKMARK":
                apply(event["type"], obj)


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
        await relisting(self.resource.plural, self._list, self._watch)

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
        await follow(self.client, self.resource, self.namespace, version, self._apply)

    def _apply(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        old = self.objects.pop(key, None)
        if kind == "DELETED":
            if old is not None:
                self.on_change(old, None)
        else:
            self.objects[key] = obj
            self.on_change(old, obj)

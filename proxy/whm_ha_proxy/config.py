"""The proxy's configuration, read from the WHMCluster and its WHMNodes and kept current by watching them.

``ConfigWatcher`` lists both kinds, then watches each from the list's resourceVersion (the operator's
``relisting`` loop and ``follow`` watch). It lists again on 410 Gone, after API errors (with a growing
backoff, so an API server restart is survived), every ``resync`` seconds, when the cluster's
``ha.whm.io/reload`` annotation takes a new value, and when ``reload()`` is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from whm_ha.crd.annotations import RELOAD
from whm_ha.crd.whmcluster import LoadBalancer
from whm_ha.kube.client import WHMCLUSTERS, WHMNODES, KubeClient, Obj
from whm_ha.kube.informer import follow, relisting

from .balancer import Algorithm, NodeSpec

log = logging.getLogger("whm_ha_proxy.config")

WATCH_SECONDS = 60
"""How long one watch request lasts before it is renewed from its last resourceVersion."""


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the workers need to route: derived from one WHMCluster and its WHMNodes."""

    algorithm: Algorithm = "roundRobin"
    retries: int = 2
    retry_after_timeout: bool = True
    """Whether an idempotent request without a body is retried when its node took it and did not answer in time."""
    no_retry_after_timeout: tuple[str, ...] = ()
    """Path patterns (fnmatch, ``*`` matching ``/`` too) never retried after a timeout."""
    sticky_cookie: str | None = None
    """Name of the affinity cookie, None when sticky sessions are off."""
    nodes: tuple[NodeSpec, ...] = ()
    generation: int = 0
    """Number of reloads (annotation or admin) so far: a new value makes workers forget passive ejections."""

    @property
    def routable(self) -> list[str]:
        return [node.name for node in self.nodes if node.routable]

    def retries_after_timeout(self, target: bytes) -> bool:
        """Whether a request for ``target`` (path and query) may go to another node after its node timed out."""
        if not self.retry_after_timeout:
            return False
        path = target.partition(b"?")[0].decode("latin-1")
        return not any(fnmatchcase(path, pattern) for pattern in self.no_retry_after_timeout)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": [asdict(node) for node in self.nodes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxyConfig:
        return cls(
            **{
                **data,
                "no_retry_after_timeout": tuple(data["no_retry_after_timeout"]),
                "nodes": tuple(NodeSpec(**node) for node in data["nodes"]),
            }
        )


def node_spec(obj: Obj) -> NodeSpec:
    """A WHMNode object as the balancer sees it (routable only when the operator says Healthy)."""
    spec = obj.get("spec", {})
    return NodeSpec(
        name=obj["metadata"]["name"],
        address=str(spec.get("address", "")),
        port=int(spec.get("port", 4000)),
        weight=int(spec.get("weight", 1)),
        healthy=(obj.get("status") or {}).get("health") == "Healthy",
        maintenance=bool(spec.get("maintenance", False)),
    )


def build_config(cluster: Obj | None, nodes: list[Obj], generation: int) -> ProxyConfig | None:
    """The configuration for a cluster object and its nodes; None when the cluster does not exist."""
    if cluster is None:
        return None
    balancing = LoadBalancer.model_validate(cluster.get("spec", {}).get("loadBalancer", {}))
    sticky = balancing.sticky_sessions
    return ProxyConfig(
        algorithm=balancing.algorithm,
        retries=balancing.retries,
        retry_after_timeout=balancing.retry_after_timeout.enabled,
        no_retry_after_timeout=tuple(balancing.retry_after_timeout.exclude_paths),
        sticky_cookie=sticky.cookie_name if sticky.enabled else None,
        nodes=tuple(sorted((node_spec(obj) for obj in nodes), key=lambda node: node.name)),
        generation=generation,
    )


class _Relist(Exception):
    """The watch loop must list again (reload annotation changed)."""


@dataclass
class ConfigWatcher:
    """Keeps ``config`` current and calls ``on_change`` with the first and every new value."""

    client: KubeClient
    namespace: str
    cluster: str
    on_change: Callable[[ProxyConfig | None], None]
    resync: float = 300.0
    config: ProxyConfig | None = None
    loaded: bool = False
    """True once the first list succeeded."""
    lists: int = 0
    """Full reads so far (initial, resyncs, reloads, recoveries)."""
    reloads: int = 0
    """Reloads requested so far (annotation or ``reload()``)."""
    _cluster_obj: Obj | None = None
    _nodes: dict[str, Obj] = field(default_factory=dict)
    _reload_value: str | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _listed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """List and watch until cancelled."""
        await relisting("configuration", self._list, self._watch)

    async def reload(self, timeout: float = 10.0) -> ProxyConfig | None:
        """Read everything again now; returns the configuration after that read."""
        self._listed.clear()
        self.reloads += 1
        self._wake.set()
        await asyncio.wait_for(self._listed.wait(), timeout)
        return self.config

    async def _list(self) -> tuple[str, str]:
        self._wake.clear()
        clusters, nodes = await asyncio.gather(
            self.client.list(WHMCLUSTERS, self.namespace), self.client.list(WHMNODES, self.namespace)
        )
        self._cluster_obj = next((c for c in clusters["items"] if c["metadata"]["name"] == self.cluster), None)
        self._reload_value = _reload_value(self._cluster_obj)
        self._nodes = {n["metadata"]["name"]: n for n in nodes["items"] if self._mine(n)}
        self.lists += 1
        first = not self.loaded
        self.loaded = True
        self._publish(always=first)
        self._listed.set()
        return clusters["metadata"]["resourceVersion"], nodes["metadata"]["resourceVersion"]

    async def _watch(self, versions: tuple[str, str]) -> None:
        """Watch both kinds until a re-list is due; raises what ended a watch abnormally."""
        clusters_version, nodes_version = versions
        watches = ((WHMCLUSTERS, clusters_version, self._on_cluster), (WHMNODES, nodes_version, self._on_node))
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(follow(self.client, kind, self.namespace, version, apply, seconds=WATCH_SECONDS))
            for kind, version, apply in watches
        ]
        tasks.append(asyncio.create_task(self._wake.wait()))
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.resync, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, _Relist):
                raise error

    def _on_cluster(self, kind: str, obj: Obj) -> None:
        if obj["metadata"]["name"] != self.cluster:
            return
        self._cluster_obj = None if kind == "DELETED" else obj
        if kind != "DELETED" and _reload_value(obj) != self._reload_value:
            log.info("reload requested by annotation %s", RELOAD)
            self.reloads += 1
            raise _Relist
        self._publish()

    def _on_node(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED" or not self._mine(obj):
            if self._nodes.pop(name, None) is None:
                return
        else:
            self._nodes[name] = obj
        self._publish()

    def _mine(self, node: Obj) -> bool:
        return bool(node.get("spec", {}).get("cluster") == self.cluster)

    def _publish(self, always: bool = False) -> None:
        """Calls ``on_change`` when the configuration changed, or ``always`` (the first list: even no cluster
        is news to workers, which listen only once they have a configuration)."""
        config = build_config(self._cluster_obj, list(self._nodes.values()), self.reloads)
        if always or config != self.config:
            self.config = config
            self.on_change(config)


def _reload_value(cluster: Obj | None) -> str | None:
    if cluster is None:
        return None
    return (cluster["metadata"].get("annotations") or {}).get(RELOAD)

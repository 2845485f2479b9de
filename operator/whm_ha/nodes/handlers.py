"""kopf registrations for WHMCluster, and the WHMNodes each cluster's loop reads: thin, all decisions live in
the controller.

WHMNodes are not kopf's: they are kept by an informer (``NodeStore``), because kopf holds every handler until
each indexed object has been indexed, in time that grows with the square of their number."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..kube.client import WHMNODES, KubeClient, Obj
from ..kube.informer import Informer
from .controller import ClusterController

CLUSTERS = ("ha.whm.io", "v1alpha1", "whmclusters")
REPLICATIONS = ("ha.whm.io", "v1alpha1", "mysqlreplications")
CONTROLLERS: dict[tuple[str, str], ClusterController] = {}


def plain(value: Any) -> Any:
    """A kopf body (live views) as plain dicts and lists, safe to keep and to compare."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class NodeStore:
    """Every WHMNode in memory by (namespace, cluster), so that the loops read nodes without API calls; a change
    wakes the loop of each cluster it concerns (a node added, removed, drained, re-prioritised or moved)."""

    def __init__(self, kube: KubeClient, namespace: str | None) -> None:
        self.by_cluster: dict[tuple[str, str], dict[str, Obj]] = {}
        self.informer = Informer(kube, WHMNODES, namespace, self._changed)

    def nodes(self, namespace: str, cluster: str) -> list[Obj]:
        return list(self.by_cluster.get((namespace, cluster), {}).values())

    def _changed(self, old: Obj | None, new: Obj | None) -> None:
        for obj in (old, new):
            if obj is None:
                continue
            group = (obj["metadata"].get("namespace") or "", (obj.get("spec") or {}).get("cluster", ""))
            members = self.by_cluster.setdefault(group, {})
            if obj is new:
                members[obj["metadata"]["name"]] = obj
            else:
                members.pop(obj["metadata"]["name"], None)
                if not members:
                    del self.by_cluster[group]
            controller = CONTROLLERS.get(group)
            if controller is not None:
                controller.wake.set()


@kopf.index(*REPLICATIONS)
def replications_by_name(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], Any]:
    """Every MySQLReplication as last watched: the legacy tables follow a promotion as soon as status shows it."""
    return {(namespace, name): plain(body)}


@kopf.daemon(*CLUSTERS, cancellation_timeout=5.0)
async def cluster_loop(
    *,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: Any,
    **kwargs: Any,
) -> None:
    """One probe-and-elect loop per WHMCluster, for as long as the cluster exists; it starts once every WHMNode
    has been listed, so that it never elects from part of a cluster."""
    replications: kopf.Index[Any, Any] = kwargs["replications_by_name"]
    kube: KubeClient = memo["kube"]
    nodes: NodeStore = memo["nodes"]
    await nodes.informer.synced.wait()

    def replication(replication_name: str) -> Any:
        return next(iter(replications.get((namespace, replication_name), [])), None)

    controller = ClusterController(kube, namespace or "", name, replications=replication)
    CONTROLLERS[(namespace or "", name)] = controller
    try:
        await controller.run(stopped, lambda: plain(body), lambda: nodes.nodes(namespace or "", name))
    finally:
        CONTROLLERS.pop((namespace or "", name), None)


@kopf.on.event(*CLUSTERS)
def cluster_changed(*, namespace: str | None, name: str, **_: Any) -> None:
    """A request annotation or a spec change: decide now rather than at the next period."""
    controller = CONTROLLERS.get((namespace or "", name))
    if controller is not None:
        controller.wake.set()

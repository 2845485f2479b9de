"""kopf registrations for WHMCluster and WHMNode: thin, all decisions live in the controller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..kube.client import KubeClient
from .controller import ClusterController

CLUSTERS = ("ha.whm.io", "v1alpha1", "whmclusters")
NODES = ("ha.whm.io", "v1alpha1", "whmnodes")
REPLICATIONS = ("ha.whm.io", "v1alpha1", "mysqlreplications")
CONTROLLERS: dict[tuple[str, str], ClusterController] = {}


def plain(value: Any) -> Any:
    """A kopf body (live views) as plain dicts and lists, safe to keep and to compare."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@kopf.index(*NODES)
def nodes_by_cluster(
    *, namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], Any]:
    """Every WHMNode, kept in memory by (namespace, cluster): the loop reads nodes without API calls."""
    return {(namespace, spec.get("cluster", "")): plain(body)}


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
    """One probe-and-elect loop per WHMCluster, for as long as the cluster exists."""
    nodes_by_cluster: kopf.Index[Any, Any] = kwargs["nodes_by_cluster"]
    replications: kopf.Index[Any, Any] = kwargs["replications_by_name"]
    kube: KubeClient = memo["kube"]

    def replication(replication_name: str) -> Any:
        return next(iter(replications.get((namespace, replication_name), [])), None)

    controller = ClusterController(kube, namespace or "", name, replications=replication)
    CONTROLLERS[(namespace or "", name)] = controller
    try:
        await controller.run(stopped, lambda: plain(body), lambda: list(nodes_by_cluster.get((namespace, name), [])))
    finally:
        CONTROLLERS.pop((namespace or "", name), None)


@kopf.on.event(*CLUSTERS)
def cluster_changed(*, namespace: str | None, name: str, **_: Any) -> None:
    """A request annotation or a spec change: decide now rather than at the next period."""
    controller = CONTROLLERS.get((namespace or "", name))
    if controller is not None:
        controller.wake.set()


@kopf.on.event(*NODES)
def node_changed(*, namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
    """A node added, removed, drained or re-prioritised: decide now."""
    controller = CONTROLLERS.get((namespace or "", spec.get("cluster", "")))
    if controller is not None:
        controller.wake.set()

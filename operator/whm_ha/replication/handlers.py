"""kopf registrations for MySQLReplication: thin, all decisions live in the controller."""

from __future__ import annotations

from typing import Any

import kopf

from ..kube.client import KubeClient
from .controller import ReplicationController

REPLICATIONS = ("ha.whm.io", "v1alpha1", "mysqlreplications")
CONTROLLERS: dict[tuple[str, str], ReplicationController] = {}


@kopf.daemon(*REPLICATIONS, cancellation_timeout=5.0)
async def replication_loop(
    *, namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Any, **_: Any
) -> None:
    """One inspect-and-reconcile loop per MySQLReplication, for as long as it exists."""
    kube: KubeClient = memo["kube"]
    controller = ReplicationController(kube, namespace or "", name)
    CONTROLLERS[(namespace or "", name)] = controller
    try:
        await controller.run(stopped)
    finally:
        CONTROLLERS.pop((namespace or "", name), None)


@kopf.on.event(*REPLICATIONS)
def replication_changed(*, namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> None:
    """A promote request or a spec change: decide now rather than at the next period."""
    controller = CONTROLLERS.get((namespace or "", name))
    if controller is not None:
        controller.notice(meta.get("generation"), dict(meta.get("annotations") or {}))

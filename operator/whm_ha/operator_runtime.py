"""``whm-ha operator``: kopf settings, peering, metrics, and the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from typing import Any

import kopf
from prometheus_client import start_http_server

from .backup.launch import RunnerSettings
from .kube.client import CLUSTER_KOPF_PEERINGS, KOPF_PEERINGS, ApiError, KubeClient
from .kube.config import KubeConfigError, endpoint

log = logging.getLogger("whm_ha.operator")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


async def ensure_peering(kube: KubeClient, name: str, namespace: str | None) -> None:
    """kopf's peering object, without which replicas could not tell who is active."""
    body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}, "status": {}}
    try:
        if namespace:
            await kube.create(KOPF_PEERINGS, namespace, {**body, "kind": "KopfPeering"})
        else:
            await kube.create(CLUSTER_KOPF_PEERINGS, None, {**body, "kind": "ClusterKopfPeering"})
    except ApiError as exc:
        if exc.status != 409:
            raise


def _configure(
    settings: kopf.OperatorSettings, *, peering: str, priority: int, standalone: bool, namespace: str | None
) -> None:
    settings.peering.name = peering
    settings.peering.standalone = standalone
    settings.peering.mandatory = not standalone
    settings.peering.clusterwide = namespace is None
    # kopf pauses every replica when two share a priority, so each replica needs its own.
    settings.peering.priority = priority
    settings.peering.lifetime = 10
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "ha.whm.io/kopf"


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """kopf 1.45's watch stream cancels itself from a future's done-callback, where no task is current, when a
    peering pause stops a watch before the server answered: its assertion then fails outside any task, harmlessly
    (the watch ends at its next event or timeout). One line for that; everything else as asyncio reports it."""
    handle = context.get("handle")
    if isinstance(context.get("exception"), AssertionError) and "request_cancel_callback" in repr(handle):
        log.warning("kopf: a watch request was paused before the API server answered (kopf stream cancellation)")
        return
    loop.default_exception_handler(context)


async def _main(
    *,
    namespace: str | None,
    metrics: str | None,
    health: str | None,
    peering: str,
    priority: int,
    standalone: bool,
    backups: RunnerSettings,
) -> int:
    from .backup import handlers as _backups  # noqa: F401 - registers the handlers with kopf
    from .nodes import handlers  # likewise; its NodeStore runs beside them
    from .replication import handlers as _replication  # noqa: F401 - likewise

    try:
        api = endpoint()
    except KubeConfigError as exc:
        print(f"whm-ha operator: {exc}", file=sys.stderr)
        return 1
    asyncio.get_running_loop().set_exception_handler(_loop_exception)
    kube = KubeClient(api)
    if not standalone:
        try:
            await ensure_peering(kube, peering, namespace)
        except (ApiError, OSError) as exc:
            print(f"whm-ha operator: cannot reach the API at {api.server}: {exc}", file=sys.stderr)
            await kube.close()
            return 1
    if metrics:
        host, port = _host_port(metrics)
        start_http_server(port, addr=host)
    nodes = handlers.NodeStore(kube, namespace)
    informing = asyncio.create_task(nodes.informer.run())

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        _configure(settings, peering=peering, priority=priority, standalone=standalone, namespace=namespace)
        memo["kube"] = kube
        memo["nodes"] = nodes
        memo["backups"] = backups

    try:
        await kopf.operator(
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            standalone=standalone,
            peering_name=None if standalone else peering,
            memo=kopf.Memo(),
            liveness_endpoint=f"http://{health}/healthz" if health else None,
        )
    finally:
        informing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await informing
        await kube.close()
    return 0


def run(
    *,
    namespace: str | None,
    metrics: str | None,
    health: str | None,
    peering: str,
    priority: int | None,
    standalone: bool,
    verbose: bool,
    backups: RunnerSettings | None = None,
) -> int:
    """Run until SIGTERM/SIGINT."""
    if priority is None:
        priority = random.SystemRandom().randint(1, 1_000_000)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kopf").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for chatty in ("botocore", "boto3", "urllib3", "s3transfer"):  # retention's requests to the backup store
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # The standard event loop, not uvloop: under uvloop kopf's watch-stream cancellation (on a peering
    # pause) fails an assertion in a loop callback.
    return asyncio.run(
        _main(
            namespace=namespace,
            metrics=metrics,
            health=health,
            peering=peering,
            priority=priority,
            standalone=standalone,
            backups=backups or RunnerSettings(),
        )
    )

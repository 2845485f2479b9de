"""The admin port: /stats (JSON), /metrics (Prometheus), /healthz, /readyz and POST /reload.

The port listens on loopback unless told otherwise (the pod IP, to be scraped); it is never on the
traffic Service. ``POST /reload`` is answered only to loopback clients (``kubectl exec`` or
``kubectl port-forward``); from anywhere else the way to reload is the ``ha.whm.io/reload`` annotation.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import ConfigWatcher, ProxyConfig
from .options import ProxyOptions
from .stats import CLASSES, StatsCollector


class Supervisor(Protocol):
    """What the admin endpoints read of the proxy's supervisor (`supervisor.Supervisor`, which builds this app: the
    admin module does not import it)."""

    options: ProxyOptions
    watcher: ConfigWatcher

    @property
    def config(self) -> ProxyConfig | None: ...

    def readiness(self) -> tuple[bool, str]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def reload(self) -> ProxyConfig | None: ...


def _totals(nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {key: 0 for key in ("active", "requests", "errors", "retries", "ejections")}
    totals["responses"] = dict.fromkeys(CLASSES, 0)
    for node in nodes.values():
        for key in ("active", "requests", "errors", "retries", "ejections"):
            totals[key] += node[key]
        for cls, count in node["responses"].items():
            totals["responses"][cls] += count
    return totals


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is a loopback one (127.0.0.0/8, ::1, or IPv4 mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class TLSCollector(Collector):
    """The TLS listener's certificates: expiry per served Secret, and which named Secrets cannot be served."""

    def __init__(self, supervisor: Supervisor, labels: dict[str, str]) -> None:
        self._supervisor = supervisor
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        watcher = self._supervisor.watcher
        keys, base = [*self._labels, "secret"], list(self._labels.values())
        expiry = GaugeMetricFamily(
            "whm_ha_proxy_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time).",
            labels=keys,
        )
        for certificate in watcher.served_certificates:
            expiry.add_metric([*base, certificate.source], certificate.not_after.timestamp())
        problems = GaugeMetricFamily(
            "whm_ha_proxy_tls_secret_problem",
            "1 for each certificate Secret the WHMCluster names that cannot be served (missing, not kubernetes.io/tls, "
            "or a certificate and key that do not load); the log says why.",
            labels=keys,
        )
        for name in watcher.certificate_problems:
            problems.add_metric([*base, name], 1)
        yield from (expiry, problems)


def build_app(supervisor: Supervisor) -> web.Application:
    options = supervisor.options
    latest: dict[str, Any] = {"nodes": {}, "unrouted": 0}
    registry = CollectorRegistry(auto_describe=False)
    labels = {"namespace": options.namespace, "cluster": options.cluster}
    registry.register(StatsCollector(lambda: latest, labels))
    if options.listen_tls is not None:
        registry.register(TLSCollector(supervisor, labels))

    async def stats(_: web.Request) -> web.Response:
        merged = await supervisor.stats()
        config = supervisor.config  # no await since stats(): workers.applied counts the workers routing with it
        ready, reason = supervisor.readiness()
        return web.json_response(
            {
                "cluster": options.cluster,
                "namespace": options.namespace,
                "ready": ready,
                "reason": reason,
                "config": None
                if config is None
                else {
                    "algorithm": config.algorithm,
                    "retries": config.retries,
                    "retryAfterTimeout": config.retry_after_timeout,
                    "noRetryAfterTimeout": list(config.no_retry_after_timeout),
                    "stickyCookie": config.sticky_cookie,
                    "trustedNetworks": list(config.trusted_networks),
                    "proxyProtocol": config.proxy_protocol,
                    "passthrough": {"enabled": config.passthrough, "nodePort": config.passthrough_port},
                    "generation": config.generation,
                    "nodes": [{**asdict(node), "routable": node.routable} for node in config.nodes],
                    "nodeTLS": None
                    if config.tls is None
                    else {
                        "serverName": config.tls.server_name,
                        "insecureSkipVerify": config.tls.insecure,
                        "ca": "secret" if config.tls.ca_pem else "system",
                        "caFingerprint": hashlib.sha256(config.tls.ca_pem.encode()).hexdigest()[:16]
                        if config.tls.ca_pem
                        else None,
                        "problem": config.tls_problem,
                    },
                },
                "tls": None
                if options.listen_tls is None
                else {
                    "served": [
                        {"secret": c.source, "names": list(c.names), "notAfter": c.not_after.isoformat()}
                        for c in supervisor.watcher.served_certificates
                    ],
                    "problems": supervisor.watcher.certificate_problems,
                },
                "api": {"lists": supervisor.watcher.lists, "reloads": supervisor.watcher.reloads},
                "workers": merged["workers"],
                "totals": {**_totals(merged["nodes"]), "unrouted": merged["unrouted"]},
                "passthrough": merged["passthrough"],
                "nodes": merged["nodes"],
            }
        )

    async def metrics(_: web.Request) -> web.Response:
        latest.update(await supervisor.stats())
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = supervisor.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def reload(request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            return web.json_response(
                {"error": "reload is answered on loopback only; annotate the WHMCluster with ha.whm.io/reload"},
                status=403,
            )
        try:
            config = await supervisor.reload()
        except TimeoutError:
            return web.json_response({"error": "the API did not answer in time"}, status=503)
        return web.json_response(
            {
                "reloaded": True,
                "generation": config.generation if config else None,
                "routable": config.routable if config else [],
            }
        )

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/reload", reload)
    return app

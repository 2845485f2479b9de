"""``whm-ha shim``: serve the legacy API until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from ..kube.client import ApiError, KubeClient
from ..kube.config import KubeConfigError, endpoint
from .app import ShimApp
from .auth import Authorizer
from .server import HardenedRunner
from .tls import SecretCertificate, listen_tls


async def serve(
    *,
    listen: str,
    namespace: str,
    cluster: str | None,
    anonymous_reads: bool,
    static_tokens_secret: str | None,
    request_timeout: float,
    proxy_admins: list[str],
    proxy_pods: str | None,
    header_timeout: float,
    listen_tls_address: str | None = None,
    tls_secret: str | None = None,
    tls_handshake_timeout: float = 10.0,
) -> int:
    try:
        kube = KubeClient(endpoint())
    except KubeConfigError as exc:
        print(f"whm-ha shim: {exc}", file=sys.stderr)
        return 1
    authorizer = Authorizer(kube, namespace, anonymous_reads=anonymous_reads)
    if static_tokens_secret:
        try:
            await authorizer.load_static_tokens(static_tokens_secret)
        except ApiError as exc:
            print(f"whm-ha shim: cannot read Secret {namespace}/{static_tokens_secret}: {exc}", file=sys.stderr)
            await kube.close()
            return 1
    shim = ShimApp(kube, authorizer, namespace, cluster, request_timeout, proxy_admins, proxy_pods)
    runner = HardenedRunner(shim.build(), header_timeout=header_timeout)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host or "0.0.0.0", int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        print(f"whm-ha shim: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        await kube.close()
        return 1
    print(f"whm-ha shim serving on http://{listen}/api/ha (namespace {namespace})", flush=True)
    https: asyncio.Server | None = None
    watching: asyncio.Task[None] | None = None
    if listen_tls_address is not None and tls_secret is not None:
        certificate = SecretCertificate(kube, namespace, tls_secret)
        watching = asyncio.create_task(certificate.run())
        host, _, port = listen_tls_address.rpartition(":")
        try:
            https = await listen_tls(runner, host or "0.0.0.0", int(port), certificate.store, tls_handshake_timeout)
        except OSError as exc:
            print(f"whm-ha shim: cannot listen on {listen_tls_address}: {exc.strerror}", file=sys.stderr)
            watching.cancel()
            await runner.cleanup()
            await kube.close()
            return 1
        print(f"whm-ha shim serving on https://{listen_tls_address}/api/ha (Secret {tls_secret})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if https is not None:
        https.close()
    if watching is not None:
        watching.cancel()
    await runner.cleanup()
    await kube.close()
    return 0


def run(**options: object) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(**options))  # type: ignore[arg-type]

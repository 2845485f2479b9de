"""``whm-ha sandbox``: run the sandbox API server on loopback and write a kubeconfig for it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import yaml
from aiohttp import web

from . import errors
from .auth import Directory
from .server import SandboxAPI
from .store import CRD_KEY, Store

ADMIN_TOKEN = "sandbox-admin"


def kubeconfig(server: str, token: str = ADMIN_TOKEN) -> str:
    """A kubeconfig with one context for the sandbox."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "whm-ha-sandbox", "cluster": {"server": server}}],
            "users": [{"name": "sandbox-admin", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "whm-ha-sandbox",
                    "context": {"cluster": "whm-ha-sandbox", "user": "sandbox-admin", "namespace": "default"},
                }
            ],
            "current-context": "whm-ha-sandbox",
        }
    )


def preinstall(store: Store, folder: Path) -> int:
    """Create the CRDs found in the YAML files of a folder; returns how many."""
    crd_type = next(t for t in store.catalogue.types.values() if t.key == CRD_KEY)
    count = 0
    for path in sorted(folder.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                try:
                    store.create(crd_type, None, doc)
                except errors.ApiError as exc:
                    if exc.code != 409:  # kopf's peering CRDs are built in
                        raise
                count += 1
    return count


def _write_kubeconfig(path: Path, server: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(kubeconfig(server))
    tmp.replace(path)


async def serve(
    store: Store, directory: Directory, *, port: int, kubeconfig_out: Path | None, bookmark_interval: float
) -> int:
    """Serve until SIGTERM or SIGINT."""
    api = SandboxAPI(store, directory, bookmark_interval=bookmark_interval)
    runner = web.AppRunner(api.app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        print(f"whm-ha sandbox: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = f"http://127.0.0.1:{bound}"
    if kubeconfig_out is not None:
        await asyncio.to_thread(_write_kubeconfig, kubeconfig_out, server)
    where = f"; kubeconfig: {kubeconfig_out}" if kubeconfig_out else ""
    print(f"sandbox API serving on {server}{where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def run(
    *,
    port: int,
    crds: Path | None,
    kubeconfig_out: Path | None,
    users: Path | None,
    state_file: Path | None,
    bookmark_interval: float,
) -> int:
    """Load or create the objects, serve, and save them on shutdown when a state file is given."""
    store = Store()
    if state_file is not None and state_file.exists():
        store.load(state_file)
    elif crds is not None:
        try:
            preinstall(store, crds)
        except errors.ApiError as exc:
            print(f"whm-ha sandbox: cannot install CRDs from {crds}: {exc.message}", file=sys.stderr)
            return 1
    code = asyncio.run(
        serve(
            store, Directory.load(users), port=port, kubeconfig_out=kubeconfig_out, bookmark_interval=bookmark_interval
        )
    )
    if state_file is not None and code == 0:
        store.dump(state_file)
    return code

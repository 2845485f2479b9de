"""The parent process: watches the API, starts and feeds the workers, serves the admin port, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import uvloop
from aiohttp import web

from whm_ha.kube.client import KubeClient
from whm_ha.kube.config import KubeConfigError

from .admin import build_app
from .channel import Channel
from .config import ConfigWatcher, ProxyConfig
from .options import ProxyOptions
from .stats import merge
from .worker import listen_socket

log = logging.getLogger("whm_ha_proxy")
CALL_TIMEOUT = 5.0
RESPAWN_DELAY = 0.5


@dataclass
class Worker:
    """One worker process and the parent's end of its channel."""

    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    configured: bool = False
    """It has confirmed a configuration: it listens only once it has one."""
    applied: ProxyConfig | None = None
    """The configuration it last confirmed."""

    async def read(self) -> None:
        while (message := await self.channel.receive()) is not None:
            future = self.pending.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)
        for future in self.pending.values():
            future.cancel()


class Supervisor:
    """Owns the configuration watch and the workers; the admin app asks it for stats and reloads."""

    def __init__(self, options: ProxyOptions, client: KubeClient) -> None:
        self.options = options
        self.client = client
        self.watcher = ConfigWatcher(
            client,
            options.namespace,
            options.cluster,
            self._changed,
            resync=options.resync_seconds,
            https=options.listen_tls is not None,
        )
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def config(self) -> ProxyConfig | None:
        return self.watcher.config

    def readiness(self) -> tuple[bool, str]:
        """Ready once the configuration is loaded, a node is routable, a worker listens and every listening
        worker has a routable node (workers apply a configuration a moment after the watch has it) and, with an
        HTTPS listener, a certificate to serve (without one every handshake is refused)."""
        if not self.watcher.loaded:
            return False, "configuration not loaded yet"
        if self.config is None:
            return False, f"WHMCluster {self.options.namespace}/{self.options.cluster} not found"
        if not self.config.routable:
            return False, "no routable node"
        listening = [worker for worker in self.workers.values() if worker.configured]
        if not listening:
            return False, "no worker listening yet"
        if not all(worker.applied is not None and worker.applied.routable for worker in listening):
            return False, "a worker has no routable node yet"
        if self.options.listen_tls is not None and not all(
            worker.applied is not None and worker.applied.certificates for worker in listening
        ):
            return False, "no TLS certificate served yet (see tls.problems in /stats)"
        return True, "ready"

    def send(self, worker: Worker, message: dict[str, Any]) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a message to a worker; its id, and the worker's answer to come (cancelled if the worker goes)."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[ident] = future
        worker.channel.send({**message, "id": ident})
        return ident, future

    async def call(self, worker: Worker, message: dict[str, Any]) -> dict[str, Any]:
        """Send a message to a worker and wait for its answer (an answer after CALL_TIMEOUT is dropped)."""
        ident, future = self.send(worker, message)
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            worker.pending.pop(ident, None)

    async def configure(self, worker: Worker, config: ProxyConfig | None) -> None:
        """Give one worker a configuration and wait until it has applied it, or CALL_TIMEOUT: a confirmation that
        comes later still records it as applied (confirmations come in the order the configurations were sent)."""

        def confirmed(answer: asyncio.Future[dict[str, Any]]) -> None:
            if not answer.cancelled():
                worker.applied = config
                worker.configured = True

        _, future = self.send(worker, {"config": config.to_json() if config is not None else None})
        future.add_done_callback(confirmed)
        await asyncio.wait_for(asyncio.shield(future), CALL_TIMEOUT)

    async def broadcast(self, config: ProxyConfig | None) -> None:
        """Give every worker a configuration and wait until each has applied it."""
        await asyncio.gather(*(self.configure(w, config) for w in list(self.workers.values())), return_exceptions=True)

    def applied(self) -> int:
        """How many workers have confirmed the watch's current configuration, ``config``: a worker routes with a
        change only a moment after the watch has it."""
        return sum(worker.configured and worker.applied == self.config for worker in self.workers.values())

    async def stats(self) -> dict[str, Any]:
        """Counters summed over the workers that answered, and how many workers run, answered, listen and have
        applied ``config`` (counted once they answered, against ``config`` as it is when this returns)."""
        answers = await asyncio.gather(
            *(self.call(w, {"stats": True}) for w in list(self.workers.values())), return_exceptions=True
        )
        snapshots = [a["stats"] for a in answers if isinstance(a, dict)]
        merged = merge(snapshots)
        merged["workers"] = {
            "running": len(self.workers),
            "reporting": len(snapshots),
            "listening": sum(worker.configured for worker in self.workers.values()),
            "applied": self.applied(),
        }
        return merged

    async def reload(self) -> ProxyConfig | None:
        config = await self.watcher.reload()
        await self.broadcast(config)
        return config

    def _changed(self, config: ProxyConfig | None) -> None:
        log.info(
            "configuration: %s",
            "cluster not found"
            if config is None
            else f"{config.algorithm}, routable {config.routable or 'none'} of {len(config.nodes)} nodes",
        )
        self._spawn_task(self.broadcast(config))

    def _spawn_task(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start_worker(self, index: int) -> Worker:
        parent_end, child_end = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "whm_ha_proxy.worker",
                self.options.to_json(),
                str(child_end.fileno()),
                pass_fds=(child_end.fileno(),),
            )
        finally:
            child_end.close()
        worker = Worker(index, process, await Channel.open(parent_end))
        worker.reader = asyncio.create_task(worker.read())
        self.workers[index] = worker
        if self.watcher.loaded:
            self._spawn_task(self.configure(worker, self.config))
        return worker

    async def keep_worker(self, index: int) -> None:
        """Run worker ``index``; start it again whenever it dies, until stopping."""
        while not self.stopping:
            worker = await self.start_worker(index)
            code = await worker.process.wait()
            self.workers.pop(index, None)
            worker.channel.close()
            if not self.stopping:
                log.warning("worker %d exited with %s; starting it again", index, code)
                await asyncio.sleep(RESPAWN_DELAY)

    async def drain(self) -> None:
        """Stop every worker gracefully (they finish requests in flight), killing laggards after the drain time."""
        self.stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), self.options.drain_seconds + 5)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()


async def serve(options: ProxyOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        client = KubeClient()
    except KubeConfigError as exc:
        print(f"whm-ha proxy: {exc}", file=sys.stderr)
        return 1
    async with client:
        supervisor = Supervisor(options, client)
        runner = web.AppRunner(build_app(supervisor), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, *options.admin).start()
        watching = asyncio.create_task(supervisor.watcher.run())
        keepers = [asyncio.create_task(supervisor.keep_worker(i)) for i in range(options.worker_count)]
        log.info(
            "proxy for %s/%s on %s:%d%s (%d workers), admin on %s:%d",
            options.namespace,
            options.cluster,
            *options.listen,
            ", https on {}:{}".format(*options.listen_tls) if options.listen_tls is not None else "",
            options.worker_count,
            *options.admin,
        )
        await stop.wait()
        log.info("draining")
        await supervisor.drain()
        for task in (watching, *keepers):
            task.cancel()
        await asyncio.gather(watching, *keepers, return_exceptions=True)
        await runner.cleanup()
    return 0


def run(options: ProxyOptions) -> int:
    """Run the proxy until SIGTERM or SIGINT; 0 after a graceful drain."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxy %(levelname)s %(message)s")
    addresses = {
        "listen": options.listen,
        "listen_tls": options.listen_tls,
        "listen_passthrough": options.listen_passthrough,
    }
    with contextlib.ExitStack() as reservations:
        for name, address in addresses.items():
            if address is None:
                continue
            try:
                # Fails early on a bad or taken address, and keeps the port while the workers come and go.
                reservation = reservations.enter_context(listen_socket(*address, listen=False))
            except OSError as exc:
                print(f"whm-ha proxy: cannot listen on {address[0]}:{address[1]}: {exc}", file=sys.stderr)
                return 1
            addresses[name] = (address[0], reservation.getsockname()[1])
        return uvloop.run(serve(ProxyOptions(**{**options.__dict__, **addresses})))

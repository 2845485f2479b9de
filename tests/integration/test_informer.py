"""The operator's informer (LIST then WATCH) against a sandbox API of its own, restarted under it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import node
from whm_ha.kube.client import WHMNODES, KubeClient, Obj
from whm_ha.kube.config import endpoint
from whm_ha.kube.informer import Informer

NAMESPACE = "informed"


async def until(changed: asyncio.Event, condition: Callable[[], bool], timeout: float) -> None:
    """Wait, woken by each change the informer reports, until ``condition`` holds (TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while True:
            changed.clear()
            if condition():
                return
            await changed.wait()


async def in_thread(call: Callable[[], None]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, call)


async def test_the_informer_lists_follows_and_survives_an_api_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = SandboxProcess(tmp_path / "sandbox")
    sandbox.workdir.mkdir()
    sandbox.start()
    monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig))
    changes: list[tuple[str | None, str | None]] = []
    reported = asyncio.Event()

    def changed(old: Obj | None, new: Obj | None) -> None:
        changes.append(tuple(o["metadata"]["name"] if o else None for o in (old, new)))  # type: ignore[arg-type]
        reported.set()

    async with KubeClient(endpoint()) as kube:
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}})
        for name in ("a", "b"):
            await kube.create(WHMNODES, NAMESPACE, node(name))
        informer = Informer(kube, WHMNODES, NAMESPACE, changed)
        running = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 10)
            assert sorted(name for _, name in informer.objects) == ["a", "b"]
            assert sorted(changes) == [(None, "a"), (None, "b")]
            changes.clear()

            await kube.patch(WHMNODES, NAMESPACE, "a", {"spec": {"priority": 7}})
            await kube.delete(WHMNODES, NAMESPACE, "b")
            await kube.create(WHMNODES, NAMESPACE, node("c", cluster="other"))
            await until(reported, lambda: len(changes) == 3, 10)
            assert changes == [("a", "a"), ("b", None), (None, "c")]
            assert informer.objects[(NAMESPACE, "a")]["spec"]["priority"] == 7

            changes.clear()
            await in_thread(sandbox.restart)  # the watch breaks; what changes next is seen all the same
            await kube.delete(WHMNODES, NAMESPACE, "a")
            await until(reported, lambda: (NAMESPACE, "a") not in informer.objects, 20)
            assert ("a", None) in changes and sorted(name for _, name in informer.objects) == ["c"]
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            sandbox.stop()

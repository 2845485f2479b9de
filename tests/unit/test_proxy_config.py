"""The proxy's configuration: objects to settings, and the list+watch loop (410 Gone, errors, reloads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from whm_ha.kube.client import ApiError, Resource
from whm_ha_proxy.balancer import NodeSpec
from whm_ha_proxy.config import ConfigWatcher, ProxyConfig, build_config


def cluster(name: str = "whm", reload: str | None = None, **load_balancer: Any) -> dict[str, Any]:
    annotations = {"ha.whm.io/reload": reload} if reload else {}
    return {"metadata": {"name": name, "annotations": annotations}, "spec": {"loadBalancer": load_balancer}}


def node(name: str, health: str | None = "Healthy", cluster: str = "whm", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"cluster": cluster, "address": "10.0.0.1", "port": 4000, **spec},
        "status": {"health": health} if health else {},
    }


def test_build_config_reads_the_load_balancer_and_nodes() -> None:
    config = build_config(
        cluster(
            algorithm="weighted",
            retries=4,
            stickySessions={"enabled": True, "cookieName": "PIN"},
            retryAfterTimeout={"excludePaths": ["*/json-api/*"]},
        ),
        [node("b", weight=3), node("a", "Unknown", maintenance=True)],
        generation=2,
    )
    assert config == ProxyConfig(
        algorithm="weighted",
        retries=4,
        no_retry_after_timeout=("*/json-api/*",),
        sticky_cookie="PIN",
        nodes=(
            NodeSpec("a", "10.0.0.1", 4000, weight=1, healthy=False, maintenance=True),
            NodeSpec("b", "10.0.0.1", 4000, weight=3, healthy=True),
        ),
        generation=2,
    )
    assert config.routable == ["b"]
    assert ProxyConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("target", "retried"),
    [
        (b"/", True),
        (b"/index.html?json-api=1", True),
        (b"/json-api/createacct?username=a", False),
        (b"/cpsess0123456789/json-api/createacct", False),
        (b"/execute/Email/add_pop", False),
        (b"/JSON-API/x", True),  # patterns are case-sensitive, as paths are
    ],
)
def test_retries_after_a_timeout_spare_the_excluded_paths(target: bytes, retried: bool) -> None:
    config = build_config(cluster(retryAfterTimeout={"excludePaths": ["*/json-api/*", "/execute/*"]}), [], 0)
    assert config is not None and config.retries_after_timeout(target) is retried
    off = build_config(cluster(retryAfterTimeout={"enabled": False}), [], 0)
    assert off is not None and not off.retries_after_timeout(target)


def test_build_config_defaults_and_missing_cluster() -> None:
    config = build_config({"metadata": {"name": "whm"}}, [], 0)
    assert config == ProxyConfig(algorithm="roundRobin", retries=2, sticky_cookie=None, nodes=(), generation=0)
    assert build_config(None, [node("a")], 0) is None


class FakeClient:
    """Scripted list and watch answers; each watch call takes the next script (events or an error)."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {"whmclusters": [], "whmnodes": []}
        self.watches: dict[str, list[list[dict[str, Any]] | Exception]] = {"whmclusters": [], "whmnodes": []}
        self.lists = 0
        self.list_errors: list[Exception] = []

    async def list(self, resource: Resource, namespace: str | None = None) -> dict[str, Any]:
        if self.list_errors:
            raise self.list_errors.pop(0)
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": list(self.objects[resource.plural])}

    async def watch(
        self, resource: Resource, namespace: str | None, resource_version: str, *, timeout: int = 60
    ) -> AsyncIterator[dict[str, Any]]:
        script = self.watches[resource.plural]
        if not script:
            await asyncio.sleep(3600)
            return
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        for event in step:
            yield event


async def run_until(watcher: ConfigWatcher, condition: Any, timeout: float = 5) -> None:
    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - polls state the fake and the watcher change, with a deadline
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def watcher_for(fake: FakeClient, seen: list[ProxyConfig | None]) -> ConfigWatcher:
    return ConfigWatcher(fake, "ns", "whm", seen.append)  # type: ignore[arg-type]


async def test_watch_events_update_the_configuration_and_filter_by_cluster() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [cluster(), cluster("other")]
    fake.objects["whmnodes"] = [node("a"), node("x", cluster="other")]
    fake.watches["whmnodes"] = [
        [
            {"type": "MODIFIED", "object": node("a", "Unhealthy")},
            {"type": "ADDED", "object": node("b")},
            {"type": "ADDED", "object": node("y", cluster="other")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            {"type": "DELETED", "object": node("a", "Unhealthy")},
        ]
    ]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: watcher.config is not None and [n.name for n in watcher.config.nodes] == ["b"])
    assert [[n.name for n in c.nodes] for c in seen if c] == [["a"], ["a"], ["a", "b"], ["b"]]
    assert [c.routable for c in seen if c] == [["a"], [], ["b"], ["b"]]


async def test_410_gone_lists_again_at_once_and_errors_with_backoff() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [cluster()]
    fake.objects["whmnodes"] = [node("a")]
    fake.watches["whmnodes"] = [ApiError(410, {"reason": "Expired"}), aiohttp.ClientConnectionError("refused")]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: fake.lists >= 6)  # 2 initial + 2 after 410 + 2 after the error
    assert watcher.lists == 3 and watcher.loaded


async def test_list_errors_are_retried() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [cluster()]
    fake.list_errors = [ApiError(503, {"reason": "Unavailable"}), OSError("connection refused")]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: watcher.loaded)
    assert seen == [ProxyConfig()]


async def test_reload_annotation_and_reload_call_read_everything_again() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [cluster(reload="1")]
    fake.objects["whmnodes"] = [node("a")]
    fake.watches["whmclusters"] = [[{"type": "MODIFIED", "object": cluster(reload="2")}]]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: watcher.lists == 2)
    assert watcher.config is not None and watcher.config.generation == 1

    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.05)
        config = await watcher.reload()
        assert config is not None and config.generation == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cluster_deleted_means_no_configuration() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [cluster()]
    fake.watches["whmclusters"] = [[{"type": "DELETED", "object": cluster()}]]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: len(seen) == 2)
    assert seen == [ProxyConfig(), None]

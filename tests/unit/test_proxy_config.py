"""The proxy's configuration: objects to settings, and the list+watch loop (410 Gone, errors, reloads)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme

from whm_ha.kube.client import ApiError, Resource
from whm_ha.node_tls import ClientTLS
from whm_ha.tls import load_certificate
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
            clientAddress={"trustedNetworks": ["10.1.2.3/8", "fd00::/8"], "proxyProtocol": True},
            passthrough={"enabled": True, "nodePort": 2087},
        ),
        [node("b", weight=3), node("a", "Unknown", maintenance=True)],
        generation=2,
    )
    assert config == ProxyConfig(
        algorithm="weighted",
        retries=4,
        no_retry_after_timeout=("*/json-api/*",),
        sticky_cookie="PIN",
        trusted_networks=("10.0.0.0/8", "fd00::/8"),
        proxy_protocol=True,
        passthrough=True,
        passthrough_port=2087,
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


def test_build_config_reads_the_tls_settings_and_carries_the_certificates() -> None:
    leaf = trustme.CA().issue_cert("panel.example")
    served = load_certificate("panel", leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode())
    tls = {"certificates": [{"secretName": "panel"}], "redirectHttp": True, "hsts": {"maxAgeSeconds": 600}}
    config = build_config(cluster(tls=tls), [], 0, certificates=(served,))
    assert config is not None
    assert (config.redirect_http, config.hsts) == (True, "max-age=600")
    assert config.certificates == (("panel", *served.pem),)
    assert ProxyConfig.from_json(config.to_json()) == config, "what the workers get is what the watch has"
    tls["hsts"] = {"maxAgeSeconds": 600, "includeSubDomains": True}
    assert build_config(cluster(tls=tls), [], 0).hsts == "max-age=600; includeSubDomains"  # type: ignore[union-attr]
    assert build_config(cluster(), [], 0) == ProxyConfig(), "no HSTS and no redirect unless asked"


def test_build_config_defaults_and_missing_cluster() -> None:
    config = build_config({"metadata": {"name": "whm"}}, [], 0)
    assert config == ProxyConfig(algorithm="roundRobin", retries=2, sticky_cookie=None, nodes=(), generation=0)
    assert build_config(None, [node("a")], 0) is None


class FakeClient:
    """Scripted list and watch answers; each watch call takes the next script (events or an error)."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {"whmclusters": [], "whmnodes": [], "secrets": []}
        self.watches: dict[str, list[list[dict[str, Any]] | Exception]] = {
            "whmclusters": [],
            "whmnodes": [],
            "secrets": [],
        }
        self.lists = 0
        self.list_errors: list[Exception] = []
        self.field_selectors: list[str] = []
        self.requests: list[tuple[str, str, str]] = []
        """Every list and watch asked for: (verb, plural, field selector)."""
        self.after_list: Any = None
        """Called with the plural after each list has taken its items (to change what the next list finds)."""

    async def list(
        self, resource: Resource, namespace: str | None = None, *, field_selector: str = ""
    ) -> dict[str, Any]:
        if self.list_errors:
            raise self.list_errors.pop(0)
        self.lists += 1
        self.requests.append(("list", resource.plural, field_selector))
        items = self.objects[resource.plural]
        if field_selector:
            self.field_selectors.append(field_selector)
            items = [i for i in items if f"metadata.name={i['metadata']['name']}" == field_selector]
        listed = {"metadata": {"resourceVersion": str(self.lists)}, "items": list(items)}
        if self.after_list is not None:
            self.after_list(resource.plural)
        return listed

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        field_selector: str = "",
        timeout: int = 60,
    ) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(("watch", resource.plural, field_selector))
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


def ca_secret(name: str, pem: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"ca.crt": base64.b64encode(pem.encode()).decode()}}


PEM_A = trustme.CA().cert_pem.bytes().decode()
PEM_B = trustme.CA().cert_pem.bytes().decode()


def tls_cluster(**node_tls: Any) -> dict[str, Any]:
    obj = cluster()
    obj["spec"]["nodeTLS"] = {"enabled": True, **node_tls}
    return obj


def test_build_config_reads_node_tls() -> None:
    assert build_config(cluster(), [], 0) == ProxyConfig(tls=None)
    off = cluster()
    off["spec"]["nodeTLS"] = {"enabled": False, "caSecret": {"name": "ca"}}
    assert build_config(off, [], 0, ca_secret("ca", PEM_A)) == ProxyConfig(tls=None), "off: plain HTTP"
    system = build_config(tls_cluster(serverName="whm.example"), [], 0)
    assert system is not None and system.tls == ClientTLS(server_name="whm.example") and system.tls_problem is None
    with_ca = build_config(tls_cluster(caSecret={"name": "ca"}), [], 0, ca_secret("ca", PEM_A))
    assert with_ca is not None and with_ca.tls == ClientTLS(ca_pem=PEM_A) and with_ca.tls_problem is None
    missing = build_config(tls_cluster(caSecret={"name": "ca"}), [], 0, None)
    assert missing is not None and missing.tls_problem == "CA Secret ca not found"
    wrong_key = build_config(tls_cluster(caSecret={"name": "ca", "key": "root.pem"}), [], 0, ca_secret("ca", PEM_A))
    assert wrong_key is not None and wrong_key.tls_problem == "CA Secret ca has no key root.pem"
    insecure = build_config(tls_cluster(insecureSkipVerify=True), [], 0)
    assert insecure is not None and insecure.tls == ClientTLS(insecure=True)
    assert ProxyConfig.from_json(json.loads(json.dumps(with_ca.to_json()))) == with_ca


async def test_the_ca_secret_is_listed_and_watched_by_name() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [tls_cluster(caSecret={"name": "node-ca"})]
    fake.objects["secrets"] = [ca_secret("node-ca", PEM_A), ca_secret("unrelated", PEM_B)]
    fake.watches["secrets"] = [
        [
            {"type": "MODIFIED", "object": ca_secret("node-ca", PEM_B)},
            {"type": "DELETED", "object": ca_secret("node-ca", PEM_B)},
        ]
    ]
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: len(seen) == 3)
    assert fake.field_selectors == ["metadata.name=node-ca"]
    assert [(c.tls.ca_pem if c and c.tls else None, c.tls_problem if c else None) for c in seen] == [
        (PEM_A, None),
        (PEM_B, None),
        (None, "CA Secret node-ca not found"),
    ]


async def test_another_ca_secret_name_lists_again() -> None:
    fake = FakeClient()
    fake.objects["whmclusters"] = [tls_cluster(caSecret={"name": "old-ca"})]
    fake.objects["secrets"] = [ca_secret("old-ca", PEM_A), ca_secret("new-ca", PEM_B)]
    renamed = tls_cluster(caSecret={"name": "new-ca"})
    fake.watches["whmclusters"] = [[{"type": "MODIFIED", "object": renamed}]]
    fake.after_list = lambda plural: plural == "whmclusters" and fake.objects.update(whmclusters=[renamed])
    seen: list[ProxyConfig | None] = []
    watcher = watcher_for(fake, seen)
    await run_until(watcher, lambda: len(seen) == 2)
    assert fake.field_selectors == ["metadata.name=old-ca", "metadata.name=new-ca"]
    assert [c.tls.ca_pem if c and c.tls else None for c in seen] == [PEM_A, PEM_B]


def tls_secret_object(name: str, version: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": version},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    }


def https_cluster(*names: str) -> dict[str, Any]:
    obj = cluster()
    obj["spec"]["loadBalancer"] = {"tls": {"certificates": [{"secretName": name} for name in names]}}
    return obj


def secret_requests(fake: FakeClient) -> list[tuple[str, str]]:
    return [(verb, fields) for verb, plural, fields in fake.requests if plural == "secrets"]


async def test_only_the_certificate_secrets_the_cluster_names_are_read_and_kept() -> None:
    """The HTTPS listener's certificates: the Secret the cluster names is listed and watched by name; another TLS
    Secret in the namespace (a private key the proxy does not serve) is never asked for, and not kept even when an
    event brings it."""
    fake = FakeClient()
    fake.objects["whmclusters"] = [https_cluster("panel")]
    fake.objects["secrets"] = [tls_secret_object("panel"), tls_secret_object("unnamed")]
    fake.watches["secrets"] = [[{"type": "MODIFIED", "object": tls_secret_object("unnamed", "2")}]]
    watcher = ConfigWatcher(fake, "ns", "whm", lambda _: None, https=True)  # type: ignore[arg-type]
    kept: list[set[str]] = []

    def event_applied() -> bool:
        kept.append(set(watcher._secrets))
        return watcher.loaded and not fake.watches["secrets"]

    await run_until(watcher, event_applied)
    assert set(secret_requests(fake)) == {("list", "metadata.name=panel"), ("watch", "metadata.name=panel")}
    assert all("unnamed" not in names for names in kept), kept
    assert set(watcher._secrets) == {"panel"}


async def test_naming_another_certificate_secret_lists_again_by_name() -> None:
    fake = FakeClient()
    renamed = https_cluster("panel", "shop")
    fake.objects["whmclusters"] = [https_cluster("panel")]
    fake.objects["secrets"] = [tls_secret_object("panel"), tls_secret_object("shop")]
    fake.watches["whmclusters"] = [[{"type": "MODIFIED", "object": renamed}]]
    fake.after_list = lambda plural: plural == "secrets" and fake.objects.update(whmclusters=[renamed])
    watcher = ConfigWatcher(fake, "ns", "whm", lambda _: None, https=True)  # type: ignore[arg-type]
    await run_until(watcher, lambda: watcher.lists >= 2 and len(watcher.served_certificates) == 0)
    assert [fields for verb, fields in secret_requests(fake) if verb == "list"] == [
        "metadata.name=panel",
        "metadata.name=panel",
        "metadata.name=shop",
    ]
    assert set(watcher._secrets) == {"panel", "shop"}

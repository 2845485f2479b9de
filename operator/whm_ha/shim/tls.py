"""The shim's HTTPS listener: the certificate of one ``kubernetes.io/tls`` Secret, watched and swapped while serving
(new handshakes get the new certificate; open connections keep theirs)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..kube.client import SECRETS, KubeClient, Obj
from ..kube.informer import follow, relisting
from ..tls import CertificateStore, SecretCertificates

log = logging.getLogger("whm_ha.shim")


class SecretCertificate:
    """Keeps ``store`` serving the certificate of Secret ``name``, or its last good one while the Secret is missing
    or broken (each problem logged once, as it appears); until a good one arrives, handshakes are refused."""

    def __init__(self, client: KubeClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.store = CertificateStore()
        self.problem: str | None = None
        self._secret: Obj | None = None
        self._certificates = SecretCertificates()

    async def run(self) -> None:
        """List and watch the Secret, by name (no other Secret is read), until cancelled."""
        await relisting(f"TLS Secret {self.namespace}/{self.name}", self._list, self._watch)

    @property
    def _by_name(self) -> str:
        return f"metadata.name={self.name}"

    async def _list(self) -> str:
        listed = await self.client.list(SECRETS, self.namespace, field_selector=self._by_name)
        self._secret = next((s for s in listed["items"] if s["metadata"]["name"] == self.name), None)
        self._apply()
        return str(listed["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        await follow(self.client, SECRETS, self.namespace, version, self._on_event, field_selector=self._by_name)

    def _on_event(self, kind: str, obj: Obj) -> None:
        if obj["metadata"]["name"] == self.name:
            self._secret = None if kind == "DELETED" else obj
            self._apply()

    def _apply(self) -> None:
        served = self._certificates.update([self.name], {self.name: self._secret} if self._secret else {})
        problem = served.problems.get(self.name)
        if problem is not None and problem != self.problem:
            log.error("TLS certificate from Secret %s/%s: %s", self.namespace, self.name, problem)
        elif problem is None and served.certificates != self.store.certificates:
            log.info(
                "TLS certificate from Secret %s/%s: serving %s",
                self.namespace,
                self.name,
                ", ".join(served.certificates[0].names),
            )
        self.problem = problem
        self.store.replace(served.certificates)


async def listen_tls(
    runner: web.AppRunner, host: str, port: int, store: CertificateStore, handshake_timeout: float
) -> asyncio.Server:
    """Serve ``runner``'s application over TLS on ``host:port`` (aiohttp's sites cannot bound the handshake)."""
    assert runner.server is not None
    return await asyncio.get_running_loop().create_server(
        runner.server, host, port, ssl=store.context, ssl_handshake_timeout=handshake_timeout, reuse_address=True
    )

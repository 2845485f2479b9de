"""The proxy's HTTPS listener on the real process: certificates from Secrets chosen by SNI (curl), the same routing as
the plain listener, HSTS, the redirect from HTTP, a missing or broken Secret, and a Secret rotated under traffic."""

from __future__ import annotations

import base64
import http.client
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
import urllib3
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from tests.fixtures.proxy_process import Backend, Cluster, ProxyProcess, StartBackends, StartProxy
from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import wait_for
from tests.tls_helpers import client_context, put_secret, served_names, tls_secret
from whm_ha.db.local_server import free_port


@dataclass
class Rig:
    api: client.ApiClient
    namespace: str
    cluster: Cluster
    proxy: ProxyProcess
    backend: Backend
    ca: trustme.CA
    ca_file: Path

    def put(self, name: str, *names: str) -> trustme.LeafCert:
        leaf = self.ca.issue_cert(*names)
        put_secret(self.api, self.namespace, tls_secret(name, leaf))
        return leaf

    def curl(self, server_name: str, path: str = "/", *args: str) -> subprocess.CompletedProcess[str]:
        port = self.proxy.tls_port
        return subprocess.run(
            [
                "curl",
                "-sS",
                "--include",
                "--max-time",
                "10",
                "--cacert",
                str(self.ca_file),
                "--resolve",
                f"{server_name}:{port}:127.0.0.1",
                *args,
                f"https://{server_name}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )


def tls_spec(*secrets: str, **settings: object) -> dict[str, object]:
    return {"certificates": [{"secretName": name} for name in secrets], **settings}


@pytest.fixture
def rig(
    sandbox_api: SandboxProcess, proxy_process: StartProxy, backends: StartBackends, tmp_path: Path
) -> Iterator[Rig]:
    """A proxy with an HTTPS listener (two workers) for a cluster of one backend, whose WHMCluster names the Secrets
    ``panel`` (default) and ``apps``; the test creates them."""
    api = sandbox_api.api_client()
    namespace = f"tls-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    cluster = Cluster(api, namespace)
    cluster.create(tls=tls_spec("panel", "apps", hsts={"maxAgeSeconds": 600, "includeSubDomains": True}))
    (backend,) = backends("a")
    cluster.add_node("a", *backend.address)
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxy = proxy_process(sandbox_api.kubeconfig, namespace, workers=2, tls_port=free_port())
    wait_for(lambda: proxy.routable() == ["a"], 10, "the node routable")
    yield Rig(api, namespace, cluster, proxy, backend, ca, ca_file)
    api.close()


def names_served(rig: Rig, server_name: str | None) -> list[str]:
    assert rig.proxy.tls_port is not None
    return served_names(rig.proxy.tls_port, server_name)


def test_https_serves_by_sni_with_the_same_routing_and_hsts(rig: Rig) -> None:
    rig.put("panel", "panel.example")
    rig.put("apps", "*.apps.example")
    wait_for(lambda: len(rig.proxy.stats()["tls"]["served"]) == 2 and rig.proxy.config(), 10, "both certificates")

    answer = rig.curl("panel.example", "/hello?x=1")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("HTTP/1.1 200")
    assert "\nStrict-Transport-Security: max-age=600; includeSubDomains\n" in answer.stdout
    assert '"node": "a"' in answer.stdout
    assert rig.backend.hits["GET /hello"] == 1
    wildcard = rig.curl("www.apps.example", "/hello")  # curl verifies the name: only the apps certificate has it
    assert wildcard.returncode == 0 and wildcard.stdout.startswith("HTTP/1.1 200"), wildcard.stderr
    unknown = rig.curl("other.example")
    assert unknown.returncode != 0 and "other.example" in unknown.stderr, "the default does not carry that name"
    assert names_served(rig, None) == ["panel.example"]

    plain = urllib3.PoolManager(retries=False).request("GET", rig.proxy.url + "/hello")
    assert plain.status == 200 and "Strict-Transport-Security" not in plain.headers


def test_the_clusters_hsts_replaces_a_nodes_own(rig: Rig) -> None:
    """Browsers honour the first Strict-Transport-Security header: the cluster's replaces the one the node sends
    (without a cluster policy, the node's passes as it is)."""
    rig.put("panel", "panel.example")
    wait_for(lambda: rig.curl("panel.example").returncode == 0, 10, "the certificate served")
    answer = rig.curl("panel.example", "/hsts")
    assert answer.stdout.startswith("HTTP/1.1 200"), answer.stderr
    assert re.findall(r"(?im)^strict-transport-security:.*$", answer.stdout) == [
        "Strict-Transport-Security: max-age=600; includeSubDomains"
    ]
    rig.cluster.patch(
        {"spec": {"loadBalancer": {"tls": tls_spec("panel", hsts={"maxAgeSeconds": 0, "includeSubDomains": False})}}}
    )
    wait_for(lambda: "max-age=600" not in rig.curl("panel.example", "/hsts").stdout, 10, "the cluster's HSTS off")
    assert "\nStrict-Transport-Security: max-age=5\n" in rig.curl("panel.example", "/hsts").stdout


def test_the_sticky_cookie_is_secure_on_https_only(rig: Rig) -> None:
    rig.put("panel", "panel.example")
    rig.cluster.patch({"spec": {"loadBalancer": {"stickySessions": {"enabled": True, "cookieName": "PIN"}}}})
    wait_for(lambda: "PIN=a" in rig.curl("panel.example").stdout, 10, "the sticky cookie set over HTTPS")
    (cookie,) = re.findall(r"(?im)^set-cookie: PIN=.*$", rig.curl("panel.example").stdout)
    assert cookie.endswith("; SameSite=Lax; Secure"), cookie
    plain = urllib3.PoolManager(retries=False).request("GET", rig.proxy.url + "/")
    assert plain.headers["Set-Cookie"] == "PIN=a; Path=/; HttpOnly; SameSite=Lax", "no Secure over plain HTTP"


def test_the_plain_listener_redirects_to_https_when_asked(rig: Rig) -> None:
    rig.put("panel", "panel.example")
    rig.cluster.patch({"spec": {"loadBalancer": {"tls": tls_spec("panel", redirectHttp=True)}}})
    wait_for(lambda: (rig.proxy.config() or {}).get("nodes"), 10, "the configuration")
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=False))

    def redirected() -> bool:
        answer = http.request("GET", rig.proxy.url + "/x/y?q=1", headers={"Host": "panel.example:8080"})
        return answer.status == 308 and answer.headers["Location"] == "https://panel.example/x/y?q=1"

    wait_for(redirected, 10, "the plain listener to redirect")
    challenge = http.request("GET", rig.proxy.url + "/.well-known/acme-challenge/token")
    assert challenge.status == 200, "ACME HTTP-01 challenges are answered over HTTP"
    post = http.request("POST", rig.proxy.url + "/form", body=b"a=1", headers={"Host": "[::1]:8080"})
    assert post.status == 308 and post.headers["Location"] == "https://[::1]/form"
    assert rig.curl("panel.example", "/x").stdout.startswith("HTTP/1.1 200"), "HTTPS is not redirected"


def test_not_ready_until_a_certificate_is_served(rig: Rig) -> None:
    """With an HTTPS listener and no certificate loaded every handshake is refused: /readyz says so until the
    workers serve one."""
    wait_for(lambda: rig.proxy.stats()["workers"]["listening"] == 2, 10, "the workers listening")
    status, body = rig.proxy.admin("GET", "/readyz")
    assert status == 503 and body["reason"].startswith("no TLS certificate served yet"), body
    rig.put("panel", "panel.example")
    wait_for(rig.proxy.ready, 10, "ready once the certificate is served")
    assert rig.curl("panel.example").returncode == 0


def test_a_missing_or_broken_secret_keeps_the_last_good_certificate(rig: Rig) -> None:
    assert rig.curl("panel.example").returncode != 0, "no certificate yet: handshakes are refused"
    wait_for(lambda: "Secret panel not found" in rig.proxy.log_text(), 10, "the missing Secret logged")
    metrics = urllib3.PoolManager().request("GET", rig.proxy.admin_url + "/metrics").data.decode()
    assert 'whm_ha_proxy_tls_secret_problem{cluster="whm",namespace="' in metrics

    rig.put("panel", "panel.example")
    wait_for(lambda: rig.curl("panel.example").returncode == 0, 10, "the certificate served")
    put_secret(rig.api, rig.namespace, {"metadata": {"name": "panel"}, "type": "Opaque", "data": {}})
    wait_for(lambda: "panel" in rig.proxy.stats()["tls"]["problems"], 10, "the broken Secret noticed")
    assert "not kubernetes.io/tls; its last good certificate is served" in rig.proxy.log_text()
    assert rig.curl("panel.example").returncode == 0, "the last good certificate is still served"
    client.CoreV1Api(rig.api).delete_namespaced_secret("panel", rig.namespace)
    wait_for(lambda: "Secret panel not found" in rig.proxy.stats()["tls"]["problems"]["panel"], 10, "the deletion")
    assert rig.curl("panel.example").returncode == 0
    assert rig.proxy.process is not None and rig.proxy.process.poll() is None


def test_an_encrypted_key_is_a_broken_secret_and_the_watch_goes_on(rig: Rig) -> None:
    """A Secret whose tls.key is encrypted (openssl genrsa -aes256) is refused as any broken Secret is, without
    asking for a pass phrase: the last good certificate stays served and the proxy goes on following the cluster."""
    leaf = rig.put("panel", "panel.example")
    wait_for(lambda: rig.curl("panel.example").returncode == 0, 10, "the certificate served")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    secret = tls_secret("panel", leaf)
    secret["data"]["tls.key"] = base64.b64encode(encrypted).decode()
    put_secret(rig.api, rig.namespace, secret)
    wait_for(lambda: "panel" in rig.proxy.stats()["tls"]["problems"], 10, "the encrypted key noticed")
    assert "tls.key is encrypted" in rig.proxy.stats()["tls"]["problems"]["panel"]
    assert rig.curl("panel.example").returncode == 0, "the last good certificate is still served"
    rig.cluster.set_health("a", "Unhealthy")
    wait_for(lambda: rig.proxy.routable() == [], 10, "the node's health followed after the broken Secret")
    assert "Traceback" not in rig.proxy.log_text()


@dataclass
class Traffic:
    """Clients requesting over HTTPS until stopped: some on one kept-alive connection each, others on a new
    connection per request; every failure and every reconnection of a kept-alive client is recorded."""

    port: int
    context: object
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    reconnections: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def keep_alive(self) -> None:
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            self.port,
            context=self.context,
            timeout=10,  # type: ignore[arg-type]
        )
        connection.connect()
        sock = connection.sock
        while not self.stop.is_set():
            self._one(connection)
            if connection.sock is not sock:
                self.reconnections += 1
                sock = connection.sock
        connection.close()

    def fresh(self) -> None:
        while not self.stop.is_set():
            connection = http.client.HTTPSConnection(
                "127.0.0.1",
                self.port,
                context=self.context,
                timeout=10,  # type: ignore[arg-type]
            )
            self._one(connection)
            connection.close()

    def _one(self, connection: http.client.HTTPSConnection) -> None:
        try:
            connection.request("GET", "/traffic", headers={"Host": "panel.example"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                self.failures.append(f"status {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            self.failures.append(repr(exc))
        self.requests += 1


def test_a_rotated_secret_is_served_to_new_handshakes_without_a_failed_request(rig: Rig) -> None:
    rig.put("panel", "panel.example", "old.example")
    wait_for(lambda: "old.example" in names_served(rig, "panel.example"), 10, "the first certificate")
    context = client_context(rig.ca, check_hostname=False)  # the clients connect to 127.0.0.1; the chain is verified
    assert rig.proxy.tls_port is not None
    traffic = Traffic(rig.proxy.tls_port, context)
    threads = [threading.Thread(target=traffic.keep_alive) for _ in range(3)]
    threads += [threading.Thread(target=traffic.fresh) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: traffic.requests > 200, 30, "traffic under way")
        before = traffic.requests
        rotated = time.monotonic()
        rig.put("panel", "panel.example", "new.example")
        wait_for(lambda: "new.example" in names_served(rig, "panel.example"), 10, "the new certificate served")
        seen = time.monotonic() - rotated
        wait_for(lambda: traffic.requests > before + 500, 30, "traffic after the rotation")
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(20)
    print(f"rotation: {traffic.requests} requests, {len(traffic.failures)} failed, new certificate after {seen:.3f}s")
    assert traffic.failures == []
    assert traffic.reconnections == 0, "a kept-alive connection was dropped"
    for _ in range(20):  # every worker serves the new certificate
        assert "new.example" in names_served(rig, "panel.example")

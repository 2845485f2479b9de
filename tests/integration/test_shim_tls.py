"""The shim's HTTPS listener on the real process: its certificate from a Secret, refused handshakes until there is
one, the last good certificate kept through a broken Secret, and a rotation under traffic."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import trustme
from kubernetes import client

from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.shim_process import ShimProcess, StartShim
from tests.kube_helpers import wait_for
from tests.tls_helpers import client_context, put_secret, served_names, tls_secret
from whm_ha.db.local_server import free_port


def shim_names(port: int) -> list[str]:
    return served_names(port, "shim.example")


def start(sandbox_api: SandboxProcess, namespace: str, shim_process: StartShim) -> tuple[ShimProcess, int]:
    port = free_port()
    shim = shim_process(sandbox_api.kubeconfig, namespace, f"--listen-tls=127.0.0.1:{port}", "--tls-secret=shim-tls")
    return shim, port


def healthz(port: int, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_shim_serves_its_secret_and_keeps_the_last_good_certificate(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, shim_process: StartShim
) -> None:
    shim, port = start(sandbox_api, namespace, shim_process)
    assert shim_names(port) == [], "no certificate yet: handshakes are refused"
    wait_for(lambda: "Secret shim-tls not found" in shim.log_text(), 10, "the missing Secret logged")
    ca = trustme.CA()
    put_secret(sandbox_client, namespace, tls_secret("shim-tls", ca.issue_cert("shim.example")))
    wait_for(lambda: shim_names(port) == ["shim.example"], 10, "the certificate served")
    assert healthz(port, client_context(ca, check_hostname=False)) == 200

    put_secret(sandbox_client, namespace, {"metadata": {"name": "shim-tls"}, "type": "kubernetes.io/tls", "data": {}})
    wait_for(lambda: "has no tls.crt; its last good certificate is served" in shim.log_text(), 10, "the broken Secret")
    assert shim_names(port) == ["shim.example"]
    assert shim.process.poll() is None


def test_a_rotated_shim_secret_reaches_new_handshakes_without_a_failed_request(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, shim_process: StartShim
) -> None:
    ca = trustme.CA()
    put_secret(sandbox_client, namespace, tls_secret("shim-tls", ca.issue_cert("shim.example", "old.example")))
    _, port = start(sandbox_api, namespace, shim_process)
    wait_for(lambda: "old.example" in shim_names(port), 10, "the first certificate")
    context = client_context(ca, check_hostname=False)
    failures: list[str] = []
    counts = {"requests": 0, "reconnections": 0}
    stop = threading.Event()

    def keep_alive() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        connection.connect()
        sock = connection.sock
        while not stop.is_set():
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"status {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            counts["requests"] += 1
            counts["reconnections"] += connection.sock is not sock
            sock = connection.sock
        connection.close()

    def fresh() -> None:
        while not stop.is_set():
            try:
                if healthz(port, context) != 200:
                    failures.append("not 200")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            counts["requests"] += 1

    threads = [threading.Thread(target=target) for target in (keep_alive, keep_alive, fresh, fresh)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: counts["requests"] > 100, 30, "traffic under way")
        before, rotated = counts["requests"], time.monotonic()
        put_secret(sandbox_client, namespace, tls_secret("shim-tls", ca.issue_cert("shim.example", "new.example")))
        wait_for(lambda: "new.example" in shim_names(port), 10, "the new certificate")
        seen = time.monotonic() - rotated
        wait_for(lambda: counts["requests"] > before + 200, 30, "traffic after the rotation")
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    print(f"shim rotation: {counts['requests']} requests, {len(failures)} failed, new certificate after {seen:.3f}s")
    assert failures == []
    assert counts["reconnections"] == 0, "a kept-alive connection was dropped"


@pytest.mark.parametrize("flags", [("--listen-tls=127.0.0.1:1",), ("--tls-secret=x",)])
def test_the_tls_flags_go_together(flags: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "whm_ha", "shim", *flags], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2 and "--listen-tls and --tls-secret go together" in result.stderr


def test_a_stalled_handshake_on_the_shim_is_closed_at_its_timeout(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, shim_process: StartShim
) -> None:
    ca = trustme.CA()
    put_secret(sandbox_client, namespace, tls_secret("shim-tls", ca.issue_cert("shim.example")))
    port = free_port()
    shim_process(
        sandbox_api.kubeconfig,
        namespace,
        f"--listen-tls=127.0.0.1:{port}",
        "--tls-secret=shim-tls",
        "--tls-handshake-timeout=1",
    )
    wait_for(lambda: shim_names(port) == ["shim.example"], 10, "the certificate served")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(4096):
                pass
        waited = time.monotonic() - started
    assert 0.9 <= waited < 3, f"closed after {waited:.2f}s"
    assert healthz(port, client_context(ca, check_hostname=False)) == 200

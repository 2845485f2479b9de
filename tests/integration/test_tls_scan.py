"""sslyze, a real TLS scanner, against the proxy's and the shim's HTTPS listeners: no SSL 2/3, TLS 1.0 or 1.1; every
TLS 1.2 suite accepted is ECDHE with an AEAD cipher; secure renegotiation and no client-initiated renegotiation; no
compression, Heartbleed or downgrade; the certificate chain exactly as the Secret holds it, valid against its CA."""

from __future__ import annotations

import socket
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes import client
from sslyze import (
    ScanCommand,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
from sslyze.scanner.models import ScanCommandsExtraArguments

from tests.fixtures.proxy_process import Cluster, StartBackends, StartProxy
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.shim_process import StartShim
from tests.kube_helpers import wait_for
from tests.tls_helpers import put_secret, served_names, tls_secret
from whm_ha.db.local_server import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")  # a root of sslyze's own trust stores

COMMANDS = {
    ScanCommand.SSL_2_0_CIPHER_SUITES,
    ScanCommand.SSL_3_0_CIPHER_SUITES,
    ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES,
    ScanCommand.TLS_1_2_CIPHER_SUITES,
    ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.HEARTBLEED,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.CERTIFICATE_INFO,
}
AEAD = ("_GCM_", "_CHACHA20_POLY1305_")


@dataclass
class Issued:
    """A certificate signed by an intermediate of a test root, and the root's file."""

    leaf: trustme.LeafCert
    ca_file: Path

    @property
    def chain_der(self) -> list[bytes]:
        return [
            x509.load_pem_x509_certificate(blob.bytes()).public_bytes(Encoding.DER)
            for blob in self.leaf.cert_chain_pems
        ]


def issue(name: str, directory: Path) -> Issued:
    root = trustme.CA()
    leaf = root.create_child_ca().issue_cert(name)
    ca_file = directory / "root.pem"
    root.cert_pem.write_to_path(str(ca_file))
    return Issued(leaf, ca_file)


def scan(port: int, name: str, ca_file: Path) -> ServerScanResult:
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(name, port, ip_address="127.0.0.1"),
        network_configuration=ServerNetworkConfiguration(tls_server_name_indication=name),
        scan_commands=COMMANDS,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    return result


def judge(result: ServerScanResult, issued: Issued) -> dict[str, object]:
    """The scanner's findings that matter, asserted; returns a summary for the log."""
    scans = result.scan_result
    assert scans is not None
    accepted = {}
    for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"):
        attempt = getattr(scans, f"{version}_cipher_suites")
        assert attempt.result is not None, (version, attempt.error_trace)
        accepted[version] = [suite.cipher_suite.name for suite in attempt.result.accepted_cipher_suites]
    assert accepted["ssl_2_0"] == accepted["ssl_3_0"] == accepted["tls_1_0"] == accepted["tls_1_1"] == []
    assert accepted["tls_1_2"] and accepted["tls_1_3"]
    weak = [name for name in accepted["tls_1_2"] if "_ECDHE_" not in name or not any(a in name for a in AEAD)]
    assert weak == [], f"TLS 1.2 suites that are not ECDHE+AEAD: {weak}"

    renegotiation = scans.session_renegotiation.result
    assert renegotiation is not None
    assert renegotiation.supports_secure_renegotiation
    assert not renegotiation.is_vulnerable_to_client_renegotiation_dos
    compression = scans.tls_compression.result
    heartbleed = scans.heartbleed.result
    fallback = scans.tls_fallback_scsv.result
    assert compression is not None and not compression.supports_compression
    assert heartbleed is not None and not heartbleed.is_vulnerable_to_heartbleed
    assert fallback is not None and fallback.supports_fallback_scsv

    info = scans.certificate_info.result
    assert info is not None
    (deployment,) = info.certificate_deployments
    received = [certificate.public_bytes(Encoding.DER) for certificate in deployment.received_certificate_chain]
    assert received == issued.chain_der, "the chain served is not the Secret's (leaf, then intermediate)"
    assert deployment.received_chain_has_valid_order and not deployment.received_chain_contains_anchor_certificate
    # sslyze's own path validation (cryptography's RFC 5280 verifier) refuses trustme's leaves, whose
    # subjectAltName is critical beside a non-empty subject; OpenSSL, as clients use it, verifies the chain.
    context = ssl.create_default_context(cafile=str(issued.ca_file))
    with (
        socket.create_connection(("127.0.0.1", result.server_location.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=result.server_location.hostname),
    ):
        pass
    return {"tls_1_2": accepted["tls_1_2"], "tls_1_3": accepted["tls_1_3"], "chain": len(received)}


def test_sslyze_finds_nothing_weak_on_the_proxy(
    sandbox_api: SandboxProcess, proxy_process: StartProxy, backends: StartBackends, tmp_path: Path
) -> None:
    api = sandbox_api.api_client()
    namespace = f"scan-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    issued = issue("panel.example", tmp_path)
    put_secret(api, namespace, tls_secret("panel", issued.leaf))
    cluster = Cluster(api, namespace)
    cluster.create(tls={"certificates": [{"secretName": "panel"}]})
    (backend,) = backends("a")
    cluster.add_node("a", *backend.address)
    proxy = proxy_process(sandbox_api.kubeconfig, namespace, tls_port=free_port())
    assert proxy.tls_port is not None
    # Ready: every listening worker has applied a configuration with the certificate (the supervisor's
    # tls.served says only that the watch loaded it).
    wait_for(proxy.ready, 10, "the workers serving the certificate")
    summary = judge(scan(proxy.tls_port, "panel.example", issued.ca_file), issued)
    print(f"sslyze on the proxy: {summary}")


def test_sslyze_finds_nothing_weak_on_the_shim(
    sandbox_api: SandboxProcess,
    sandbox_client: client.ApiClient,
    namespace: str,
    shim_process: StartShim,
    tmp_path: Path,
) -> None:
    issued = issue("shim.example", tmp_path)
    put_secret(sandbox_client, namespace, tls_secret("shim-tls", issued.leaf))
    port = free_port()
    shim_process(sandbox_api.kubeconfig, namespace, f"--listen-tls=127.0.0.1:{port}", "--tls-secret=shim-tls")
    wait_for(lambda: served_names(port, "shim.example") == ["shim.example"], 10, "the certificate served")
    summary = judge(scan(port, "shim.example", issued.ca_file), issued)
    print(f"sslyze on the shim: {summary}")

"""Helpers for the tests of the HTTPS listeners (proxy, shim): trustme certificates as Secrets, served certificates."""

from __future__ import annotations

import base64
import socket
import ssl
from typing import Any

import trustme
from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException


def tls_secret(name: str, leaf: trustme.LeafCert) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret holding ``leaf``'s chain and key."""
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return {
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(chain).decode(),
            "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
        },
    }


def put_secret(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    """Create the Secret, or replace it when it exists."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(body["metadata"]["name"], namespace, body)


def client_context(ca: trustme.CA, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context trusting only ``ca`` (and, unless told not to, checking the server's name)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = check_hostname
    return context


def served_certificate(port: int, server_name: str | None, host: str = "127.0.0.1") -> x509.Certificate:
    """The leaf certificate a new handshake on ``host:port`` with SNI ``server_name`` is given (not verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(certificate: x509.Certificate) -> list[str]:
    """A certificate's DNS names."""
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def served_names(port: int, server_name: str | None) -> list[str]:
    """The DNS names of the certificate a new handshake with SNI ``server_name`` is given; none when refused."""
    try:
        return names_of(served_certificate(port, server_name))
    except (ssl.SSLError, ConnectionResetError):
        return []

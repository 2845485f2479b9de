"""The project's TLS policy for the HTTPS listeners (proxy, shim), and certificates chosen by SNI.

Policy: TLS 1.2 and 1.3 only; for TLS 1.2 the ECDHE suites of Mozilla's "intermediate" profile (all AEAD: the
profile's DHE suites are left out, they need DH parameters and every TLS 1.2 client that has them has ECDHE);
TLS 1.3 suites as OpenSSL has them (the profile's); ALPN ``http/1.1``; no compression; no renegotiation.

A listener is given ``CertificateStore.context``: it holds the policy and no certificate, and its SNI callback
puts the chosen certificate's context on each connection during the handshake. ``CertificateStore.replace``
swaps the certificates while serving: new handshakes use the new ones, established connections keep theirs.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""Mozilla "intermediate" (v5.7) TLS 1.2 suites with ECDHE key exchange, in the profile's order."""
ALPN = ("http/1.1",)
TLS_SECRET_TYPE = "kubernetes.io/tls"


class CertificateError(ValueError):
    """Certificate material that cannot be served, with a message naming what is wrong."""


def policy_context() -> ssl.SSLContext:
    """A server context with the project's policy and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN))
    return context


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server context with the project's policy serving ``cert_pem`` (leaf first, then intermediates) with
    ``key_pem``; CertificateError when they cannot be loaded or do not match."""
    context = policy_context()
    # load_cert_chain reads files only: anonymous memory files keep the key off any filesystem (the pods' root
    # filesystem is read-only anyway).
    with _memory_file("cert", cert_pem) as cert_path, _memory_file("key", key_pem) as key_path:
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_pass_phrase)
        except ssl.SSLError as exc:
            raise CertificateError(f"certificate and key cannot be loaded together: {exc.reason or exc}") from None
    return context


def _no_pass_phrase() -> bytes:
    """Asked for an encrypted key's pass phrase: there is none to give. Without this, OpenSSL prompts on the
    terminal (the process blocks) or, with none, fails with an OSError."""
    raise CertificateError("tls.key is encrypted: the private key must be stored unencrypted")


class _memory_file:
    """A path (``/proc/self/fd/N``) to an anonymous in-memory file holding ``text``, for the ``with`` block."""

    def __init__(self, name: str, text: str) -> None:
        self._fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.write(self._fd, text.encode())

    def __enter__(self) -> str:
        return f"/proc/self/fd/{self._fd}"

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Certificate:
    """A loaded certificate: where it came from, the names it serves, and the context serving it."""

    source: str
    """What it was loaded from (a Secret's name), for logs and metrics."""
    names: tuple[str, ...]
    """Its DNS names (subjectAltName; the subject's CN when it has none), lower case; wildcards as ``*.x``."""
    not_after: datetime
    pem: tuple[str, str] = field(compare=False, repr=False)
    """The certificate chain and key it was loaded from."""
    context: ssl.SSLContext = field(compare=False, repr=False)


def load_certificate(source: str, cert_pem: str, key_pem: str) -> Certificate:
    """A certificate and its context from PEM text; CertificateError says what is wrong."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise CertificateError(f"{source}: the certificate is not PEM (tls.crt)") from None
    context = server_context(cert_pem, key_pem)
    try:
        names = dns_names(leaf)  # cryptography parses extensions only now; OpenSSL loaded what it cannot read
    except ValueError as exc:
        raise CertificateError(f"{source}: the certificate's names cannot be read (tls.crt): {exc}") from None
    return Certificate(source, names, leaf.not_valid_after_utc, (cert_pem, key_pem), context)


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for: its subjectAltName DNS entries, else the subject's common name."""
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attribute.value).lower() for attribute in common)
    return tuple(name.lower() for name in alternative.value.get_values_for_type(x509.DNSName))


def pem_from_secret(secret: Mapping[str, Any]) -> tuple[str, str]:
    """The (certificate, key) PEM text of a ``kubernetes.io/tls`` Secret; CertificateError when it is not one."""
    name = (secret.get("metadata") or {}).get("name", "?")
    if secret.get("type") != TLS_SECRET_TYPE:
        raise CertificateError(f"Secret {name} is of type {secret.get('type')!r}, not {TLS_SECRET_TYPE}")
    data = secret.get("data") or {}
    try:
        cert, key = (base64.b64decode(data[key], validate=True).decode() for key in ("tls.crt", "tls.key"))
        return cert, key
    except KeyError as exc:
        raise CertificateError(f"Secret {name} has no {exc.args[0]}") from None
    except (binascii.Error, UnicodeDecodeError):
        raise CertificateError(f"Secret {name} holds tls.crt or tls.key that is not base64 PEM text") from None


def matches(name: str, pattern: str) -> bool:
    """Whether a server name matches a certificate's DNS name: equal (case-insensitive), or a wildcard
    ``*.example.com`` standing for exactly one leftmost label (RFC 6125 6.4.3, as browsers apply it)."""
    name = name.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = name.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return name == pattern


def choose(certificates: Sequence[Certificate], server_name: str | None) -> Certificate | None:
    """The certificate for a ClientHello's server name: the first with that exact name, else the first with a
    matching wildcard, else the first of all (the default); None when there is none. IP addresses in SNI (which
    RFC 6066 forbids, but some clients send) get the default."""
    if not certificates:
        return None
    if server_name and not _is_ip(server_name):
        wanted = server_name.lower().rstrip(".")
        for certificate in certificates:
            if wanted in certificate.names:
                return certificate
        for certificate in certificates:
            if any(pattern.startswith("*.") and matches(wanted, pattern) for pattern in certificate.names):
                return certificate
    return certificates[0]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class CertificateStore:
    """The certificates a listener serves: the first is the default, the others are chosen by SNI. With none, every
    handshake is refused (a handshake_failure alert)."""

    def __init__(self) -> None:
        self.certificates: tuple[Certificate, ...] = ()
        self.context = policy_context()
        """The context to listen with."""
        self.context.sni_callback = self._select

    def replace(self, certificates: Sequence[Certificate]) -> None:
        """Serve ``certificates`` from the next handshake on; connections already set up are untouched."""
        self.certificates = tuple(certificates)

    @property
    def handshake_context(self) -> ssl.SSLContext:
        """The context for a new connection to start with, for a listener that passes one per connection: with a
        single certificate, that certificate's own (same policy; nothing to choose, so no SNI callback switches
        contexts in the handshake, about a tenth of its CPU), else ``context``."""
        certificates = self.certificates
        return certificates[0].context if len(certificates) == 1 else self.context

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        certificate = choose(self.certificates, server_name)
        if certificate is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        connection.context = certificate.context
        return None


class SecretCertificates:
    """Certificates from ``kubernetes.io/tls`` Secrets by name, each Secret's last good certificate kept while the
    Secret is missing or holds something that cannot be served (a listener never loses a working certificate to a
    bad edit). Each Secret is loaded once per resourceVersion."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, Certificate | str]] = {}
        """Per Secret: the resourceVersion last loaded and its certificate, or what was wrong with it."""
        self._good: dict[str, Certificate] = {}

    def update(self, names: Sequence[str], secrets: Mapping[str, Mapping[str, Any]]) -> Served:
        """The certificates to serve for the Secrets ``names`` (in that order), given the Secrets that exist."""
        served: list[Certificate] = []
        problems: dict[str, str] = {}
        for name in names:
            secret = secrets.get(name)
            if secret is None:
                problem: str | None = f"Secret {name} not found"
            else:
                version = str(secret.get("metadata", {}).get("resourceVersion", ""))
                seen = self._seen.get(name)
                if seen is None or seen[0] != version:
                    try:
                        loaded: Certificate | str = load_certificate(name, *pem_from_secret(secret))
                    except CertificateError as exc:
                        loaded = str(exc)
                    seen = self._seen[name] = (version, loaded)
                if isinstance(seen[1], Certificate):
                    self._good[name] = seen[1]
                    problem = None
                else:
                    problem = seen[1]
            if problem is not None:
                kept = "its last good certificate is served" if name in self._good else "nothing is served for it"
                problems[name] = f"{problem}; {kept}"
            if name in self._good:
                served.append(self._good[name])
        for gone in set(self._seen) - set(names):
            del self._seen[gone]
            self._good.pop(gone, None)
        return Served(tuple(served), problems)


@dataclass(frozen=True)
class Served:
    """What ``SecretCertificates.update`` found: the certificates to serve (the first is the default) and, per
    Secret, what is wrong with it."""

    certificates: tuple[Certificate, ...]
    problems: dict[str, str]

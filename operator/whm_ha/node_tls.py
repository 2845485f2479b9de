"""Client TLS to the WHM nodes (``spec.nodeTLS``): the context the proxy and the https probes connect with, the
name a node's certificate is checked against, and what a refused certificate means, in plain words.

Server contexts (the proxy's and the shim's listeners) are another matter: ``whm_ha.tls``.
"""

from __future__ import annotations

import base64
import functools
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from .crd.whmcluster import NodeTLS

# OpenSSL's X509_V_ERR_* codes that have a reason of their own.
_EXPIRED = 10
_NOT_YET_VALID = 9
_NAME_MISMATCH = frozenset({62, 63, 64})  # host name, e-mail, IP address
_UNTRUSTED = frozenset({2, 18, 19, 20, 21, 27})  # no issuer, self-signed, not trusted, untrusted root


@dataclass(frozen=True)
class ClientTLS:
    """The verification settings of one cluster, resolved: the CA text read from the Secret, if any."""

    ca_pem: str | None = None
    """PEM CA certificates the node's certificate must chain to; None: the system's trusted CAs."""
    server_name: str | None = None
    """The name every node's certificate must be valid for; None: each node's address."""
    insecure: bool = False
    """Accept any certificate."""

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca_pem, self.insecure)

    def name_for(self, address: str) -> str:
        """The name sent as SNI and checked against a node's certificate: serverName, else the node's address
        (a DNS name, or an IP address that the certificate must list as an IP SAN)."""
        return self.server_name or address.strip("[]")


def ca_from_secret(secret: dict[str, object], key: str) -> str:
    """The PEM text under ``key`` of a Secret object, loadable as a client context's CAs; ValueError when it is
    missing or holds no certificate, or one that OpenSSL cannot load."""
    data = secret.get("data") or {}
    assert isinstance(data, dict)
    if key not in data:
        raise ValueError(f"has no key {key}")
    text = base64.b64decode(data[key]).decode("ascii", "replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"key {key} holds no PEM certificate")
    try:
        client_context(text, False)  # cached: the context the proxy and the probes will use
    except ssl.SSLError as exc:
        # Found here, the CA is a problem the callers report; found at connect, an error none of them expects.
        raise ValueError(f"key {key} holds no usable PEM certificate ({exc.reason or exc})") from None
    return text


def settings(node_tls: NodeTLS, ca_pem: str | None) -> ClientTLS:
    """The cluster's verification settings with the CA read from its caSecret (None when it names none)."""
    return ClientTLS(ca_pem=ca_pem, server_name=node_tls.server_name, insecure=node_tls.insecure_skip_verify)


@functools.lru_cache(maxsize=64)
def client_context(ca_pem: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context (TLS 1.2 or 1.3, ALPN http/1.1) that verifies the peer's chain against ``ca_pem`` (else
    the system's CAs) and its name, or (``insecure``) nothing. One per setting, shared: contexts are costly to
    build and hold the session cache."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class PresentedCertificate:
    """What a node's leaf certificate says, for the reason a refusal gives."""

    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]
    """Its subject alternative names (DNS and IP), else its common name."""
    issuer: str


def presented_certificate(der: bytes) -> PresentedCertificate:
    """Parse a DER certificate as a node presented it."""
    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*alternatives.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in alternatives.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return PresentedCertificate(
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        names=tuple(names),
        issuer=cert.issuer.rfc4514_string(),
    )


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tls_failure(error: ssl.SSLError, name: str, presented: PresentedCertificate | None = None) -> str:
    """Why a TLS handshake with a node checked against ``name`` failed, in plain words: an expired, not yet
    valid, wrong-host or untrusted certificate says so (with its dates, names or issuer when ``presented`` is
    known); anything else is a handshake failure with OpenSSL's reason."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == _EXPIRED:
            return "certificate expired" + (f" (notAfter {_time(presented.not_after)})" if presented else "")
        if code == _NOT_YET_VALID:
            return "certificate not yet valid" + (f" (notBefore {_time(presented.not_before)})" if presented else "")
        if code in _NAME_MISMATCH:
            names = f" (it names {', '.join(presented.names) or 'nothing'})" if presented else ""
            return f"certificate is not valid for {name}{names}"
        if code in _UNTRUSTED:
            issuer = f"; issuer {presented.issuer}" if presented else ""
            return f"certificate not trusted: {error.verify_message}{issuer}"
        return f"certificate rejected: {error.verify_message}"
    reason = error.reason or str(error)
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the node does not speak TLS on this port (wrong version number)"
    return f"TLS handshake failed: {reason.replace('_', ' ').lower()}"

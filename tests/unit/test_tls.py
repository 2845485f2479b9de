"""The TLS policy and the SNI certificate store: real handshakes on loopback with trustme certificates."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.tls import (
    CertificateError,
    CertificateStore,
    SecretCertificates,
    choose,
    load_certificate,
    matches,
    pem_from_secret,
    policy_context,
    server_context,
)

REFUSED = (ssl.SSLError, ConnectionResetError)
"""A refused handshake: the alert, or a reset when asyncio's server closed before the alert reached the client."""


def pem(cert: trustme.LeafCert) -> tuple[str, str]:
    return cert.cert_chain_pems[0].bytes().decode(), cert.private_key_pem.bytes().decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for attribute, version in versions.items():
        setattr(context, attribute, version)
    return context


@pytest.fixture
async def listener(ca: trustme.CA) -> AsyncIterator[tuple[CertificateStore, int]]:
    """A TLS echo-of-nothing server on loopback serving from a fresh store."""
    store = CertificateStore()

    async def served(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(served, "127.0.0.1", 0, ssl=store.context, ssl_handshake_timeout=5)
    try:
        yield store, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def served_names(port: int, context: ssl.SSLContext, server_name: str) -> list[str]:
    """The DNS names of the certificate a handshake with SNI ``server_name`` is given (verified)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name)
    try:
        peer = writer.get_extra_info("peercert")
        assert await reader.read() == b"hello"
        return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]
    finally:
        writer.close()


def test_policy_allows_tls12_and_13_with_ecdhe_aead_suites_only() -> None:
    context = policy_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [suite for suite in context.get_ciphers() if suite["protocol"] == "TLSv1.2"]
    assert tls12 and all(suite["kea"] == "kx-ecdhe" and suite["aead"] for suite in tls12)


def test_server_context_refuses_a_key_of_another_certificate(ca: trustme.CA) -> None:
    cert, _ = pem(ca.issue_cert("a.example"))
    _, other_key = pem(ca.issue_cert("b.example"))
    with pytest.raises(CertificateError, match="cannot be loaded"):
        server_context(cert, other_key)
    with pytest.raises(CertificateError, match="not PEM"):
        load_certificate("s", "garbage", other_key)


def test_an_encrypted_key_is_refused_without_asking_for_a_pass_phrase(ca: trustme.CA) -> None:
    """OpenSSL's default would prompt on the terminal (blocking the process), or without one raise OSError, which
    no caller expects (the proxy's configuration watch relisted in a loop, following no change of the cluster)."""
    cert, key = pem(ca.issue_cert("a.example"))
    encrypted = (
        serialization.load_pem_private_key(key.encode(), None)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
        .decode()
    )
    with pytest.raises(CertificateError, match=r"tls\.key is encrypted"):
        load_certificate("web", cert, encrypted)


def test_a_certificate_whose_names_do_not_parse_is_refused() -> None:
    """OpenSSL loads a certificate whose subjectAltName holds a DNS name that is not ASCII; reading its names must be
    a CertificateError too (a ValueError escaped, with the encrypted key's consequences)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example")])
    now = datetime.now(UTC)
    broken_names = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x82\x01\xff")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(broken_names, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = certificate.public_bytes(serialization.Encoding.PEM).decode()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(CertificateError, match="names cannot be read"):
        load_certificate("web", cert, private)


def test_pem_from_secret_reads_a_tls_secret_and_names_what_is_wrong(ca: trustme.CA) -> None:
    cert, key = pem(ca.issue_cert("a.example"))
    data = {"tls.crt": base64.b64encode(cert.encode()).decode(), "tls.key": base64.b64encode(key.encode()).decode()}
    secret = {"metadata": {"name": "web"}, "type": "kubernetes.io/tls", "data": data}
    assert pem_from_secret(secret) == (cert, key)
    with pytest.raises(CertificateError, match="type 'Opaque'"):
        pem_from_secret({**secret, "type": "Opaque"})
    with pytest.raises(CertificateError, match=r"no tls\.key"):
        pem_from_secret({**secret, "data": {"tls.crt": data["tls.crt"]}})
    with pytest.raises(CertificateError, match="not base64"):
        pem_from_secret({**secret, "data": {**data, "tls.key": "%%%"}})


def test_choose_prefers_exact_names_then_wildcards_then_the_default(ca: trustme.CA) -> None:
    default = load_certificate("default", *pem(ca.issue_cert("panel.example")))
    wildcard = load_certificate("wild", *pem(ca.issue_cert("*.apps.example")))
    exact = load_certificate("exact", *pem(ca.issue_cert("api.apps.example", "other.example")))
    certificates = [default, wildcard, exact]
    assert choose(certificates, "api.apps.example") is exact
    assert choose(certificates, "API.Apps.Example.") is exact
    assert choose(certificates, "www.apps.example") is wildcard
    assert choose(certificates, "a.b.apps.example") is default  # a wildcard covers one label only
    assert choose(certificates, "unknown.example") is default
    assert choose(certificates, None) is default
    assert choose(certificates, "127.0.0.1") is default
    assert choose([], "panel.example") is None


@given(st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True))
def test_a_wildcard_matches_exactly_one_more_label(name: str) -> None:
    assert matches("x." + name, "*." + name)
    assert not matches(name, "*." + name)
    assert not matches("x.y." + name, "*." + name)
    assert matches(name.upper(), name)


def test_the_handshake_context_is_the_only_certificates_own_else_the_choosing_one(ca: trustme.CA) -> None:
    store = CertificateStore()
    assert store.handshake_context is store.context  # none: the store's context refuses every handshake
    only = load_certificate("only", *pem(ca.issue_cert("panel.example")))
    store.replace([only])
    assert store.handshake_context is only.context
    store.replace([only, load_certificate("other", *pem(ca.issue_cert("other.example")))])
    assert store.handshake_context is store.context


async def test_the_store_serves_by_sni_and_refuses_handshakes_while_empty(
    ca: trustme.CA, listener: tuple[CertificateStore, int]
) -> None:
    store, port = listener
    context = client_context(ca)
    with pytest.raises(REFUSED):
        await served_names(port, context, "panel.example")
    store.replace(
        [
            load_certificate("default", *pem(ca.issue_cert("panel.example"))),
            load_certificate("wild", *pem(ca.issue_cert("*.apps.example"))),
        ]
    )
    assert await served_names(port, context, "panel.example") == ["panel.example"]
    assert await served_names(port, context, "x.apps.example") == ["*.apps.example"]


async def test_replace_changes_new_handshakes_and_leaves_open_connections_alone(
    ca: trustme.CA, listener: tuple[CertificateStore, int]
) -> None:
    store, port = listener
    first = ca.issue_cert("panel.example", "first.example")
    store.replace([load_certificate("web", *pem(first))])
    context = client_context(ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="panel.example")
    store.replace([load_certificate("web", *pem(ca.issue_cert("panel.example", "second.example")))])
    try:
        assert ("DNS", "first.example") in writer.get_extra_info("peercert")["subjectAltName"]
        assert await reader.read() == b"hello"  # the open connection goes on with its certificate
    finally:
        writer.close()
    assert await served_names(port, context, "panel.example") == ["panel.example", "second.example"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls10_and_11_are_refused(
    ca: trustme.CA, listener: tuple[CertificateStore, int], version: ssl.TLSVersion
) -> None:
    store, port = listener
    store.replace([load_certificate("web", *pem(ca.issue_cert("panel.example")))])
    context = client_context(ca)
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer the old versions at all
    context.minimum_version = context.maximum_version = version
    with pytest.raises(REFUSED):
        await served_names(port, context, "panel.example")


async def test_alpn_offers_http11(ca: trustme.CA, listener: tuple[CertificateStore, int]) -> None:
    store, port = listener
    store.replace([load_certificate("web", *pem(ca.issue_cert("panel.example")))])
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="panel.example")
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    finally:
        writer.close()


def test_secret_certificates_keep_each_secrets_last_good_certificate(ca: trustme.CA) -> None:
    def secret(name: str, version: str, leaf: trustme.LeafCert | None) -> dict[str, object]:
        cert, key = pem(leaf) if leaf is not None else ("x", "y")
        encoded = {
            "tls.crt": base64.b64encode(cert.encode()).decode(),
            "tls.key": base64.b64encode(key.encode()).decode(),
        }
        return {"metadata": {"name": name, "resourceVersion": version}, "type": "kubernetes.io/tls", "data": encoded}

    certificates = SecretCertificates()
    served = certificates.update(["web", "apps"], {"apps": secret("apps", "1", ca.issue_cert("*.apps.example"))})
    assert [c.source for c in served.certificates] == ["apps"]
    assert served.problems == {"web": "Secret web not found; nothing is served for it"}

    good = secret("web", "2", ca.issue_cert("panel.example"))
    served = certificates.update(["web", "apps"], {"web": good, "apps": secret("apps", "1", None)})
    assert [c.source for c in served.certificates] == ["web", "apps"], "apps was loaded at version 1 already"
    assert served.problems == {}

    served = certificates.update(["web"], {"web": secret("web", "3", None)})
    assert [c.names for c in served.certificates] == [("panel.example",)]
    assert served.problems["web"].endswith("not PEM (tls.crt); its last good certificate is served")
    assert (
        certificates.update(["web"], {}).problems["web"] == "Secret web not found; its last good certificate is served"
    )
    assert certificates.update([], {}).certificates == ()
    assert certificates.update(["web"], {}).certificates == (), "a Secret named again starts afresh"

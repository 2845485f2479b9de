"""What a refused node certificate means, in plain words (``whm_ha.node_tls.tls_failure``), and the client
contexts the proxy and the probes verify nodes with."""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.node_tls import ClientTLS, PresentedCertificate, ca_from_secret, client_context, tls_failure

PRESENTED = PresentedCertificate(
    not_before=datetime(2025, 1, 1, tzinfo=UTC),
    not_after=datetime(2026, 1, 1, 12, 30, tzinfo=UTC),
    names=("whm-node-1", "10.0.0.1"),
    issuer="CN=node CA",
)


def refused(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def failed(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason
    return error


def test_expired_and_not_yet_valid_give_their_dates() -> None:
    assert tls_failure(refused(10, "certificate has expired"), "n1", PRESENTED) == (
        "certificate expired (notAfter 2026-01-01T12:30:00Z)"
    )
    assert tls_failure(refused(10, "certificate has expired"), "n1") == "certificate expired"
    assert tls_failure(refused(9, "certificate is not yet valid"), "n1", PRESENTED) == (
        "certificate not yet valid (notBefore 2025-01-01T00:00:00Z)"
    )


def test_a_wrong_host_names_the_host_and_what_the_certificate_names() -> None:
    message = "Hostname mismatch, certificate is not valid for 'whm-node-2'."
    assert tls_failure(refused(62, message), "whm-node-2", PRESENTED) == (
        "certificate is not valid for whm-node-2 (it names whm-node-1, 10.0.0.1)"
    )
    ip = "IP address mismatch, certificate is not valid for '10.0.0.2'."
    assert tls_failure(refused(64, ip), "10.0.0.2") == "certificate is not valid for 10.0.0.2"


def test_untrusted_names_the_issuer() -> None:
    for code, message in ((20, "unable to get local issuer certificate"), (18, "self-signed certificate")):
        assert tls_failure(refused(code, message), "n1", PRESENTED) == (
            f"certificate not trusted: {message}; issuer CN=node CA"
        )


def test_other_failures() -> None:
    assert tls_failure(refused(23, "certificate revoked"), "n1") == "certificate rejected: certificate revoked"
    assert tls_failure(failed("WRONG_VERSION_NUMBER"), "n1") == (
        "TLS handshake failed: the node does not speak TLS on this port (wrong version number)"
    )
    assert tls_failure(failed("TLSV1_ALERT_PROTOCOL_VERSION"), "n1") == (
        "TLS handshake failed: tlsv1 alert protocol version"
    )


@given(code=st.integers(0, 100), message=st.text(max_size=80), name=st.text(min_size=1, max_size=40))
def test_every_refusal_names_its_kind_from_the_verify_code_alone(code: int, message: str, name: str) -> None:
    kinds = {
        10: "certificate expired (notAfter ",
        9: "certificate not yet valid (notBefore ",
        62: f"certificate is not valid for {name} (it names ",
        63: f"certificate is not valid for {name} (it names ",
        64: f"certificate is not valid for {name} (it names ",
        **dict.fromkeys((2, 18, 19, 20, 21, 27), f"certificate not trusted: {message}; issuer "),
    }
    reason = tls_failure(refused(code, message), name, PRESENTED)
    assert reason.startswith(kinds.get(code, f"certificate rejected: {message}")), reason


def test_client_contexts() -> None:
    strict = client_context(None, False)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    insecure = ClientTLS(insecure=True).context()
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert client_context(None, False) is strict, "one context per setting, shared"
    assert ClientTLS(server_name="whm.example").name_for("10.0.0.1") == "whm.example"
    assert ClientTLS().name_for("[::1]") == "::1"


PEM = trustme.CA().cert_pem.bytes().decode()
UNPARSABLE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
"""PEM armour around what is no certificate: OpenSSL cannot load it as a CA."""


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_ca_from_secret() -> None:
    assert ca_from_secret({"data": {"ca.crt": encoded(PEM)}}, "ca.crt") == PEM


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tls.crt": encoded(PEM)},
        {"ca.crt": encoded("junk")},
        {"ca.crt": encoded(UNPARSABLE)},
        {"ca.crt": encoded(PEM + UNPARSABLE)},
    ],
    ids=["empty", "other-key", "no-pem", "unparsable", "good-then-unparsable"],
)
def test_ca_from_a_secret_without_it_is_refused(data: dict[str, str]) -> None:
    """Refused here, not later: a CA the client context cannot load would fail every connect with an error that
    no caller expects (the proxy answered 500 and logged a traceback per request)."""
    with pytest.raises(ValueError):
        ca_from_secret({"data": data}, "ca.crt")

"""The operator's TLS sessions never fall back to plaintext: a member (or anyone between) that offers no TLS is
refused before a byte of the login is sent."""

from __future__ import annotations

import re
import socket
import struct
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import trustme

from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials, connect, tls_context

ROOT = Path(__file__).resolve().parents[2]
REFUSING_PYMYSQL = (1, 2)
"""The first pymysql release that refuses a server without TLS when given an SSL context (1.1.x logs in in
plaintext, sending the login, and for caching_sha2_password asks the unverified server for its RSA key)."""


def _greeting() -> bytes:
    """A protocol-10 handshake of a server that does not offer TLS (no CLIENT_SSL capability)."""
    capabilities = 0x1 | 0x8 | 0x200 | 0x8000 | 0x80000  # long password, with db, 4.1, secure conn., plugin auth
    payload = (
        b"\x0a8.0.0-no-tls\x00"
        + struct.pack("<I", 7)
        + b"12345678\x00"
        + struct.pack("<H", capabilities & 0xFFFF)
        + b"\x21"
        + struct.pack("<H", 2)
        + struct.pack("<H", capabilities >> 16)
        + b"\x15"
        + b"\x00" * 10
        + b"123456789012\x00"
        + b"mysql_native_password\x00"
    )
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


@pytest.fixture
def plaintext_member() -> Iterator[tuple[int, list[bytes], threading.Thread]]:
    """A loopback server greeting one client as a MySQL server without TLS; what it sent after the greeting (once
    it closed, or after 2 s), and the thread serving it."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.sendall(_greeting())
            connection.settimeout(2)
            data = b""
            try:
                while chunk := connection.recv(4096):
                    data += chunk
            except (TimeoutError, OSError):
                pass
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received, thread
    finally:
        listener.close()
        thread.join(5)


def test_a_tls_session_to_a_member_without_tls_is_refused_before_the_login(
    plaintext_member: tuple[int, list[bytes], threading.Thread],
) -> None:
    port, received, server = plaintext_member
    context = tls_context(trustme.CA().cert_pem.bytes().decode(), check_hostname=True)
    with pytest.raises(pymysql.err.OperationalError):
        connect("m0", "127.0.0.1", port, Credentials("whm_admin", "secret"), dialect_for("mariadb"), tls=context)
    server.join(5)
    assert received and b"whm_admin" not in received[0]


def test_the_declared_pymysql_refuses_a_member_without_tls() -> None:
    """The lower bound in pyproject.toml is a pymysql that refuses (the test above runs the installed one only)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bound = next(re.fullmatch(r"pymysql>=([0-9.]+)", d) for d in dependencies if d.startswith("pymysql"))
    assert bound is not None
    assert tuple(int(part) for part in bound.group(1).split(".")) >= REFUSING_PYMYSQL

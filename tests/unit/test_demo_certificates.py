"""The demo's CA and certificates (``whm-ha demo --tls``): a client that trusts the CA file alone completes a real
handshake with a server using the files or the Secret, for 127.0.0.1 and localhost; the key is its owner's only."""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from whm_ha.demo.certificates import make_certificates


def _handshake(cert: Path, key: Path, ca: Path, server_name: str) -> dict[str, Any]:
    """Serve ``cert``/``key`` on a loopback port and connect to ``server_name`` trusting ``ca`` only; the
    verified certificate of the server."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # a refused handshake raises here: the client's error is what the test reads

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
                client.wrap_socket(sock, server_hostname=server_name) as tls,
            ):
                peer = tls.getpeercert()
                tls.sendall(b"x")
        finally:
            thread.join(10)
    assert peer is not None
    return peer


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_certificates_verify_against_the_demo_ca(tmp_path: Path, server_name: str) -> None:
    made = make_certificates(tmp_path / "tls", ("whm-proxy-tls", "whm-shim-tls"))
    assert set(made.issued) == {"whm-proxy-tls", "whm-shim-tls"}
    for issued in made.issued.values():
        assert issued.key.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"
        names = _handshake(issued.cert, issued.key, made.ca, server_name)["subjectAltName"]
        assert {value for _, value in names} == {"127.0.0.1", "localhost"}


def test_secrets_and_server_files_carry_the_same_certificates(tmp_path: Path) -> None:
    made = make_certificates(tmp_path, ("whm-shim-tls",))
    issued = made.issued["whm-shim-tls"]
    secret = issued.secret(made.ca)
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == "whm-shim-tls"
    decoded = {name: base64.b64decode(value) for name, value in secret["data"].items()}
    cert, key, ca = issued.cert.read_bytes(), issued.key.read_bytes(), made.ca.read_bytes()
    assert decoded == {"tls.crt": cert, "tls.key": key, "ca.crt": ca}
    assert {k: base64.b64decode(v) for k, v in made.ca_secret("db-ca")["data"].items()} == {"ca.crt": ca}
    served = issued.server_tls(made.ca)
    assert (served.ca, served.cert, served.key) == (ca.decode(), cert.decode(), key.decode())


def test_another_ca_does_not_verify_them(tmp_path: Path) -> None:
    made, other = make_certificates(tmp_path / "a", ("x",)), make_certificates(tmp_path / "b", ())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(made.issued["x"].cert, made.issued["x"].key, other.ca, "127.0.0.1")


def test_what_the_image_runs_imports_without_the_sandbox_extra() -> None:
    """The image installs whm-ha without its sandbox extra (trustme, kmock): the CLI and the writer pod's
    checkers (``python -m whm_ha.demo.checkers``, which imports the demo's stack) must import without them."""
    blocked = "import sys; sys.modules.update(trustme=None, kmock=None); "
    for module in ("whm_ha.cli", "whm_ha.demo.checkers", "whm_ha.demo.deployed"):
        result = subprocess.run(
            [sys.executable, "-c", blocked + f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{module}: {result.stderr[-2000:]}"

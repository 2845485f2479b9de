"""``whm-ha demo --tls``: a certificate authority of the demo's own and the certificates it signs, as files in the
demo's workdir, as the kubernetes.io/tls Secrets the proxy and the shim serve from, and as what the database
servers serve."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from ..db.local_server import ServerTLS
from ..tls import TLS_SECRET_TYPE

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
"""What every demo certificate is valid for: the demo listens on loopback only."""


@dataclass(frozen=True)
class Issued:
    """One server certificate: its files and the Secret that carries it."""

    secret_name: str
    cert: Path
    key: Path

    def server_tls(self, ca: Path) -> ServerTLS:
        """What a local database server serves with this certificate, trusting ``ca``."""
        return ServerTLS(ca=ca.read_text(), cert=self.cert.read_text(), key=self.key.read_text())

    def secret(self, ca: Path) -> dict[str, Any]:
        """The kubernetes.io/tls Secret (with the CA as ``ca.crt``, as cert-manager writes it)."""
        files = {"tls.crt": self.cert, "tls.key": self.key, "ca.crt": ca}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name},
            "type": TLS_SECRET_TYPE,
            "data": {name: base64.b64encode(path.read_bytes()).decode() for name, path in files.items()},
        }


@dataclass(frozen=True)
class DemoCertificates:
    """The CA (``ca``: the file to give ``curl --cacert``) and the server certificates it signed, by Secret name."""

    ca: Path
    issued: dict[str, Issued]

    def ca_secret(self, name: str) -> dict[str, Any]:
        """A Secret holding the CA alone, under ``ca.crt``."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {"ca.crt": base64.b64encode(self.ca.read_bytes()).decode()},
        }


def make_certificates(folder: Path, secret_names: tuple[str, ...]) -> DemoCertificates:
    """A new CA in ``folder`` (``ca.pem``) and, for each Secret name, a server certificate for 127.0.0.1 and
    localhost signed by it (``NAME.crt``, ``NAME.key``; the key readable by its owner only)."""
    folder.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="whm-ha demo")
    ca = folder / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    issued = {}
    for name in secret_names:
        leaf = authority.issue_cert(*LOOPBACK_NAMES, common_name=name)
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        key.touch(mode=0o600)
        leaf.private_key_pem.write_to_path(str(key))
        for index, pem in enumerate(leaf.cert_chain_pems):
            pem.write_to_path(str(cert), append=index > 0)
        issued[name] = Issued(name, cert, key)
    return DemoCertificates(ca, issued)

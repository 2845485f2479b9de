"""HTTPS through the proxy against nginx terminating TLS, in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.proxy_tls_vs_nginx [--quick] [--no-write]

The rig of ``bench.proxy_vs_nginx`` (three nginx backends with a 1 KB answer, the sandbox API, ``whm-ha proxy``
and nginx as a round-robin proxy, two workers each), with TLS in front: the proxy's ``--listen-tls`` serves the
certificate of a kubernetes.io/tls Secret named in the WHMCluster (``spec.loadBalancer.tls.certificates``), and
nginx ``listen ... ssl`` the same certificate and key (ECDSA P-256, from a trustme CA) with the same protocols
(TLS 1.2 and 1.3) and TLS 1.2 ciphers (``whm_ha.tls``'s; TLS 1.3 suites are OpenSSL's on both). Both speak
plain HTTP to the same backends. wrk drives the load:

* keep-alive throughput: ``wrk -t2 -c64`` over HTTPS, one handshake per connection; the median req/s of
  ``ROUNDS`` alternating runs of each, and their ratio; the same over both's plain HTTP listeners first, so that
  what TLS costs each shows beside the plain ratio of the same run;
* new handshakes: the same, with ``Connection: close`` on every request, so that each request is a new TCP
  connection and a full handshake (wrk resumes no session); req/s is then handshakes/s;
* added p99: vegeta (``bench.open_loop``: constant rate, open loop, keep-alive, HTTP/1.1, the CA verified) at
  half of the proxy's own keep-alive saturation rate, straight to a backend (plain HTTP), through the proxy and
  through nginx over HTTPS, ``ROUNDS`` times in turn; the median p99 of each minus the direct one. At most
  ``MAX_IN_FLIGHT`` requests (so connections) at once: with open_loop's 512, a stall on this 2-core box made
  vegeta open hundreds of new connections, and their handshakes, not the servers, set the tail (nginx's HTTPS
  p99 at 5,000 req/s: 543 ms with 512, 14 ms with 32; plain HTTP 3 ms either way).

Each figure is printed beside nginx's and the goal, and appended to bench/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from kubernetes import client

from bench.open_loop import Latency, attack, vegeta
from bench.proxy_vs_nginx import (
    ROUNDS,
    WORKERS,
    Load,
    Nginx,
    Rig,
    alternating,
    command_line,
    nginx_version,
    running_rig,
)
from bench.report import publish
from whm_ha.db.local_server import free_port
from whm_ha.tls import TLS12_CIPHERS, TLS_SECRET_TYPE

SECRET = "bench-tls"
MAX_IN_FLIGHT = 32


class TlsRig(Rig):
    """The rig with HTTPS listeners on the proxy and on nginx, serving one certificate."""

    nginx_scheme = "https"

    def __init__(self, workdir: Path) -> None:
        self.tls_port, self.nginx_plain_port = free_port(), free_port()
        super().__init__(
            workdir,
            load_balancer={"tls": {"certificates": [{"secretName": SECRET}]}},
            proxy_options=(f"--listen-tls=127.0.0.1:{self.tls_port}",),
        )
        self.ca = trustme.CA()
        self.certificate = self.ca.issue_cert("127.0.0.1", "localhost")
        workdir.mkdir(parents=True, exist_ok=True)
        cert, key, self.ca_file = workdir / "tls.crt", workdir / "tls.key", workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.certificate.cert_chain_pems[0].write_to_path(str(cert))
        self.certificate.private_key_pem.write_to_path(str(key))
        self.nginx = Nginx(
            workdir / "nginx-proxy",
            self.nginx_proxy(
                f"127.0.0.1:{self.nginx_port} ssl; listen 127.0.0.1:{self.nginx_plain_port}",
                f" ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;"
                f" ssl_ciphers {TLS12_CIPHERS}; ssl_prefer_server_ciphers off;",
            ),
            workers=WORKERS,
        )

    def prepare(self, api: client.ApiClient) -> None:
        """The kubernetes.io/tls Secret the WHMCluster names."""
        pems = {
            "tls.crt": self.certificate.cert_chain_pems[0].bytes(),
            "tls.key": self.certificate.private_key_pem.bytes(),
        }
        client.CoreV1Api(api).create_namespaced_secret(
            "bench",
            {
                "metadata": {"name": SECRET},
                "type": TLS_SECRET_TYPE,
                "data": {name: base64.b64encode(pem).decode() for name, pem in pems.items()},
            },
        )

    @property
    def proxy_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/"

    @property
    def plain_urls(self) -> tuple[str, str]:
        """The proxy's and nginx's plain HTTP listeners (the same processes)."""
        return super().proxy_url, f"http://127.0.0.1:{self.nginx_plain_port}/"

    def served_certificate(self, port: int) -> tuple[bytes, str]:
        """The certificate (DER) a listener presents, verified against the CA, and the negotiated protocol."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der, str(tls.version())


@dataclass
class Figures:
    seconds: float
    protocol: str
    proxy_plain: Load
    nginx_plain: Load
    proxy_keepalive: Load
    nginx_keepalive: Load
    proxy_handshakes: Load
    nginx_handshakes: Load
    rate: float
    direct: Latency
    proxied: Latency
    nginx_paced: Latency


def measure(rig: TlsRig, seconds: float) -> Figures:
    """Every figure, on one rig: both listeners first shown to present the same certificate."""
    (proxy_der, protocol), (nginx_der, _) = (rig.served_certificate(p) for p in (rig.tls_port, rig.nginx_port))
    assert proxy_der == nginx_der, "the proxy and nginx must serve the same certificate"
    urls = (rig.proxy_url, rig.nginx_url)
    proxy_plain, nginx_plain = alternating(rig.plain_urls, seconds, rig.workdir)
    proxy_keepalive, nginx_keepalive = alternating(urls, seconds, rig.workdir)
    proxy_handshakes, nginx_handshakes = alternating(urls, seconds, rig.workdir, close=True)
    rate = proxy_keepalive.rps / 2
    runs: dict[str, list[Latency]] = {url: [] for url in (rig.direct_url, *urls)}
    for _ in range(ROUNDS):
        for url, latencies in runs.items():
            latencies.append(attack(url, rate, seconds, ca=rig.ca_file, workers=4, max_workers=MAX_IN_FLIGHT))
    direct, proxied, nginx = (sorted(latencies, key=lambda r: r.p99)[ROUNDS // 2] for latencies in runs.values())
    return Figures(
        seconds, protocol, proxy_plain, nginx_plain, proxy_keepalive, nginx_keepalive, proxy_handshakes,
        nginx_handshakes, rate,
        direct, proxied, nginx,
    )  # fmt: skip


def table(f: Figures) -> list[str]:
    """The rows: figure | measured | reference (nginx, same run) | goal."""
    keepalive = f.proxy_keepalive.rps / f.nginx_keepalive.rps
    handshakes = f.proxy_handshakes.rps / f.nginx_handshakes.rps
    added, nginx_added = f.proxied.p99 - f.direct.p99, f.nginx_paced.p99 - f.direct.p99
    failed = f.proxy_keepalive.failed + f.proxy_handshakes.failed + f.proxied.errors
    plain = f.proxy_plain.rps / f.nginx_plain.rps
    rows = [
        (
            "plain HTTP keep-alive throughput, the same processes (for comparison)",
            f"{f.proxy_plain.rps:,.0f} req/s",
            f"nginx {f.nginx_plain.rps:,.0f} req/s (ratio {plain:.2f})",
            "ratio ≥ 0.50",
        ),
        (
            "HTTPS keep-alive throughput (wrk -t2 -c64, 1 KB GET, 3 backends)",
            f"{f.proxy_keepalive.rps:,.0f} req/s",
            f"nginx {f.nginx_keepalive.rps:,.0f} req/s (ratio {keepalive:.2f}); of their plain rates: proxy "
            f"{f.proxy_keepalive.rps / f.proxy_plain.rps:.2f}, nginx {f.nginx_keepalive.rps / f.nginx_plain.rps:.2f}",
            "ratio ≥ 0.65",
        ),
        (
            "HTTPS new handshakes (a new connection per request, full handshakes)",
            f"{f.proxy_handshakes.rps:,.0f} /s",
            f"nginx {f.nginx_handshakes.rps:,.0f} /s (ratio {handshakes:.2f})",
            "ratio ≥ 0.80",
        ),
        (
            f"HTTPS added p99 at half the proxy's saturation ({f.rate:,.0f} req/s, open loop)",
            f"{added:.2f} ms",
            f"nginx {nginx_added:.2f} ms; p50 / p99 / p99.9 direct (plain HTTP) {f.direct.cells()}, proxy "
            f"{f.proxied.cells()}, nginx {f.nginx_paced.cells()} ms",
            "≤ 2 ms (as plain HTTP)",
        ),
        ("failed requests through the proxy over HTTPS (all runs above)", str(failed), "—", "0"),
    ]
    return [f"| {' | '.join(row)} |" for row in rows]


def main() -> None:
    seconds, write = command_line(__doc__)
    vegeta()
    with running_rig(TlsRig) as rig:
        assert isinstance(rig, TlsRig)
        figures = measure(rig, seconds)
    load = os.getloadavg()[2]  # the box is shared: other work shows in the absolute figures more than in ratios
    note = (
        f"{WORKERS} workers each on {os.cpu_count()} cores (load average {load:.1f} over the last 15 minutes), "
        f"nginx {nginx_version()}, {figures.protocol} negotiated, one ECDSA P-256 "
        f"certificate for both; runs of {figures.seconds:.0f} s, throughputs the median of {ROUNDS} alternating "
        f"runs of each; half load by vegeta at a constant rate (at most {MAX_IN_FLIGHT} requests in flight), "
        f"the median p99 of {ROUNDS} runs of each."
    )
    publish("Proxy vs nginx over HTTPS", table(figures), write=write, after=["", note])


if __name__ == "__main__":
    main()

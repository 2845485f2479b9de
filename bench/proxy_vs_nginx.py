"""Benchmark of the proxy against nginx as an equivalent round-robin reverse proxy, in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.proxy_vs_nginx [--quick]

Everything runs on loopback: three nginx backends (one process each, a static 1 KB answer), the
sandbox API, ``whm-ha proxy`` and a reference nginx proxy (round-robin, keep-alive upstreams, the
same number of workers). wrk (installed from Debian when missing, as is nginx) drives the load:

* throughput: ``wrk -t2 -c64`` for a fixed time through each proxy, alternately, ``ROUNDS`` times each;
  the median req/s of each and their ratio (alternating keeps a neighbour's load from favouring one side);
* added latency: wrk at half the proxy's maximum rate, through the proxy and straight to a backend;
  wrk has no rate option, so a Lua ``delay()`` paces each connection (closed loop with think time:
  rate ≈ connections x 1000 / (delay_ms + latency_ms)); the achieved rates are printed;
* node death: GET load through each proxy while one backend is killed; failed requests are non-2xx
  answers plus socket errors as wrk counts them.

Each figure is printed beside its reference and goal, and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.fixtures.proxy_process import Cluster, ProxyProcess
from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import wait_for

from whm_ha.db.local_server import free_port

RESULTS = Path(__file__).with_name("RESULTS.md")
WORKERS = 2
ROUNDS = 3
BODY = "x" * 1023 + "\n"


def ensure_tools() -> None:
    """Install wrk and nginx from Debian when either is missing."""
    if all(shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists() for tool in ("wrk", "nginx")):
        return
    print("installing wrk and nginx from Debian")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx"], check=True, env=env)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Nginx:
    """One nginx (master and workers) from a generated configuration, stopped by killing its group."""

    workdir: Path
    http_block: str
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            f"worker_processes {self.workers};\ndaemon off;\npid {self.workdir}/nginx.pid;\n"
            f"error_log {self.workdir}/error.log warn;\nevents {{ worker_connections 16384; }}\n"
            f"http {{\n access_log off;\n keepalive_requests 1000000;\n"
            f" client_body_temp_path {self.workdir};\n proxy_temp_path {self.workdir};\n"
            f" default_type text/plain;\n{self.http_block}\n}}\n"
        )
        self.process = subprocess.Popen(
            [nginx_binary(), "-p", str(self.workdir), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(port)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def wait_port(port: int, timeout: float = 15) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_command(url: str, seconds: float, connections: int, script: Path, threads: int = 2) -> list[str]:
    return [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--latency", "--timeout", "5s",
        "-s", str(script), url,
    ]  # fmt: skip


def parse(out: str) -> Load:
    """wrk's figures; failed requests are non-2xx/3xx answers plus socket errors."""
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        failed=(int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
    )


def lua(workdir: Path, delay_ms: int = 0, *, close: bool = False) -> Path:
    """A wrk script; with delay_ms, each connection waits that long between its requests; with close, every
    request asks for ``Connection: close``, so that each one is on a new connection."""
    script = workdir / f"delay-{delay_ms}{'-close' if close else ''}.lua"
    text = f"function delay()\n  return {delay_ms}\nend\n" if delay_ms else ""
    script.write_text(text + ('wrk.headers["Connection"] = "close"\n' if close else ""))
    return script


def wrk(url: str, seconds: float, connections: int, workdir: Path, delay_ms: int = 0, *, close: bool = False) -> Load:
    command = wrk_command(url, seconds, connections, lua(workdir, delay_ms, close=close))
    return parse(subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout)


class Rig:
    """Backends, the sandbox API, the proxy and the nginx reference proxy; ``load_balancer`` is the WHMCluster's
    spec.loadBalancer and ``proxy_options`` the proxy's extra arguments."""

    nginx_scheme = "http"

    def __init__(
        self, workdir: Path, *, load_balancer: dict[str, Any] | None = None, proxy_options: tuple[str, ...] = ()
    ) -> None:
        self.workdir = workdir
        self.load_balancer = load_balancer or {}
        self.proxy_options = proxy_options
        self.backend_ports = [free_port() for _ in range(3)]
        self.backends = [
            Nginx(
                workdir / f"backend-{i}",
                f' server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }} }}',
            )
            for i, port in enumerate(self.backend_ports)
        ]
        self.sandbox = SandboxProcess(workdir / "sandbox")
        self.proxy: ProxyProcess | None = None
        self.nginx_port = free_port()
        self.nginx = Nginx(workdir / "nginx-proxy", self.nginx_proxy(f"127.0.0.1:{self.nginx_port}"), workers=WORKERS)

    def nginx_proxy(self, listen: str, settings: str = "") -> str:
        """nginx's http block for the reference proxy listening on ``listen``, with server ``settings``."""
        servers = "".join(f" server 127.0.0.1:{port};" for port in self.backend_ports)
        return (
            f" upstream nodes {{{servers} keepalive 256; }}\n"
            f" server {{ listen {listen};{settings} location / {{ proxy_pass http://nodes;"
            ' proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host;'
            " proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; } }"
        )

    def prepare(self, api: client.ApiClient) -> None:
        """Objects the proxy needs in namespace bench before it starts: none here."""

    def start(self) -> None:
        for backend, port in zip(self.backends, self.backend_ports, strict=True):
            backend.start(port)
        self.sandbox.workdir.mkdir(parents=True)
        self.sandbox.start()
        api = self.sandbox.api_client()
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
        self.prepare(api)
        cluster = Cluster(api, "bench")
        cluster.create(retries=2, **self.load_balancer)
        for i, port in enumerate(self.backend_ports):
            cluster.add_node(f"node-{i}", "127.0.0.1", port)
        self.proxy = ProxyProcess(
            self.sandbox.kubeconfig,
            "bench",
            "whm",
            self.workdir / "proxy.log",
            workers=WORKERS,
            options=self.proxy_options,
        )
        self.proxy.start()
        wait_for(self.proxy.ready, 15, "proxy ready")
        self.nginx.start(self.nginx_port)

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url + "/"

    @property
    def nginx_url(self) -> str:
        return f"{self.nginx_scheme}://127.0.0.1:{self.nginx_port}/"

    @property
    def direct_url(self) -> str:
        """The first backend, with no proxy in between."""
        return f"http://127.0.0.1:{self.backend_ports[0]}/"

    def restart_backend(self, index: int) -> None:
        self.backends[index].kill()
        self.backends[index].start(self.backend_ports[index])

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.nginx.kill()
        for backend in self.backends:
            backend.kill()
        self.sandbox.stop()


@contextlib.contextmanager
def running_rig(make: Callable[[Path], Rig] = Rig) -> Iterator[Rig]:
    """A started rig (``make(workdir)``) in a temporary directory, its pools warmed up; closed on the way out."""
    with tempfile.TemporaryDirectory(prefix="whm-bench-") as tmp:
        rig = make(Path(tmp))
        try:
            rig.start()
            wrk(rig.proxy_url, 2, 64, rig.workdir)  # warm up pools and caches
            wrk(rig.nginx_url, 2, 64, rig.workdir)
            yield rig
        finally:
            rig.close()


def alternating(urls: tuple[str, str], seconds: float, workdir: Path, *, close: bool = False) -> tuple[Load, Load]:
    """The median run (by req/s) of each URL over ROUNDS rounds, the two URLs taking turns (with close, a new
    connection per request)."""
    runs: tuple[list[Load], list[Load]] = ([], [])
    for _ in range(ROUNDS):
        for url, loads in zip(urls, runs, strict=True):
            loads.append(wrk(url, seconds, 64, workdir, close=close))
    first, second = (sorted(loads, key=lambda load: load.rps)[ROUNDS // 2] for loads in runs)
    return first, second


def paced(url: str, rate: float, seconds: float, workdir: Path, connections: int = 20) -> Load:
    """wrk paced to about ``rate`` req/s: each connection waits between requests."""
    return wrk(url, seconds, connections, workdir, delay_ms=max(1, round(connections * 1000 / rate)))


def during_kill(rig: Rig, url: str, seconds: float, index: int) -> Load:
    """GET load through a proxy; one backend is killed a third of the way in, then started again."""
    command = wrk_command(url, seconds, 16, lua(rig.workdir))
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as runner:
        time.sleep(seconds / 3)
        rig.backends[index].kill()
        stdout, _ = runner.communicate(timeout=seconds + 60)
    rig.backends[index].start(rig.backend_ports[index])
    return parse(stdout)


@dataclass
class Figures:
    seconds: float
    proxy_max: Load
    nginx_max: Load
    rate: float
    direct: Load
    proxied: Load
    proxy_kill: Load
    nginx_kill: Load


def command_line(doc: str | None) -> tuple[float, bool]:
    """The seconds per run (``--quick``: 5, else 10) and whether to append to RESULTS.md (not with
    ``--no-write``), from the command line of a benchmark whose docstring is ``doc``; the tools installed."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    ensure_tools()
    return 5.0 if args.quick else 10.0, not args.no_write


def main() -> None:
    seconds, write = command_line(__doc__)
    with running_rig() as rig:
        workdir = rig.workdir
        proxy_url, nginx_url, direct_url = rig.proxy_url, rig.nginx_url, rig.direct_url
        proxy_max, nginx_max = alternating((proxy_url, nginx_url), seconds, workdir)
        rate = proxy_max.rps / 2
        figures = Figures(
            seconds,
            proxy_max,
            nginx_max,
            rate,
            direct=paced(direct_url, rate, seconds, workdir),
            proxied=paced(proxy_url, rate, seconds, workdir),
            proxy_kill=during_kill(rig, proxy_url, seconds, 1),
            nginx_kill=during_kill(rig, nginx_url, seconds, 2),
        )
    report(figures, write=write)


def report(f: Figures, *, write: bool) -> None:
    ratio = f.proxy_max.rps / f.nginx_max.rps
    added50, added99 = f.proxied.p50_ms - f.direct.p50_ms, f.proxied.p99_ms - f.direct.p99_ms
    rows = [
        (
            "throughput (wrk -t2 -c64, 1 KB GET, 3 backends)",
            f"{f.proxy_max.rps:,.0f} req/s",
            f"nginx {f.nginx_max.rps:,.0f} req/s (ratio {ratio:.2f})",
            "≥ 10,000 req/s; ratio ≥ 0.50",
        ),
        (
            f"added latency p50 / p99 at half load (target {f.rate:,.0f} req/s)",
            f"{added50:.2f} ms / {added99:.2f} ms",
            f"direct {f.direct.p50_ms:.2f} / {f.direct.p99_ms:.2f} ms at {f.direct.rps:,.0f} req/s; "
            f"proxied {f.proxied.p50_ms:.2f} / {f.proxied.p99_ms:.2f} ms at {f.proxied.rps:,.0f} req/s",
            "p99 ≤ 2 ms",
        ),
        (
            "failed GETs while a node is killed (wrk -c16)",
            f"{f.proxy_kill.failed} of {f.proxy_kill.requests:,}",
            f"nginx {f.nginx_kill.failed} of {f.nginx_kill.requests:,}",
            "0",
        ),
    ]
    print()
    for figure, measured, reference, goal in rows:
        print(f"{figure}\n    measured: {measured}\n    reference: {reference}\n    goal: {goal}")
    section = [
        "",
        f"## Proxy vs nginx ({datetime.date.today().isoformat()})",
        "",
        f"{WORKERS} workers each, nginx {nginx_version()}, runs of {f.seconds:.0f} s; throughput is the median of "
        f"{ROUNDS} runs of each, alternating. Half load is paced by a wrk Lua `delay()` per connection (closed "
        "loop with think time, 20 connections), as wrk has no rate option.",
        "",
        "| figure | measured | reference (same run) | goal |",
        "|---|---|---|---|",
        *(f"| {figure} | {measured} | {reference} | {goal} |" for figure, measured, reference, goal in rows),
    ]
    print("\n".join(section))
    if write:
        with RESULTS.open("a") as out:
            out.write("\n".join(section) + "\n")
        print(f"\nappended to {RESULTS}")


def nginx_version() -> str:
    result = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
    return result.stderr.strip().rsplit("/", 1)[-1]


if __name__ == "__main__":
    main()

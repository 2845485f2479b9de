"""Latency the proxy adds under open-loop, constant-rate load, beside nginx's at the same rates, in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.open_loop [--quick] [--runs N]

The rig of ``bench.proxy_vs_nginx`` (three nginx backends with a 1 KB answer, the sandbox API, ``whm-ha proxy``
and nginx as a round-robin proxy, two workers each). nginx's saturation rate is measured first (``wrk -t2 -c64``);
then vegeta (built from its Go module into ~/.cache/whm-ha/tools) sends GETs at a constant rate, 25 %, 50 % and
75 % of it, straight to a backend, through nginx and through the proxy, in turn. vegeta schedules each request
at its time whatever the earlier ones do (open loop), so a stall shows as latency instead of lowering the
rate (no coordinated omission). Each figure: p50/p99/p99.9 and the p99 added over direct, per run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.proxy_vs_nginx import RESULTS, WORKERS, ensure_tools, running_rig, wrk

VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"
TOOLS = Path.home() / ".cache" / "whm-ha" / "tools"
FRACTIONS = (0.25, 0.5, 0.75)
GOAL_ADDED_P99_MS = 2.0


def vegeta() -> str:
    """The vegeta binary, built once from its Go module."""
    binary = TOOLS / "vegeta"
    if not binary.exists():
        print(f"building vegeta from {VEGETA_MODULE}")
        env = {**os.environ, "GOBIN": str(TOOLS), "CGO_ENABLED": "0"}
        subprocess.run(["go", "install", VEGETA_MODULE], check=True, env=env, timeout=900)
    return str(binary)


@dataclass(frozen=True)
class Latency:
    rate: float
    achieved: float
    p50: float
    p99: float
    p999: float
    errors: int

    def cells(self) -> str:
        return f"{self.p50:.2f} / {self.p99:.2f} / {self.p999:.2f}"


def attack(
    url: str, rate: float, seconds: float, *, ca: Path | None = None, workers: int = 32, max_workers: int = 512
) -> Latency:
    """vegeta at ``rate`` req/s for ``seconds``, with ``workers`` to ``max_workers`` requests in flight (each
    worker a keep-alive connection); milliseconds. An https ``url`` is verified against ``ca`` and spoken to in
    HTTP/1.1, as wrk and nginx's upstreams speak."""
    target = f"GET {url}\n"
    command = [vegeta(), "attack", f"-rate={round(rate)}/s", f"-duration={seconds}s", "-keepalive=true"]
    command += [f"-max-workers={max_workers}", f"-workers={workers}", "-timeout=5s"]
    if ca is not None:
        command += [f"-root-certs={ca}", "-http2=false"]
    attacked = subprocess.run(command, input=target.encode(), capture_output=True, check=True, timeout=seconds + 60)
    summary = subprocess.run(
        [vegeta(), "report", "-type=json"], input=attacked.stdout, capture_output=True, check=True, timeout=60
    )
    report = json.loads(summary.stdout)
    latencies = report["latencies"]
    # vegeta's JSON report has p99 but not p99.9: that is read from the raw results.
    p999 = _quantile(attacked.stdout, 0.999)
    errors = sum(count for code, count in report["status_codes"].items() if not code.startswith("2"))
    return Latency(rate, report["rate"], latencies["50th"] / 1e6, latencies["99th"] / 1e6, p999, errors)


def _quantile(results: bytes, q: float) -> float:
    """A quantile in ms of vegeta's raw results (``vegeta encode`` to JSON lines)."""
    encoded = subprocess.run([vegeta(), "encode", "-to=json"], input=results, capture_output=True, check=True)
    values = sorted(json.loads(line)["latency"] for line in encoded.stdout.splitlines() if line.strip())
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6 if values else 0.0


@dataclass(frozen=True)
class Round:
    fraction: float
    direct: Latency
    nginx: Latency
    proxy: Latency


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per rate instead of 15 s")
    parser.add_argument("--runs", type=int, default=3, help="runs of every rate")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 15.0
    ensure_tools()
    vegeta()
    rounds: list[list[Round]] = []
    with running_rig() as rig:
        saturation = wrk(rig.nginx_url, seconds, 64, rig.workdir).rps
        print(f"nginx saturation: {saturation:,.0f} req/s")
        for run in range(args.runs):
            this: list[Round] = []
            for fraction in FRACTIONS:
                rate = saturation * fraction
                loads = [attack(url, rate, seconds) for url in (rig.direct_url, rig.nginx_url, rig.proxy_url)]
                this.append(Round(fraction, *loads))
                print(f"run {run + 1}, {fraction:.0%} ({rate:,.0f} req/s): " + _line(this[-1]))
            rounds.append(this)
    report(saturation, seconds, rounds, write=not args.no_write)


def _line(r: Round) -> str:
    return (
        f"direct {r.direct.cells()} ms; nginx {r.nginx.cells()} ms (+{r.nginx.p99 - r.direct.p99:.2f}); "
        f"proxy {r.proxy.cells()} ms (+{r.proxy.p99 - r.direct.p99:.2f}), errors {r.proxy.errors}"
    )


def report(saturation: float, seconds: float, rounds: list[list[Round]], *, write: bool) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        f"## Proxy latency, open loop ({today})",
        "",
        f"vegeta {VEGETA_MODULE.rsplit('@', 1)[1]} at constant rates (open loop: no coordinated omission), "
        f"{seconds:g} s per rate and target, {len(rounds)} runs; {WORKERS} workers each; the rates are fractions "
        f"of nginx's saturation measured in the same run ({saturation:,.0f} req/s, wrk -t2 -c64). "
        "Latencies p50 / p99 / p99.9 in ms; added = p99 minus direct p99.",
        "",
        "| rate | run | direct | nginx (added p99) | whm-ha proxy (added p99) | proxy errors |",
        "|---|---|---|---|---|---|",
    ]
    for run, this in enumerate(rounds, start=1):
        for r in this:
            lines.append(
                f"| {r.fraction:.0%} ({r.proxy.rate:,.0f}/s) | {run} | {r.direct.cells()} | "
                f"{r.nginx.cells()} (+{r.nginx.p99 - r.direct.p99:.2f}) | "
                f"{r.proxy.cells()} (+{r.proxy.p99 - r.direct.p99:.2f}) | {r.proxy.errors} |"
            )
    half = [next(r for r in this if r.fraction == 0.5) for this in rounds]
    met = sum(1 for r in half if r.proxy.p99 - r.direct.p99 <= GOAL_ADDED_P99_MS)
    lines += ["", f"Goal: p99 added ≤ {GOAL_ADDED_P99_MS:g} ms at 50 % in every run: met in {met} of {len(half)}.", ""]
    text = "\n".join(lines)
    print(text)
    if write:
        with RESULTS.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()

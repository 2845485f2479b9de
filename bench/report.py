"""Run every benchmark of the project and write one table: each figure, its reference measured in the same
run, and the goal.

    PYTHONPATH=. .venv/bin/python -m bench.report [--quick]

Each benchmark prints its own table (figure | measured | reference | goal); this collects their rows under
one dated heading in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
BENCHMARKS = {
    "proxy vs nginx": "bench.proxy_vs_nginx",
    "proxy vs nginx over HTTPS": "bench.proxy_tls_vs_nginx",
    "node operator": "bench.operator_failover",
    "MySQL promotion": "bench.promotion",
    "planned switchover": "bench.switchover",
    "a vanished host": "bench.blackhole",
    "one replication among many with unreachable members": "bench.isolation",
}


def publish(title: str, rows: list[str], *, write: bool, after: Sequence[str] = ()) -> None:
    """Print a dated section: ``title``, the table of ``rows`` (each ``| figure | measured | reference |
    goal |``) and the lines ``after`` it; append it to RESULTS.md when ``write``."""
    lines = [
        f"## {title} ({time.strftime('%Y-%m-%d')})",
        "",
        "| figure | measured | reference (same run) | goal |",
        "|---|---|---|---|",
        *rows,
        *after,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        with RESULTS.open("a") as out:
            out.write("\n" + text)


def rows(module: str, quick: bool) -> list[str]:
    """The table rows a benchmark printed (its header and separator left out)."""
    args = [sys.executable, "-m", module, "--no-write", *(["--quick"] if quick else [])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    table = [ln for ln in result.stdout.splitlines() if ln.startswith("| ")]
    if result.returncode != 0 or not table:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"| {module} did not complete | {last} | — | — |"]
    return [ln for ln in table if not ln.startswith("| figure")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and smaller loads (a smoke test)")
    args = parser.parse_args()
    table: list[str] = []
    for name, module in BENCHMARKS.items():
        print(f"running {name} ...", flush=True)
        table += rows(module, args.quick)
    publish("Report: every benchmark", table, write=True)


if __name__ == "__main__":
    main()

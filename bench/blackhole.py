"""A host that vanishes from the network (its packets dropped): time to a writable new primary, and for the WHM
node side to a new primary node, each beside its stated bound.

    PYTHONPATH=. .venv/bin/python -m bench.blackhole [--quick] [--no-write]

Each run is one of the fault-tier tests (tests/faults/test_vanished_primary.py: members and stand-in nodes in
network namespaces, the operator and the proxy on the host), which prints what it measured; this runs them and
collects the figures. Needs root and nftables, as the fault tier does.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

from bench.report import publish

TEST = "tests/faults/test_vanished_primary.py"
CASES = {
    "database": (
        "replaced_within_the_bound",
        re.compile(r"blackhole to a writable new primary: ([\d.]+)s \(bound (\d+)s\)"),
    ),
    "node": (
        "primary_node_fails_over",
        re.compile(r"primary node to a new primary: ([\d.]+)s \(bound (\d+)s\); (\d+) GETs, (\d+) failed"),
    ),
}


def measure(case: str) -> re.Match[str]:
    name, pattern = CASES[case]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            TEST,
            "--faults",
            "-k",
            f"sandbox and {name}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    found = pattern.search(result.stdout)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{case} run failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each instead of five")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    runs = 1 if args.quick else 5
    database = [measure("database") for _ in range(runs)]
    node = [measure("node") for _ in range(runs)]
    db_times = [float(m.group(1)) for m in database]
    node_times = [float(m.group(1)) for m in node]
    gets, failed = sum(int(m.group(3)) for m in node), sum(int(m.group(4)) for m in node)
    table = [
        f"| blackholed MySQL primary to a writable new primary, 1 s x 2 (median / max of {runs}) | "
        f"{statistics.median(db_times):.2f} s / {max(db_times):.2f} s | bound {database[0].group(2)} s "
        f"(ratio {max(db_times) / int(database[0].group(2)):.2f}) | within the bound |",
        f"| blackholed primary WHM node to a new primary node, 1 s x 2, timeout 1 s (median / max of {runs}) | "
        f"{statistics.median(node_times):.2f} s / {max(node_times):.2f} s | bound {node[0].group(2)} s "
        f"(ratio {max(node_times) / int(node[0].group(2)):.2f}) | within the bound |",
        f"| failed GETs through the proxy while the primary node is blackholed | {failed} of {gets} | — | 0 |",
    ]
    publish("A host that vanishes: blackholed by nftables in its network namespace", table, write=not args.no_write)


if __name__ == "__main__":
    main()

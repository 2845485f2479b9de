"""Planned switchovers through the shim on the whole demo system, under a writer: how long from the request until
the new primary accepts writes (the shim's answer) and until the topology is settled (Healthy, every replica on
the new primary), and what the servers hold afterwards (errant transactions, acknowledged writes lost).

    PYTHONPATH=. .venv/bin/python -m bench.switchover [--quick] [--no-write]

The reference is the replication's inspection period of the same run: a settled topology needs one inspection
after the promotion, so settled - answered is at most about one period.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import publish
from whm_ha.db.local_server import free_port
from whm_ha.db.server_checks import errant
from whm_ha.demo import checkers
from whm_ha.demo.main import start_system
from whm_ha.demo.stack import Stack
from whm_ha.demo.tour import application_pool, promote_through_shim, settled_on

TARGETS = ("db-1", "db-2", "db-0", "db-1", "db-2")


def wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the topology did not settle")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two switchovers instead of five")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    targets = TARGETS[:2] if args.quick else TARGETS
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), proxy_port=free_port(), shim_port=free_port())
        try:
            api, observer = start_system(stack, say=lambda _: None)
            pool = application_pool(api)
            checkers.create_table(pool.writer)
            writers = checkers.Writers(pool.writer).start(warm_up=0)
            answered, settled, errant_found = [], [], 0
            for target in targets:
                started = time.monotonic()
                promote_through_shim(stack, target)
                answered.append(time.monotonic() - started)
                wait(functools.partial(settled_on, stack, observer, target), 30)
                settled.append(time.monotonic() - started)
                errant_found += len(errant(stack.databases, int(target[-1])))
            writers.stop(10)
            pool.close()
            acks = writers.acks.all()
            primary = stack.databases[int(targets[-1][-1])].connect()
            try:
                lost = len(checkers.missing(acks, checkers.present_ids(primary)))
            finally:
                primary.close()
            labels = [f"{server.host}:{server.port}" for server in stack.databases]
            primaries = [labels[0], *(labels[int(target[-1])] for target in targets)]
            overlapping = len(checkers.two_acknowledging(acks, primaries))
            period = stack.db_period_seconds
        finally:
            stack.stop()
    runs = len(targets)
    table = [
        f"| switchover through the shim, request to new primary writable (median / max of {runs}) | "
        f"{statistics.median(answered):.2f} s / {max(answered):.2f} s | inspection period {period} s | — |",
        f"| switchover through the shim, request to Healthy with every replica on it (median / max of {runs}) | "
        f"{statistics.median(settled):.2f} s / {max(settled):.2f} s | inspection period {period} s | ≤ 10 s |",
        f"| errant transactions after {runs} switchovers; acknowledged writes lost (8 writers); two members "
        f"acknowledging | {errant_found}; {lost} of {len(acks)}; {overlapping} | — | 0; 0; 0 |",
    ]
    publish("Planned switchover", table, write=not args.no_write)


if __name__ == "__main__":
    main()

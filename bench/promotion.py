"""Benchmark of MySQL promotion: from SIGKILL of the primary to a new primary that accepts writes, beside its
bound, for default and fast settings, with a writer counting lost acknowledged writes (semi-sync on).

    PYTHONPATH=. .venv/bin/python -m bench.promotion [--quick]

Runs the demo's stack (sandbox API, three mariadbd, operator, proxy, shim) on loopback.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import publish
from whm_ha.db.local_server import free_port
from whm_ha.demo.main import start_system
from whm_ha.demo.stack import Stack
from whm_ha.demo.tour import Writer, application_pool

SETTINGS = {"fast": (1, 2), "default": (5, 3)}


def writable(stack: Stack, index: int) -> bool:
    try:
        conn = stack.databases[index].connect(connect_timeout=1)
    except Exception:  # down or starting: not writable
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@global.read_only")
            row = cur.fetchone()
        return bool(row) and int(row[0]) == 0
    finally:
        conn.close()


def one_run(period: int, threshold: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp),
            proxy_port=free_port(),
            shim_port=free_port(),
            db_period_seconds=period,
            db_failure_threshold=threshold,
        )
        try:
            api, observer = start_system(stack, say=lambda _: None)
            writer = Writer(application_pool(api))
            writer.create_table()
            thread = threading.Thread(target=writer.run, daemon=True)
            thread.start()
            while len(writer.acknowledged) < 200:
                time.sleep(0.05)
            stack.databases[0].kill()
            killed = time.monotonic()
            promoted = None
            while time.monotonic() - killed < 120:
                if writable(stack, 1) or writable(stack, 2):
                    promoted = time.monotonic() - killed
                    break
                time.sleep(0.05)
            while writer.last_ok <= killed and time.monotonic() - killed < 120:
                time.sleep(0.05)
            writer.stop.set()
            thread.join(10)
            new = observer.replication()["status"]["currentPrimary"]
            conn = stack.databases[int(new.rsplit("-", 1)[1])].connect()
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM demo.writes")
                present = {row[0] for row in cur.fetchall()}
            conn.close()
            return {
                "promoted_s": promoted,
                "writer_resumed_s": writer.last_ok - killed,
                "acknowledged": len(writer.acknowledged),
                "lost": len(set(writer.acknowledged) - present),
            }
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    runs = {"fast": 1 if args.quick else 3, "default": 1}
    results = {}
    for label, (period, threshold) in SETTINGS.items():
        samples = [one_run(period, threshold) for _ in range(runs[label])]
        times = [s["promoted_s"] for s in samples if s["promoted_s"] is not None]
        results[label] = {
            "runs": len(samples),
            "median_s": statistics.median(times) if times else None,
            "max_s": max(times) if times else None,
            "bound_s": period * threshold + 2,
            "lost": sum(s["lost"] for s in samples),
            "acknowledged": sum(s["acknowledged"] for s in samples),
            "writer_resumed_s": max(s["writer_resumed_s"] for s in samples),
        }
    print(json.dumps(results, indent=2))
    table: list[str] = []
    for label, r in results.items():
        goal = "≤ 5 s" if label == "fast" else "within the bound"
        table.append(
            f"| kill -9 primary to new primary writable, {label} settings (median / max of {r['runs']}) | "
            f"{r['median_s']:.2f} s / {r['max_s']:.2f} s | bound {r['bound_s']} s (period x threshold + 2 s of "
            f"confirmation and promotion; ratio {r['max_s'] / r['bound_s']:.2f}) | {goal} |"
        )
        table.append(
            f"| acknowledged writes lost, {label} settings, semi-sync on | {r['lost']} of {r['acknowledged']} | "
            f"writer resumed after {r['writer_resumed_s']:.1f} s | 0 |"
        )
    publish("MySQL promotion", table, write=not args.no_write)


if __name__ == "__main__":
    main()

"""Benchmark of the node operator: failover time against its bound, manual failover latency, footprint.

    .venv/bin/python -m bench.operator_failover [--quick]

Everything runs here on loopback: the sandbox API, stand-in node servers and ``whm-ha operator`` as
subprocesses. Each figure is printed beside its reference measured in the same run, and appended to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.fixtures.operator_process import OperatorProcess
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.whm_nodes import NodeServer
from tests.kube_helpers import GROUP, VERSION, create_node, wait_for

DEFAULT = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3, "successThreshold": 1}
FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
RESULTS = Path(__file__).with_name("RESULTS.md")


def bound(check: dict[str, int]) -> float:
    return float(check["periodSeconds"] * check["failureThreshold"] + check["timeoutSeconds"])


class Rig:
    """A sandbox API and an operator watching one namespace."""

    def __init__(self, workdir: Path, namespace: str) -> None:
        self.sandbox = SandboxProcess(workdir / "sandbox")
        self.sandbox.workdir.mkdir(parents=True)
        self.sandbox.start()
        self.api = self.sandbox.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        client.CoreV1Api(self.api).create_namespace({"metadata": {"name": namespace}})
        self.operator = OperatorProcess(self.sandbox.kubeconfig, namespace, workdir / "operator.log")
        self.operator.start()

    def close(self) -> None:
        self.operator.stop()
        self.sandbox.stop()

    def cluster(self, name: str, check: dict[str, int], nodes: list[tuple[str, str, int, int]]) -> None:
        create_cluster(self.custom, self.namespace, name, check, nodes)

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "whmclusters", name, {"metadata": {"annotations": annotations}}
        )

    def status(self, name: str) -> dict[str, Any]:
        return cluster_status(self.custom, self.namespace, name)

    def wait_primary(self, name: str, node: str, timeout: float) -> None:
        wait_primary(self.custom, self.namespace, name, node, timeout)


def create_cluster(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    check: dict[str, int],
    nodes: list[tuple[str, str, int, int]],
) -> None:
    """A WHMCluster with ``check`` and no failover interval, and its WHMNodes (name, address, port, priority)."""
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "whmclusters",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WHMCluster",
            "metadata": {"name": name},
            "spec": {"healthCheck": check, "failover": {"minIntervalSeconds": 0}},
        },
    )
    for node, address, port, priority in nodes:
        create_node(custom, namespace, node, cluster=name, address=address, port=port, priority=priority)


def cluster_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmclusters", name)
    return obj.get("status") or {}


def wait_primary(custom: client.CustomObjectsApi, namespace: str, name: str, node: str, timeout: float) -> None:
    """Poll (every 20 ms, as the failover time is measured by it) until ``node`` is the cluster's primary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster_status(custom, namespace, name).get("primaryNode") == node:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{node} did not become primary of {name} within {timeout}s")


def measure_failover(rig: Rig, label: str, check: dict[str, int], runs: int) -> dict[str, Any]:
    times = []
    for run in range(runs):
        name = f"{label}-{run}"
        servers = [NodeServer(f"{name}-n{i}") for i in range(3)]
        for server in servers:
            server.start()
        rig.cluster(name, check, [(s.name, s.host, s.port, p) for s, p in zip(servers, (100, 50, 10), strict=True)])
        wait_for(lambda n=name: rig.status(n).get("phase") == "Healthy", 60, f"{name} healthy")
        killed = time.monotonic()
        servers[0].kill()
        rig.wait_primary(name, servers[1].name, bound(check) + 30)
        times.append(time.monotonic() - killed)
        for server in servers:
            server.kill()
    return {
        "settings": label,
        "runs": runs,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "bound_s": bound(check),
        "goal_s": bound(check) + 1,
    }


def measure_manual(rig: Rig, runs: int) -> dict[str, Any]:
    name = "manual"
    servers = [NodeServer(f"{name}-n{i}") for i in range(2)]
    for server in servers:
        server.start()
    rig.cluster(name, DEFAULT, [(s.name, s.host, s.port, 100 - i) for i, s in enumerate(servers)])
    wait_for(lambda: rig.status(name).get("phase") == "Healthy", 60, "manual cluster healthy")
    latencies, round_trips = [], []
    for run in range(runs):
        started = time.monotonic()
        rig.annotate(name, {"bench/round-trip": str(run)})
        rig.status(name)
        round_trips.append(time.monotonic() - started)
        target = servers[(run + 1) % 2].name
        started = time.monotonic()
        rig.annotate(name, {"ha.whm.io/failover-to": target, "ha.whm.io/request-id": f"bench-{run}"})
        rig.wait_primary(name, target, 10)
        latencies.append(time.monotonic() - started)
    for server in servers:
        server.kill()
    return {
        "runs": runs,
        "median_s": statistics.median(latencies),
        "max_s": max(latencies),
        "goal_s": 1.0,
        "api_round_trip_s": statistics.median(round_trips),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def footprint(pid: int, seconds: float) -> tuple[float, float]:
    """CPU share of one core and RSS over a window."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start), rss_mb(pid)


def measure_footprint(workdir: Path, clusters: int, nodes: int, window: float) -> dict[str, Any]:
    rig = Rig(workdir / "footprint", "bench")
    target = NodeServer("shared-node")
    target.start()
    try:
        assert rig.operator.process is not None
        pid = rig.operator.process.pid
        time.sleep(3)  # let the idle operator settle before measuring it
        idle_cpu, idle_rss = footprint(pid, window / 2)
        for c in range(clusters):
            rig.cluster(
                f"c{c:03d}", DEFAULT, [(f"c{c:03d}-n{n}", target.host, target.port, 100 - n) for n in range(nodes)]
            )
        wait_for(
            lambda: all(rig.status(f"c{c:03d}").get("phase") == "Healthy" for c in range(clusters)),
            300,
            "every cluster healthy",
        )
        loaded_cpu, loaded_rss = footprint(pid, window)
    finally:
        target.kill()
        rig.close()
    return {
        "clusters": clusters,
        "nodes_per_cluster": nodes,
        "cpu_share": loaded_cpu,
        "rss_mb": loaded_rss,
        "idle_cpu_share": idle_cpu,
        "idle_rss_mb": idle_rss,
        "goal_cpu_share": 0.25,
        "goal_rss_mb": 250,
    }


def report(results: dict[str, Any]) -> str:
    day = time.strftime("%Y-%m-%d")
    lines = [
        f"## Node operator ({day})",
        "",
        "| figure | measured | reference (same run) | goal |",
        "|---|---|---|---|",
    ]
    for f in results["failover"]:
        lines.append(
            f"| failover, {f['settings']} settings (median / max of {f['runs']}) | {f['median_s']:.2f} s / "
            f"{f['max_s']:.2f} s | bound {f['bound_s']:.0f} s (ratio {f['max_s'] / f['bound_s']:.2f}) | "
            f"≤ {f['goal_s']:.0f} s |"
        )
    m = results["manual"]
    lines.append(
        f"| manual failover, annotation to status (median / max of {m['runs']}) | {m['median_s'] * 1000:.0f} ms / "
        f"{m['max_s'] * 1000:.0f} ms | API patch + read round trip {m['api_round_trip_s'] * 1000:.0f} ms | < 1 s |"
    )
    p = results["footprint"]
    lines.append(
        f"| operator CPU, {p['clusters']} clusters x {p['nodes_per_cluster']} nodes | "
        f"{p['cpu_share'] * 100:.1f} % of a core | idle operator {p['idle_cpu_share'] * 100:.1f} % | < 25 % |"
    )
    lines.append(
        f"| operator memory (RSS), same load | {p['rss_mb']:.0f} MB | idle operator {p['idle_rss_mb']:.0f} MB "
        "| < 250 MB |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and a smaller load (a smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    runs_fast, runs_default, manual_runs = (2, 1, 3) if args.quick else (5, 3, 10)
    clusters, window = (10, 10.0) if args.quick else (100, 30.0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rig = Rig(workdir / "failover", "bench")
        try:
            failover = [
                measure_failover(rig, "fast", FAST, runs_fast),
                measure_failover(rig, "default", DEFAULT, runs_default),
            ]
            manual = measure_manual(rig, manual_runs)
        finally:
            rig.close()
        results = {
            "failover": failover,
            "manual": manual,
            "footprint": measure_footprint(workdir, clusters, 10, window),
        }
    print(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    if not args.no_write:
        with RESULTS.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())

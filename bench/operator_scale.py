"""One node operator for many clusters: footprint, API writes and failover time at 1,000 and 10,000 WHMNodes.

    PYTHONPATH=. .venv/bin/python -m bench.operator_scale [--clusters 1000] [--nodes 10] [--tier sandbox|real]
                                                          [--window 60] [--runs 3] [--profile] [--no-write]

Everything on loopback: the API (the sandbox, or a real kube-apiserver + etcd from hack/build-control-plane),
``whm-ha operator`` watching one namespace, and the nodes: ``bench.standin_nodes`` serves every node of the load
on its own port, so each probe is a real connection and HTTP exchange. In the same run:

1. the idle operator's CPU and RSS;
2. failover alone: a cluster of 10 nodes with fast health checks whose primary is a real ``demo_node`` process,
   killed with SIGKILL; time from the kill to the new primary in status, against the bound
   (period x threshold + timeout);
3. the load: CLUSTERS WHMClusters x NODES WHMNodes (default health checks: a probe per node every 5 s), until every
   cluster is Healthy; then over WINDOW seconds the operator's CPU share of one core, its RSS, API writes per
   second (the growth of the API's resourceVersion, which every write takes; and how many WHMClusters and
   WHMNodes changed), and with --profile where its CPU goes (py-spy);
4. the same failover as in 2 while the load runs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from tests.fixtures.operator_process import OperatorProcess
from tests.fixtures.reports import print_log_tail
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.whm_nodes import NodeServer
from tests.kube_helpers import GROUP, VERSION, wait_for

from bench.operator_failover import FAST, bound, cluster_status, cpu_seconds, create_cluster, rss_mb, wait_primary
from bench.report import publish
from whm_ha.control_plane import find_bin_dir, running

NAMESPACE = "scale"
DEFAULT_CHECK = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3, "successThreshold": 1}
FAILOVER_NODES = 10
PY_SPY = Path(sys.executable).with_name("py-spy")


@dataclass
class StandIns:
    """The stand-in node process and the ports it serves, handed out in order."""

    process: subprocess.Popen[str]
    ports: list[int]
    taken: int = 0

    @classmethod
    def start(cls, count: int) -> StandIns:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.standin_nodes", str(count)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("stand-in nodes did not start")
        return cls(process, json.loads(line))

    def take(self, count: int) -> list[int]:
        ports = self.ports[self.taken : self.taken + count]
        if len(ports) < count:
            raise RuntimeError("not enough stand-in ports")
        self.taken += count
        return ports

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Api:
    """The API under test: kubeconfig and clients."""

    kubeconfig: Path
    tier: str
    pids: list[int]
    """The API's processes (the sandbox, or kube-apiserver and etcd), whose CPU is measured beside the operator's."""
    api: client.ApiClient = field(init=False)
    custom: client.CustomObjectsApi = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 16
        self.custom = client.CustomObjectsApi(self.api)

    def cluster(self, name: str, check: dict[str, int], nodes: list[tuple[str, int, int]]) -> None:
        """A WHMCluster and its WHMNodes (name, port, priority) on 127.0.0.1."""
        create_cluster(self.custom, NAMESPACE, name, check, [(n, "127.0.0.1", port, p) for n, port, p in nodes])

    def status(self, name: str) -> dict[str, Any]:
        return cluster_status(self.custom, NAMESPACE, name)

    def clusters(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "whmclusters")["items"]  # type: ignore[no-any-return]

    def versions(self) -> tuple[int, dict[str, str]]:
        """The API's current resourceVersion, and every WHMCluster's and WHMNode's."""
        seen: dict[str, str] = {}
        latest = 0
        for plural in ("whmclusters", "whmnodes"):
            listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
            latest = max(latest, int(listed["metadata"]["resourceVersion"]))
            for item in listed["items"]:
                seen[f"{plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
        return latest, seen


@contextlib.contextmanager
def api_tier(tier: str, workdir: Path) -> Iterator[Api]:
    if tier == "sandbox":
        sandbox = SandboxProcess(workdir / "sandbox")
        sandbox.workdir.mkdir(parents=True)
        sandbox.start()
        try:
            assert sandbox.process is not None
            api = Api(sandbox.kubeconfig, tier, [sandbox.process.pid])
            client.CoreV1Api(api.api).create_namespace({"metadata": {"name": NAMESPACE}})
            yield api
        finally:
            sandbox.stop()
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("the real tier needs hack/build-control-plane")
    identities = {"admin": (secrets.token_hex(16), "admin", "system:masters")}
    (workdir / "control-plane").mkdir()
    with running(bin_dir, workdir / "control-plane", identities) as plane:
        api = Api(plane.kubeconfigs["admin"], tier, [process.proc.pid for process in plane.processes])
        client.CoreV1Api(api.api).create_namespace({"metadata": {"name": NAMESPACE}})
        yield api


@dataclass
class Window:
    seconds: float
    cpu_share: float
    rss_mb: float
    api_cpu_share: float = 0.0
    writes_per_s: float = 0.0
    changed: int = 0
    """WHMClusters and WHMNodes whose resourceVersion moved during the window."""


def window(pid: int, seconds: float, api: Api | None = None) -> Window:
    """The operator's CPU share of one core, RSS and the API writes over ``seconds``."""
    before = api.versions() if api is not None else (0, {})
    api_pids = api.pids if api is not None else []
    start_cpu, start_api, start = cpu_seconds(pid), sum(map(cpu_seconds, api_pids)), time.monotonic()
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    cpu, elapsed = cpu_seconds(pid) - start_cpu, time.monotonic() - start
    result = Window(seconds, cpu / elapsed, rss_mb(pid))
    if api is not None:
        result.api_cpu_share = (sum(map(cpu_seconds, api_pids)) - start_api) / elapsed
        after = api.versions()
        result.writes_per_s = (after[0] - before[0]) / elapsed
        result.changed = sum(1 for key, version in after[1].items() if before[1].get(key) != version)
    return result


def failover(api: Api, standins: StandIns, label: str) -> float:
    """Seconds from SIGKILL of a fast-checked cluster's primary (a real node process) to the new primary."""
    primary = NodeServer(f"{label}-n0")
    primary.start()
    others = standins.take(FAILOVER_NODES - 1)
    nodes = [(primary.name, primary.port, 100)]
    nodes += [(f"{label}-n{i + 1}", port, 90 - i) for i, port in enumerate(others)]
    api.cluster(label, FAST, nodes)
    try:
        wait_for(lambda: api.status(label).get("primaryNode") == primary.name, 120, f"{label} primary")
        wait_for(lambda: api.status(label).get("phase") == "Healthy", 120, f"{label} healthy")
        killed = time.monotonic()
        primary.kill()
        wait_primary(api.custom, NAMESPACE, label, f"{label}-n1", bound(FAST) + 60)
        return time.monotonic() - killed
    finally:
        primary.kill()


def load(api: Api, standins: StandIns, clusters: int, nodes: int) -> float:
    """Create the clusters (8 clients at once); seconds until every one is Healthy."""
    started = time.monotonic()

    def one(index: int) -> None:
        name = f"c{index:04d}"
        ports = standins.take(nodes)
        api.cluster(name, DEFAULT_CHECK, [(f"{name}-n{n}", port, 100 - n) for n, port in enumerate(ports)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(clusters)))
    print(f"created {clusters} clusters x {nodes} nodes in {time.monotonic() - started:.0f} s", flush=True)

    def healthy() -> int:
        listed = [c for c in api.clusters() if c["metadata"]["name"].startswith("c")]
        return sum(1 for c in listed if (c.get("status") or {}).get("phase") == "Healthy")

    deadline, reported = started + 1800, 0.0
    while (count := healthy()) < clusters:  # a list of every cluster: every 2 s, not to load the API measured
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} of {clusters} clusters Healthy after {deadline - started:.0f} s")
        if time.monotonic() - reported > 20:
            print(f"{count} of {clusters} clusters Healthy after {time.monotonic() - started:.0f} s", flush=True)
            reported = time.monotonic()
        time.sleep(2)
    return time.monotonic() - started


def profile(pid: int, seconds: float, out: Path) -> list[tuple[float, str]]:
    """Where the operator's CPU goes over ``seconds`` (py-spy, samples holding the GIL): top functions by own time."""
    raw = out.with_suffix(".txt")
    subprocess.run(
        [
            str(PY_SPY),
            "record",
            "--gil",
            "-r",
            "100",
            "-d",
            str(int(seconds)),
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            str(raw),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        own[stack.rsplit(";", 1)[-1]] += int(count)
        total += int(count)
    return [(100 * n / total, name) for name, n in own.most_common(15)]


@dataclass
class Result:
    tier: str
    clusters: int
    nodes: int
    idle: Window
    loaded: Window
    settle_s: float
    alone: list[float]
    under_load: list[float]
    top: list[tuple[float, str]]


def run(tier: str, clusters: int, nodes: int, seconds: float, runs: int, *, with_profile: bool) -> Result:
    with tempfile.TemporaryDirectory(prefix="whm-scale-") as tmp, api_tier(tier, Path(tmp)) as api:
        workdir = Path(tmp)
        standins = StandIns.start(clusters * nodes + 2 * runs * (FAILOVER_NODES - 1))
        operator = OperatorProcess(api.kubeconfig, NAMESPACE, workdir / "operator.log", verbose=False)
        operator.start()
        try:
            assert operator.process is not None
            pid = operator.process.pid
            time.sleep(5)  # let the idle operator settle before measuring it
            idle = window(pid, 10)
            alone = [failover(api, standins, f"alone-{run}") for run in range(runs)]
            settle = load(api, standins, clusters, nodes)
            time.sleep(10)  # let the last statuses land before the steady-state window
            loaded = window(pid, seconds, api)
            top = profile(pid, min(seconds, 30), workdir / "profile") if with_profile else []
            under_load = [failover(api, standins, f"loaded-{run}") for run in range(runs)]
        except BaseException:
            print_log_tail(operator.log)
            raise
        finally:
            operator.stop()
            standins.stop()
        return Result(tier, clusters, nodes, idle, loaded, settle, alone, under_load, top)


def report(result: Result, *, write: bool) -> None:
    r = result
    count = r.clusters * r.nodes
    bound_s = bound(FAST)
    rows = [
        f"| operator CPU at steady state, {count:,} WHMNodes probed every 5 s ({r.loaded.seconds:.0f} s window) | "
        f"{r.loaded.cpu_share * 100:.1f} % of a core | idle operator {r.idle.cpu_share * 100:.1f} % | < 100 % |",
        f"| API server CPU, same window | {r.loaded.api_cpu_share * 100:.1f} % of a core | — | — |",
        f"| operator RSS, same load | {r.loaded.rss_mb:.0f} MB | idle operator {r.idle.rss_mb:.0f} MB | < 1,024 MB |",
        f"| API writes at steady state | {r.loaded.writes_per_s:.1f} /s; {r.loaded.changed} of {r.clusters + count:,} "
        "WHMClusters and WHMNodes changed | — | near 0 beyond heartbeats |",
        f"| kill -9 of a primary node to the new primary, fast checks, under the load (median / max of "
        f"{len(r.under_load)}) | {statistics.median(r.under_load):.2f} s / {max(r.under_load):.2f} s | "
        f"alone (before the load): {statistics.median(r.alone):.2f} s / {max(r.alone):.2f} s; bound {bound_s:.0f} s"
        f" | ≤ {bound_s + 1:.0f} s |",
        f"| creating the load until every cluster is Healthy | {r.settle_s:.0f} s | — | — |",
    ]
    after: list[str] = []
    if r.top:
        after += ["", "Where the operator's CPU goes under the load (py-spy, own time, top functions):", ""]
        after += [f"- {share:.1f} % {name}" for share, name in r.top]
    title = f"Operator at scale: {r.clusters:,} clusters x {r.nodes} nodes on the {r.tier} API"
    publish(title, rows, write=write, after=after)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--tier", choices=("sandbox", "real"), default="sandbox")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state measurement window, seconds")
    parser.add_argument("--runs", type=int, default=3, help="failovers alone and under the load")
    parser.add_argument("--profile", action="store_true", help="py-spy the loaded operator")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    result = run(args.tier, args.clusters, args.nodes, args.window, args.runs, with_profile=args.profile)
    report(result, write=not args.no_write)


if __name__ == "__main__":
    main()

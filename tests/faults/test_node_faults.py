"""WHM nodes and the proxy under network faults: each stand-in node (``whm_ha.demo_node``) runs in its own
network namespace on a test bridge; the operator, the API and the proxy stay in the root namespace.

While a fault is staged, two client threads send GETs through the proxy and a third samples the WHMCluster
and its WHMNodes every 50 ms. Every scenario checks that exactly one node is primary at every sampled
moment as the API shows it (``status.primaryNode`` always set, never two WHMNodes with the role Primary nor
two labelled primary), and records its figures in the resilience report: *detect* is the fault to the new
``primaryNode`` seen in the API, *recover* the fault to the end of the last GET that failed or waited more
than ``SLOW_GET`` (from then on GETs are served at full speed again), *acked* the GETs answered 200, *lost*
the GETs that failed, *promotions* the failovers.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from kubernetes import client

from tests.faults.report import Outcome, Recorder
from tests.fixtures.kube import KubeAPI
from tests.fixtures.netns import Host, TestNetwork, freeze, thaw
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.proxy_process import Cluster, ProxyProcess, StartProxy
from tests.fixtures.whm_nodes import NodeServer
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.crd.annotations import ROLE_LABEL

PERIOD, TIMEOUT, THRESHOLD = 1, 1, 2
NODE_HEALTH = {"periodSeconds": PERIOD, "timeoutSeconds": TIMEOUT, "failureThreshold": THRESHOLD}
NODE_BOUND = PERIOD * THRESHOLD + TIMEOUT + 0.5
"""A node that stops answering to a new primary: periodSeconds x failureThreshold + timeoutSeconds (the last
probe waits it out), + 0.5 s for the decision and its write. (A switch that lost a race to the operator's own
previous write, and waited a probe round to decide again, took 3.1-4.0 s here.)"""
PROXY_OPTIONS = ("--connect-timeout=1", "--header-timeout=2")
"""The proxy gives a node 1 s to accept a connection and 2 s to answer (nginx's proxy_connect_timeout and
proxy_read_timeout); an idempotent GET that fails either way is retried on another node."""
NODE_PORT = 4000
SAMPLE_SECONDS = 0.05
SLOW_GET = 0.5
"""Seconds above which a GET through the proxy counts as having waited on a faulty node."""
GET_TIMEOUT = 15.0
OVERLOADED = 1.5
"""Seconds an overloaded node takes to answer anything: over the probe timeout, under the proxy's."""


@dataclass
class Get:
    started: float
    ended: float
    ok: bool
    detail: str = ""


class Traffic:
    """GETs through the proxy from ``clients`` threads, each recorded, until stopped."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.gets: list[Get] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.ok >= 50, 20, "50 GETs through the proxy")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(GET_TIMEOUT + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/", timeout=GET_TIMEOUT) as response:
                    response.read()
                    ok, detail = response.status == 200, f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                ok, detail = False, f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
            except OSError as exc:
                ok, detail = False, f"{exc.__class__.__name__}: {exc}"
            self.gets.append(Get(started, time.monotonic(), ok, detail))
            self._stop.wait(0.01)

    @property
    def ok(self) -> int:
        return sum(1 for get in self.gets if get.ok)

    def since(self, moment: float) -> list[Get]:
        return [get for get in self.gets if get.ended >= moment]

    def served_after(self, moment: float, count: int) -> Callable[[], bool]:
        """A condition: ``count`` GETs started after ``moment`` were answered."""
        return lambda: sum(1 for get in self.gets if get.ok and get.started >= moment) >= count

    def recovered(self, fault: float) -> float | None:
        """Seconds from the fault to the end of the last GET that failed or waited more than SLOW_GET."""
        late = [get.ended for get in self.since(fault) if not get.ok or get.ended - get.started > SLOW_GET]
        return max(late) - fault if late else None

    def slowest(self, fault: float) -> float:
        return max((get.ended - get.started for get in self.since(fault)), default=0.0)


@dataclass
class Sample:
    at: float
    primary: str | None
    roles: list[str]
    """WHMNodes whose status.role is Primary."""
    labelled: list[str]
    """WHMNodes labelled primary."""
    health: dict[str, str]
    reason: str


@dataclass
class Sampler:
    """Reads the WHMCluster and its WHMNodes every SAMPLE_SECONDS in a thread (a client of its own)."""

    kube_api: KubeAPI
    namespace: str
    cluster: str = "whm"
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: len(self.samples) >= 5, 10, "the first samples")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        with self.kube_api.api_client() as api:
            custom = client.CustomObjectsApi(api)
            while not self._stop.is_set():
                at = time.monotonic()
                try:
                    cluster = custom.get_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, "whmclusters", self.cluster
                    )
                    nodes = custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "whmnodes")["items"]
                except Exception as exc:  # an API hiccup is reported, not fatal to the sampler
                    self.errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
                else:
                    status = cluster.get("status") or {}
                    self.samples.append(
                        Sample(
                            at,
                            status.get("primaryNode"),
                            sorted(
                                n["metadata"]["name"] for n in nodes if (n.get("status") or {}).get("role") == "Primary"
                            ),
                            sorted(
                                n["metadata"]["name"]
                                for n in nodes
                                if (n["metadata"].get("labels") or {}).get(ROLE_LABEL) == "primary"
                            ),
                            {n["metadata"]["name"]: (n.get("status") or {}).get("health", "") for n in nodes},
                            str(status.get("reason") or ""),
                        )
                    )
                self._stop.wait(max(0.0, at + SAMPLE_SECONDS - time.monotonic()))

    def changes(self) -> list[tuple[float, str | None, str | None]]:
        """(when first seen, from, to) for each change of status.primaryNode."""
        found = []
        for before, after in pairwise(self.samples):
            if after.primary != before.primary:
                found.append((after.at, before.primary, after.primary))
        return found

    def first_primary_other_than(self, node: str, since: float) -> float | None:
        return next((s.at for s in self.samples if s.at >= since and s.primary not in (None, node)), None)

    def violations(self) -> list[str]:
        """Moments at which the API did not show exactly one primary."""
        found: list[str] = []
        for sample in self.samples:
            if sample.primary is None:
                found.append(f"{sample.at:.2f}: no primaryNode")
            if len(sample.roles) > 1:
                found.append(f"{sample.at:.2f}: roles Primary on {', '.join(sample.roles)}")
            if len(sample.labelled) > 1:
                found.append(f"{sample.at:.2f}: labelled primary: {', '.join(sample.labelled)}")
        return found

    def handover_gap(self) -> float:
        """The longest time during which no WHMNode had the role Primary (demotion before promotion)."""
        longest, since = 0.0, None
        for sample in self.samples:
            if not sample.roles:
                since = sample.at if since is None else since
                longest = max(longest, sample.at - since)
            else:
                since = None
        return longest


@dataclass
class Nodes:
    """Three stand-in nodes n1..n3 in their namespaces, their WHMCluster ``whm``, the operator and a proxy."""

    cluster: Cluster
    hosts: list[Host]
    processes: list[subprocess.Popen[bytes]]
    proxy: ProxyProcess
    kube_api: KubeAPI

    def status(self) -> dict[str, Any]:
        obj = self.cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.cluster.namespace, "whmclusters", self.cluster.name
        )
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def primary(self) -> str | None:
        return self.status().get("primaryNode")

    def health(self) -> dict[str, str]:
        items = self.cluster.custom.list_namespaced_custom_object(GROUP, VERSION, self.cluster.namespace, "whmnodes")
        return {n["metadata"]["name"]: (n.get("status") or {}).get("health", "") for n in items["items"]}

    def control(self, index: int, mode: str, delay: float = 5.0) -> None:
        """Tell node ``index`` to be healthy, unhealthy, slow (health checks) or overloaded (every answer)."""
        host = self.hosts[index]
        NodeServer(host.name, host.address, NODE_PORT).set_mode(mode, delay)

    def sampler(self) -> Sampler:
        return Sampler(self.kube_api, self.cluster.namespace, self.cluster.name)

    def traffic(self) -> Traffic:
        return Traffic(self.proxy.url)


StartNodes = Callable[..., Nodes]


@pytest.fixture
def start_nodes(
    test_network: TestNetwork,
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    operator_process: StartOperator,
    proxy_process: StartProxy,
) -> StartNodes:
    """``start_nodes(priorities=(100, 50, 10), **failover)``: n1..n3 serving, every one routable, n1 primary."""

    def start(priorities: tuple[int, int, int] = (100, 50, 10), **failover: Any) -> Nodes:
        cluster = Cluster(kube_client, kube_namespace)
        cluster.create()
        cluster.patch({"spec": {"healthCheck": NODE_HEALTH, "failover": {"minIntervalSeconds": 0, **failover}}})
        hosts = [test_network.host(f"n{i}") for i in (1, 2, 3)]
        serve = [sys.executable, "-m", "whm_ha.demo_node", "--port", str(NODE_PORT)]
        processes = [
            host.popen([*serve, "--name", host.name, "--host", host.address], stdout=subprocess.DEVNULL)
            for host in hosts
        ]
        for priority, host in zip(priorities, hosts, strict=True):
            wait_for(lambda h=host: _answers(f"http://{h.address}:{NODE_PORT}/healthz"), 20, f"{host.name} to serve")
            cluster.add_node(host.name, host.address, NODE_PORT, health=None, priority=priority)
        operator_process(kube_api.kubeconfig, kube_namespace)
        proxy = proxy_process(kube_api.kubeconfig, kube_namespace, options=PROXY_OPTIONS)
        nodes = Nodes(cluster, hosts, processes, proxy, kube_api)
        wait_for(lambda: sorted(proxy.routable()) == ["n1", "n2", "n3"], 30, "three routable nodes")
        wait_for(lambda: nodes.primary() == "n1", 30, "n1 primary")
        return nodes

    return start


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:  # HTTPError too: not a 2xx
        return False


def _failures(traffic: Traffic, fault: float) -> list[str]:
    failed = [get.detail for get in traffic.since(fault) if not get.ok]
    return failed[:3]


def record(
    row: Outcome,
    traffic: Traffic,
    fault: float,
    outcome: str,
    detect: float | None,
    failovers: int,
    problems: list[str],
    healed: float | None = None,
) -> None:
    """The scenario's figures in its resilience row; its limit says what the checkers found. ``healed``: when
    the fault ended, if GETs went on after it."""
    gets = traffic.since(fault)
    failed = sum(1 for get in gets if not get.ok)
    answered = [get.ended for get in gets if get.ok]
    row.during = sum(1 for ended in answered if healed is None or ended < healed)
    row.after = None if healed is None else len(answered) - row.during
    row.outcome = f"{outcome}; slowest GET {traffic.slowest(fault):.1f} s"
    row.detect = detect
    row.recover = traffic.recovered(fault)
    row.acked = len(gets) - failed
    row.lost = failed
    row.promotions = failovers
    row.limit = "; ".join(problems)


def fail_over(
    nodes: Nodes, resilience: Recorder, scenario: str, stage: Callable[[], None], heal: Callable[[], None]
) -> None:
    """Stage a fault on the primary n1 under traffic; check the failover within NODE_BOUND, one primary at
    every sampled moment and no failed GET; record the figures; heal and check n1 comes back a healthy
    secondary."""
    row = resilience.scenario(scenario, "nodes")
    with nodes.sampler() as sampler, nodes.traffic() as traffic:
        stage()
        fault = time.monotonic()
        wait_for(lambda: sampler.first_primary_other_than("n1", fault), NODE_BOUND + 20, "a new primary node")
        detect = (sampler.first_primary_other_than("n1", fault) or fault) - fault
        wait_for(lambda: "n1" not in nodes.proxy.routable(), 10, "n1 out of the proxy's routes")
        wait_for(traffic.served_after(time.monotonic(), 100), 30, "GETs served by the other nodes")
        traffic.stop()
        heal()
        wait_for(lambda: nodes.health().get("n1") == "Healthy", 30, "n1 healthy again")
        wait_for(lambda: "n1" in nodes.proxy.routable(), 10, "n1 routed to again")
    new = sampler.samples[-1].primary
    gets = traffic.since(fault)
    failed = [get for get in gets if not get.ok]
    failovers = sampler.changes()
    problems = []
    if detect > NODE_BOUND:
        problems.append(f"failover after {detect:.1f} s, bound {NODE_BOUND} s")
    if failed:
        problems.append(f"{len(failed)} failed GETs ({'; '.join(_failures(traffic, fault))})")
    if violations := sampler.violations():
        problems.append(f"not exactly one primary: {'; '.join(violations[:3])}")
    if len(failovers) != 1:
        problems.append(f"{len(failovers)} changes of primary: {failovers}")
    stats = nodes.proxy.stats()["nodes"]["n1"]
    print(
        f"{scenario}: new primary {new} after {detect:.2f} s (bound {NODE_BOUND} s); {len(gets)} GETs, "
        f"{len(failed)} failed, slowest {traffic.slowest(fault):.2f} s; proxy on n1: {stats['errors']} errors, "
        f"{stats['retries']} retried elsewhere, {stats['ejections']} ejections; no role Primary for at most "
        f"{sampler.handover_gap():.2f} s; {len(sampler.samples)} samples, {len(sampler.errors)} API errors"
    )
    record(row, traffic, fault, f"{new} primary", detect, len(failovers), problems)
    assert not problems, problems
    assert nodes.primary() == new, "n1 healthy again took the role back (failback is off)"


def test_a_blackholed_primary_node_fails_over_within_its_bound_without_a_failed_get(
    start_nodes: StartNodes, resilience: Recorder
) -> None:
    """Every packet to and from n1 dropped: probes and the proxy's connects wait out their timeouts; the
    proxy retries GETs whose connect timed out on another node (nothing was sent)."""
    nodes = start_nodes()
    fail_over(nodes, resilience, "primary node blackholed", nodes.hosts[0].blackhole, nodes.hosts[0].heal)


def test_a_primary_node_slower_than_the_probe_timeout_fails_over_within_its_bound(
    start_nodes: StartNodes, resilience: Recorder
) -> None:
    """n1 overloaded: every answer (health checks and pages) comes after OVERLOADED seconds, more than the
    probe's timeoutSeconds but less than the proxy's header timeout: probes fail, GETs on n1 are slow but
    answered until n1 leaves the proxy's routes."""
    nodes = start_nodes()
    fail_over(
        nodes,
        resilience,
        "primary node slower than the probe timeout",
        lambda: nodes.control(0, "overloaded", OVERLOADED),
        lambda: nodes.control(0, "healthy"),
    )


def test_a_primary_node_that_accepts_connections_and_never_answers_fails_over_without_a_failed_get(
    start_nodes: StartNodes, resilience: Recorder
) -> None:
    """n1's process stopped (SIGSTOP, as a VM stall): its kernel still accepts connections, nothing answers.
    Probes time out; the proxy's GETs on n1 wait out its header timeout and are retried on another node."""
    nodes = start_nodes()
    process = nodes.processes[0]
    fail_over(
        nodes,
        resilience,
        "primary node accepts connections, never answers",
        lambda: freeze(process),
        lambda: thaw(process),
    )


FLAP_SECONDS, MIN_INTERVAL = 30, 10
FLAP_PERIODS = (3.0, 4.0)
"""n1's link goes down and up every 3 s, n2's every 4 s: out of phase, each Unhealthy for a moment of most
cycles (two failed probes) and Healthy again at its first good one."""


def test_flapping_primary_nodes_fail_over_at_most_once_per_min_interval(
    start_nodes: StartNodes, resilience: Recorder
) -> None:
    """n1 and n2 (the two nodes that may be primary; n3 serves but has priority 0) flap for FLAP_SECONDS.
    Whichever is primary keeps failing; the anti-flap rule (failover.minIntervalSeconds) allows at most one
    automatic failover per MIN_INTERVAL and keeps an Unhealthy primary in between. The proxy routes around
    the down links (connect timeouts, header timeouts, ejection) and most GETs succeed."""
    row = resilience.scenario(f"primary nodes flapping (link down/up every 3-4 s for {FLAP_SECONDS} s)", "nodes")
    nodes = start_nodes(priorities=(100, 50, 0), minIntervalSeconds=MIN_INTERVAL)
    with nodes.sampler() as sampler, nodes.traffic() as traffic:
        flaps = [host.flap(period, FLAP_SECONDS) for host, period in zip(nodes.hosts, FLAP_PERIODS, strict=False)]
        fault = time.monotonic()
        try:
            for thread in flaps:
                thread.join(FLAP_SECONDS + 10)
        finally:  # interrupted too: no flapping thread outlives the namespaces
            for host, thread in zip(nodes.hosts, flaps, strict=False):
                host.heal()
                thread.join(10)
        healed = time.monotonic()
        wait_for(lambda: set(nodes.health().values()) == {"Healthy"}, 30, "every node healthy again")
        wait_for(lambda: len(nodes.proxy.routable()) == 3, 10, "every node routed to again")
        wait_for(traffic.served_after(time.monotonic(), 50), 20, "GETs served by every node")
    history = [h for h in nodes.status().get("failoverHistory", []) if h["type"] == "automatic"]
    changes = [change for change in sampler.changes() if change[0] >= fault]
    gaps = [later[0] - earlier[0] for earlier, later in pairwise(changes)]
    held = sorted({s.reason for s in sampler.samples if "minIntervalSeconds" in s.reason})
    gets = traffic.since(fault)
    failed = [get for get in gets if not get.ok]
    problems = []
    if len(history) != len(changes):
        problems.append(f"{len(history)} automatic failovers recorded, {len(changes)} changes of primary seen")
    if short := [gap for gap in gaps if gap < MIN_INTERVAL - 2 * SAMPLE_SECONDS]:
        problems.append(
            f"failovers {', '.join(f'{gap:.1f}' for gap in short)} s apart, minIntervalSeconds {MIN_INTERVAL}"
        )
    if violations := sampler.violations():
        problems.append(f"not exactly one primary: {'; '.join(violations[:3])}")
    if len(failed) > len(gets) // 50:
        problems.append(f"{len(failed)} of {len(gets)} GETs failed ({'; '.join(_failures(traffic, fault))})")
    print(
        f"flapping: {len(changes)} failovers {[(round(at - fault, 1), old, new) for at, old, new in changes]}, "
        f"gaps {[round(gap, 1) for gap in gaps]} s; held: {held[:2]}; {len(gets)} GETs, {len(failed)} failed "
        f"({_failures(traffic, fault)}), slowest {traffic.slowest(fault):.2f} s; {len(sampler.samples)} samples, "
        f"{len(sampler.errors)} API errors"
    )
    record(
        row,
        traffic,
        fault,
        f"{len(changes)} failovers in {FLAP_SECONDS} s, minIntervalSeconds {MIN_INTERVAL}",
        changes[0][0] - fault if changes else None,
        len(changes),
        problems,
        healed,
    )
    assert not problems, problems
    assert changes, "no failover: the flapping did not make the primary Unhealthy"
    assert held, "the anti-flap rule never held a failover back: the scenario did not exercise it"

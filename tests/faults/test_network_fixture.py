"""The network-namespace fixture itself: reachability, faults, no route off the machine, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.netns import (
    PREFIX,
    StartNetnsServers,
    TestNetwork,
    _lock,
    _of_subnet,
    _ours,
    namespace_pids,
    open_network,
    remove_leftovers,
)
from tests.kube_helpers import wait_for
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER

REPO = Path(__file__).resolve().parents[2]
NODE_PORT = 4001

PROBE = """
import errno, socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    outcome = "connected"
except TimeoutError:
    outcome = "timeout"
except OSError as exc:
    outcome = errno.errorcode[exc.errno]
print(outcome, round(time.monotonic() - start, 3))
"""
"""Connects to argv[1]:argv[2] with timeout argv[3]; prints the outcome and the seconds it took."""


def probe(host_run: subprocess.CompletedProcess[str]) -> tuple[str, float]:
    outcome, seconds = host_run.stdout.split()
    return outcome, float(seconds)


def start_node(network: TestNetwork, name: str) -> str:
    """A stand-in WHM node inside the host's namespace on its address; its base URL once it answers."""
    host = network.hosts[name]
    host.popen(
        [sys.executable, "-m", "whm_ha.demo_node", "--name", name, "--host", host.address, "--port", str(NODE_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{host.address}:{NODE_PORT}"
    wait_for(lambda: http_ok(f"{url}/healthz"), 15, f"node {name} at {url}")
    return url


def alive(pid: int) -> bool:
    """Whether the process runs (a killed one may stay a zombie until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_mariadb_in_a_namespace_answers_root_and_replicates_from_a_peer(
    test_network: TestNetwork, netns_mariadb: StartNetnsServers
) -> None:
    source_host, replica_host = test_network.host("db-0"), test_network.host("db-1")
    source, replica = netns_mariadb([source_host, replica_host])
    assert (source.host, replica.host) == (source_host.address, replica_host.address)
    with source.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id, @@bind_address")
        assert cur.fetchone() == (1, f"{source_host.address},127.0.0.1")
        cur.execute("CREATE DATABASE fault_check")
        cur.execute("CREATE TABLE fault_check.t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO fault_check.t VALUES (7)")
    with replica.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            (source.host, source.port, ADMIN_USER, ADMIN_PASSWORD),
        )
        cur.execute("START SLAVE")

        def replicated() -> bool:
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'fault_check'")
            row = cur.fetchone()
            if not row or not row[0]:
                return False
            cur.execute("SELECT id FROM fault_check.t")
            return cur.fetchall() == ((7,),)

        wait_for(replicated, 20, "the row replicated from db-0 to db-1 over the bridge")

    source.kill()
    assert namespace_pids(source_host.namespace) == []
    source.start()
    with source.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM fault_check.t")
        assert cur.fetchall() == ((7,),)


def test_demo_node_in_a_namespace_is_reachable_from_root(test_network: TestNetwork) -> None:
    test_network.host("web-0")
    url = start_node(test_network, "web-0")
    with urllib.request.urlopen(f"{url}/some/page", timeout=5) as response:
        assert response.headers["X-WHM-Node"] == "web-0"


def test_blackhole_makes_connects_and_reads_time_out_and_heal_restores(test_network: TestNetwork) -> None:
    host = test_network.host("web-0")
    url = start_node(test_network, "web-0")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host.address}\r\n\r\n".encode()
    established = socket.create_connection((host.address, NODE_PORT), timeout=2)
    established.sendall(request)
    assert established.recv(4096).startswith(b"HTTP/1.1 200")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host.address, NODE_PORT + 1), timeout=2)

    host.blackhole()
    for port in (NODE_PORT, NODE_PORT + 1):  # a closed port is not refused either: nothing answers
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((host.address, port), timeout=1)
        assert time.monotonic() - started >= 0.9
    established.settimeout(1)
    established.sendall(request)
    with pytest.raises(TimeoutError):
        established.recv(4096)

    host.heal()
    assert http_ok(f"{url}/healthz")
    established.settimeout(10)  # TCP retransmits the request unanswered during the blackhole
    assert established.recv(4096).startswith(b"HTTP/1.1 200")
    established.close()


def test_cut_from_drops_only_the_packets_between_two_hosts(test_network: TestNetwork) -> None:
    target, cut = test_network.host("web-0"), test_network.host("client-0")
    test_network.host("client-1")
    start_node(test_network, "web-0")
    target.cut_from(cut)

    def connect_from(host_name: str) -> str:
        run = test_network.hosts[host_name].run([sys.executable, "-c", PROBE, target.address, str(NODE_PORT), "1"])
        return probe(run)[0]

    assert connect_from("client-0") == "timeout"
    assert connect_from("client-1") == "connected"
    assert http_ok(f"http://{target.address}:{NODE_PORT}/healthz")
    target.heal()
    assert connect_from("client-0") == "connected"


def test_nothing_routes_off_the_machine(test_network: TestNetwork) -> None:
    host = test_network.host("db-0")
    assert "default" not in host.run(["ip", "-4", "route", "show", "table", "all"]).stdout
    routes = host.run(["ip", "-4", "route", "show", "table", "main"]).stdout.splitlines()
    assert [route.split()[:3] for route in routes] == [[f"10.213.{test_network.subnet}.0/24", "dev", "eth0"]]
    assert host.run(["ip", "-6", "addr", "show", "dev", "eth0"]).stdout == ""
    outcome, seconds = probe(host.run([sys.executable, "-c", PROBE, "192.0.2.1", "80", "5"]))
    assert (outcome, seconds < 0.5) == ("ENETUNREACH", True)
    forwarding = Path(f"/proc/sys/net/ipv4/conf/{test_network.bridge}/forwarding").read_text().strip()
    assert forwarding == "0"
    assert "masquerade" not in host.run(["nft", "list", "ruleset"]).stdout


def test_close_removes_everything_it_created() -> None:
    network = open_network()
    host = network.host("db-0")
    sleeper = host.popen(["sleep", "600"])
    host.blackhole()
    network.close()
    assert sleeper.poll() == -signal.SIGKILL
    assert _of_subnet(network.subnet) == ([], [])


INNER_TEST = """
import os, threading
from pathlib import Path

def test_inner(test_network):
    host = test_network.host("inner")
    sleeper = host.popen(["sleep", "600"])
    host.blackhole()
    Path(os.environ["WHMT_READY"]).write_text(f"{host.namespace} {sleeper.pid}")
    if os.environ["WHMT_MODE"] == "fail":
        raise AssertionError("failing on purpose")
    threading.Event().wait()
"""


def _interruptible() -> None:
    """SIGINT back to its default in the child: a run started by a non-interactive shell's ``&`` (as a CI script
    may) ignores it, and Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("mode", ["fail", "interrupt", "kill"])
def test_a_failed_interrupted_or_killed_run_leaves_nothing_behind(tmp_path: Path, mode: str) -> None:
    """A failing or Ctrl-C'ed test tears its network down; one killed outright leaves it to the next network."""
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    ready = tmp_path / "ready"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "tests.fixtures.netns", "-p", "no:cacheprovider"),
            *("-c", str(REPO / "pyproject.toml"), str(tmp_path / "test_inner.py")),
        ],
        cwd=REPO,
        env={**os.environ, "WHMT_READY": str(ready), "WHMT_MODE": mode},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_interruptible,  # noqa: PLW1509 (a signal disposition only)
    )
    try:
        wait_for(lambda: ready.exists() and ready.read_text(), 30, "the inner test's host")
        namespace, sleeper = ready.read_text().split()
        if mode != "fail":
            run.send_signal(signal.SIGINT if mode == "interrupt" else signal.SIGKILL)
        output = run.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    if mode == "kill":
        assert namespace in _ours()[0] and alive(int(sleeper))
        open_network().close()
    else:
        assert run.returncode != 0, output
    assert namespace not in _ours()[0], output
    assert not alive(int(sleeper))


def test_leftovers_of_a_live_run_are_kept() -> None:
    """A namespace whose subnet lock a live run holds is not a leftover; once the lock is free, it is."""
    for subnet in range(254, 0, -1):
        fd = _lock(subnet)
        if fd is not None:
            break
    else:
        pytest.fail("every subnet lock is held")
    stray = f"{PREFIX}-{subnet}-stray"
    subprocess.run(["ip", "netns", "add", stray], check=True)
    try:
        assert stray not in remove_leftovers()
        assert stray in _ours()[0]
    finally:
        os.close(fd)
    assert stray in remove_leftovers()
    assert stray not in _ours()[0]


def test_slow_lossy_one_way_down_and_flapping_links(test_network: TestNetwork) -> None:
    """The primitives of the scenarios: loss, a one-way cut, the link down, flapping, heal."""
    node, client = test_network.host("node"), test_network.host("client")
    url = start_node(test_network, "node")

    def connect(timeout: float = 1.0) -> tuple[str, float]:
        return probe(client.run([sys.executable, "-c", PROBE, node.address, str(NODE_PORT), str(timeout)]))

    assert connect()[0] == "connected"
    node.lose(100)
    assert connect(0.5)[0] == "timeout"
    node.heal()
    node.lose(50)
    # A probe connects when its SYN and the SYN-ACK both pass: 1 in 4. Twelve probes all timing out happened
    # (0.75^12, 3 %); probe until both are seen, up to 60 (0.75^60, 3e-8).
    outcomes: list[str] = []
    while len(outcomes) < 60 and not {"connected", "timeout"} <= set(outcomes):
        outcomes.append(connect(0.3)[0])
    assert "connected" in outcomes and "timeout" in outcomes, outcomes
    node.heal()
    node.cut_from(client, "out")  # the client's SYN arrives, the SYN-ACK never leaves
    assert connect(0.5)[0] == "timeout"
    assert http_ok(f"{url}/healthz"), "the root namespace is not cut"
    node.heal()
    node.link(False)
    assert connect(0.5)[0] in ("timeout", "EHOSTUNREACH")
    node.heal()
    assert connect()[0] == "connected"
    flapping = node.flap(0.5, 3)
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen.add(connect(0.3)[0])
    flapping.join(5)
    assert "connected" in seen and len(seen) > 1, seen
    assert connect()[0] == "connected", "up again after flapping"

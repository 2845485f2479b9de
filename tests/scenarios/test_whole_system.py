"""The whole system as subprocesses, as `whm-ha demo` starts it: sandbox API, three MariaDB servers, three
WHM nodes, the operator, the proxy and the shim."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.kube_helpers import wait_for
from tests.scenarios.system import running_system
from whm_ha.db.local_server import free_port
from whm_ha.demo.stack import ADMIN_TOKEN, Stack
from whm_ha.demo.tour import Traffic, backup, database_failover, node_failover
from whm_ha.demo.view import Observer

pytestmark = pytest.mark.mariadb
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Stack, client.ApiClient, Observer]]:
    with running_system(tmp_path) as started:
        yield started


def test_get_traffic_survives_the_primary_node_dying(system: tuple[Stack, client.ApiClient, Observer]) -> None:
    stack, _, observer = system
    traffic = Traffic(f"http://127.0.0.1:{stack.proxy_port}/")
    thread = threading.Thread(target=traffic.run)
    thread.start()
    try:
        assert node_failover(stack, observer, traffic, print), "a new primary within the bound, no GET failed"
    finally:
        traffic.stop.set()
        thread.join()
    assert traffic.failed == 0 and traffic.ok > 20


def test_no_acknowledged_write_is_lost_when_the_mysql_primary_dies(
    system: tuple[Stack, client.ApiClient, Observer],
) -> None:
    stack, api, observer = system
    assert database_failover(stack, api, observer, print), "promotion, writer resumes, nothing lost"


def test_the_tour_takes_a_backup_of_the_replication(system: tuple[Stack, client.ApiClient, Observer]) -> None:
    _, api, _ = system
    assert backup(api, print), "a MySQLBackup of the demo's replication completes"


def _operator(stack: Stack) -> subprocess.Popen[bytes]:
    return next(p for name, p in stack.processes if name == "operator" and p.poll() is None)


def test_operator_restarted_mid_failover_never_fails_over_twice(
    system: tuple[Stack, client.ApiClient, Observer],
) -> None:
    stack, _, observer = system
    violations: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            primaries = [
                n["metadata"]["name"] for n in observer.nodes() if (n.get("status") or {}).get("role") == "Primary"
            ]
            writable = []
            for index, server in enumerate(stack.databases):
                if not server.running:
                    continue
                try:
                    conn = server.connect(connect_timeout=1)
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@global.read_only")
                        row = cur.fetchone()
                    conn.close()
                except Exception:  # a server going down answers nothing: it cannot be writable
                    continue
                if row and int(row[0]) == 0:
                    writable.append(index)
            if len(primaries) > 1 or len(writable) > 1:
                violations.append(f"nodes {primaries} writable databases {writable}")
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        node_primary = observer.cluster()["status"]["primaryNode"]
        db_primary = observer.replication()["status"]["currentPrimary"]
        stack.kill_node(node_primary)
        stack.databases[int(db_primary.rsplit("-", 1)[1])].kill()
        _operator(stack).kill()  # in the middle of both failovers
        stack._whm_ha("operator", "operator", "--namespace=default", f"--metrics=127.0.0.1:{free_port()}")
        deadline = time.monotonic() + 60
        while True:
            cluster = observer.cluster()["status"]
            replication = observer.replication().get("status") or {}
            if (
                cluster.get("primaryNode") not in (None, node_primary)
                and replication.get("currentPrimary") not in (None, db_primary)
                and replication.get("phase") != "Promoting"
            ):
                break
            assert time.monotonic() < deadline, f"no convergence: {cluster.get('primaryNode')} {replication}"
            time.sleep(0.2)
    finally:
        stop.set()
        sampler.join()
    assert violations == []
    assert len(observer.cluster()["status"]["failoverHistory"]) == 1, "one node failover"
    assert len(observer.replication()["status"]["promotionHistory"]) == 1, "one promotion"


def _readme_curl_calls() -> list[str]:
    text = README.read_text()
    block = text.split("## Legacy REST API (shim)", 1)[1].split("```sh", 2)[2].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip().startswith("curl")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_calls(system: tuple[Stack, client.ApiClient, Observer]) -> None:
    """Every call works on the demo, and after the promotion the replication is Healthy again within seconds."""
    stack, _, observer = system
    calls = _readme_curl_calls()
    assert len(calls) == 12, calls
    env = {
        "API": f"http://127.0.0.1:{stack.shim_port}/api/ha",
        "AUTH": f"Authorization: Bearer {ADMIN_TOKEN}",
        "JSON": "Content-Type: application/json",
        "PATH": "/usr/bin:/bin",
    }
    for written in calls:
        result = subprocess.run(
            ["bash", "-c", written + " -w '\\n%{http_code}'"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        body, _, code = result.stdout.rpartition("\n")
        assert code in ("200", "201"), f"{written}\n{result.stdout}{result.stderr}"
        if "-X POST $API/nodes" in written:  # the operator numbers the new node while the call waits
            assert json.loads(body)["node"]["id"] == 4, body
        assert '"success": true' in body.replace('"success":true', '"success": true'), body

    def healthy_on_db_1() -> bool:
        status = observer.replication().get("status") or {}
        errant = next(c for c in status.get("conditions", []) if c["type"] == "ErrantTransactions")
        return bool(
            status.get("currentPrimary") == "db-1"
            and status.get("phase") == "Healthy"
            and status.get("readyReplicas") == 2
            and errant["status"] == "False"
        )

    wait_for(healthy_on_db_1, 10, "the replication Healthy on db-1 after the README's promote call")

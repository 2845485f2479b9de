"""The scripted tour: kill the primary WHM node, then the MySQL primary, under traffic, and say what
happened with the measured times."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pymysql
from kubernetes import client

from ..apps.pool import PoolError, ReadWritePool
from ..apps.topology import KubernetesTopology
from ..db.server_checks import source_port
from .stack import ADMIN_TOKEN, DEMO_SCHEMA, FAST_HEALTH, NAMESPACE, REPLICATION, Stack
from .view import Observer

Say = Callable[[str], None]


@dataclass
class Traffic:
    """GET requests through the proxy at a steady rate, counting failures."""

    url: str
    ok: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.ok += 1
            except OSError:
                self.failed += 1
            time.sleep(0.02)

    def summary(self) -> str:
        return f"{self.ok} requests through the proxy, {self.failed} failed"


@dataclass
class Writer:
    """Inserts rows through the read/write-splitting pool; remembers each acknowledged one."""

    pool: ReadWritePool
    acknowledged: list[int] = field(default_factory=list)
    errors: int = 0
    last_ok: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def create_table(self) -> None:
        """The table it writes to, created through the pool (on the primary) when missing."""
        with self.pool.writer() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {DEMO_SCHEMA}")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {DEMO_SCHEMA}.writes (id INT PRIMARY KEY)")

    def run(self) -> None:
        next_id = 0
        while not self.stop.is_set():
            next_id += 1
            try:
                with self.pool.writer() as conn, conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {DEMO_SCHEMA}.writes (id) VALUES (%s)", (next_id,))
                self.acknowledged.append(next_id)
                self.last_ok = time.monotonic()
            except (pymysql.MySQLError, PoolError):
                self.errors += 1
            time.sleep(0.01)


def application_pool(api: client.ApiClient, *, refresh: float = 0.2, database: str | None = None) -> ReadWritePool:
    """A pool over the demo's replication as the application account the operator created (whm-db-app): an
    application's view, which read-only members refuse."""
    deadline = time.monotonic() + 30
    while True:
        try:
            secret = client.CoreV1Api(api).read_namespaced_secret(f"{REPLICATION}-app", NAMESPACE)
            break
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    data = secret.data or {}
    user, password = (base64.b64decode(data[key]).decode() for key in ("username", "password"))
    topology = KubernetesTopology(api, NAMESPACE, REPLICATION, refresh=refresh)
    return ReadWritePool(topology, user=user, password=password, database=database, acquire_timeout=30)


def promote_through_shim(stack: Stack, member: str) -> dict[str, Any]:
    """POST /api/ha/database/promote as a legacy tool does; the answer's body (urllib.error.HTTPError when not
    2xx)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.shim_port}/api/ha/database/promote",
        data=json.dumps({"slaveHost": member}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return cast(dict[str, Any], json.loads(response.read()))


def settled_on(stack: Stack, observer: Observer, member: str) -> bool:
    """Healthy on ``member``, no errant transactions reported, and (read on the servers) every other member
    replicating from it."""
    status = observer.replication().get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if not (
        status.get("currentPrimary") == member
        and status.get("phase") == "Healthy"
        and status.get("readyReplicas") == len(stack.databases) - 1
        and conditions.get("ErrantTransactions") == "False"
    ):
        return False
    index = int(member.rsplit("-", 1)[1])
    port = stack.databases[index].port
    return all(source_port(s) == port for i, s in enumerate(stack.databases) if i != index)


def _wait(condition: Callable[[], bool], timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def node_failover(stack: Stack, observer: Observer, traffic: Traffic, say: Say) -> bool:
    """Kill the primary WHM node under GET traffic; True when a new primary came within the bound, no GET lost."""
    say("1. Killing the primary WHM node while GET traffic flows through the proxy.")
    primary = observer.cluster()["status"]["primaryNode"]
    before = traffic.failed
    stack.kill_node(primary)
    bound = FAST_HEALTH["periodSeconds"] * FAST_HEALTH["failureThreshold"] + FAST_HEALTH["timeoutSeconds"]
    took = _wait(lambda: observer.cluster()["status"].get("primaryNode") not in (None, primary), bound + 10)
    if took is None:
        say(f"   no new primary within {bound + 10}s")
        return False
    new = observer.cluster()["status"]["primaryNode"]
    failed = traffic.failed - before
    say(
        f"   {primary} killed: {new} became primary after {took:.1f}s (bound {bound}s: interval x threshold + "
        f"timeout); {failed} GET requests failed meanwhile."
    )
    return took <= bound + 1 and failed == 0


def _acknowledged_present(stack: Stack, observer: Observer, writer: Writer) -> list[int]:
    """The acknowledged writes missing on the current primary."""
    index = int(observer.replication()["status"]["currentPrimary"].rsplit("-", 1)[1])
    conn = stack.databases[index].connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {DEMO_SCHEMA}.writes")
            present = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    return sorted(set(writer.acknowledged) - present)


def database_failover(stack: Stack, api: client.ApiClient, observer: Observer, say: Say) -> bool:
    """SIGKILL the MySQL primary under a writer; True when a replica was promoted and no write was lost."""
    say("2. Killing the MySQL primary (SIGKILL) while a writer inserts rows through the pool.")
    primary = observer.replication()["status"]["currentPrimary"]
    index = int(primary.rsplit("-", 1)[1])
    writer = Writer(application_pool(api))
    writer.create_table()
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    _wait(lambda: len(writer.acknowledged) > 100, 20)
    stack.databases[index].kill()
    killed = time.monotonic()
    took = _wait(lambda: (observer.replication().get("status") or {}).get("currentPrimary") not in (None, primary), 60)
    if took is not None:
        _wait(lambda: writer.last_ok > killed, 30)
    writer.stop.set()
    thread.join(10)
    if took is None:
        say("   no promotion within 60s")
        return False
    new = observer.replication()["status"]["currentPrimary"]
    say(
        f"   {primary} killed: {new} promoted after {took:.1f}s; the writer resumed after "
        f"{writer.last_ok - killed:.1f}s."
    )
    lost = _acknowledged_present(stack, observer, writer)
    say(f"   {len(writer.acknowledged)} writes acknowledged, {len(lost)} lost (semi-sync on).")
    return not lost


def tour(stack: Stack, api: client.ApiClient, say: Say) -> bool:
    """Run the tour; True when every promise held (no failed GET, no lost write, both failovers in time)."""
    observer = Observer(api, stack.admin_port)
    traffic = Traffic(f"http://127.0.0.1:{stack.proxy_port}/")
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    try:
        nodes_ok = node_failover(stack, observer, traffic, say)
        database_ok = database_failover(stack, api, observer, say)
    finally:
        traffic.stop.set()
        thread.join(10)
    say(f"Traffic: {traffic.summary()}.")
    return nodes_ok and database_ok

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

from kubernetes import client

from ..apps.pool import ReadWritePool
from ..apps.topology import KubernetesTopology
from ..db.server_checks import source_port
from ..lifecycle import pause
from . import checkers
from .stack import ADMIN_TOKEN, FAST_HEALTH, NAMESPACE, REPLICATION, Stack
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
            pause(0.2)
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
        pause(0.05)
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


def database_failover(stack: Stack, api: client.ApiClient, observer: Observer, say: Say) -> bool:
    """SIGKILL the MySQL primary under 8 writers; True when a replica was promoted, no acknowledged write was lost
    and never two members acknowledged writes (``checkers``)."""
    say("2. Killing the MySQL primary (SIGKILL) while 8 writers insert rows through the pool.")
    primary = observer.replication()["status"]["currentPrimary"]
    index = int(primary.rsplit("-", 1)[1])
    pool = application_pool(api)
    checkers.create_table(pool.writer)
    writers = checkers.Writers(pool.writer)
    try:
        writers.start(warm_up=100, timeout=20)
        stack.databases[index].kill()
        killed = time.time()
        took = _wait(
            lambda: (observer.replication().get("status") or {}).get("currentPrimary") not in (None, primary), 60
        )
        if took is not None:
            _wait(lambda: bool(writers.acks.between(killed)), 30)
    finally:
        writers.stop(10)
        pool.close()
    if took is None:
        say("   no promotion within 60s")
        return False
    acks = writers.acks.all()
    after = writers.acks.between(killed)
    resumed = min((a.acked for a in after), default=float("nan")) - killed
    new = observer.replication()["status"]["currentPrimary"]
    say(f"   {primary} killed: {new} promoted after {took:.1f}s; the writers resumed after {resumed:.1f}s.")
    conn = stack.databases[int(new.rsplit("-", 1)[1])].connect()
    try:
        lost = checkers.missing(acks, checkers.present_ids(conn))
    finally:
        conn.close()
    labels = [f"{server.host}:{server.port}" for server in stack.databases]
    overlapping = checkers.two_acknowledging(acks, [labels[index], labels[int(new.rsplit("-", 1)[1])]])
    say(f"   {len(acks)} writes acknowledged ({len(after)} after the kill), {len(lost)} lost (semi-sync on).")
    if overlapping:
        say(f"   two members acknowledging writes: {'; '.join(overlapping)}")
    if not after:
        say("   no write acknowledged after the kill within 30s")
    return bool(after) and not lost and not overlapping


def backup(api: client.ApiClient, say: Say) -> bool:
    """A one-off MySQLBackup; True when it completed (from a replica while one is healthy)."""
    say("3. Taking a backup (a MySQLBackup) of the replication: its healthiest replica, dumped to a directory.")
    custom = client.CustomObjectsApi(api)
    name = f"{REPLICATION}-tour-{int(time.time())}"
    body = {"apiVersion": "ha.whm.io/v1alpha1", "kind": "MySQLBackup", "metadata": {"name": name}}
    custom.create_namespaced_custom_object(
        "ha.whm.io", "v1alpha1", NAMESPACE, "mysqlbackups", {**body, "spec": {"replication": REPLICATION}}
    )
    started = time.time()

    def status() -> dict[str, Any]:
        obj = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object("ha.whm.io", "v1alpha1", NAMESPACE, "mysqlbackups", name),
        )
        return cast(dict[str, Any], obj.get("status") or {})

    took = _wait(lambda: status().get("phase") in ("Completed", "Failed"), 120)
    found = status()
    if took is None or found.get("phase") != "Completed":
        say(f"   {name}: {found.get('phase', 'no outcome')} after {time.time() - started:.0f}s: {found.get('message')}")
        return False
    say(
        f"   {name}: {found['sizeBytes']} bytes from {found['member']} in {took:.1f}s, GTIDs {found['gtid']};"
        f" kubectl whm backups -n {NAMESPACE} lists it."
    )
    return True


def tour(stack: Stack, api: client.ApiClient, say: Say) -> bool:
    """Run the tour; True when every promise held (no failed GET, no lost write, both failovers in time, a
    backup taken)."""
    observer = Observer(api, stack.admin_port)
    traffic = Traffic(f"http://127.0.0.1:{stack.proxy_port}/")
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    try:
        nodes_ok = node_failover(stack, observer, traffic, say)
        database_ok = database_failover(stack, api, observer, say)
        backup_ok = backup(api, say)
    finally:
        traffic.stop.set()
        thread.join(10)
    say(f"Traffic: {traffic.summary()}.")
    return nodes_ok and database_ok and backup_ok

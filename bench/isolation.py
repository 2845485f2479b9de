"""One replication's failover while 50 others have members that never answer: each replication's blocking calls
run in threads of its own, so their timeouts must not delay it.

    PYTHONPATH=. .venv/bin/python -m bench.isolation [--quick] [--no-write]

Runs the demo's stack (sandbox API, three mariadbd, operator, proxy, shim) on loopback with 1 s x 2 settings.
The reference, in the same run: the same kill -9 of the primary with no other replication. Then 50
MySQLReplications whose 3 members each accept connections and never answer (listening sockets never
accepted: 150 inspections waiting their full timeout every period) are created, and the primary is killed again.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from bench.promotion import writable
from bench.report import publish
from whm_ha.db.local_server import free_port
from whm_ha.demo.main import start_system
from whm_ha.demo.stack import NAMESPACE, REPLICATION, Stack
from whm_ha.demo.tour import settled_on
from whm_ha.demo.view import Observer

GROUP, VERSION = "ha.whm.io", "v1alpha1"
OTHERS = 50


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_primary(stack: Stack, observer: Observer) -> float:
    """kill -9 the current primary; seconds until another member is writable; the killed one restarted and the
    topology settled again (on the new primary) before returning."""
    old = str(observer.replication()["status"]["currentPrimary"])
    index = int(old.rsplit("-", 1)[1])
    stack.databases[index].kill()
    killed = time.monotonic()
    others = [i for i in range(len(stack.databases)) if i != index]
    wait(lambda: any(writable(stack, i) for i in others), 60, "a writable new primary")
    took = time.monotonic() - killed
    wait(lambda: observer.replication()["status"].get("currentPrimary") not in (None, old), 30, "the status")
    new = str(observer.replication()["status"]["currentPrimary"])
    stack.databases[index].start()
    wait(lambda: settled_on(stack, observer, new), 60, f"settled on {new}")
    return took


def silent_replications(api: client.ApiClient, sockets: list[socket.socket]) -> None:
    custom = client.CustomObjectsApi(api)
    members = [{"name": f"s{i}", "host": "127.0.0.1", "port": s.getsockname()[1]} for i, s in enumerate(sockets)]
    for index in range(OTHERS):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLReplication",
            "metadata": {"name": f"silent-{index:02d}"},
            "spec": {
                "primary": "s0",
                "members": members,
                "credentialsSecret": {"name": "whm-db-admin"},
                "replicationSecret": {"name": "whm-db-replication"},
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "mysqlreplications", body)

    def inspecting(name: str) -> bool:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "mysqlreplications", name)
        return "choosing the first primary" in str((obj.get("status") or {}).get("reason", ""))

    for name in ("silent-00", f"silent-{OTHERS - 1:02d}"):
        wait(lambda n=name: inspecting(n), 60, f"{name} inspecting")  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one kill of each instead of three")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    sockets = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(4096)  # never accepted: the handshake completes, no server greeting ever comes
        sockets.append(sock)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp), proxy_port=free_port(), shim_port=free_port(), db_period_seconds=1, db_failure_threshold=2
        )
        try:
            api, observer = start_system(stack, say=lambda _: None)
            assert observer.replication()["metadata"]["name"] == REPLICATION
            alone = [kill_primary(stack, observer) for _ in range(runs)]
            silent_replications(api, sockets)
            loaded = [kill_primary(stack, observer) for _ in range(runs)]
        finally:
            stack.stop()
            for sock in sockets:
                sock.close()
    lone, busy = statistics.median(alone), statistics.median(loaded)
    table = [
        f"| kill -9 primary to writable new primary while {OTHERS} other replications' {3 * OTHERS} members never "
        f"answer, 1 s x 2 (median / max of {runs}) | {busy:.2f} s / {max(loaded):.2f} s | the same with no other "
        f"replication: {lone:.2f} s / {max(alone):.2f} s (ratio {busy / lone:.2f}) | ≤ alone + 1 s |",
    ]
    publish("One replication among many with unreachable members", table, write=not args.no_write)


if __name__ == "__main__":
    main()

"""End to end on a kind cluster: the image, the chart, real pods. Needs Docker and kind; skips without them.

    make e2e-kind

Creates the kind cluster whm-ha-e2e, builds the image and loads it, installs the chart, deploys three
stand-in WHM node pods and three MariaDB pods, applies the custom resources, then kills the primary node
pod and the MySQL primary pod while traffic flows, and deletes the cluster at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
CLUSTER = "whm-ha-e2e"
IMAGE = "whm-ha:e2e"
pytestmark = pytest.mark.e2e


def _missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode != 0:
        return "no Docker engine is running"
    if shutil.which("kind") is None:
        return "kind is not installed"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    return None


def run(*args: str, timeout: float = 600) -> str:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True).stdout


def kubectl(kubeconfig: Path, *args: str) -> str:
    return run("kubectl", f"--kubeconfig={kubeconfig}", "-n", "default", *args)


def wait(kubeconfig: Path, jsonpath: str, resource: str, expected: str, timeout: float) -> float:
    """Seconds until ``kubectl get resource -o jsonpath`` prints expected."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if kubectl(kubeconfig, "get", resource, "-o", f"jsonpath={jsonpath}").strip() == expected:
                return time.monotonic() - started
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{resource} {jsonpath} != {expected} after {timeout}s")


@pytest.fixture(scope="module")
def kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = _missing()
    if reason:
        pytest.skip(f"kind suite skipped: {reason}")
    import helm_python as helm

    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run("kind", "create", "cluster", "--name", CLUSTER, "--kubeconfig", str(kubeconfig), "--wait", "120s")
    try:
        run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)
        with helm.Config(namespace="whm-ha", kubeconfig_path=str(kubeconfig)) as config:
            config.install(
                str(ROOT / "charts" / "whm-ha"),
                "whm-ha",
                {"image": {"repository": "whm-ha", "tag": "e2e", "pullPolicy": "Never"}, "proxy": {"cluster": "whm"}},
                create_namespace=True,
                wait="watcher",
                timeout=300,
            )
        kubectl(kubeconfig, "apply", "-f", str(HERE / "manifests" / "workloads.yaml"))
        kubectl(kubeconfig, "rollout", "status", "statefulset/whm-node", "--timeout=300s")
        kubectl(kubeconfig, "rollout", "status", "statefulset/mysql", "--timeout=600s")
        kubectl(kubeconfig, "apply", "-f", str(HERE / "manifests" / "resources.yaml"))
        wait(kubeconfig, "{.status.phase}", "whmcluster/whm", "Healthy", 120)
        wait(kubeconfig, "{.status.phase}", "mysqlreplication/whm-db", "Healthy", 300)
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], capture_output=True, timeout=300, check=False)


def test_primary_node_pod_killed_fails_over_within_the_bound(kind: Path) -> None:
    primary = kubectl(kind, "get", "whmcluster/whm", "-o", "jsonpath={.status.primaryNode}")
    pod = kubectl(kind, "get", f"whmnode/{primary}", "-o", "jsonpath={.spec.podRef.name}")
    kubectl(kind, "delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
    started = time.monotonic()
    while kubectl(kind, "get", "whmcluster/whm", "-o", "jsonpath={.status.primaryNode}") == primary:
        assert time.monotonic() - started < 1 * 2 + 1 + 10, "no failover within the bound (+ pod deletion slack)"
        time.sleep(0.2)


def test_mysql_primary_pod_deleted_promotes_without_losing_acknowledged_writes(kind: Path) -> None:
    primary = kubectl(kind, "get", "mysqlreplication/whm-db", "-o", "jsonpath={.status.currentPrimary}")
    index = primary.rsplit("-", 1)[1]
    client = ["exec", "mysql-0", "--", "mariadb", "-uroot", "-pe2e-admin", "-h", "whm-db-primary", "-e"]
    kubectl(kind, *client, "CREATE DATABASE IF NOT EXISTS e2e; CREATE TABLE IF NOT EXISTS e2e.t (id INT PRIMARY KEY)")
    acknowledged = []
    for row in range(50):
        kubectl(kind, *client, f"INSERT INTO e2e.t VALUES ({row})")
        acknowledged.append(row)
    kubectl(kind, "delete", "pod", f"mysql-{index}", "--grace-period=0", "--force", "--wait=false")
    wait_seconds = 60.0
    started = time.monotonic()
    while kubectl(kind, "get", "mysqlreplication/whm-db", "-o", "jsonpath={.status.currentPrimary}") == primary:
        assert time.monotonic() - started < wait_seconds, "no promotion"
        time.sleep(0.5)
    rows = kubectl(kind, *client, "SELECT id FROM e2e.t").split()[1:]
    assert {int(r) for r in rows} >= set(acknowledged)


def test_shim_answers(kind: Path) -> None:
    out = kubectl(
        kind,
        "run",
        "curl",
        "--rm",
        "-i",
        "--restart=Never",
        "--image=curlimages/curl",
        "--",
        "-s",
        "http://whm-ha-shim.whm-ha:4000/api/ha/status",
    )
    assert '"success"' in out  # 401 without a token is still an answer from the shim


def test_traffic_through_the_proxy_keeps_flowing_during_failover(kind: Path) -> None:
    loop = (
        "ok=0; fail=0; for i in $(seq 1 300); do "
        "if curl -sf -o /dev/null http://whm-ha-proxy.whm-ha/; then ok=$((ok+1)); else fail=$((fail+1)); fi; "
        "sleep 0.05; done; echo ok=$ok fail=$fail"
    )
    kubectl(kind, "run", "traffic", "--restart=Never", "--image=curlimages/curl", "--command", "--", "sh", "-c", loop)
    time.sleep(3)  # let the traffic start before the failure (a real-time scenario, not a wait for a condition)
    primary = kubectl(kind, "get", "whmcluster/whm", "-o", "jsonpath={.status.primaryNode}")
    pod = kubectl(kind, "get", f"whmnode/{primary}", "-o", "jsonpath={.spec.podRef.name}")
    kubectl(kind, "delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
    kubectl(kind, "wait", "pod/traffic", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s")
    assert kubectl(kind, "logs", "traffic").strip().endswith("fail=0")

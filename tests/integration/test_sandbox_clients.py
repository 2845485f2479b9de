"""Standard clients work against the sandbox unchanged: kubectl and a kopf operator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fixtures.sandbox import ROOT, SandboxProcess
from tests.kube_helpers import GROUP, VERSION, create_node, wait_for


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_round_trip(restartable_sandbox: SandboxProcess) -> None:
    env = {**os.environ, "KUBECONFIG": str(restartable_sandbox.kubeconfig)}

    def kubectl(*args: str) -> str:
        result = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    kubectl("apply", "-f", str(ROOT / "crds"))
    assert "whmnodes.ha.whm.io unchanged" in kubectl("apply", "-f", str(ROOT / "crds"))
    created = kubectl("apply", "-f", str(ROOT / "manifests" / "examples"))
    assert "whmcluster.ha.whm.io/whm created" in created
    assert "whmnode.ha.whm.io/whm-node-1 created" in created
    again = kubectl("apply", "-f", str(ROOT / "manifests" / "examples"))
    assert "whmnode.ha.whm.io/whm-node-1 unchanged" in again
    table = kubectl("get", "whmn")
    assert table.split("\n")[0].split() == ["NAME", "CLUSTER", "ADDRESS", "ROLE", "HEALTH", "PRIORITY", "AGE"]
    assert "whm-node-1" in table and "10.0.0.11" in table
    assert kubectl("get", "whmc").split("\n")[0].split() == ["NAME", "PRIMARY", "HEALTHY", "PHASE", "AGE"]
    assert "PRIMARY" in kubectl("get", "myrepl")
    kubectl("patch", "whmn", "whm-node-2", "--type=merge", "-p", '{"spec":{"maintenance":true}}')
    assert kubectl("get", "whmn", "whm-node-2", "-o", "jsonpath={.spec.maintenance}") == "true"
    assert "Priority:" in kubectl("describe", "whmn", "whm-node-2")
    assert "How often to probe, in seconds." in kubectl("explain", "whmcluster.spec.healthCheck.periodSeconds")
    kubectl("delete", "-f", str(ROOT / "manifests" / "examples" / "whmnodes.yaml"))
    assert kubectl("get", "whmn", "-o", "name") == ""
    bad = subprocess.run(
        ["kubectl", "patch", "whmc", "whm", "--type=merge", "-p", '{"spec":{"loadBalancer":{"algorithm":"random"}}}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0
    assert "spec.loadBalancer.algorithm" in bad.stderr and "Unsupported value" in bad.stderr


def test_kopf_operator_sees_its_own_updates_and_manages_finalizers(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(sandbox_client)
    log = tmp_path / "kopf.log"
    env = {**os.environ, "KUBECONFIG": str(sandbox_api.kubeconfig)}
    operator_file = Path(__file__).parents[1] / "fixtures" / "kopf_smoke_operator.py"
    with log.open("wb") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", f"--namespace={namespace}", str(operator_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        name = f"n-{uuid.uuid4().hex[:6]}"
        create_node(custom, namespace, name)  # in cluster "whm" at 10.0.0.1

        def get() -> dict[str, Any]:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", name)
            return obj

        wait_for(lambda: get()["metadata"].get("finalizers"), 30, "kopf's finalizer")
        wait_for(lambda: (get().get("status") or {}).get("consecutiveSuccesses", 0) >= 3, 30, "the timer to count to 3")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "whmnodes", name)

        def gone() -> bool:
            try:
                get()
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, 30, "kopf to release the finalizer")
    finally:
        operator.terminate()
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

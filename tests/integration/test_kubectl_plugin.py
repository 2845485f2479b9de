"""``kubectl whm`` as kubectl runs it (the ``kubectl-whm`` console script, a real subprocess) against a real
operator process and the Kubernetes API of either tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartServers
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import Cluster, three_nodes
from tests.integration.test_operator_replication import SERVER_ARGS, Replication, member_host
from tests.kube_helpers import wait_for

PLUGIN = Path(sys.executable).with_name("kubectl-whm")


def whm(kubeconfig: Path, *args: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    scope = ("-n", namespace) if namespace else ()
    argv = [str(PLUGIN), f"--kubeconfig={kubeconfig}", *scope, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def healthy_cluster(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    node_servers: StartNodes,
    operator_process: StartOperator,
) -> Cluster:
    cluster = Cluster(kube_client, kube_namespace)
    cluster.create()
    three_nodes(cluster, node_servers)
    operator_process(kube_api.kubeconfig, kube_namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy" and s.get("primaryNode") == "n1", 30, "Healthy, n1 primary")
    wait_for(lambda: cluster.roles() == {"n1": "Primary", "n2": "Secondary", "n3": "Secondary"}, 15, "roles")
    return cluster


def test_status_in_text_json_and_yaml(healthy_cluster: Cluster, kube_api: KubeAPI) -> None:
    namespace = healthy_cluster.namespace
    text = whm(kube_api.kubeconfig, "status", namespace=namespace)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[0]
    assert first.startswith(f"WHMCluster {namespace}/whm: Healthy, primary n1 for "), text.stdout

    def address(name: str) -> str:
        spec = healthy_cluster.node(name)["spec"]
        return f"{spec['address']}:{spec['port']}"

    assert [line.split()[:4] for line in text.stdout.splitlines()[2:6]] == [
        ["NODE", "ADDRESS", "ROLE", "HEALTH"],
        ["n1", address("n1"), "Primary", "Healthy"],
        ["n2", address("n2"), "Secondary", "Healthy"],
        ["n3", address("n3"), "Secondary", "Healthy"],
    ]
    assert "PROBLEMS\n  none" in text.stdout
    as_json = whm(kube_api.kubeconfig, "status", "whm", "-o", "json", namespace=namespace)
    report = json.loads(as_json.stdout)
    assert (report["primary"], len(report["nodes"]), report["problems"]) == ("n1", 3, [])
    as_yaml = whm(kube_api.kubeconfig, "status", "-o", "yaml", namespace=namespace)
    assert yaml.safe_load(as_yaml.stdout)["primary"] == "n1"


def test_failover_waits_for_the_outcome_and_says_it(healthy_cluster: Cluster, kube_api: KubeAPI) -> None:
    namespace = healthy_cluster.namespace
    refused = whm(kube_api.kubeconfig, "failover", "whm", "--to", "nope", namespace=namespace)
    assert refused.returncode == 1 and "Refused" in refused.stdout, (refused.stdout, refused.stderr)
    done = whm(kube_api.kubeconfig, "failover", "whm", "--to", "n2", namespace=namespace)
    assert done.returncode == 0 and done.stdout.startswith("failover n2: Succeeded"), (done.stdout, done.stderr)
    assert healthy_cluster.status()["primaryNode"] == "n2"
    past = whm(kube_api.kubeconfig, "history", "-o", "json", namespace=namespace)
    latest = json.loads(past.stdout)[0]
    assert (latest["what"], latest["from"], latest["to"], latest["type"]) == ("failover", "n1", "n2", "manual")
    table = whm(kube_api.kubeconfig, "history", namespace=namespace).stdout.splitlines()
    assert table[0].split() == ["AGE", "WHAT", "OF", "FROM", "TO", "TYPE", "TOOK", "REASON"]
    assert table[1].split()[1:6] == ["failover", "whm", "n1", "n2", "manual"]


def test_pause_resume_and_maintenance(healthy_cluster: Cluster, kube_api: KubeAPI) -> None:
    namespace = healthy_cluster.namespace
    assert whm(kube_api.kubeconfig, "pause", namespace=namespace).returncode == 0
    assert healthy_cluster.get()["spec"]["failover"]["paused"] is True
    assert whm(kube_api.kubeconfig, "resume", "whm", namespace=namespace).returncode == 0
    assert healthy_cluster.get()["spec"]["failover"]["paused"] is False
    assert whm(kube_api.kubeconfig, "maintenance", "n3", "on", namespace=namespace).returncode == 0
    assert healthy_cluster.node("n3")["spec"]["maintenance"] is True
    status = whm(kube_api.kubeconfig, "status", "-o", "json", namespace=namespace)
    assert {n["name"]: n["maintenance"] for n in json.loads(status.stdout)["nodes"]}["n3"] is True
    assert whm(kube_api.kubeconfig, "maintenance", "n3", "off", namespace=namespace).returncode == 0
    assert healthy_cluster.node("n3")["spec"]["maintenance"] is False


def test_context_and_namespace_come_from_the_kubeconfig_as_in_kubectl(
    healthy_cluster: Cluster, kube_api: KubeAPI, tmp_path: Path
) -> None:
    config = yaml.safe_load(kube_api.kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    config["contexts"].append(
        {"name": "here", "context": {**current["context"], "namespace": healthy_cluster.namespace}}
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    assert json.loads(whm(kubeconfig, "--context", "here", "status", "-o", "json").stdout)["primary"] == "n1"
    elsewhere = whm(kubeconfig, "status")  # the current context's namespace has no WHMCluster
    assert elsewhere.returncode == 2 and "name the WHMCluster" in elsewhere.stderr


def test_bad_input_is_one_line(kube_api: KubeAPI, kube_namespace: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nclusters: [oops\n")
    result = whm(broken, "status")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("kubectl whm: cannot use the kubeconfig")
    missing = whm(kube_api.kubeconfig, "status", "nope", namespace=kube_namespace)
    assert missing.returncode == 1 and missing.stderr.strip().startswith("kubectl whm: whmclusters/nope:"), (
        missing.stderr
    )


@pytest.mark.mariadb
def test_promote_waits_for_the_outcome(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    mariadb_servers: StartServers,
    operator_process: StartOperator,
) -> None:
    host = member_host(kube_api.tier)
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    replication = Replication(kube_client, kube_namespace, mariadb_servers(3, extra_args=SERVER_ARGS + bind), host)
    replication.create(semiSync=True)
    operator_process(kube_api.kubeconfig, kube_namespace)
    replication.healthy()
    refused = whm(kube_api.kubeconfig, "promote", "db", "nope", namespace=kube_namespace)
    assert refused.returncode == 1 and "Refused" in refused.stdout and "not a member" in refused.stdout
    done = whm(kube_api.kubeconfig, "promote", "db", "m1", namespace=kube_namespace)
    assert done.returncode == 0 and done.stdout.startswith("promote m1: Succeeded"), (done.stdout, done.stderr)
    assert replication.status()["currentPrimary"] == "m1"

"""``whm-ha demo --api cluster``: the system as users deploy it, on the local cluster (``hack/local-cluster``):
the chart installed with helm as the README says, then the workloads and custom resources in ``manifests/``
(three MariaDB pods, three stand-in WHM nodes, the checkers' writer). The end-to-end suite deploys the same and
judges the writer's acknowledgements as the tour does (``writer_acks``, ``judge_writes``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from .. import local_cluster
from ..control_plane import REPO_ROOT, find_bin_dir
from ..lifecycle import pause
from . import checkers
from .stack import DemoError

MANIFESTS = Path(__file__).parent / "manifests"
NAMESPACE = "whm-ha"
RELEASE = "whm-ha"
CHART = REPO_ROOT / "charts" / "whm-ha"
IMAGE_REPOSITORY, IMAGE_TAG = "localhost/whm-ha", "dev"
MARIADB_IMAGE = "localhost/whm-ha-mariadb:bookworm"
HEALTHY_TIMEOUT = 300.0
WRITER_TABLE = "whm_ha.e2e_writes"
"""The table of the writer pod (workloads.yaml), in the application account's schema."""
Kubectl = Callable[..., str]
"""``kubectl(*args)``: its output (``Cluster.kubectl``, the end-to-end suite's ``Provider.kubectl``)."""


def render(name: str, *, image: str, mariadb_image: str, volume_root: str) -> str:
    """A manifest of ``manifests/`` with the images and the host path the MariaDB pods keep their data under."""
    return Template((MANIFESTS / name).read_text()).safe_substitute(
        IMAGE=image, MARIADB_IMAGE=mariadb_image, VOLUME_ROOT=volume_root, NAMESPACE=NAMESPACE
    )


def install_args(chart: Path, image_repository: str, image_tag: str) -> list[str]:
    """The README's ``helm install``, with the image built here. No ``--wait``: the proxy is Ready only once its
    WHMCluster has a routable node, and the custom resources come after the chart."""
    return [
        *("install", RELEASE, str(chart), "-n", NAMESPACE, "--create-namespace"),
        *("--set", f"image.repository={image_repository}", "--set", "proxy.cluster=whm"),
        *("--set", f"image.tag={image_tag}"),
    ]


@dataclass
class Cluster:
    """kubectl and helm pointed at one cluster."""

    kubectl_argv: list[str]
    helm_argv: list[str]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return _run([*self.kubectl_argv, *args], stdin, check)

    def helm(self, *args: str, check: bool = True) -> str:
        return _run([*self.helm_argv, *args], None, check)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get", "-n", NAMESPACE, kind, name, "-o", "json"))
        return found

    def phases(self) -> tuple[str, str]:
        """The WHMCluster's and the MySQLReplication's phases ("" while they have none)."""
        return tuple(  # type: ignore[return-value]
            str((self.get(kind, name).get("status") or {}).get("phase") or "")
            for kind, name in (("whmcluster", "whm"), ("mysqlreplication", "whm-db"))
        )

    def cluster_ip(self, service: str) -> str:
        return self.kubectl("get", "service", "-n", NAMESPACE, service, "-o", "jsonpath={.spec.clusterIP}")


def member_pod(member: str) -> str:
    """The MariaDB pod of a MySQLReplication member (resources.yaml: db-N is mysql-N)."""
    return f"mysql-{member.rsplit('-', 1)[1]}"


def writer_acks(kubectl: Kubectl) -> checkers.Acks:
    """The writer pod's acknowledgements so far, from its log."""
    return checkers.parse_acks(kubectl("logs", "-n", NAMESPACE, "deploy/writer", "--tail=-1"))


def stored_ids(kubectl: Kubectl, pod: str) -> set[int]:
    """The ids in the writer's table on one MariaDB pod (as root, by its socket)."""
    query = f"SELECT id FROM {WRITER_TABLE}"
    out = kubectl("exec", "-n", NAMESPACE, pod, "-c", "mariadb", "--", "mariadb", "-uroot", "-N", "-B", "-e", query)
    return {int(row) for row in out.split()}


def judge_writes(kubectl: Kubectl, status: dict[str, Any], acks: checkers.Acks) -> list[str]:
    """What the writer's acknowledgements ``acks`` show wrong, by the checkers, against a MySQLReplication's
    ``status``: acknowledged writes missing from the current primary, members taking writes out of the order
    they were made primary (two at once). Empty when none."""
    lost = checkers.missing(acks.all(), stored_ids(kubectl, member_pod(status["currentPrimary"])))
    problems = [f"{len(lost)} acknowledged writes lost: {lost[:20]}"] if lost else []
    labels = {f"db-{n}": f"mysql-{n}:3306" for n in range(3)}  # @@hostname:@@port of each member's pod
    return problems + checkers.two_acknowledging(acks.all(), checkers.primaries_from(status, labels, "db-0"))


def _run(argv: list[str], stdin: str | None, check: bool) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=600, check=False)
    if check and result.returncode != 0:
        raise DemoError(f"{Path(argv[0]).name} {' '.join(argv[2:])}: {result.stderr.strip()}")
    return result.stdout


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise DemoError(f"{what} did not happen within {timeout:.0f}s")
        pause(0.5)
    return time.monotonic() - began


def deploy(cluster: Cluster, volume_root: Path, say: Callable[[str], None]) -> None:
    """Install the chart (unless installed), apply the workloads and the custom resources, wait until Healthy."""
    if cluster.helm("status", RELEASE, "-n", NAMESPACE, check=False) == "":
        say(f"helm {' '.join(install_args(CHART, IMAGE_REPOSITORY, IMAGE_TAG))}")
        cluster.helm(*install_args(CHART, IMAGE_REPOSITORY, IMAGE_TAG))
    settings = {"image": f"{IMAGE_REPOSITORY}:{IMAGE_TAG}", "mariadb_image": MARIADB_IMAGE}
    for name in ("workloads.yaml", "resources.yaml"):
        say(f"kubectl apply -n {NAMESPACE} -f {name}")
        cluster.kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", stdin=render(name, volume_root=str(volume_root), **settings)
        )
    shown: list[tuple[str, str]] = []

    def healthy() -> bool:
        phases = cluster.phases()
        if phases not in shown:
            say(f"  WHMCluster whm: {phases[0] or '-'}, MySQLReplication whm-db: {phases[1] or '-'}")
            shown.append(phases)
        return phases == ("Healthy", "Healthy")

    took = _wait("the cluster and the replication Healthy", healthy, HEALTHY_TIMEOUT)
    for deployment in ("whm-ha-operator", "whm-ha-proxy", "whm-ha-shim", "writer"):
        cluster.kubectl("rollout", "status", "-n", NAMESPACE, f"deploy/{deployment}", "--timeout=120s")
    say(f"Healthy after {took:.0f}s, every pod Ready.")


def failover_tour(cluster: Cluster, paths: local_cluster.Paths, say: Callable[[str], None]) -> bool:
    """Delete the primary WHM node's pod, then kill the MariaDB primary's container; report each failover."""
    primary = str(cluster.get("whmcluster", "whm")["status"]["primaryNode"])
    pod = str(cluster.get("whmnode", primary)["spec"]["podRef"]["name"])
    say(f"Deleting pod {pod}, the primary WHM node's ...")
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--wait=false")
    took = _wait("a new primary WHM node", lambda: _primary_node(cluster) not in ("", primary), 60)
    say(f"  failed over to {_primary_node(cluster)} after {took:.1f}s")
    old = str(cluster.get("mysqlreplication", "whm-db")["status"]["currentPrimary"])
    db_pod = member_pod(old)
    say(f"Killing the mariadb container of {db_pod} ({old}, the primary) ...")
    took = _crash(cluster, paths, db_pod, old, say)
    new, promoted = _current_primary(cluster), time.time()
    say(f"  promoted {new} after {took:.1f}s")
    resumed = _wait(
        "the writer writing to the new primary",
        lambda: len(writer_acks(cluster.kubectl).between(promoted)) >= 20,
        60,
    )
    say(f"  the writer goes on through whm-db-primary: 20 writes acknowledged within {resumed:.1f}s")
    took = _wait("Healthy again", lambda: cluster.phases() == ("Healthy", "Healthy"), 180)
    say(f"  {old} rejoined as a replica; Healthy {took:.0f}s later")
    acks = writer_acks(cluster.kubectl)
    problems = judge_writes(cluster.kubectl, cluster.get("mysqlreplication", "whm-db")["status"], acks)
    say(f"  {len(acks)} writes acknowledged: {'; '.join(problems) or 'none lost, never two members taking them'}")
    return not problems


def _crash(cluster: Cluster, paths: local_cluster.Paths, pod: str, primary: str, say: Callable[[str], None]) -> float:
    """Kill the primary's container; the kubelet restarts it at once, so it may be back before it is failed over.
    Then it is killed again: the kubelet waits 10 s before the next restart. Seconds from the kill to the
    promotion."""
    for attempt in range(2):
        statuses = cluster.get("pod", pod)["status"]["containerStatuses"]
        before, container_id = int(statuses[0]["restartCount"]), str(statuses[0]["containerID"])
        began = time.monotonic()
        local_cluster.kill_container(paths, container_id.split("://", 1)[1])
        promoted: list[float] = []

        def settled(before: int = before, began: float = began, promoted: list[float] = promoted) -> bool:
            if _current_primary(cluster) not in ("", primary):
                promoted.append(time.monotonic() - began)
                return True
            return _restarted(cluster, pod, before) and cluster.phases() == ("Healthy", "Healthy")

        _wait("a promotion, or the primary back", settled, 120)
        if promoted:
            return promoted[0]
        if attempt == 0:
            say("  it was back within its failure threshold; killing it again (the next restart waits 10 s) ...")
    raise DemoError(f"{primary} was not failed over after two kills")


def _primary_node(cluster: Cluster) -> str:
    return str((cluster.get("whmcluster", "whm").get("status") or {}).get("primaryNode") or "")


def _current_primary(cluster: Cluster) -> str:
    return str((cluster.get("mysqlreplication", "whm-db").get("status") or {}).get("currentPrimary") or "")


def _restarted(cluster: Cluster, pod: str, before: int) -> bool:
    return int(cluster.get("pod", pod)["status"]["containerStatuses"][0]["restartCount"]) > before


def run(scenario: str | None, say: Callable[[str], None]) -> int:
    """Start the local cluster unless it runs, deploy, show it; the tour, or watch until Ctrl-C; then remove what
    it made (the cluster too, when it started it)."""
    bin_dir = find_bin_dir()
    missing = [n for n in (*local_cluster.BINARIES, "helm") if bin_dir is None or not (bin_dir / n).exists()]
    if os.geteuid() != 0 or missing or not list(local_cluster.image_dir().glob("*.tar")):
        say("whm-ha demo --api cluster needs root, hack/build-control-plane and hack/build-images")
        return 2
    assert bin_dir is not None
    paths = local_cluster.Paths(local_cluster.STATE_DIR)
    started = not local_cluster.status(paths)["nodeReady"]
    try:
        if started:
            say("Starting the local cluster (hack/local-cluster up) ...")
            local_cluster.up(paths, log=say)
        kubeconfig = f"--kubeconfig={paths.kubeconfig}"
        cluster = Cluster([str(bin_dir / "kubectl"), kubeconfig], [str(bin_dir / "helm"), kubeconfig])
        deploy(cluster, paths.root / "volumes", say)
        say(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
        say(f"  kubeconfig  export KUBECONFIG={paths.kubeconfig}   (kubectl get whmc,whmn,myrepl -n {NAMESPACE})")
        say(f"  proxy       http://{cluster.cluster_ip('whm-ha-proxy')}/")
        say(f"  shim        http://{cluster.cluster_ip('whm-ha-shim')}:4000/api/ha/status   (Authorization: Bearer")
        say(f"              $(kubectl create token <a ServiceAccount allowed to get whmclusters> -n {NAMESPACE}))")
        if scenario == "failover":
            return 0 if failover_tour(cluster, paths, say) else 1
        say("Press Ctrl-C to remove the release (and the cluster, if the demo started it).")
        last = ("", "")
        while True:
            phases = cluster.phases()
            if phases != last:
                say(f"  WHMCluster whm: {phases[0]}, MySQLReplication whm-db: {phases[1]}")
                last = phases
            pause(2)
    except (DemoError, local_cluster.ClusterError) as exc:
        say(f"whm-ha demo: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if started:
            say("Taking the local cluster down ...")
            local_cluster.down(paths, log=say)
        elif bin_dir is not None:
            say("Removing the release and the workloads ...")
            kubeconfig = f"--kubeconfig={paths.kubeconfig}"
            subprocess.run([str(bin_dir / "helm"), kubeconfig, "uninstall", RELEASE, "-n", NAMESPACE], check=False)
            subprocess.run(
                [str(bin_dir / "kubectl"), kubeconfig, "delete", "-n", NAMESPACE, "deploy,statefulset", "--all"],
                check=False,
            )

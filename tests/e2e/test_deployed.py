"""End to end as users deploy it: ``helm install`` the chart (the proxy's HTTPS listener on, with a certificate
of a test CA in a kubernetes.io/tls Secret its WHMCluster names), deploy MariaDB, WHM nodes and a writer as pods,
apply the custom resources, then kill pods and containers and measure the failovers.

    make e2e        # on the local cluster (root)
    make e2e-kind   # on kind (Docker and kind)

The tests run in file order on one release; each leaves it Healthy for the next.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
import trustme
import yaml

from tests.fixtures.e2e import ROOT, Provider
from tests.fixtures.local_cluster import wait_until
from tests.fixtures.reports import failed
from whm_ha.demo.checkers import Acks
from whm_ha.demo.deployed import (
    NAMESPACE,
    install_args,
    judge_writes,
    member_pod,
    render,
    stored_ids,
    writer_acks,
)
from whm_ha.mysql.gtid import parse_gtid_set

INSTALL_TIMEOUT = 300.0
NODE_FAILOVER_BOUND = 1 * 2 + 1  # periodSeconds x failureThreshold + one period of the resources.yaml cluster
DB_FAILOVER_BOUND = 1 * 2 + 10  # periodSeconds x failureThreshold + the promotion itself
PEERING_LIFETIME = 10


PROXY_TLS_SECRET = "whm-ha-proxy-tls"


def install_command(provider: Provider) -> list[str]:
    chart = ROOT / "charts" / "whm-ha"
    return [*install_args(chart, provider.image_repository, provider.image_tag), "--set", "proxy.tls.enabled=true"]


def serve_https(provider: Provider) -> tuple[str, ssl.SSLContext]:
    """A certificate for the proxy's HTTPS Service (its address as the host reaches it), signed by a new CA, in
    the Secret the WHMCluster then names; the Service's HTTPS URL and a client context trusting that CA only."""
    url = provider.service_url(NAMESPACE, "whm-ha-proxy", 443).replace("http://", "https://", 1)
    host = urllib.parse.urlsplit(url).hostname
    assert host is not None
    ca = trustme.CA()
    leaf = ca.issue_cert(host, f"whm-ha-proxy.{NAMESPACE}.svc")
    pems = {"tls.crt": leaf.cert_chain_pems[0].bytes(), "tls.key": leaf.private_key_pem.bytes()}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": PROXY_TLS_SECRET},
        "type": "kubernetes.io/tls",
        "data": {name: base64.b64encode(pem).decode() for name, pem in pems.items()},
    }
    provider.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(secret))
    tls = {"spec": {"loadBalancer": {"tls": {"certificates": [{"secretName": PROXY_TLS_SECRET}]}}}}
    provider.kubectl("patch", "-n", NAMESPACE, "whmcluster", "whm", "--type=merge", "-p", json.dumps(tls))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return url, context


def _manifest(name: str, provider: Provider) -> str:
    return render(name, image=provider.image, mariadb_image=provider.mariadb_image, volume_root=provider.volume_root)


@dataclass
class Release:
    provider: Provider
    proxy_url: str
    install_seconds: float
    https_url: str
    tls_context: ssl.SSLContext
    uninstalled: bool = False

    def get(self, kind: str, name: str) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.provider.kubectl("get", "-n", NAMESPACE, kind, name, "-o", "json"))
        return found

    def status(self, kind: str, name: str) -> dict[str, object]:
        status: dict[str, object] = self.get(kind, name).get("status", {})  # type: ignore[assignment]
        return status

    def pods(self, selector: str) -> list[dict[str, object]]:
        selection = ("-l", selector) if selector else ()
        items: list[dict[str, object]] = json.loads(
            self.provider.kubectl("get", "pods", "-n", NAMESPACE, *selection, "-o", "json")
        )["items"]
        return items

    def describe(self) -> str:
        """The phases and conditions that are not as they should be, and the pods that are not Ready."""
        lines = []
        for kind, name in (("whmcluster", "whm"), ("mysqlreplication", "whm-db")):
            status = self.status(kind, name)
            lines.append(f"{kind}/{name} {status.get('phase')}")
            for condition in status.get("conditions") or []:  # type: ignore[attr-defined]
                lines.append(f"  {condition['type']}={condition['status']}: {condition.get('message')}")
        lines += [f"pod {p['metadata']['name']} not Ready" for p in self.pods("") if not _ready(p)]  # type: ignore[index]
        return "\n".join(lines)

    def healthy(self) -> bool:
        return (
            self.status("whmcluster", "whm").get("phase") == "Healthy"
            and self.status("mysqlreplication", "whm-db").get("phase") == "Healthy"
        )

    def acks(self) -> Acks:
        """The writer pod's acknowledged writes, from its log."""
        return writer_acks(self.provider.kubectl)

    def sql(self, pod: str, query: str) -> str:
        return self.provider.kubectl(
            *("exec", "-n", NAMESPACE, pod, "-c", "mariadb", "--"),
            *("mariadb", "-uroot", "-N", "-B", "-e", query),  # root@localhost by the socket
        )


@dataclass
class Traffic:
    """GETs through the proxy's Service from the host, back to back, until stopped (HTTPS with ``context``:
    each GET on a new connection, so each is a new handshake)."""

    url: str
    context: ssl.SSLContext | None = None
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5, context=self.context) as response:
                    response.read()
                self.ok += 1
            except OSError as exc:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {exc}")
            time.sleep(0.02)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


@pytest.fixture(scope="module")
def release(provider: Provider) -> Iterator[Release]:
    began = time.monotonic()
    provider.helm(*install_command(provider))
    install_seconds = time.monotonic() - began
    provider.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_manifest("workloads.yaml", provider))
    provider.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_manifest("resources.yaml", provider))
    proxy_url = provider.service_url(NAMESPACE, "whm-ha-proxy", 80)
    https_url, tls_context = serve_https(provider)
    deployed = Release(provider, proxy_url, install_seconds, https_url, tls_context)
    wait_until(
        "the cluster and the replication Healthy",
        deployed.healthy,
        timeout=INSTALL_TIMEOUT,
        interval=1.0,
        explain=deployed.describe,
    )
    for component in ("operator", "proxy", "shim"):
        provider.kubectl("rollout", "status", "-n", NAMESPACE, f"deploy/whm-ha-{component}", "--timeout=120s")
    wait_until("the proxy serving the Secret's certificate", lambda: _answers(https_url, tls_context), timeout=60)
    deployed.install_seconds = time.monotonic() - began
    provider.kubectl("rollout", "status", "-n", NAMESPACE, "deploy/writer", "--timeout=120s")
    yield deployed
    if not deployed.uninstalled:
        provider.helm("uninstall", "whm-ha", "-n", NAMESPACE, "--wait", "--timeout=120s")


@pytest.fixture(autouse=True)
def logs_when_failed(release: Release, request: pytest.FixtureRequest) -> Iterator[None]:
    """When a test fails: the custom resources' state, the operators' logs and the namespace's events."""
    yield
    if not failed(request) or release.uninstalled:
        return
    kubectl = release.provider.kubectl
    print(release.describe())
    print(kubectl("get", "-n", NAMESPACE, "mysqlreplication", "whm-db", "-o", "jsonpath={.status}", check=False))
    for pod in release.pods("app.kubernetes.io/component=operator"):
        name = pod["metadata"]["name"]  # type: ignore[index]
        print(f"----- logs of {name} -----")
        print(kubectl("logs", "-n", NAMESPACE, name, "--tail=200", check=False))
    print(kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False)[-6000:])


def test_install_brings_up_every_component_under_its_probes(release: Release) -> None:
    print(f"helm install to everything Ready and Healthy: {release.install_seconds:.1f}s")
    for component, replicas in (("operator", 2), ("proxy", 2), ("shim", 2)):
        pods = release.pods(f"app.kubernetes.io/component={component}")
        ready = [p for p in pods if _ready(p)]
        assert len(ready) == replicas, f"{component}: {len(ready)} of {replicas} Ready"
    peers = _operator_peers(release)
    assert len(peers) == 2, peers
    with Traffic(release.proxy_url) as traffic, Traffic(release.https_url, release.tls_context) as https:
        wait_until("GETs through the proxy's Service", lambda: traffic.ok >= 20, timeout=30)
        wait_until("HTTPS GETs through it, verified against the test CA", lambda: https.ok >= 20, timeout=30)
    assert not traffic.failures
    assert not https.failures, https.failures[:5]


def test_the_primary_node_pod_deleted_fails_over_without_a_failed_get(release: Release) -> None:
    cluster = release.status("whmcluster", "whm")
    primary = str(cluster["primaryNode"])
    pod = str(release.get("whmnode", primary)["spec"]["podRef"]["name"])  # type: ignore[index]
    with Traffic(release.proxy_url) as traffic, Traffic(release.https_url, release.tls_context) as https:
        wait_until("traffic", lambda: traffic.ok >= 10 and https.ok >= 10, timeout=30)
        began = time.monotonic()
        release.provider.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--wait=false")
        took = wait_until(
            "a new primary node",
            lambda: release.status("whmcluster", "whm").get("primaryNode") not in (None, primary),
            timeout=60,
        )
        print(f"primary node {primary} (pod deleted) replaced after {took:.1f}s")
        wait_until("the replacement pod discovered and Healthy", lambda: _nodes_healthy(release, 3), timeout=120)
    print(f"GETs during the failover: {traffic.ok} ok, {len(traffic.failures)} failed")
    print(f"HTTPS GETs (a handshake each) during the failover: {https.ok} ok, {len(https.failures)} failed")
    assert took <= NODE_FAILOVER_BOUND + 2, "a deleted pod is gone at once: the bound plus the API's delay"
    assert not traffic.failures, traffic.failures[:5]
    assert not https.failures, https.failures[:5]
    assert time.monotonic() - began < 180


def _crash(
    release: Release, pod: str, container: str, replaced: Callable[[], bool], recovered: Callable[[], bool]
) -> float:
    """Kill the container as a crash would. The kubelet restarts it at once, so it may be back within its failure
    threshold and keep its role; then it is killed again, and the kubelet's back-off (10 s) outlasts the threshold.
    Returns the seconds from the kill that was failed over to the failover."""

    def restarts() -> int:
        statuses = release.get("pod", pod)["status"]["containerStatuses"]  # type: ignore[index]
        return int(next(s for s in statuses if s["name"] == container)["restartCount"])

    before = restarts()
    began = time.monotonic()
    release.provider.kill_container(NAMESPACE, pod, container)
    failed_over: list[float] = []

    def settled() -> bool:
        if replaced():
            failed_over.append(time.monotonic() - began)
            return True
        return restarts() > before and recovered()

    wait_until("a failover, or the container back within its threshold", settled, timeout=120)
    if failed_over:
        print(f"{pod}/{container} killed: failed over after {failed_over[0]:.1f}s")
        return failed_over[0]
    began = time.monotonic()
    release.provider.kill_container(NAMESPACE, pod, container)
    took = wait_until("a failover after the second kill", replaced, timeout=120)
    print(f"{pod}/{container} killed: back within its threshold; killed again: failed over after {took:.1f}s")
    return took


def test_the_primary_node_container_killed_fails_over_without_a_failed_get(release: Release) -> None:
    primary = str(release.status("whmcluster", "whm")["primaryNode"])
    pod = str(release.get("whmnode", primary)["spec"]["podRef"]["name"])  # type: ignore[index]
    with Traffic(release.proxy_url) as traffic:
        wait_until("traffic", lambda: traffic.ok >= 10, timeout=30)
        took = _crash(
            release,
            pod,
            "node",
            lambda: release.status("whmcluster", "whm").get("primaryNode") not in (None, primary),
            lambda: _nodes_healthy(release, 3),
        )
        wait_until("the restarted container Healthy again", lambda: _nodes_healthy(release, 3), timeout=120)
    print(f"GETs during the kills: {traffic.ok} ok, {len(traffic.failures)} failed")
    assert took <= NODE_FAILOVER_BOUND + 1
    assert not traffic.failures, traffic.failures[:5]


def test_the_database_primary_container_killed_promotes_without_losing_an_acknowledged_write(
    release: Release,
) -> None:
    status = release.status("mysqlreplication", "whm-db")
    old = str(status["currentPrimary"])
    old_pod = member_pod(old)
    wait_until("the writer writing", lambda: len(release.acks()) >= 20, timeout=60)
    took = _crash(
        release,
        old_pod,
        "mariadb",
        lambda: release.status("mysqlreplication", "whm-db").get("currentPrimary") not in (None, old),
        release.healthy,
    )
    new, promoted = str(release.status("mysqlreplication", "whm-db")["currentPrimary"]), time.time()
    print(f"database primary {old} (container killed) replaced by {new} after {took:.1f}s")
    resumed = wait_until(
        "the new primary acknowledging writes", lambda: len(release.acks().between(promoted)) >= 20, timeout=60
    )
    print(f"writer resumed through whm-db-primary {resumed:.1f}s after the promotion was recorded")
    wait_until("the old primary rejoining", release.healthy, timeout=180, interval=1.0, explain=release.describe)
    acks = release.acks()
    rejoined = release.status("mysqlreplication", "whm-db")
    problems = judge_writes(release.provider.kubectl, rejoined, acks)
    print(f"{len(acks)} acknowledged writes; {'; '.join(problems) or 'none lost, never two members taking them'}")
    assert not problems
    assert {ack.member for ack in acks.between(promoted)} == {f"{member_pod(new)}:3306"}, (
        "the writes since went to the new primary"
    )
    assert took <= DB_FAILOVER_BOUND
    assert rejoined["currentPrimary"] == new
    assert release.sql(old_pod, "SELECT @@read_only").strip() == "1"


WRITABLE_SAMPLER = """
import os, sys, time, pymysql
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    writable = []
    for host in ("mysql-0.mysql", "mysql-1.mysql", "mysql-2.mysql"):
        try:
            conn = pymysql.connect(host=host, user=os.environ["DB_USER"], password=os.environ["DB_PASSWORD"],
                                   connect_timeout=1, read_timeout=1)
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only")
                if cur.fetchone()[0] == 0:
                    writable.append(host.split(".")[0])
            conn.close()
        except pymysql.err.MySQLError:
            pass
    print(time.time(), ",".join(writable), flush=True)
    time.sleep(0.05)
"""


def test_the_active_operator_pod_deleted_hands_over_without_a_second_primary(release: Release) -> None:
    """The other replica takes over; sampled throughout, from a pod (the writable MySQL servers, about ten times a
    second) and from the API (the WHM nodes whose role is Primary): never two of either."""
    seconds = 60
    sampler = subprocess.Popen(
        [
            *(release.provider.kubectl_binary, f"--kubeconfig={release.provider.kubeconfig}", "exec", "-n", NAMESPACE),
            *("deploy/writer", "--", "python", "-c", WRITABLE_SAMPLER, str(seconds)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    primary_nodes: list[int] = []
    database_samples: list[str] = []
    stop = threading.Event()

    def sample_nodes() -> None:
        while not stop.is_set():
            nodes = json.loads(release.provider.kubectl("get", "whmnodes", "-n", NAMESPACE, "-o", "json"))["items"]
            primary_nodes.append(sum(1 for n in nodes if (n.get("status") or {}).get("role") == "Primary"))

    def read_samples() -> None:
        assert sampler.stdout is not None
        for line in sampler.stdout:
            database_samples.append(line.rstrip("\n").split(" ", 1)[1] if " " in line else "")

    threads = [threading.Thread(target=target, daemon=True) for target in (sample_nodes, read_samples)]
    for thread in threads:
        thread.start()
    wait_until("the samplers running", lambda: len(database_samples) >= 3 and len(primary_nodes) >= 3, timeout=60)
    active = _operator_peers(release)[0]
    release.provider.kubectl("delete", "pod", "-n", NAMESPACE, active, "--wait=false")
    try:
        took = wait_until(
            "another operator active",
            lambda: (peers := _operator_peers(release)) != [] and peers[0] != active,
            timeout=PEERING_LIFETIME * 3,
        )
        print(f"operator {active} deleted; another active after {took:.1f}s")
        # The one now active fails a node over as the deleted one would.
        primary = str(release.status("whmcluster", "whm")["primaryNode"])
        pod = str(release.get("whmnode", primary)["spec"]["podRef"]["name"])  # type: ignore[index]
        release.provider.kubectl("delete", "pod", "-n", NAMESPACE, pod, "--wait=false")
        failover = wait_until(
            "a failover by the new operator",
            lambda: release.status("whmcluster", "whm").get("primaryNode") not in (None, primary),
            timeout=PEERING_LIFETIME + NODE_FAILOVER_BOUND + 10,
        )
        print(f"then a node failover by it in {failover:.1f}s")
        wait_until(
            "Healthy again",
            lambda: release.healthy() and _nodes_healthy(release, 3),
            timeout=180,
            explain=release.describe,
        )
        settled = len(database_samples)
        wait_until("samples after it settled", lambda: len(database_samples) >= settled + 3, timeout=30)
    finally:
        stop.set()
        sampler.terminate()
        for thread in threads:
            thread.join(30)
        sampler.wait(30)
    print(f"{len(database_samples)} samples of the writable servers, {len(primary_nodes)} of the primary nodes")
    assert all("," not in writable for writable in database_samples), "two writable MySQL servers at once"
    assert max(primary_nodes) <= 1, "two primary WHM nodes at once"


def _terminating(pod: dict[str, object]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))  # type: ignore[attr-defined]


def _ready(pod: dict[str, object]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])  # type: ignore[attr-defined]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _nodes_healthy(release: Release, count: int) -> bool:
    nodes = json.loads(release.provider.kubectl("get", "whmnodes", "-n", NAMESPACE, "-o", "json"))["items"]
    healthy = [n for n in nodes if n.get("status", {}).get("health") == "Healthy"]
    return len(healthy) >= count and release.status("whmcluster", "whm").get("phase") == "Healthy"


def _operator_peers(release: Release) -> list[str]:
    """The operator pods alive in kopf's peering, the active one (highest priority) first."""
    peering = json.loads(release.provider.kubectl("get", "clusterkopfpeering", "whm-ha", "-o", "json"))
    peers = [(info.get("priority", 0), peer_id) for peer_id, info in (peering.get("status") or {}).items()]
    pods = {str(p["metadata"]["name"]) for p in release.pods("app.kubernetes.io/component=operator")}  # type: ignore[index]
    ranked = [pod for _, peer_id in sorted(peers, reverse=True) for pod in pods if pod in peer_id]
    return list(dict.fromkeys(ranked))


LEGACY_TOOL_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: legacy-tool}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: legacy-tool}
rules:
  - apiGroups: [ha.whm.io]
    resources: [whmclusters, whmnodes, mysqlreplications]
    verbs: [get, list, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: legacy-tool}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: legacy-tool}
subjects: [{kind: ServiceAccount, name: legacy-tool, namespace: whm-ha}]
"""


def _call(url: str, token: str | None, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether anything answers HTTP there (HTTPS: with a certificate ``context`` verifies)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_the_shim_serves_the_seeds_calls_with_a_service_account_token(release: Release) -> None:
    """Through the shim's Service, as a legacy tool in the cluster would: TokenReview and SubjectAccessReview in
    the cluster decide, and a failover asked through it takes effect."""
    provider = release.provider
    provider.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=LEGACY_TOOL_RBAC)
    token = provider.kubectl("create", "token", "legacy-tool", "-n", NAMESPACE, "--duration=10m").strip()
    shim = provider.service_url(NAMESPACE, "whm-ha-shim", 4000)
    wait_until("the shim's Service", lambda: _answers(f"{shim}/api/ha/status"), timeout=30)

    status, body = _call(f"{shim}/api/ha/status", None)
    assert status == 401 and body["success"] is False
    status, body = _call(f"{shim}/api/ha/status", token)
    assert status == 200 and body["success"] is True, body
    status, body = _call(f"{shim}/api/ha/database/replication", token)
    assert status == 200 and body["success"] is True, body
    status, body = _call(f"{shim}/api/ha/nodes", token)
    assert status == 200, body
    nodes: list[dict[str, object]] = body["nodes"]  # type: ignore[assignment]
    target = next(n for n in nodes if n["role"] != "primary" and n["status"] == "healthy")
    status, body = _call(f"{shim}/api/ha/failover", token, {"targetNodeId": target["id"]})
    assert status == 200 and body["success"] is True, body
    took = wait_until(
        "the failover asked through the shim",
        lambda: release.status("whmcluster", "whm").get("primaryNode") == target["name"],
        timeout=30,
    )
    print(f"failover through the shim to {target['name']} took effect after {took:.1f}s")
    status, body = _call(f"{shim}/api/ha/failover/history", token)
    assert status == 200 and str(target["name"]) in json.dumps(body["history"]), body
    # A token without the permission is refused, and the change is not made.
    provider.kubectl("create", "serviceaccount", "nobody", "-n", NAMESPACE)
    nobody = provider.kubectl("create", "token", "nobody", "-n", NAMESPACE, "--duration=10m").strip()
    other = next(n for n in nodes if n["name"] != target["name"])
    status, body = _call(f"{shim}/api/ha/failover", nobody, {"targetNodeId": other["id"]})
    assert status == 403 and body["success"] is False, body
    assert release.status("whmcluster", "whm").get("primaryNode") == target["name"]


def test_the_pods_have_the_charts_service_accounts_and_nothing_else(release: Release) -> None:
    provider = release.provider
    accounts = {"operator": "whm-ha-operator", "proxy": "whm-ha-proxy", "shim": "whm-ha-shim"}
    for component, account in accounts.items():
        for pod in release.pods(f"app.kubernetes.io/component={component}"):
            assert pod["spec"]["serviceAccountName"] == account, (component, pod["metadata"]["name"])  # type: ignore[index]
    subjects = {f"system:serviceaccount:{NAMESPACE}:{a}" for a in accounts.values()}
    bindings = json.loads(provider.kubectl("get", "clusterrolebindings,rolebindings", "-A", "-o", "json"))["items"]
    checked = 0
    for binding in bindings:
        named = {
            f"system:serviceaccount:{s.get('namespace', binding['metadata'].get('namespace'))}:{s['name']}"
            for s in binding.get("subjects") or []
            if s["kind"] == "ServiceAccount"
        }
        if named & subjects:
            annotations = binding["metadata"].get("annotations") or {}
            assert annotations.get("meta.helm.sh/release-name") == "whm-ha", binding["metadata"]["name"]
            checked += 1
    assert checked >= 3, "each component's bindings come from the chart"


SEAWEEDFS = """
apiVersion: v1
kind: Secret
metadata: {name: seaweedfs-s3}
stringData:
  s3.json: '{"identities": [{"name": "whm-ha", "credentials": [{"accessKey": "e2e-key", "secretKey": "e2e-secret"}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}'
  accessKeyId: e2e-key
  secretAccessKey: e2e-secret
---
apiVersion: v1
kind: Service
metadata: {name: seaweedfs}
spec:
  selector: {app: seaweedfs}
  ports: [{name: s3, port: 8333}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: seaweedfs}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: seaweedfs}}
  template:
    metadata: {labels: {app: seaweedfs}}
    spec:
      containers:
        - name: weed
          image: ${SEAWEEDFS_IMAGE}
          imagePullPolicy: IfNotPresent
          args: [server, -dir=/data, -ip=127.0.0.1, -ip.bind=0.0.0.0, -master.telemetry=false,
                 -master.volumeSizeLimitMB=64, -volume.max=16, -filer, -s3, -s3.port=8333, -s3.port.iceberg=0,
                 -s3.port.lance=0, -s3.config=/etc/seaweedfs/s3.json]
          ports: [{name: s3, containerPort: 8333}]
          readinessProbe:
            tcpSocket: {port: 8333}
            periodSeconds: 2
          volumeMounts:
            - {name: data, mountPath: /data}
            - {name: tmp, mountPath: /tmp}
            - {name: config, mountPath: /etc/seaweedfs, readOnly: true}
      volumes:
        - {name: data, emptyDir: {}}
        - {name: tmp, emptyDir: {}}
        - {name: config, secret: {secretName: seaweedfs-s3, items: [{key: s3.json, path: s3.json}]}}
"""
BACKUP_STORAGE = {
    "s3": {
        "endpoint": f"http://seaweedfs.{NAMESPACE}.svc.cluster.local:8333",
        "bucket": "backups",
        "prefix": "whm-db/",
        "credentialsSecret": {"name": "seaweedfs-s3"},
    }
}


def _restored_servers(provider: Provider) -> str:
    """Two new, empty MariaDB pods for the restored replication: workloads.yaml's StatefulSet and headless Service
    as mysql-restored, their data in emptyDirs, their server ids apart from the source's."""
    docs = list(yaml.safe_load_all(_manifest("workloads.yaml", provider)))
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mysql")
    servers = next(d for d in docs if d["kind"] == "StatefulSet")
    service["metadata"]["name"] = "mysql-restored"
    service["spec"]["selector"] = {"app": "mysql-restored"}
    servers["metadata"]["name"] = servers["spec"]["serviceName"] = "mysql-restored"
    servers["spec"]["replicas"] = 2
    servers["spec"]["selector"]["matchLabels"] = servers["spec"]["template"]["metadata"]["labels"] = {
        "app": "mysql-restored"
    }
    pod = servers["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "data", "emptyDir": {}}]
    (container,) = pod["containers"]
    container["args"] = [container["args"][0].replace("${POD_NAME##*-} + 1 ))", "${POD_NAME##*-} + 11 ))")]
    return yaml.safe_dump_all([service, servers])


def _object_store(provider: Provider) -> str:
    """SeaweedFS as a pod behind Service seaweedfs, with the bucket "backups"; its manifest (to delete it)."""
    assert provider.seaweedfs_image is not None
    store = SEAWEEDFS.replace("${SEAWEEDFS_IMAGE}", provider.seaweedfs_image)
    provider.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=store)
    provider.kubectl("rollout", "status", "-n", NAMESPACE, "deploy/seaweedfs", "--timeout=120s")
    s3 = boto3.client(
        "s3",
        endpoint_url=provider.service_url(NAMESPACE, "seaweedfs", 8333),
        region_name="us-east-1",
        aws_access_key_id="e2e-key",
        aws_secret_access_key="e2e-secret",
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )

    def bucket() -> bool:
        try:
            s3.create_bucket(Bucket="backups")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    wait_until("the bucket created", bucket, timeout=60)
    return store


RESTORED = {
    "apiVersion": "ha.whm.io/v1alpha1",
    "kind": "MySQLReplication",
    "metadata": {"name": "whm-restored"},
    "spec": {
        "flavor": "mariadb",
        "primary": "r-0",
        "members": [
            {"name": f"r-{i}", "host": f"mysql-restored-{i}.mysql-restored.{NAMESPACE}.svc.cluster.local"}
            for i in range(2)
        ],
        "credentialsSecret": {"name": "whm-db-admin"},
        "replicationSecret": {"name": "whm-db-replication"},
        "periodSeconds": 1,
        "failureThreshold": 2,
        "bootstrap": {"recovery": {"backup": "latest", "storage": BACKUP_STORAGE, "target": {"endOfArchive": True}}},
    },
}
"""The new replication: every member loaded from the latest backup, its primary replayed to the end of the archive."""


def _covers(archived: str | None, gtid: str) -> bool:
    return parse_gtid_set("mariadb", archived).contains(parse_gtid_set("mariadb", gtid))


@pytest.mark.timeout(900)  # a scheduled time (up to a minute), the backup, the archive, a restore into new pods
def test_a_scheduled_backup_runs_as_a_job_and_restores_with_the_archive_into_new_pods(release: Release) -> None:
    """spec.backup on the MariaDB pods' replication (a schedule every minute, the archive on) to a SeaweedFS pod: a
    scheduled backup Completed by its Job, the archiver Deployment streaming; then a new replication of new pods
    bootstrapped from the latest backup to the end of the archive holds every row written before a marker row, and
    the marker, written after the backup."""
    provider = release.provider
    if provider.seaweedfs_image is None:
        pytest.skip("no SeaweedFS image: run hack/build-seaweedfs, then hack/build-images")
    kubectl = provider.kubectl
    store = _object_store(provider)
    primary = member_pod(str(release.status("mysqlreplication", "whm-db")["currentPrimary"]))
    release.sql(
        primary, "CREATE TABLE whm_ha.e2e_backup (id INT PRIMARY KEY); INSERT INTO whm_ha.e2e_backup VALUES (1)"
    )
    earlier = set(kubectl("get", "-n", NAMESPACE, "mysqlbackups", "-o", "name").split())  # of an earlier run
    backup = {"storage": BACKUP_STORAGE, "schedule": "* * * * *", "archive": {"enabled": True}}
    patch = json.dumps({"spec": {"backup": backup}})
    kubectl("patch", "-n", NAMESPACE, "mysqlreplication", "whm-db", "--type=merge", "-p", patch)
    restored = False
    try:
        done: list[dict[str, Any]] = []

        def completed() -> bool:
            listed = json.loads(kubectl("get", "-n", NAMESPACE, "mysqlbackups", "-o", "json"))["items"]
            done[:] = [
                b
                for b in listed
                if (b.get("status") or {}).get("phase") == "Completed"
                and f"mysqlbackup.ha.whm.io/{b['metadata']['name']}" not in earlier
            ]
            return bool(done)

        wait_until("a scheduled backup Completed", completed, timeout=180, interval=2.0)
        name = done[0]["metadata"]["name"]
        job = json.loads(kubectl("get", "-n", NAMESPACE, "job", f"{name}-try-1", "-o", "json"))
        assert job["status"].get("succeeded") == 1, job["status"]
        assert job["metadata"]["ownerReferences"][0]["name"] == name

        def streaming() -> bool:
            archive = release.status("mysqlreplication", "whm-db").get("archive") or {}
            return archive.get("state") == "Streaming"  # type: ignore[union-attr]

        wait_until("the archiver streaming", streaming, timeout=120, interval=1.0)
        before = stored_ids(kubectl, primary)
        marker = release.sql(primary, "INSERT INTO whm_ha.e2e_backup VALUES (2); SELECT @@last_gtid").strip()

        def archived() -> bool:
            archive = release.status("mysqlreplication", "whm-db").get("archive") or {}
            return _covers(archive.get("archivedGtids"), marker)  # type: ignore[union-attr]

        wait_until(f"the archive holding {marker}", archived, timeout=60, interval=1.0)

        restored = True
        kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=_restored_servers(provider))
        kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(RESTORED))

        def healthy() -> bool:
            return release.status("mysqlreplication", "whm-restored").get("phase") == "Healthy"

        def explain() -> str:
            return kubectl("get", "-n", NAMESPACE, "mysqlreplication", "whm-restored", "-o", "jsonpath={.status}")

        wait_until("the restored replication Healthy", healthy, timeout=300, interval=2.0, explain=explain)
        assert before <= stored_ids(kubectl, "mysql-restored-0"), "every row written before the marker"
        rows = release.sql("mysql-restored-0", "SELECT id FROM whm_ha.e2e_backup ORDER BY id").split()
        assert rows == ["1", "2"], rows
    finally:
        kubectl(
            "patch", "-n", NAMESPACE, "mysqlreplication", "whm-db", "--type=merge", "-p", '{"spec": {"backup": null}}'
        )
        if restored:
            kubectl("delete", "-n", NAMESPACE, "mysqlreplication", "whm-restored", "--ignore-not-found", check=False)
            kubectl("delete", "-n", NAMESPACE, "statefulset,service", "mysql-restored", "--ignore-not-found")
        kubectl("delete", "-n", NAMESPACE, "-f", "-", "--ignore-not-found", stdin=store, check=False)
        release.sql(primary, "DROP TABLE IF EXISTS whm_ha.e2e_backup")


def test_helm_upgrade_and_rollback_roll_the_proxy_without_a_failed_get(release: Release) -> None:
    """Over HTTP and HTTPS: a new proxy pod is Ready only once it serves the certificate."""
    provider = release.provider
    provider.retag_image("e2e-upgrade")
    chart = str(ROOT / "charts" / "whm-ha")
    with Traffic(release.proxy_url) as traffic, Traffic(release.https_url, release.tls_context) as https:
        wait_until("traffic", lambda: traffic.ok >= 10 and https.ok >= 10, timeout=30)
        began = time.monotonic()
        provider.helm(
            *("upgrade", "whm-ha", chart, "-n", NAMESPACE, "--reuse-values"),
            *("--set", "proxy.replicas=3", "--set", "image.tag=e2e-upgrade", "--wait", "--timeout=300s"),
        )
        upgraded = time.monotonic() - began
        proxies = [p for p in release.pods("app.kubernetes.io/component=proxy") if not _terminating(p)]
        assert len([p for p in proxies if _ready(p)]) == 3
        assert all(p["spec"]["containers"][0]["image"].endswith(":e2e-upgrade") for p in proxies)  # type: ignore[index]
        began = time.monotonic()
        provider.helm("rollback", "whm-ha", "1", "-n", NAMESPACE, "--wait", "--timeout=300s")
        rolled_back = time.monotonic() - began
        wait_until("GETs after the rollback", lambda: traffic.ok >= 50 and https.ok >= 50, timeout=30)
    print(
        f"upgrade {upgraded:.1f}s, rollback {rolled_back:.1f}s; GETs: {traffic.ok} ok, {len(traffic.failures)} failed;"
        f" HTTPS: {https.ok} ok, {len(https.failures)} failed"
    )
    assert not traffic.failures, traffic.failures[:5]
    assert not https.failures, https.failures[:5]
    proxies = [p for p in release.pods("app.kubernetes.io/component=proxy") if not _terminating(p)]
    images = {p["spec"]["containers"][0]["image"] for p in proxies}  # type: ignore[index]
    assert images == {provider.image}
    wait_until("Healthy after the rollback", release.healthy, timeout=120, explain=release.describe)


def test_helm_uninstall_leaves_the_custom_resources_and_their_definitions(release: Release) -> None:
    provider = release.provider
    provider.helm("uninstall", "whm-ha", "-n", NAMESPACE, "--wait", "--timeout=120s")
    release.uninstalled = True
    assert release.get("whmcluster", "whm")["metadata"]["name"] == "whm"  # type: ignore[index]
    assert release.get("mysqlreplication", "whm-db")["metadata"]["name"] == "whm-db"  # type: ignore[index]
    crds = provider.kubectl("get", "crds", "-o", "name")
    for name in ("whmclusters.ha.whm.io", "whmnodes.ha.whm.io", "mysqlreplications.ha.whm.io"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in crds
    wait_until("the chart's pods gone", lambda: not release.pods("app.kubernetes.io/instance=whm-ha"), timeout=90)

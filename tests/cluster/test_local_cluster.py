"""The local cluster itself: what the end-to-end suite relies on works here as on any cluster.

Pods run the project image (the stand-in WHM node serves ``/healthz`` and answers pages with its name).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from functools import partial

import pytest

from tests.fixtures.local_cluster import PROJECT_IMAGE, Cluster, wait_until
from whm_ha import local_cluster

ROLLOUT_TIMEOUT = 120.0


def _web(name: str, replicas: int) -> str:
    """A Deployment of stand-in nodes with a kubelet readiness probe, and a ClusterIP Service in front."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: node
          image: {PROJECT_IMAGE}
          imagePullPolicy: Never
          command: [python, -m, whm_ha.demo_node, --host, 0.0.0.0, --port, "8080", --name, $(POD_NAME)]
          env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
          ports: [{{containerPort: 8080}}]
          readinessProbe:
            httpGet: {{path: /healthz, port: 8080}}
            periodSeconds: 1
            failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def _rollout(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("rollout", "status", "-n", namespace, f"deploy/{name}", f"--timeout={ROLLOUT_TIMEOUT:.0f}s")


def _pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = cluster.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return items


def _ready(pod: dict[str, object]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])  # type: ignore[attr-defined]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_addresses(cluster: Cluster, namespace: str, service: str) -> set[str]:
    slices = cluster.get("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}")
    return {
        address
        for item in slices["items"]
        for endpoint in item.get("endpoints") or []
        if endpoint.get("conditions", {}).get("ready")
        for address in endpoint["addresses"]
    }


def _get(url: str, timeout: float = 5.0) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer: dict[str, str] = json.loads(response.read())
        return answer


def _answers(url: str) -> bool:
    try:
        _get(url, timeout=1.0)
    except OSError:
        return False
    return True


def test_cluster_came_up_within_its_bound(k8s_cluster: Cluster) -> None:
    if k8s_cluster.startup_seconds is None:
        pytest.skip("the k8s_cluster was already up")
    print(f"local k8s_cluster up in {k8s_cluster.startup_seconds:.1f}s")
    assert k8s_cluster.startup_seconds <= 60.0


def test_readiness_probes_gate_a_service_reached_from_the_host_and_from_a_pod(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    k8s_cluster.apply(_web("web", 2), k8s_namespace)
    _rollout(k8s_cluster, k8s_namespace, "web")
    pods = _pods(k8s_cluster, k8s_namespace, "web")
    names = {p["metadata"]["name"] for p in pods}  # type: ignore[index]
    service_ip = k8s_cluster.get("service", "-n", k8s_namespace, "web")["spec"]["clusterIP"]

    # From the host, through kube-proxy's rules (once it has synced both endpoints): both pods answer.
    took = wait_until(
        "both pods to answer through the Service",
        lambda: (
            _answers(f"http://{service_ip}/") and {_get(f"http://{service_ip}/")["node"] for _ in range(20)} == names
        ),
        timeout=30,
        interval=0.1,
    )
    print(f"Service answering from both pods {took:.1f}s after the rollout")

    # From a pod, by the Service's DNS name (the pod's search path).
    answer = k8s_cluster.exec_python(
        k8s_namespace,
        "deploy/web",
        "import urllib.request; print(urllib.request.urlopen('http://web/', timeout=5).read().decode())",
    )
    assert json.loads(answer)["node"] in names

    # The kubelet's probe takes an unhealthy pod out of the Service, and puts it back when it recovers.
    sick = pods[0]
    sick_ip = sick["status"]["podIP"]  # type: ignore[index]
    control = urllib.request.Request(f"http://{sick_ip}:8080/_control", data=b'{"mode": "unhealthy"}', method="POST")
    urllib.request.urlopen(control, timeout=5).close()
    healthy = pods[1]["metadata"]["name"]  # type: ignore[index]
    took = wait_until(
        "the Service to route to the healthy pod only",
        lambda: {_get(f"http://{service_ip}/")["node"] for _ in range(10)} == {healthy},
        timeout=30,
    )
    print(f"unhealthy pod out of the Service's routing after {took:.1f}s")
    assert _ready_addresses(k8s_cluster, k8s_namespace, "web") == {pods[1]["status"]["podIP"]}  # type: ignore[index]
    control.data = b'{"mode": "healthy"}'
    urllib.request.urlopen(control, timeout=5).close()
    wait_until("the pod to return", lambda: len(_ready_addresses(k8s_cluster, k8s_namespace, "web")) == 2, timeout=30)


def test_cluster_dns_resolves_services_and_statefulset_pods(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    k8s_cluster.apply(
        _web("web", 1)
        + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{port: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: node
          image: {PROJECT_IMAGE}
          imagePullPolicy: Never
          command: [python, -m, whm_ha.demo_node, --host, 0.0.0.0, --port, "8080", --name, db-0]
""",
        k8s_namespace,
    )
    _rollout(k8s_cluster, k8s_namespace, "web")
    k8s_cluster.kubectl("rollout", "status", "-n", k8s_namespace, "statefulset/db", f"--timeout={ROLLOUT_TIMEOUT:.0f}s")
    service_ip = k8s_cluster.get("service", "-n", k8s_namespace, "web")["spec"]["clusterIP"]
    pod_ip = k8s_cluster.get("pod", "-n", k8s_namespace, "db-0")["status"]["podIP"]
    domain = local_cluster.CLUSTER_DOMAIN

    # From the host, at the cluster's DNS server.
    assert local_cluster.dns_query(f"web.{k8s_namespace}.svc.{domain}") == (0, [service_ip])
    name = f"db-0.db.{k8s_namespace}.svc.{domain}"
    wait_until(f"{name} in DNS", lambda: local_cluster.dns_query(name) == (0, [pod_ip]), timeout=30)

    # From a pod, through its resolv.conf (ClusterFirst), short names included.
    resolved = k8s_cluster.exec_python(
        k8s_namespace,
        "deploy/web",
        "import socket; print(socket.gethostbyname('db-0.db'), socket.gethostbyname('web'))",
    )
    assert resolved.split() == [pod_ip, service_ip]


def test_a_service_account_token_authenticates_a_pod_to_the_api_server(
    k8s_cluster: Cluster, k8s_namespace: str
) -> None:
    k8s_cluster.apply(_web("web", 1), k8s_namespace)
    _rollout(k8s_cluster, k8s_namespace, "web")
    code = """
import json, ssl, urllib.request
base = "/var/run/secrets/kubernetes.io/serviceaccount/"
token = open(base + "token").read()
context = ssl.create_default_context(cafile=base + "ca.crt")
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
request = urllib.request.Request(
    "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews", data=body, method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, context=context, timeout=10))["status"]["userInfo"]["username"])
"""
    assert (
        k8s_cluster.exec_python(k8s_namespace, "deploy/web", code).strip()
        == f"system:serviceaccount:{k8s_namespace}:default"
    )


def test_a_deleted_pod_is_replaced(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    k8s_cluster.apply(_web("web", 1), k8s_namespace)
    _rollout(k8s_cluster, k8s_namespace, "web")
    (old,) = (p["metadata"]["name"] for p in _pods(k8s_cluster, k8s_namespace, "web"))  # type: ignore[index]
    began = time.monotonic()
    k8s_cluster.kubectl("delete", "pod", "-n", k8s_namespace, old, "--wait=false")

    def replaced() -> bool:
        pods = _pods(k8s_cluster, k8s_namespace, "web")
        return any(p["metadata"]["name"] != old and _ready(p) for p in pods)  # type: ignore[index]

    wait_until("a Ready replacement", replaced, timeout=60)
    print(f"replacement Ready {time.monotonic() - began:.1f}s after the delete")


def test_nothing_a_pod_sends_leaves_the_machine(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    """No route out of a pod (connects fail at once, not after a timeout), no upstream DNS."""
    k8s_cluster.apply(_web("web", 1), k8s_namespace)
    _rollout(k8s_cluster, k8s_namespace, "web")
    routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True, check=True).stdout)
    default = next(route for route in routes if route["dst"] == "default")
    own = next(route["prefsrc"] for route in routes if route.get("dev") == default["dev"] and "prefsrc" in route)
    # The uplink's gateway, the host's own uplink address, and addresses beyond.
    targets = [default["gateway"], own, "1.1.1.1", "8.8.8.8"]
    code = f"""
import errno, socket, time
for address in {targets!r}:
    began = time.monotonic()
    try:
        socket.create_connection((address, 53), timeout=10).close()
        result = "connected"
    except OSError as exc:
        result = errno.errorcode.get(exc.errno, str(exc))
    print(address, result, round(time.monotonic() - began, 3))
began = time.monotonic()
try:
    socket.gethostbyname("example.com")
    print("dns resolved", 0)
except OSError:
    print("dns failed", round(time.monotonic() - began, 3))
"""
    lines = [line.split() for line in k8s_cluster.exec_python(k8s_namespace, "deploy/web", code).splitlines()]
    print("\n".join(" ".join(line) for line in lines))
    for address, result, seconds in lines[:-1]:
        assert result == "ENETUNREACH", f"{address}: {result}"
        assert float(seconds) < 0.5
    # The resolver tries each search domain; one lost UDP query costs glibc's 5 s retry (seen once in ten runs).
    assert lines[-1][:2] == ["dns", "failed"] and float(lines[-1][2]) < 12.0
    # CoreDNS answers for the cluster's domain only: anything else gets an error at once, never an address.
    began = time.monotonic()
    rcode, addresses = local_cluster.dns_query("example.com")
    assert rcode > 0 and not addresses and time.monotonic() - began < 0.5


def test_the_bridge_forwards_nothing_to_other_interfaces(k8s_cluster: Cluster) -> None:
    """A host on the cluster's bridge that does have a default route (as a pod with NET_ADMIN could make) is
    refused at once by the containment table: forwarding off the bridge is rejected, not routed out."""
    netns, host_end = "whmha-escape", "whmhaesc0"
    run = partial(subprocess.run, check=True, capture_output=True, text=True, timeout=30)
    try:
        run(["ip", "netns", "add", netns])
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", host_end, "master", local_cluster.BRIDGE, "up"])
        inside = ["ip", "netns", "exec", netns]
        run([*inside, "ip", "addr", "add", "10.244.0.254/24", "dev", "eth0"])
        run([*inside, "ip", "link", "set", "eth0", "up"])
        run([*inside, "ip", "route", "add", "default", "via", local_cluster.NODE_IP])
        code = """
import errno, socket, time
began = time.monotonic()
try:
    socket.create_connection(("1.1.1.1", 80), timeout=10).close()
    print("connected", 0)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)), round(time.monotonic() - began, 3))
"""
        result, seconds = run([*inside, sys.executable, "-c", code]).stdout.split()
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "delete", host_end], check=False, capture_output=True)
    print(f"connect to 1.1.1.1 from the bridge with a default route: {result} in {seconds}s")
    assert result == "EHOSTUNREACH" and float(seconds) < 1.0

"""A single-node Kubernetes cluster on this machine, built from source: the local-cluster test tier and
``hack/local-cluster up|down|status``.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy (iptables) and
CoreDNS run as host processes (root) with their state under one folder. Pods run in containerd from images
``hack/build-images`` built here (none can be pulled). Everything the cluster adds to the host is recorded
in the state folder so that ``down`` removes it, also after a failed ``up``.

Network containment: the node, the API server, DNS and the pods live on a bridge made for the cluster;
pods get routes to the pod and Service ranges only (no default route, so a connect elsewhere fails at
once); forwarding is enabled on that bridge alone and an nftables table rejects anything forwarded between
it and another interface; there is no NAT rule of ours, and CoreDNS is built without the forward plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import yaml

from .control_plane import api_get, find_bin_dir, log_tail, make_certs, sign_certificate, write_kubeconfig

STATE_DIR = Path(os.environ.get("WHM_HA_CLUSTER_DIR", "/var/lib/whm-ha/cluster"))
BRIDGE = "whmha0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
SERVICE_RANGE = "10.96.0.0/24"
API_SERVICE_IP = "10.96.0.1"
NODE_NAME = "whm-ha-node"
API_PORT = 6443
CLUSTER_DOMAIN = "cluster.local"
SANDBOX_IMAGE = "localhost/pause:whm-ha"
NFT_TABLE = "whm_ha_cluster"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "coredns",
    "crictl",
)
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
)
UP_TIMEOUT = 120.0
POLL_INTERVAL = 0.25
KILL_TIMEOUT = 10.0
"""Seconds ``down`` waits for a component's processes to exit after SIGKILL before it reports them."""
# (token name, user, group): static tokens of the control plane's own clients.
IDENTITIES = {
    "admin": ("whm-ha:admin", "system:masters"),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", "system:node-proxier"),
    "controller-manager": ("system:kube-controller-manager", "system:kube-controller-manager"),
    "scheduler": ("system:kube-scheduler", "system:kube-scheduler"),
    "coredns": ("whm-ha:coredns", "whm-ha:coredns"),
}
COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "whm-ha:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "whm-ha:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "whm-ha:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "whm-ha:coredns"}]
"""


class ClusterError(RuntimeError):
    """The cluster could not be started, or is not running."""


@dataclass(frozen=True)
class Paths:
    """Where one cluster keeps its state."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def host_changes(self) -> Path:
        return self.root / "host-changes.json"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"


def _run(*argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value)


def _read_sysctl(key: str) -> str:
    return _read(Path("/proc/sys", *key.split(".")))


# ---------------------------------------------------------------- host network


def _network_up(paths: Paths) -> None:
    """The bridge, the Service route, forwarding on the bridge alone, and the containment table; each change is
    recorded before it is made so that ``down`` undoes it."""
    # br_netfilter: a reply from a pod to a pod on the same bridge must pass conntrack to be un-NATed.
    changes = {
        "sysctls": {"net.bridge.bridge-nf-call-iptables": _read_sysctl("net.bridge.bridge-nf-call-iptables")},
        "nftTables": _nft_tables(),  # iptables-nft, kube-proxy and the kubelet add tables; down drops new empty ones
    }
    paths.host_changes.write_text(json.dumps(changes))
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _run("ip", "route", "add", SERVICE_RANGE, "dev", BRIDGE)
    _write_sysctl(f"net.ipv4.conf.{BRIDGE}.forwarding", "1")
    _write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    ruleset = f"""
table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{BRIDGE}" oifname != "{BRIDGE}" reject with icmpx type admin-prohibited
    oifname "{BRIDGE}" iifname != "{BRIDGE}" reject with icmpx type admin-prohibited
  }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True, capture_output=True, timeout=30)


def _network_down(paths: Paths) -> list[str]:
    """Undo what ``_network_up`` did; returns what could not be undone."""
    problems: list[str] = []
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        for port in Path(f"/sys/class/net/{BRIDGE}/brif").iterdir():
            _run("ip", "link", "del", port.name, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)  # also removes the Service route
    if _run("nft", "list", "table", "inet", NFT_TABLE, check=False).returncode == 0:
        _run("nft", "delete", "table", "inet", NFT_TABLE, check=False)
    if paths.host_changes.exists():
        changes = json.loads(paths.host_changes.read_text())
        for key, value in changes["sysctls"].items():
            try:
                _write_sysctl(key, value)
            except OSError as exc:
                problems.append(f"could not restore {key}={value}: {exc}")
        for table in set(_nft_tables()) - set(changes["nftTables"]):
            listing = json.loads(_run("nft", "-j", "list", "table", *table.split()).stdout)["nftables"]
            if any("rule" in entry for entry in listing):
                problems.append(f"nftables table {table} has rules left")
            else:
                _run("nft", "delete", "table", *table.split(), check=False)
    return problems


def _nft_tables() -> list[str]:
    """``family name`` of every nftables table."""
    listing = _run("nft", "list", "tables").stdout.splitlines()
    return [line.removeprefix("table ").strip() for line in listing if line.startswith("table ")]


# ---------------------------------------------------------------- processes


def _spawn(paths: Paths, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start a component in its own session, outliving this process; its pid goes to ``pids/<name>``."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.pids.mkdir(parents=True, exist_ok=True)
    with (paths.logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    (paths.pids / name).write_text(str(proc.pid))


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that have not exited (zombies are gone for this purpose)."""
    stats = {int(proc.name): _stat(int(proc.name)) for proc in Path("/proc").iterdir() if proc.name.isdigit()}
    return [pid for pid, fields in stats.items() if fields is not None and fields[0] != "Z" and fields[2] == str(pgid)]


def describe_processes(pids: list[int]) -> str:
    """``pid (name, state X)`` for each, as /proc has them now."""
    parts = []
    for pid in pids:
        with suppress(OSError):
            fields = dict(
                line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
            )
            parts.append(f"{pid} ({fields.get('Name', '?')}, state {fields.get('State', '?')})")
    return ", ".join(parts)


def pid_of(paths: Paths, name: str) -> int | None:
    try:
        return int(_read(paths.pids / name))
    except (OSError, ValueError):
        return None


def _check_running(paths: Paths, names: list[str]) -> None:
    for name in names:
        pid = pid_of(paths, name)
        if pid is None or not alive(pid):
            raise ClusterError(f"{name} exited; last lines of its log:\n{log_tail(paths.logs / f'{name}.log')}")


def stop_group(pgid: int, grace: float = 0.0, timeout: float = KILL_TIMEOUT) -> list[int]:
    """Stop every process of group ``pgid``: SIGTERM and up to ``grace`` seconds to exit (when ``grace``), then
    SIGKILL and up to ``timeout`` seconds. Returns once none is left (empty), or at the deadline with those still
    there (a process in uninterruptible sleep outlives SIGKILL)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
        if not wait or not group_members(pgid):
            continue
        with suppress(ProcessLookupError):  # the last one exited meanwhile
            os.killpg(pgid, sig)
        _poll(lambda: not group_members(pgid), wait)
    return group_members(pgid)


def stop_component(paths: Paths, name: str, grace: float = 0.0, timeout: float = KILL_TIMEOUT) -> str | None:
    """Stop the component's process group (`stop_group`) and forget its pid; a problem instead when a process of
    it is still there at the deadline or cannot be signalled (its pid is kept, so that ``down`` can be run
    again)."""
    pid = pid_of(paths, name)
    if pid is None:
        return None
    try:
        left = stop_group(pid, grace, timeout)
    except PermissionError as exc:
        return f"{name}: cannot signal process group {pid}: {exc}"
    if left:
        return f"{name}: still running {timeout:g}s after SIGKILL: {describe_processes(left)}"
    (paths.pids / name).unlink(missing_ok=True)
    return None


def _poll(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _wait(paths: Paths, what: str, check: Callable[[], bool], deadline: float, watched: list[str]) -> None:
    while True:
        _check_running(paths, watched)
        if check():
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}:\n{log_tail(paths.logs / f'{name}.log', 10)}" for name in watched)
            raise ClusterError(f"timed out waiting for {what}\n{logs}")
        time.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------- configuration


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _configure(paths: Paths) -> None:
    """Certificates, tokens, kubeconfigs and component configs."""
    paths.root.mkdir(parents=True, exist_ok=True)
    sans = ",".join(
        [f"IP:{NODE_IP}", f"IP:{API_SERVICE_IP}", "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes"]
        + [f"DNS:kubernetes.default{suffix}" for suffix in ("", ".svc", f".svc.{CLUSTER_DOMAIN}")]
    )
    ca, _, _ = make_certs(paths.root, sans)
    sign_certificate(
        paths.root / "pki",
        "kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "extendedKeyUsage=clientAuth",
    )
    _run("openssl", "genrsa", "-out", str(paths.root / "pki" / "sa.key"), "2048")
    tokens = {name: secrets.token_hex(16) for name in IDENTITIES}
    _write(
        paths.root / "tokens.csv",
        "".join(f'{tokens[name]},{user},{user},"{group}"\n' for name, (user, group) in IDENTITIES.items()),
        0o600,
    )
    server = f"https://{NODE_IP}:{API_PORT}"
    for name, (user, _) in IDENTITIES.items():
        target = paths.kubeconfig if name == "admin" else paths.root / f"{name}.kubeconfig"
        write_kubeconfig(target, server, ca, user, tokens[name])
    _write(paths.root / "resolv.conf", "")  # pods get the cluster's DNS and search path only
    _write(paths.root / "cni" / "net.d" / "10-whm-ha.conflist", json.dumps(_cni_config(paths), indent=2))
    _write(paths.root / "containerd" / "config.toml", _containerd_config(paths))
    _write(paths.root / "kubelet.yaml", yaml.safe_dump(_kubelet_config(paths, ca)))
    _write(paths.root / "kube-proxy.yaml", yaml.safe_dump(_kube_proxy_config(paths)))
    _write(paths.root / "Corefile", _corefile(paths))


def _cni_config(paths: Paths) -> dict[str, object]:
    return {
        "cniVersion": "0.4.0",
        "name": "whm-ha",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.root / "cni" / "ipam"),
                    "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.244.0.10", "gateway": NODE_IP}]],
                    # No default route: the pod and Service ranges are all a pod can reach.
                    "routes": [{"dst": POD_SUBNET}, {"dst": SERVICE_RANGE}],
                },
            }
        ],
    }


def _containerd_config(paths: Paths) -> str:
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
[grpc]
  address = "{paths.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # The host cannot lower oom_score_adj; without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{paths.root / "cni" / "net.d"}"
"""


def _kubelet_config(paths: Paths, ca: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # the host has cgroup v1 hierarchies
        "failSwapOn": False,
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(paths.root / "resolv.conf"),
        "podCIDR": POD_SUBNET,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        # No image can be pulled again: never collect them, and no eviction for a full disk.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
    }


def _kube_proxy_config(paths: Paths) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.root / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        # NodePorts on the cluster's bridge only (not the uplink, not 127.0.0.1: no route_localnet).
        "nodePortAddresses": [POD_SUBNET],
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "min": 0},  # leave the host's conntrack table size alone
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    }


def _corefile(paths: Paths) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {paths.root / "coredns.kubeconfig"}
        pods insecure
    }}
    cache 5
    loadbalance
}}
"""


# ---------------------------------------------------------------- components


def _start_control_plane(paths: Paths, bin_dir: Path) -> None:
    pki = paths.root / "pki"
    _spawn(
        paths,
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={paths.root / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:23790",
            "--advertise-client-urls=http://127.0.0.1:23790",
            "--listen-peer-urls=http://127.0.0.1:23800",
            "--initial-advertise-peer-urls=http://127.0.0.1:23800",
            "--initial-cluster=default=http://127.0.0.1:23800",
            "--listen-metrics-urls=http://127.0.0.1:23810",
            "--log-level=warn",
            "--unsafe-no-fsync",
        ],
    )
    _spawn(
        paths,
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:23790",
            f"--bind-address={NODE_IP}",
            f"--advertise-address={NODE_IP}",
            f"--secure-port={API_PORT}",
            f"--tls-cert-file={pki / 'tls.crt'}",
            f"--tls-private-key-file={pki / 'tls.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={paths.root / 'tokens.csv'}",
            "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            # exec, logs and port-forward reach the kubelet by the node's address, not by a DNS name.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ],
    )
    _spawn(
        paths,
        "containerd",
        ["containerd", f"--config={paths.root / 'containerd' / 'config.toml'}"],
    )


def _start_node(paths: Paths, bin_dir: Path) -> None:
    pki = paths.root / "pki"
    _spawn(
        paths,
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={paths.root / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            # Each controller acts as its own ServiceAccount, with the roles the API server bootstraps for it.
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ],
    )
    _spawn(
        paths,
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={paths.root / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ],
    )
    _spawn(
        paths,
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={paths.root / 'kubelet.yaml'}",
            f"--kubeconfig={paths.root / 'kubelet.kubeconfig'}",
            f"--root-dir={paths.kubelet_root}",
            f"--cert-dir={paths.root / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
        ],
    )
    _spawn(paths, "kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={paths.root / 'kube-proxy.yaml'}"])
    _spawn(paths, "coredns", [str(bin_dir / "coredns"), "-conf", str(paths.root / "Corefile")])


def image_dir() -> Path:
    """Where ``hack/build-images`` leaves the images' tars."""
    cache = Path(os.environ.get("WHM_HA_IMAGE_CACHE", Path.home() / ".cache" / "whm-ha" / "images"))
    return cache / "tars"


def _import_images(paths: Paths) -> list[str]:
    """Import every image ``hack/build-images`` left; returns their names."""
    tars = sorted(image_dir().glob("*.tar"))
    if not tars:
        raise ClusterError(f"no images in {image_dir()}: run hack/build-images first")
    ctr = ["ctr", f"--address={paths.containerd_socket}", "--namespace=k8s.io"]
    imports = [
        subprocess.Popen([*ctr, "images", "import", "--no-unpack", str(tar)], stdout=subprocess.PIPE, text=True)
        for tar in tars
    ]
    for tar, proc in zip(tars, imports, strict=True):
        if proc.wait(300) != 0:
            raise ClusterError(f"ctr could not import {tar}")
    listing = _run(*ctr, "images", "list", "--quiet").stdout.split()
    return [name for name in listing if not name.startswith("sha256:")]


# ---------------------------------------------------------------- checks


def _api_get(paths: Paths, path: str) -> tuple[int, bytes]:
    """Status and body of a GET of ``path`` from the API server as the admin; status 0 when it does not answer."""
    return api_get(f"https://{NODE_IP}:{API_PORT}{path}", _admin_token(paths), paths.root / "pki" / "ca.crt")


def _admin_token(paths: Paths) -> str:
    config = yaml.safe_load(paths.kubeconfig.read_text())
    return str(config["users"][0]["user"]["token"])


def _node_ready(paths: Paths) -> bool:
    code, body = _api_get(paths, f"/api/v1/nodes/{NODE_NAME}")
    if code != 200:
        return False
    node = json.loads(body)
    if any(taint.get("key") == "node.kubernetes.io/not-ready" for taint in node["spec"].get("taints", [])):
        return False  # Ready, but the node lifecycle controller has not let pods be scheduled yet
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def dns_query(name: str, server: str = NODE_IP, timeout: float = 2.0) -> tuple[int, list[str]]:
    """(response code, IPv4 addresses) of an A query for ``name`` to ``server``:53; rcode -1 without an answer."""
    query_id = secrets.randbelow(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (server, 53))
            reply = sock.recv(4096)
        except OSError:
            return -1, []
    reply_id, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    if reply_id != query_id:
        return -1, []
    offset = 12 + len(question) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        kind, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if kind == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return flags & 0xF, addresses


def _skip_name(message: bytes, offset: int) -> int:
    while message[offset]:
        if message[offset] & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += message[offset] + 1
    return offset + 1


def _default_service_account(paths: Paths) -> bool:
    return _api_get(paths, "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200


# ---------------------------------------------------------------- up, down, status


def up(paths: Paths, timeout: float = UP_TIMEOUT, log: Callable[[str], None] = print) -> None:
    """Start the cluster and wait until the node is Ready and cluster DNS answers; on failure, take down what
    was started."""
    if os.geteuid() != 0:
        raise ClusterError("the local cluster needs root (network, mounts, cgroups)")
    bin_dir = find_bin_dir()
    missing = [name for name in BINARIES if bin_dir is None or not (bin_dir / name).exists()]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}: run hack/build-control-plane first")
    assert bin_dir is not None
    for tool in ("containerd", "runc", "ctr", "ip", "nft", "iptables", "conntrack"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} is not installed (hack/local-cluster installs the packages it needs)")
    if paths.root.exists():
        raise ClusterError(f"{paths.root} exists: the cluster is up or was not taken down (hack/local-cluster down)")
    started = time.monotonic()
    deadline = started + timeout
    try:
        _configure(paths)
        _network_up(paths)
        _start_control_plane(paths, bin_dir)
        core = ["etcd", "kube-apiserver", "containerd"]
        _wait(paths, "containerd", paths.containerd_socket.exists, deadline, core)
        images = _import_images(paths)
        log(f"images: {', '.join(images)}")
        _wait(paths, "the API server", lambda: _api_get(paths, "/readyz")[0] == 200, deadline, core)
        _kubectl(paths, "apply", "-f", "-", stdin=COREDNS_RBAC)
        _start_node(paths, bin_dir)
        everything = list(COMPONENTS)
        _wait(paths, f"node {NODE_NAME} Ready", lambda: _node_ready(paths), deadline, everything)
        service = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
        _wait(paths, "cluster DNS", lambda: dns_query(service) == (0, [API_SERVICE_IP]), deadline, everything)
        _wait(paths, "the default ServiceAccount", lambda: _default_service_account(paths), deadline, everything)
    except BaseException:
        log("up failed: taking down what was started")
        down(paths, keep_logs=True, log=log)
        raise
    log(f"cluster up in {time.monotonic() - started:.1f}s: KUBECONFIG={paths.kubeconfig}")


def _kubectl(paths: Paths, *args: str, stdin: str | None = None) -> str:
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    result = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={paths.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def down(paths: Paths, keep_logs: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Stop everything and undo every host change; returns what could not be cleaned (empty when all was)."""
    started = time.monotonic()
    problems: list[str] = []
    for name in ("kubelet", "kube-controller-manager", "kube-scheduler", "coredns"):
        problems += _problem(stop_component(paths, name))
    bin_dir = find_bin_dir()
    if paths.containerd_socket.exists() and bin_dir is not None:
        # Stop and remove every pod through the CRI: containers, their network namespaces, veths and IPs.
        crictl = [str(bin_dir / "crictl"), f"--runtime-endpoint=unix://{paths.containerd_socket}", "--timeout=30s"]
        result = _run(*crictl, "rmp", "--all", "--force", check=False, timeout=120)
        if result.returncode != 0:
            problems.append(f"crictl rmp: {result.stderr.strip()}")
    problems += _problem(stop_component(paths, "containerd", grace=10.0))
    problems += _kill_leftover_containers(paths)
    problems += _problem(stop_component(paths, "kube-proxy"))
    if bin_dir is not None and (paths.root / "kube-proxy.yaml").exists():
        _run(str(bin_dir / "kube-proxy"), f"--config={paths.root / 'kube-proxy.yaml'}", "--cleanup", check=False)
    _remove_kubelet_chains()
    for name in ("kube-apiserver", "etcd"):
        # SIGKILL: the API server takes a minute to drain, and its state is thrown away
        problems += _problem(stop_component(paths, name))
    running = [name for name in COMPONENTS if pid_of(paths, name) is not None]
    problems += _unmount_under(paths.root)
    problems += _network_down(paths)
    _remove_pod_cgroups()
    if running:
        problems.append(f"kept {paths.root}: {', '.join(running)} still running (its pid files are needed to retry)")
    elif paths.root.exists():
        if keep_logs and paths.logs.exists():
            kept = paths.root.with_name(paths.root.name + "-logs")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(paths.logs, kept)
            log(f"logs kept in {kept}")
        shutil.rmtree(paths.root, ignore_errors=True)
        if paths.root.exists():
            problems.append(f"could not remove {paths.root}")
    took = time.monotonic() - started
    log(f"cluster NOT down after {took:.1f}s: {problems}" if problems else f"cluster down in {took:.1f}s")
    return problems


def _problem(problem: str | None) -> list[str]:
    return [problem] if problem else []


def _kill_leftover_containers(paths: Paths, timeout: float = KILL_TIMEOUT) -> list[str]:
    """SIGKILL containerd shims of this cluster and any process left in a pod's cgroup, and wait up to ``timeout``
    for them to exit; a problem naming those still there."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if (b"containerd-shim" in cmdline and str(paths.root).encode() in cmdline) or "/kubepods" in cgroups:
            with suppress(ProcessLookupError, PermissionError):  # one that cannot be signalled is reported below
                killed.append(int(proc.name))
                os.kill(int(proc.name), signal.SIGKILL)
    if _poll(lambda: not any(alive(pid) for pid in killed), timeout):
        return []
    left = [pid for pid in killed if alive(pid)]
    return [f"containers: still running {timeout:g}s after SIGKILL: {describe_processes(left)}"]


def _remove_kubelet_chains() -> None:
    """The kubelet's own iptables chains (kube-proxy --cleanup removes kube-proxy's)."""
    for table, chain, parent in (
        ("filter", "KUBE-FIREWALL", ("INPUT", "OUTPUT")),
        ("filter", "KUBE-KUBELET-CANARY", ()),
        ("mangle", "KUBE-IPTABLES-HINT", ()),
        ("nat", "KUBE-KUBELET-CANARY", ()),
        ("mangle", "KUBE-KUBELET-CANARY", ()),
        ("nat", "KUBE-MARK-MASQ", ()),
        ("nat", "KUBE-POSTROUTING", ("POSTROUTING",)),
    ):
        for binary in ("iptables", "ip6tables"):
            for from_chain in parent:
                _run(binary, "-t", table, "-D", from_chain, "-j", chain, check=False)
            _run(binary, "-t", table, "-F", chain, check=False)
            _run(binary, "-t", table, "-X", chain, check=False)


def _unmount_under(root: Path) -> list[str]:
    """Unmount everything mounted under ``root`` (deepest first)."""
    prefix = str(root) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    problems = []
    for point in sorted(set(mounts), key=len, reverse=True):
        if _run("umount", "--lazy", point, check=False).returncode != 0 and os.path.ismount(point):
            problems.append(f"could not unmount {point}")
    return problems


def _remove_pod_cgroups() -> None:
    """The kubelet's cgroups (``kubepods`` in every hierarchy), deepest first, once no process is left in them."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            nested = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for directory in [*nested, top]:
                with suppress(OSError):
                    directory.rmdir()


def kill_container(paths: Paths, container_id: str) -> None:
    """SIGKILL a container's main process, as a crash would (the kubelet restarts it; its pod stays)."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    crictl = [str(bin_dir / "crictl"), f"--runtime-endpoint=unix://{paths.containerd_socket}"]
    template = ["--output", "go-template", "--template", "{{.info.pid}}"]
    pid = int(_run(*crictl, "inspect", *template, container_id).stdout.strip())
    os.kill(pid, signal.SIGKILL)


def status(paths: Paths) -> dict[str, object]:
    """Which components run, whether the node is Ready and DNS answers."""
    components = {name: (pid is not None and alive(pid)) for name in COMPONENTS for pid in [pid_of(paths, name)]}
    up_ = paths.kubeconfig.exists() and all(components.values())
    return {
        "up": up_,
        "components": components,
        "nodeReady": up_ and _node_ready(paths),
        "dns": up_ and dns_query(f"kubernetes.default.svc.{CLUSTER_DOMAIN}")[0] == 0,
        "kubeconfig": str(paths.kubeconfig),
        "server": f"https://{NODE_IP}:{API_PORT}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/local-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help=f"default {STATE_DIR}")
    args = parser.parse_args(argv)
    paths = Paths(args.state_dir)
    try:
        if args.command == "up":
            up(paths)
        elif args.command == "down":
            problems = down(paths)
            for problem in problems:
                print(f"local-cluster: down: {problem}", file=sys.stderr)
            return 1 if problems else 0
        else:
            report = status(paths)
            print(json.dumps(report, indent=2))
            return 0 if report["up"] and report["nodeReady"] and report["dns"] else 1
    except ClusterError as exc:
        print(f"local-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

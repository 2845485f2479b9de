"""A real kube-apiserver + etcd on loopback, built by ``hack/build-control-plane``: for the tests' real-API
tier and ``whm-ha demo --api real``.

There is no controller-manager or scheduler: namespaces are never finalised, no service-account tokens are
issued, pods stay Pending; the ServiceAccount admission plugin is off so that pods can be created.
Identities come from a static token file; the serving certificate is signed by a CA made for the run.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .crd.common import GROUP
from .crd.generate import all_files
from .db.local_server import free_port
from .lifecycle import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane"
STOP_TIMEOUT = 20.0
AUDIT_LOG = "audit.log"
"""kube-apiserver's audit log, in the data dir: one JSON event per request."""
POLL_INTERVAL = 0.1


class ControlPlaneError(RuntimeError):
    """The control plane did not start."""


def find_bin_dir() -> Path | None:
    """Where ``hack/build-control-plane`` put kube-apiserver and etcd for the pinned versions; outside the
    repository, the newest version in the cache that has both."""
    if BUILD_SCRIPT.is_file():
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True, text=True, timeout=30, check=False
        )
        candidates = [Path(result.stdout.strip())] if result.returncode == 0 and result.stdout.strip() else []
    else:
        cache = Path(os.environ.get("WHM_HA_CONTROL_PLANE_CACHE", Path.home() / ".cache" / "whm-ha" / "control-plane"))
        candidates = sorted(cache.glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        if all(os.access(bin_dir / name, os.X_OK) for name in ("kube-apiserver", "etcd")):
            return bin_dir
    return None


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Process:
    """A child process in its own session, logging stdout and stderr to one file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (started from the main thread: a fixture, the demo)
            )

    def check_alive(self) -> None:
        """Raise with the end of the log if the process has exited."""
        if self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.proc.returncode}; last lines of {self.log}:\n{log_tail(self.log)}"
            )

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        with suppress(ProcessLookupError, PermissionError):  # also reaps children left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _wait_for(what: str, check: Callable[[], bool], deadline: float, processes: list[_Process]) -> None:
    """Poll ``check`` until it is true; fail when a process dies or the deadline passes."""
    while True:
        for process in processes:
            process.check_alive()
        if check():
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log}:\n{log_tail(p.log)}" for p in processes)
            raise ControlPlaneError(f"timed out waiting for {what}\n{logs}")
        time.sleep(POLL_INTERVAL)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(data_dir: Path, sans: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path, Path]:
    """A self-signed CA (``pki/ca.crt``, ``pki/ca.key``) and a serving certificate for ``sans``: (ca, cert, key)."""
    certs = data_dir / "pki"
    certs.mkdir(parents=True)
    ca_key, ca = certs / "ca.key", certs / "ca.crt"
    _openssl("genrsa", "-out", str(ca_key), "2048")
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=whm-ha-test-ca", "-days", "2", "-out", str(ca))
    cert, key = sign_certificate(
        certs, "tls", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"
    )
    return ca, cert, key


def sign_certificate(certs: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A key and a certificate for ``subject`` signed by ``certs/ca.crt``: (``name``.crt, ``name``.key)."""
    key, csr, cert, ext = (certs / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions + "\n")
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ca, ca_key = str(certs / "ca.crt"), str(certs / "ca.key")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key


def api_get(url: str, token: str, ca: Path) -> tuple[int, bytes]:
    """Status and body of a GET with a bearer token, verified against the test CA; status 0 when the connection
    fails."""
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:  # URLError, connection refused or reset, timeouts
        return 0, b""


def _http_status(url: str, token: str, ca: Path) -> int:
    return api_get(url, token, ca)[0]


def write_kubeconfig(path: Path, server: str, ca: Path, name: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "whm-ha-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "whm-ha-test", "user": name, "namespace": "default"}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _start_etcd(bin_dir: Path, data_dir: Path) -> tuple[_Process, str]:
    client = f"http://127.0.0.1:{free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    argv = [
        str(bin_dir / "etcd"),
        "--name=default",
        f"--data-dir={data_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--log-level=warn",
        "--unsafe-no-fsync",
    ]
    return _Process("etcd", argv, data_dir / "etcd.log"), client


def _start_apiserver(
    bin_dir: Path,
    data_dir: Path,
    etcd: str,
    identities: dict[str, tuple[str, str, str]],
    tls: tuple[Path, Path],
) -> tuple[_Process, str]:
    sa_key = data_dir / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True, timeout=60)
    token_file = data_dir / "tokens.csv"
    token_file.write_text("".join(f'{token},{user},{user},"{group}"\n' for token, user, group in identities.values()))
    token_file.chmod(0o600)
    policy = data_dir / "audit-policy.yaml"
    policy.write_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n    omitStages: [RequestReceived]\n"
    )
    port = free_port()
    argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={tls[0]}",
        f"--tls-private-key-file={tls[1]}",
        f"--token-auth-file={token_file}",
        "--anonymous-auth=false",
        "--authorization-mode=RBAC",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-cluster-ip-range=10.96.0.0/12",
        # No controller-manager creates the "default" ServiceAccount, which this plugin requires for pods.
        "--disable-admission-plugins=ServiceAccount",
        # Who did what (Metadata level: user, verb, resource; no bodies), e.g. to check RBAC against use.
        f"--audit-policy-file={policy}",
        f"--audit-log-path={data_dir / AUDIT_LOG}",
    ]
    return _Process("kube-apiserver", argv, data_dir / "kube-apiserver.log"), f"https://127.0.0.1:{port}"


def install_crds(
    kubeconfig: Path, server: str, admin_token: str, ca: Path, *, deadline: float, processes: list[_Process]
) -> None:
    """Create our CRDs and kopf's, and wait until each is Established and served."""
    with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:  # type: ignore[no-untyped-call]
        extensions = client.ApiextensionsV1Api(api_client)
        crds: list[Any] = []  # plain dicts: the client serialises them as they are
        for text in all_files().values():
            crds.extend(d for d in yaml.safe_load_all(text) if d and d["kind"] == "CustomResourceDefinition")
        rejected = []
        for crd in crds:
            try:
                extensions.create_custom_resource_definition(crd)
            except ApiException as exc:
                rejected.append(f"CRD {crd['metadata']['name']} rejected: {_status_message(exc)}")
        if rejected:
            raise ControlPlaneError("\n".join(rejected))

        def established(name: str) -> bool:
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        for crd in crds:
            name, plural = crd["metadata"]["name"], crd["spec"]["names"]["plural"]
            group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
            _wait_for(f"CRD {name} Established", partial(established, name), deadline, processes)
            url = f"{server}/apis/{group}/{version}/{plural}"
            _wait_for(f"{url} served", partial(_served, url, admin_token, ca), deadline, processes)
        # kubectl explain reads the OpenAPI v3 document, published asynchronously after Established.
        ours = [c for c in crds if c["spec"]["group"] == GROUP]
        group_versions = {f"{c['spec']['group']}/{v['name']}" for c in ours for v in c["spec"]["versions"]}
        kinds = {c["spec"]["names"]["kind"] for c in ours}

        def published() -> bool:
            paths = (f"{server}/openapi/v3/apis/{gv}" for gv in group_versions)
            return all(_openapi_kinds(p, admin_token, ca) >= kinds for p in paths)

        _wait_for("CRDs in OpenAPI v3", published, deadline, processes)


def _served(url: str, token: str, ca: Path) -> bool:
    return _http_status(url, token, ca) == 200


def _status_message(exc: Exception) -> str:
    """The message of a Kubernetes Status error body, else the exception text."""
    try:
        return str(json.loads(getattr(exc, "body", "") or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc)


def _openapi_kinds(url: str, token: str, ca: Path) -> set[str]:
    """Kinds (by their x-kubernetes-group-version-kind) in one OpenAPI v3 group-version document."""
    status, body = api_get(url, token, ca)
    if status != 200:
        return set()
    schemas = json.loads(body).get("components", {}).get("schemas", {}).values()
    return {gvk["kind"] for schema in schemas for gvk in schema.get("x-kubernetes-group-version-kind", [])}


@dataclass(frozen=True)
class Running:
    """A running control plane: where it is, and a token and kubeconfig per identity."""

    server: str
    ca: Path
    tokens: dict[str, str]
    kubeconfigs: dict[str, Path]
    processes: list[_Process]
    audit_log: Path


@contextmanager
def running(
    bin_dir: Path, data_dir: Path, identities: dict[str, tuple[str, str, str]], timeout: float = 60.0
) -> Iterator[Running]:
    """etcd and kube-apiserver with our CRDs installed, for ``identities`` (key -> (token, user, group));
    stopped on exit, kube-apiserver first (stopping both at once makes kube-apiserver hang on etcd)."""
    deadline = time.monotonic() + timeout
    ca, cert, key = make_certs(data_dir)
    with ExitStack() as stack:
        etcd, etcd_url = _start_etcd(bin_dir, data_dir)
        stack.callback(etcd.stop)  # callbacks run last-in first-out: kube-apiserver stops before etcd
        apiserver, server = _start_apiserver(bin_dir, data_dir, etcd_url, identities, (cert, key))
        stack.callback(apiserver.stop)
        processes = [etcd, apiserver]
        admin_token = next(token for token, _, group in identities.values() if group == "system:masters")
        _wait_for(
            f"{server}/readyz", lambda: _http_status(f"{server}/readyz", admin_token, ca) == 200, deadline, processes
        )
        kubeconfigs = {
            name: write_kubeconfig(data_dir / f"{name}.kubeconfig", server, ca, user, token)
            for name, (token, user, _) in identities.items()
        }
        admin = next(name for name, (_, _, group) in identities.items() if group == "system:masters")
        install_crds(kubeconfigs[admin], server, admin_token, ca, deadline=deadline, processes=processes)
        yield Running(
            server=server,
            ca=ca,
            tokens={name: token for name, (token, _, _) in identities.items()},
            kubeconfigs=kubeconfigs,
            processes=processes,
            audit_log=data_dir / AUDIT_LOG,
        )

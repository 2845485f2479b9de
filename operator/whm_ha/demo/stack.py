"""Start and stop every part of the demo as processes on loopback: a Kubernetes API, three database servers (the
host's MariaDB 10.11, or MySQL 9.7 from the root hack/build-databases builds), three stand-in WHM nodes, the
operator, the proxy and the shim."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..control_plane import ControlPlaneError, find_bin_dir, running
from ..crd.generate import write_all
from ..db.local_server import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    FLAVOURS,
    HOST_MARIADB,
    TLS_CA_FILE,
    Flavour,
    LocalServer,
    LocalServerError,
    free_port,
    init_template,
)
from ..kube import config as kube_config
from ..lifecycle import die_with_parent, pause
from ..mysql.dialect import dialect_for

if TYPE_CHECKING:
    from .certificates import DemoCertificates

NAMESPACE = "default"
CLUSTER = "whm"
REPLICATION = "whm-db"
ADMIN_TOKEN = "demo-admin-token"
DEMO_SCHEMA = "demo"
"""The schema of the tour's writers, beside the legacy tables' whm_ha."""
FAST_HEALTH = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
DATABASES = {"mariadb": FLAVOURS["mariadb-10.11"], "mysql": FLAVOURS["mysql-9.7"]}
"""``whm-ha demo --database``: the product -> the flavour the demo runs (the host's MariaDB; MySQL from its root)."""
PROXY_TLS_SECRET = "whm-proxy-tls"
SHIM_TLS_SECRET = "whm-shim-tls"
DB_CA_SECRET = "whm-db-ca"
DB_CERTIFICATE = "whm-db-server"
"""The database servers' certificate (files only: the servers read them from their data dirs)."""


class DemoError(RuntimeError):
    """The demo cannot start; the message is one line saying why."""


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _kubeconfig_env(path: Path) -> Iterator[None]:
    """KUBECONFIG set to ``path`` for the block (the standard rules then read that file)."""
    before = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["KUBECONFIG"]
        else:
            os.environ["KUBECONFIG"] = before


@dataclass
class Stack:
    """The demo's processes and where they listen."""

    workdir: Path
    proxy_port: int = 8080
    shim_port: int = 4000
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    flavour: Flavour = HOST_MARIADB
    """The database servers' flavour; the MySQLReplication's ``spec.flavor`` is its product."""
    databases: list[LocalServer] = field(default_factory=list)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    node_ports: dict[str, int] = field(default_factory=dict)
    kubeconfig: Path | None = None
    admin_port: int = 0
    metrics_port: int = 0
    db_period_seconds: int = 1
    db_failure_threshold: int = 2
    resources_to_stop: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    tls: bool = False
    """``--tls``: HTTPS listeners on the proxy and the shim beside the plain ones, and replication and the
    operator's sessions over TLS, with certificates of a CA of the demo's own."""
    proxy_tls_port: int = 8443
    shim_tls_port: int = 4443
    certificates: DemoCertificates | None = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (the demo spawns from its main thread only)
            )
        self.processes.append((name, process))
        return process

    def _whm_ha(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        kubeconfig = {"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}
        return self._spawn(name, [sys.executable, "-m", "whm_ha", *args], {**kubeconfig, **(env or {})})

    @staticmethod
    def _wait_http(
        url: str,
        what: str,
        process: subprocess.Popen[bytes] | None = None,
        timeout: float = 30,
        context: ssl.SSLContext | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise DemoError(f"{what} exited at start; see its log")
            try:
                with urllib.request.urlopen(url, timeout=1, context=context):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                pause(0.1)
        raise DemoError(f"{what} did not answer on {url} within {timeout:g}s")

    # -- parts ------------------------------------------------------------------------------------

    def check_ports(self) -> None:
        ports = [(self.proxy_port, "proxy"), (self.shim_port, "shim")]
        if self.tls:
            ports += [(self.proxy_tls_port, "proxy-tls"), (self.shim_tls_port, "shim-tls")]
        for port, what in ports:
            if not _port_free(port):
                raise DemoError(f"port {port} for the {what} is busy: pass --{what}-port with a free one")

    def make_certificates(self) -> DemoCertificates:
        """The demo's CA and the proxy's, the shim's and the database servers' certificates, in the workdir's tls/
        folder."""
        # trustme comes with the sandbox extra, which the demo on loopback needs anyway; the image has neither,
        # and its writer pod imports this module (demo.checkers).
        from .certificates import make_certificates

        names = (PROXY_TLS_SECRET, SHIM_TLS_SECRET, DB_CERTIFICATE)
        self.certificates = make_certificates(self.workdir / "tls", names)
        return self.certificates

    def start_api(self, api: str, kubeconfig: Path | None) -> None:
        if kubeconfig is not None:
            if not kubeconfig.exists():
                raise DemoError(f"kubeconfig {kubeconfig} does not exist")
            with _kubeconfig_env(kubeconfig):
                try:
                    kube_config.load()
                except kube_config.KubeConfigError as exc:
                    raise DemoError(str(exc)) from None
            self.kubeconfig = kubeconfig
            return
        if api == "real":
            self._start_real_api()
            return
        crds = self.workdir / "crds"
        write_all(crds)
        users = self.workdir / "users.yaml"
        users.write_text(
            yaml.safe_dump({"users": [{"name": "demo-admin", "token": ADMIN_TOKEN, "groups": ["system:masters"]}]})
        )
        self.kubeconfig = self.workdir / "kubeconfig"
        port = free_port()
        process = self._spawn(
            "sandbox",
            [
                sys.executable,
                "-m",
                "whm_ha",
                "sandbox",
                f"--port={port}",
                f"--crds={crds}",
                f"--kubeconfig-out={self.kubeconfig}",
                f"--users={users}",
            ],
        )
        self._wait_http(f"http://127.0.0.1:{port}/readyz", "the sandbox API", process)

    def _start_real_api(self) -> None:
        """kube-apiserver + etcd built by hack/build-control-plane, as the tests' real tier runs them."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise DemoError("--api real needs kube-apiserver and etcd: run hack/build-control-plane first")
        identities = {"admin": (ADMIN_TOKEN, "demo-admin", "system:masters")}
        try:
            plane = self.resources_to_stop.enter_context(running(bin_dir, self.workdir / "control-plane", identities))
        except ControlPlaneError as exc:
            raise DemoError(f"the real control plane did not start: {str(exc).splitlines()[0]}") from exc
        self.kubeconfig = plane.kubeconfigs["admin"]

    def server_args(self) -> tuple[str, ...]:
        """Each member's settings beyond the local server's own, as the README asks of its flavour: read-only
        until the operator opens the primary; MariaDB: init_rpl_role=SLAVE (a crashed semi-sync primary drops its
        unacknowledged transactions on recovery); MySQL: super_read_only (the semi-sync plugins are loaded at
        startup by the local server)."""
        if self.flavour.product == "mariadb":
            return ("--read-only=ON", "--init-rpl-role=SLAVE")
        return ("--read-only=ON", "--super-read-only=ON")

    def start_databases(self) -> None:
        """Three servers from one template; with --tls (after make_certificates) each serves the demo's database
        certificate and trusts its CA."""
        why = self.flavour.missing()
        if why:
            raise DemoError(why)
        tls = None
        if self.tls:
            assert self.certificates is not None, "make_certificates first"
            tls = self.certificates.issued[DB_CERTIFICATE].server_tls(self.certificates.ca)
        try:
            template = init_template(self.workdir / f"{self.flavour.name}-template", flavour=self.flavour)
            for index in range(3):
                server = LocalServer.from_template(
                    template,
                    self.workdir / f"{self.flavour.name}-{index}",
                    index + 1,
                    extra_args=self.server_args(),
                    flavour=self.flavour,
                    dies_with_parent=True,
                    tls=tls,
                )
                server.start()
                self.databases.append(server)
        except LocalServerError as exc:
            raise DemoError(str(exc)) from exc

    def start_node(self, name: str) -> None:
        port = self.node_ports.setdefault(name, free_port())
        self.nodes[name] = self._spawn(
            name, [sys.executable, "-m", "whm_ha.demo_node", "--name", name, "--port", str(port)]
        )
        self._wait_http(f"http://127.0.0.1:{port}/healthz", f"node {name}", self.nodes[name])

    def kill_node(self, name: str) -> None:
        process = self.nodes.pop(name)
        process.kill()
        process.wait()

    def resources(self) -> list[dict[str, Any]]:
        """The custom resources and Secrets the demo applies (with --tls, after make_certificates)."""
        replication_password = secrets.token_urlsafe(12)
        load_balancer: dict[str, Any] = {"algorithm": "roundRobin", "port": self.proxy_port}
        if self.tls:
            load_balancer["tls"] = {"certificates": [{"secretName": PROXY_TLS_SECRET}]}
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "whm-db-admin"},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": ADMIN_USER, "password": ADMIN_PASSWORD},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "whm-db-replication"},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": "repl", "password": replication_password},
            },
            {
                "apiVersion": "ha.whm.io/v1alpha1",
                "kind": "MySQLReplication",
                "metadata": {"name": REPLICATION},
                "spec": {
                    "flavor": self.flavour.product,
                    "primary": "db-0",
                    "semiSync": True,
                    "periodSeconds": self.db_period_seconds,
                    "failureThreshold": self.db_failure_threshold,
                    "minIntervalSeconds": 0,
                    "members": [
                        {"name": f"db-{i}", "host": s.host, "port": s.port} for i, s in enumerate(self.databases)
                    ],
                    "credentialsSecret": {"name": "whm-db-admin"},
                    "replicationSecret": {"name": "whm-db-replication"},
                    # The operator creates the whm-db-app Secret and its account: the legacy tables, the shim
                    # and the tour's writers use it; read-only members refuse it.
                    "applicationAccount": {"schemas": ["whm_ha", DEMO_SCHEMA]},
                    # Backups to a directory of the demo's own (an S3-compatible store takes `s3:` instead).
                    "backup": {"storage": {"filesystem": {"path": str(self.workdir / "backups")}}},
                },
            },
            {
                "apiVersion": "ha.whm.io/v1alpha1",
                "kind": "WHMCluster",
                "metadata": {"name": CLUSTER},
                "spec": {
                    "healthCheck": FAST_HEALTH,
                    "failover": {"minIntervalSeconds": 0},
                    "loadBalancer": load_balancer,
                    "database": {"replicationRef": {"name": REPLICATION}},
                },
            },
        ]
        if self.tls:
            assert self.certificates is not None, "make_certificates first"
            certificates = self.certificates
            served = [certificates.issued[name].secret(certificates.ca) for name in (PROXY_TLS_SECRET, SHIM_TLS_SECRET)]
            docs = [*served, certificates.ca_secret(DB_CA_SECRET), *docs]
            replication = next(doc for doc in docs if doc["kind"] == "MySQLReplication")
            # Replicas verify their source with the CA file each server has in its data dir; the operator its
            # sessions with the same CA, from the Secret.
            replication["spec"]["tls"] = {
                "enabled": True,
                "caSecret": {"name": DB_CA_SECRET, "key": "ca.crt"},
                "caFile": TLS_CA_FILE,
            }
        for name, priority in (("whm-node-1", 100), ("whm-node-2", 50), ("whm-node-3", 10)):
            docs.append(
                {
                    "apiVersion": "ha.whm.io/v1alpha1",
                    "kind": "WHMNode",
                    "metadata": {"name": name},
                    "spec": {
                        "cluster": CLUSTER,
                        "hostname": name,
                        "address": "127.0.0.1",
                        "port": self.node_ports[name],
                        "priority": priority,
                    },
                }
            )
        return docs

    def start_services(self) -> None:
        self.metrics_port, self.admin_port = free_port(), free_port()
        proxy_tls: tuple[str, ...] = ()
        shim_tls: tuple[str, ...] = ()
        if self.tls:
            proxy_tls = (f"--listen-tls=127.0.0.1:{self.proxy_tls_port}",)
            shim_tls = (f"--listen-tls=127.0.0.1:{self.shim_tls_port}", f"--tls-secret={SHIM_TLS_SECRET}")
        # The backup and restore tasks run the flavour's dump tool and client by name (a root's, through scripts).
        dialect = dialect_for(self.flavour.product)
        programs = self.flavour.client_programs(self.workdir / "bin", [dialect.dump_program, dialect.client_program])
        operator = self._whm_ha(
            "operator",
            "operator",
            f"--namespace={NAMESPACE}",
            f"--metrics=127.0.0.1:{self.metrics_port}",
            env={"PATH": f"{programs}:{os.environ['PATH']}"} if programs else {},
        )
        proxy = self._whm_ha(
            "proxy",
            "proxy",
            f"--cluster={CLUSTER}",
            f"--namespace={NAMESPACE}",
            f"--listen=127.0.0.1:{self.proxy_port}",
            *proxy_tls,
            f"--admin=127.0.0.1:{self.admin_port}",
            "--workers=1",
        )
        shim = self._whm_ha(
            "shim",
            "shim",
            f"--listen=127.0.0.1:{self.shim_port}",
            *shim_tls,
            f"--namespace={NAMESPACE}",
            f"--cluster={CLUSTER}",
            f"--proxy-admin=http://127.0.0.1:{self.admin_port}",
        )
        self._wait_http(f"http://127.0.0.1:{self.metrics_port}/metrics", "the operator", operator)
        self._wait_http(f"http://127.0.0.1:{self.admin_port}/healthz", "the proxy", proxy)
        self._wait_http(f"http://127.0.0.1:{self.shim_port}/healthz", "the shim", shim)
        if self.certificates is not None:  # each answers over HTTPS once it serves the certificate of its Secret
            trusted = ssl.create_default_context(cafile=str(self.certificates.ca))
            self._wait_http(f"https://127.0.0.1:{self.proxy_tls_port}/", "the proxy (HTTPS)", proxy, 30, trusted)
            self._wait_http(f"https://127.0.0.1:{self.shim_tls_port}/healthz", "the shim (HTTPS)", shim, 30, trusted)

    def stop(self) -> None:
        """Stop everything, newest first; nothing is left running."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in reversed(self.processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for server in self.databases:
            server.kill()
        self.resources_to_stop.close()

"""``whm-ha demo``: start everything, show it, optionally run the tour, and stop everything on Ctrl-C."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client, config

from ..control_plane import find_bin_dir
from ..crd.generate import all_files
from ..lifecycle import pause, say
from .stack import ADMIN_TOKEN, DATABASES, NAMESPACE, DemoError, Stack
from .tour import tour
from .view import Observer


def _apply(api: client.ApiClient, docs: list[dict[str, Any]]) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    for doc in docs:
        if doc["kind"] == "Secret":
            core.create_namespaced_secret(NAMESPACE, cast(Any, doc))
        else:
            group, version = doc["apiVersion"].split("/")
            plural = {"WHMCluster": "whmclusters", "WHMNode": "whmnodes", "MySQLReplication": "mysqlreplications"}
            custom.create_namespaced_custom_object(group, version, NAMESPACE, plural[doc["kind"]], doc)


def _install_crds(api: client.ApiClient) -> None:
    """An existing cluster gets our CRDs (and kopf's) when it lacks them."""
    extensions = client.ApiextensionsV1Api(api)
    for text in all_files().values():
        crd = yaml.safe_load(text)
        try:
            extensions.create_custom_resource_definition(crd)
        except client.ApiException as exc:
            if exc.status != 409:
                raise DemoError(f"cannot install CRD {crd['metadata']['name']}: {exc.reason}") from exc
    deadline = time.monotonic() + 60
    custom = client.CustomObjectsApi(api)
    while True:
        try:
            custom.list_namespaced_custom_object("ha.whm.io", "v1alpha1", NAMESPACE, "whmclusters")
            return
        except client.ApiException:
            if time.monotonic() > deadline:
                raise DemoError("the CRDs were not served within 60s") from None
            pause(0.5)


def _ready(observer: Observer, shim_port: int) -> bool:
    """The cluster and the replication Healthy, and the legacy tables created (the shim reads them)."""
    cluster = observer.cluster().get("status") or {}
    replication = observer.replication().get("status") or {}
    if cluster.get("phase") != "Healthy" or replication.get("phase") != "Healthy":
        return False
    request = urllib.request.Request(
        f"http://127.0.0.1:{shim_port}/api/ha/sessions/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5):
            return True
    except OSError:
        return False


def start_system(
    stack: Stack, *, api: str = "sandbox", kubeconfig: Path | None = None, say: Callable[[str], None] = say
) -> tuple[client.ApiClient, Observer]:
    """Start every part, apply the resources, and wait until the cluster and the replication are Healthy."""
    stack.check_ports()
    say(f"Starting the Kubernetes API ({'an existing cluster' if kubeconfig else api}) with the CRDs ...")
    stack.start_api(api, kubeconfig)
    if stack.tls:
        say("Making a CA and the certificates of the proxy, the shim and the database servers ...")
        stack.make_certificates()
    say(f"Starting three database servers ({stack.flavour.name}) ...")
    stack.start_databases()
    say("Starting three WHM nodes ...")
    for name in ("whm-node-1", "whm-node-2", "whm-node-3"):
        stack.start_node(name)
    api_client = cast(
        client.ApiClient,
        config.new_client_from_config(config_file=str(stack.kubeconfig)),  # type: ignore[no-untyped-call]
    )
    if kubeconfig is not None:
        _install_crds(api_client)
    _apply(api_client, stack.resources())
    say("Starting the operator, the proxy and the shim ...")
    stack.start_services()
    observer = Observer(api_client, stack.admin_port)
    deadline = time.monotonic() + 90
    while not _ready(observer, stack.shim_port):
        if time.monotonic() > deadline:
            raise DemoError(
                "the cluster and the replication did not become Healthy with the legacy tables created within 90s;"
                f" see the logs in {stack.workdir}"
            )
        pause(0.2)
    return api_client, observer


def _kubectl() -> str:
    """The kubectl to suggest: the current one hack/build-control-plane built, else the one on PATH (Debian's is
    too old for some of our fields), with how to get the other."""
    bin_dir = find_bin_dir()
    if bin_dir is not None and (bin_dir / "kubectl").exists():
        return str(bin_dir / "kubectl")
    return "kubectl" if shutil.which("kubectl") else "kubectl (none here: hack/build-control-plane builds one)"


def _watch(observer: Observer) -> None:
    """Print what changes, until Ctrl-C."""
    say("Press Ctrl-C to stop everything.")
    shown: list[str] = []
    while True:
        stats = observer.proxy_stats() or {}
        totals = stats.get("totals") or {}
        traffic = f"{totals.get('requests', 0)} requests through the proxy" if stats else "proxy not answering"
        lines = [ln for ln in observer.lines(traffic) if ln]
        if [ln[11:] for ln in lines] != [ln[11:] for ln in shown]:
            for line in lines:
                say(line)
            shown = lines
        pause(1)


def run(
    *,
    api: str,
    kubeconfig: Path | None,
    scenario: str | None,
    proxy_port: int,
    shim_port: int,
    database: str = "mariadb",
    tls: bool = False,
    proxy_tls_port: int = 8443,
    shim_tls_port: int = 4443,
) -> int:
    flavour = DATABASES[database]
    missing = flavour.missing()
    if missing:  # before anything starts: the server is not on this machine (or its root is not built)
        print(f"whm-ha demo: {missing}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="whm-ha-demo-"))
    stack = Stack(
        workdir,
        proxy_port=proxy_port,
        shim_port=shim_port,
        flavour=flavour,
        tls=tls,
        proxy_tls_port=proxy_tls_port,
        shim_tls_port=shim_tls_port,
    )
    keep_logs = False
    try:
        api_client, observer = start_system(stack, api=api, kubeconfig=kubeconfig)
        say("")
        say(f"  kubeconfig  export KUBECONFIG={stack.kubeconfig}   (then: {_kubectl()} get whmc,whmn,myrepl)")
        say(f"  proxy       http://127.0.0.1:{stack.proxy_port}/")
        token = "a token of that cluster" if kubeconfig else ADMIN_TOKEN
        say(f"  shim        http://127.0.0.1:{stack.shim_port}/api/ha/status   (Authorization: Bearer {token})")
        if stack.certificates is not None:
            ca = stack.certificates.ca
            say(f"  CA          {ca}   (it signed the proxy's, the shim's and the database servers' certificates)")
            say(f"  HTTPS       curl --cacert {ca} https://127.0.0.1:{stack.proxy_tls_port}/")
            say(
                f"              curl --cacert {ca} -H 'Authorization: Bearer {token}' "
                f"https://127.0.0.1:{stack.shim_tls_port}/api/ha/status"
            )
            say("  database    replication over TLS, each replica verifying its source with that CA (spec.tls)")
        say(
            f"  metrics     http://127.0.0.1:{stack.metrics_port}/metrics  (operator), "
            f"http://127.0.0.1:{stack.admin_port}/metrics  (proxy)"
        )
        say(f"  logs        {workdir}")
        say("")
        if scenario == "failover":
            for line in observer.lines():
                if line:
                    say(line)
            return 0 if tour(stack, api_client, say) else 1
        _watch(observer)
        return 0
    except DemoError as exc:
        print(f"whm-ha demo: {exc}", file=sys.stderr)
        keep_logs = True
        return 1
    except KeyboardInterrupt:
        say("")
        return 0
    finally:
        started = bool(stack.processes or stack.databases)
        if started:
            say("Stopping everything ...")
        stack.stop()
        if keep_logs and started:
            say(f"Stopped. The logs are in {workdir}.")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if started:
                say("Stopped.")

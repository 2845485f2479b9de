"""``kubectl whm``: status, history, requests and backups for WHMClusters and MySQLReplications, as a kubectl plugin
(kubectl runs ``kubectl-whm`` from PATH). Honours ``--kubeconfig``, ``--context`` and ``-n`` as kubectl does.

Exit codes: 0 done; 1 the request was Refused or Failed, or the object is not as asked; 2 usage or API errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..crd.annotations import FAILOVER_TO, FORCE, PROMOTE, REQUEST_ID
from ..crd.common import GROUP
from .view import backups_report, history, render_backups, render_history, render_status, status_report

VERSION = "v1alpha1"
Obj = dict[str, Any]


class PluginError(Exception):
    """Something to say in one line, with an exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Api:
    """The few reads and patches the plugin makes, in one namespace."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            api_client = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError, yaml.YAMLError, TypeError, KeyError) as exc:
            raise PluginError(f"cannot use the kubeconfig: {' '.join(str(exc).split())}") from None
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            active = next((c for c in contexts if c["name"] == context), active)
        self.namespace = namespace or (active or {}).get("context", {}).get("namespace") or "default"
        self.custom = client.CustomObjectsApi(api_client)

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            message = str(exc.reason)
            with contextlib.suppress(TypeError, ValueError, KeyError):
                message = json.loads(exc.body or "")["message"]
            raise PluginError(f"{what}: {' '.join(message.split())}", 1 if exc.status == 404 else 2) from None
        except OSError as exc:  # urllib3 connection errors
            raise PluginError(f"{what}: the API server did not answer: {' '.join(str(exc).split())}") from None

    def get(self, plural: str, name: str) -> Obj:
        found: Obj = self._call(
            f"{plural}/{name}", self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name
        )
        return found

    def list(self, plural: str, selector: str | None = None) -> list[Obj]:
        listed = self._call(
            plural,
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            label_selector=selector or "",
        )
        items: list[Obj] = listed["items"]
        return items

    def create(self, plural: str, body: Obj) -> Obj:
        created: Obj = self._call(
            f"{plural}/{body['metadata']['name']}",
            self.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            body,
        )
        return created

    def patch(self, plural: str, name: str, body: Obj) -> Obj:
        patched: Obj = self._call(
            f"{plural}/{name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            name,
            body,
        )
        return patched


def _cluster(api: Api, name: str | None) -> Obj:
    if name:
        return api.get("whmclusters", name)
    clusters = api.list("whmclusters")
    if len(clusters) != 1:
        names = ", ".join(c["metadata"]["name"] for c in clusters) or "none"
        raise PluginError(f"name the WHMCluster: namespace {api.namespace} has {len(clusters)} ({names})")
    return clusters[0]


def _replication(api: Api, cluster: Obj) -> Obj | None:
    ref = ((cluster.get("spec") or {}).get("database") or {}).get("replicationRef")
    return api.get("mysqlreplications", ref["name"]) if ref else None


def _nodes(api: Api, cluster: Obj) -> list[Obj]:
    name = cluster["metadata"]["name"]
    return [n for n in api.list("whmnodes") if (n.get("spec") or {}).get("cluster") == name]


def _print(data: Any, output: str, text: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(text)


def _status(api: Api, args: argparse.Namespace) -> int:
    cluster = _cluster(api, args.cluster)
    report = status_report(cluster, _nodes(api, cluster), _replication(api, cluster))
    _print(report, args.output, render_status(report))
    return 0


def _history(api: Api, args: argparse.Namespace) -> int:
    cluster = _cluster(api, args.cluster)
    events = history(cluster, _replication(api, cluster))
    _print(events, args.output, render_history(events))
    return 0


def _request(api: Api, plural: str, name: str, annotations: dict[str, str], timeout: float) -> int:
    """Set the request's annotations with a fresh id, wait for ``status.lastRequest`` to carry it, print it."""
    request_id = f"kubectl-whm-{uuid.uuid4().hex[:12]}"
    api.patch(plural, name, {"metadata": {"annotations": {**annotations, REQUEST_ID: request_id}}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = (api.get(plural, name).get("status") or {}).get("lastRequest") or {}
        if outcome.get("id") == request_id:
            print(f"{outcome.get('type')} {outcome.get('target')}: {outcome.get('result')}: {outcome.get('reason')}")
            return 0 if outcome.get("result") == "Succeeded" else 1
        time.sleep(0.5)
    raise PluginError(f"no outcome for request {request_id} within {timeout:.0f}s (is the operator running?)", 1)


def _failover(api: Api, args: argparse.Namespace) -> int:
    return _request(api, "whmclusters", args.cluster, {FAILOVER_TO: args.to}, args.timeout)


def _promote(api: Api, args: argparse.Namespace) -> int:
    annotations = {PROMOTE: args.member, FORCE: "true" if args.force else "false"}
    return _request(api, "mysqlreplications", args.replication, annotations, args.timeout)


def _pause(api: Api, args: argparse.Namespace) -> int:
    paused = args.command == "pause"
    cluster = _cluster(api, args.cluster)
    api.patch("whmclusters", cluster["metadata"]["name"], {"spec": {"failover": {"paused": paused}}})
    print(f"whmcluster/{cluster['metadata']['name']}: automation {'paused' if paused else 'resumed'}")
    return 0


def _backup(api: Api, args: argparse.Namespace) -> int:
    """Create a MySQLBackup of the replication; with --wait (the default), wait for it to finish."""
    api.get("mysqlreplications", args.replication)  # a clear error now rather than a Failed backup later
    name = args.name or f"{args.replication}-manual-{datetime.now(UTC):%Y%m%d%H%M%S}"
    spec: Obj = {"replication": args.replication}
    if args.member:
        spec["member"] = args.member
    elif args.target:
        spec["target"] = args.target
    api.create(
        "mysqlbackups",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MySQLBackup", "metadata": {"name": name}, "spec": spec},
    )
    print(f"mysqlbackup/{name} created")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = api.get("mysqlbackups", name).get("status") or {}
        if status.get("phase") in ("Completed", "Failed"):
            print(f"mysqlbackup/{name}: {status['phase']}: {status.get('message', '')}")
            return 0 if status["phase"] == "Completed" else 1
        time.sleep(1)
    raise PluginError(f"mysqlbackup/{name} did not finish within {args.timeout:.0f}s (kubectl whm backups)", 1)


def _backups(api: Api, args: argparse.Namespace) -> int:
    listed = api.list("mysqlbackups")
    if args.replication:
        listed = [b for b in listed if (b.get("spec") or {}).get("replication") == args.replication]
    rows = backups_report(listed)
    _print(rows, args.output, render_backups(rows))
    return 0


def _maintenance(api: Api, args: argparse.Namespace) -> int:
    api.patch("whmnodes", args.node, {"spec": {"maintenance": args.state == "on"}})
    print(f"whmnode/{args.node}: maintenance {args.state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    def connection(default: object) -> argparse.ArgumentParser:
        """kubectl's flags, before or after the command (after it, unset ones keep what came before)."""
        flags = argparse.ArgumentParser(add_help=False)
        flags.add_argument(
            "--kubeconfig", default=default, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)"
        )
        flags.add_argument("--context", default=default, help="the kubeconfig context (default: the current one)")
        flags.add_argument(
            "-n", "--namespace", default=default, help="namespace (default: the context's, else default)"
        )
        return flags

    common = connection(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="kubectl whm", description=__doc__.split("\n\n")[0], parents=[connection(None)]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, handler: Any) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_, description=help_, parents=[common])
        parser.set_defaults(handler=handler)
        return parser

    def output(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")

    status = command("status", "nodes, the primary, the database topology, recent failovers, problems", _status)
    status.add_argument("cluster", nargs="?", help="the WHMCluster (default: the only one in the namespace)")
    output(status)
    past = command("history", "failovers and promotions, newest first", _history)
    past.add_argument("cluster", nargs="?", help="the WHMCluster (default: the only one in the namespace)")
    output(past)
    failover = command("failover", "make NODE the primary WHM node; waits for the outcome", _failover)
    failover.add_argument("cluster")
    failover.add_argument("--to", required=True, metavar="NODE", help="the WHMNode to make primary")
    failover.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome (default 60)")
    promote = command("promote", "promote MEMBER to database primary; waits for the outcome", _promote)
    promote.add_argument("replication")
    promote.add_argument("member")
    promote.add_argument("--force", action="store_true", help="allow a member beyond maxLagSeconds")
    promote.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the outcome (default 120)")
    for name, help_ in (("pause", "pause the cluster's automation"), ("resume", "resume the cluster's automation")):
        toggle = command(name, help_, _pause)
        toggle.add_argument("cluster", nargs="?", help="the WHMCluster (default: the only one in the namespace)")
    backup = command("backup", "take a backup of REPLICATION now (a MySQLBackup); waits for it", _backup)
    backup.add_argument("replication")
    backup.add_argument("--name", help="the MySQLBackup's name (default: REPLICATION-manual-<UTC time>)")
    backup.add_argument("--target", choices=["PreferReplica", "Primary"], help="default: the replication's")
    backup.add_argument("--member", help="back up this member, whatever its role")
    backup.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="wait for the outcome")
    backup.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    backups = command("backups", "the MySQLBackups, newest first", _backups)
    backups.add_argument("replication", nargs="?", help="only this MySQLReplication's")
    output(backups)
    maintenance = command("maintenance", "take a node out of rotation (on) or back (off)", _maintenance)
    maintenance.add_argument("node")
    maintenance.add_argument("state", choices=["on", "off"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        api = Api(args.kubeconfig, args.context, args.namespace)
        code: int = args.handler(api, args)
    except PluginError as exc:
        print(f"kubectl whm: {exc}", file=sys.stderr)
        return exc.code
    return code


if __name__ == "__main__":
    sys.exit(main())

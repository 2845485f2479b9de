"""The ``whm-ha`` command: one subcommand per component."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .kube.config import KubeConfigError

Handler = Callable[[argparse.Namespace], int]
DEFAULT_PASSWORD_ENV = "WHM_HA_DB_PASSWORD"


def _run_crds(args: argparse.Namespace) -> int:
    from .crd.generate import write_all

    for path in write_all(args.out):
        print(path)
    return 0


def _run_migrate(args: argparse.Namespace) -> int:
    from .db.dsn import DSNError, parse, read_password
    from .db.migrate import MigrationError, migrate, migrations_from

    try:
        dsn = parse(args.dsn).with_password(read_password(args.password_env, args.password_file))
        migrations = migrations_from(args.sql_dir) if args.sql_dir else None
        report = migrate(dsn, migrations, health_check_retention_days=args.health_check_retention_days)
    except (DSNError, MigrationError) as exc:
        print(f"whm-ha migrate: {exc}", file=sys.stderr)
        return 1
    if report.applied or report.settings_changed:
        applied = ", ".join(f"{v:03d}" for v in report.applied) or "none"
        changed = ", ".join(report.settings_changed) or "none"
        print(f"migrated {dsn}: applied {applied}; settings changed: {changed}")
    else:
        print(f"{dsn} is up to date ({len(report.already)} migrations already applied)")
    if not report.event_scheduler:
        print(
            f"whm-ha migrate: warning: event_scheduler is OFF on {dsn.host}: the cleanup events (expired sessions,"
            " cache entries, old health checks) will not run until it is ON (SET GLOBAL event_scheduler = ON, and"
            " event_scheduler=ON in the server's configuration)",
            file=sys.stderr,
        )
    return 0


def _run_backup_task(args: argparse.Namespace) -> int:
    from .backup.task import main

    return main(args.task_file)


def _run_restore_task(_: argparse.Namespace) -> int:
    from .backup.recovery import main

    return main()


def _run_binlog_archive(args: argparse.Namespace) -> int:
    from .backup.archiver_service import run

    return run(namespace=args.namespace, replication=args.replication, metrics_port=args.metrics_port, spool=args.spool)


def _run_sandbox(args: argparse.Namespace) -> int:
    try:
        from .sandbox.main import run
    except ImportError as exc:
        print(f"whm-ha sandbox: needs the sandbox extra (pip install 'whm-ha[sandbox]'): {exc}", file=sys.stderr)
        return 1
    return run(
        port=args.port,
        crds=args.crds,
        kubeconfig_out=args.kubeconfig_out,
        users=args.users,
        state_file=args.state_file,
        bookmark_interval=args.bookmark_interval,
    )


def _run_operator(args: argparse.Namespace) -> int:
    from .backup.launch import RunnerSettings
    from .operator_runtime import run

    if args.backup_runner == "job" and not args.backup_image:
        print("whm-ha operator: --backup-runner=job needs --backup-image", file=sys.stderr)
        return 2
    return run(
        backups=RunnerSettings(
            runner=args.backup_runner,
            image=args.backup_image,
            image_pull_policy=args.backup_image_pull_policy,
            archiver_service_account=args.archiver_service_account,
            archiver_metrics_port=args.archiver_metrics_port,
        ),
        namespace=args.namespace,
        metrics=args.metrics or None,
        health=args.health or None,
        peering=args.peering,
        priority=args.peering_priority,
        standalone=args.standalone,
        verbose=args.verbose,
    )


def _run_shim(args: argparse.Namespace) -> int:
    from .shim.main import run

    if (args.listen_tls is None) != (args.tls_secret is None):
        print("whm-ha shim: --listen-tls and --tls-secret go together", file=sys.stderr)
        return 2
    return run(
        listen=args.listen,
        namespace=args.namespace,
        cluster=args.cluster,
        anonymous_reads=args.anonymous_reads,
        static_tokens_secret=args.static_tokens_secret,
        request_timeout=args.request_timeout,
        proxy_admins=args.proxy_admin,
        proxy_pods=args.proxy_pods,
        header_timeout=args.client_header_timeout,
        listen_tls_address=args.listen_tls,
        tls_secret=args.tls_secret,
        tls_handshake_timeout=args.tls_handshake_timeout,
    )


def _add_shim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shim = sub.add_parser(
        "shim",
        formatter_class=DefaultsShown,
        help="serve the legacy /api/ha REST API over the custom resources",
        description="Serve the 12 legacy /api/ha endpoints, backed by the custom resources.",
    )
    shim.add_argument(
        "--listen", default="0.0.0.0:4000", metavar="HOST:PORT", help="API address (default: 0.0.0.0:4000)"
    )
    shim.add_argument("--cluster", default=None, help="WHMCluster to serve (default: the only one)")
    shim.add_argument("--namespace", "-n", default="default", help="namespace of the WHMCluster (default: default)")
    shim.add_argument(
        "--anonymous-reads", action="store_true", help="allow GET requests without a token (off by default)"
    )
    shim.add_argument(
        "--static-tokens-secret",
        default=None,
        metavar="NAME",
        help="Secret of static tokens for tools without a Kubernetes identity (<user>: sha256:<hex>)",
    )
    shim.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds to wait for the operator's answer (then 504)"
    )
    shim.add_argument(
        "--proxy-admin", action="append", default=[], metavar="URL", help="a proxy's admin URL, for stats (repeat)"
    )
    shim.add_argument(
        "--proxy-pods",
        default=None,
        metavar="SELECTOR:PORT",
        help="find the proxy replicas as pods (e.g. app.kubernetes.io/component=proxy:8081), for stats",
    )
    shim.add_argument(
        "--client-header-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a client that has not sent a whole request head by then gets 408 and is dropped (default 60)",
    )
    shim.add_argument(
        "--listen-tls", default=None, metavar="HOST:PORT", help="HTTPS address (needs --tls-secret; default: none)"
    )
    shim.add_argument(
        "--tls-secret",
        default=None,
        metavar="NAME",
        help="kubernetes.io/tls Secret in the namespace served on --listen-tls (watched: a new certificate is used "
        "for new connections)",
    )
    shim.add_argument(
        "--tls-handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a client that has not completed its TLS handshake by then is dropped (default 10)",
    )
    shim.set_defaults(handler=_run_shim)


def _run_proxy(args: argparse.Namespace) -> int:
    from whm_ha_proxy.options import ProxyOptions
    from whm_ha_proxy.supervisor import run

    try:
        options = ProxyOptions.from_args(args)
    except ValueError as exc:
        print(f"whm-ha proxy: {exc}", file=sys.stderr)
        return 2
    return run(options)


def _add_proxy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from whm_ha_proxy.options import add_arguments

    proxy = sub.add_parser(
        "proxy",
        formatter_class=DefaultsShown,
        help="run the HTTP load balancer in front of a WHMCluster's healthy nodes",
        description="Route HTTP traffic to the healthy nodes of one WHMCluster.",
    )
    add_arguments(proxy)
    proxy.set_defaults(handler=_run_proxy)


def _run_demo(args: argparse.Namespace) -> int:
    from .lifecycle import say, stop_on_signals

    stop_on_signals()
    if args.api == "cluster":
        if args.tls:
            print("whm-ha demo: --tls runs on loopback (--api sandbox or real, or --kubeconfig)", file=sys.stderr)
            return 2
        from .demo import deployed

        return deployed.run(args.scenario, say)
    from .demo.main import run

    return run(
        api=args.api,
        kubeconfig=args.kubeconfig,
        scenario=args.scenario,
        proxy_port=args.proxy_port,
        shim_port=args.shim_port,
        database=args.database,
        tls=args.tls,
        proxy_tls_port=args.proxy_tls_port,
        shim_tls_port=args.shim_tls_port,
    )


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, "", argparse.SUPPRESS) and "default" not in text
        return f"{text} (default: %(default)s)" if shown and action.option_strings else text


def _kube_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", default=None, help="namespace to watch (default: all namespaces)")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        formatter_class=DefaultsShown,
        help="start the whole system locally (API, MariaDB or MySQL, nodes, operator, proxy, shim)",
        description="Start everything on loopback and show what happens.",
    )
    demo.add_argument(
        "--api",
        choices=["sandbox", "real", "cluster"],
        default="sandbox",
        help="which Kubernetes (default: sandbox): the sandbox API, a real kube-apiserver + etcd, or the local "
        "cluster with pods (hack/local-cluster: helm install, MariaDB and WHM nodes as pods; root)",
    )
    demo.add_argument("--kubeconfig", type=Path, default=None, help="use an existing cluster instead")
    demo.add_argument(
        "--database",
        choices=["mariadb", "mysql"],
        default="mariadb",
        help="the database servers: the host's MariaDB 10.11 (default) or MySQL 9.7 from the root that "
        "hack/build-databases builds",
    )
    demo.add_argument("--scenario", choices=["failover"], default=None, help="run a scripted tour")
    demo.add_argument("--proxy-port", type=int, default=8080, help="the proxy's port on 127.0.0.1")
    demo.add_argument("--shim-port", type=int, default=4000, help="the shim's port on 127.0.0.1")
    demo.add_argument(
        "--tls",
        action="store_true",
        help="also serve the proxy and the shim over HTTPS, with certificates from a CA the demo makes (not with "
        "--api cluster)",
    )
    demo.add_argument("--proxy-tls-port", type=int, default=8443, help="with --tls: the proxy's HTTPS port")
    demo.add_argument("--shim-tls-port", type=int, default=4443, help="with --tls: the shim's HTTPS port")
    demo.set_defaults(handler=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsShown,
        prog="whm-ha",
        description=(
            "Keeps WHM web-panel nodes and their MySQL/MariaDB replication highly available on Kubernetes. "
            "Every component finds the API server through KUBECONFIG, ~/.kube/config, "
            "or the in-cluster service account."
        ),
    )
    parser.add_argument("--version", action="version", version=f"whm-ha {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    operator = sub.add_parser(
        "operator",
        formatter_class=DefaultsShown,
        help="run the operator (health probing, election, failover, MySQL replication)",
        description="Run the kopf operator for WHMCluster, WHMNode and MySQLReplication.",
    )
    _kube_args(operator)
    operator.add_argument(
        "--metrics",
        default="0.0.0.0:9090",
        metavar="HOST:PORT",
        help="Prometheus metrics address (default: 0.0.0.0:9090; '' to disable)",
    )
    operator.add_argument(
        "--health", default="", metavar="HOST:PORT", help="liveness endpoint (/healthz), e.g. 0.0.0.0:8082"
    )
    operator.add_argument("--peering", default="whm-ha", help="kopf peering name: one replica is active at a time")
    operator.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        metavar="N",
        help="this replica's peering priority; the highest alive acts (default: random, so replicas differ)",
    )
    operator.add_argument(
        "--standalone", action="store_true", help="no peering: act even if other replicas run (tests only)"
    )
    operator.add_argument(
        "--backup-runner",
        choices=["process", "job"],
        default="process",
        help="run each backup try as a process of the operator, or as a Kubernetes Job (and the binlog archiver as a "
        "Deployment the operator manages); process needs no kubelet (the sandbox, the demo, the tests)",
    )
    operator.add_argument(
        "--backup-image", default="", metavar="IMAGE", help="the image of the backup Jobs and the archiver (job)"
    )
    operator.add_argument(
        "--backup-image-pull-policy",
        default="IfNotPresent",
        choices=["Always", "IfNotPresent", "Never"],
        help="the imagePullPolicy of the backup Jobs and the archiver (job)",
    )
    operator.add_argument(
        "--archiver-service-account",
        default="",
        metavar="NAME",
        help="the ServiceAccount of the archiver Deployments (job; in each replication's namespace)",
    )
    operator.add_argument(
        "--archiver-metrics-port", type=int, default=9090, metavar="PORT", help="the archiver pods' metrics port"
    )
    operator.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    operator.set_defaults(handler=_run_operator)

    _add_proxy(sub)

    _add_shim(sub)

    sandbox = sub.add_parser(
        "sandbox",
        formatter_class=DefaultsShown,
        help="run a local Kubernetes-like API server for tests, the demo and development",
        description="Run the sandbox Kubernetes API server (development and tests only).",
    )
    sandbox.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    sandbox.add_argument("--crds", type=Path, default=None, help="folder of CRD files to preinstall")
    sandbox.add_argument("--kubeconfig-out", type=Path, default=None, help="write a kubeconfig here")
    sandbox.add_argument(
        "--users", type=Path, default=None, help="users and permissions file for TokenReview/SubjectAccessReview"
    )
    sandbox.add_argument(
        "--state-file", type=Path, default=None, help="keep objects across restarts (saved on shutdown)"
    )
    sandbox.add_argument("--bookmark-interval", type=float, default=30.0, help="seconds between watch BOOKMARK events")
    sandbox.set_defaults(handler=_run_sandbox)

    _add_demo(sub)

    crds = sub.add_parser(
        "crds",
        formatter_class=DefaultsShown,
        help="write the CustomResourceDefinitions generated from the models",
        description="Generate apiextensions.k8s.io/v1 CRDs (one file per CRD) from the pydantic models.",
    )
    crds.add_argument("--out", type=Path, default=Path("crds"), help="output folder (default: crds)")
    crds.set_defaults(handler=_run_crds)

    migrate = sub.add_parser(
        "migrate",
        formatter_class=DefaultsShown,
        help="create or upgrade the legacy SQL schema (idempotent)",
        description=(
            "Apply the legacy schema (tables whm_cluster_nodes, ha_failover_events, ha_sessions, ha_cache, "
            "ha_health_checks and their cleanup events) to a MariaDB 10.6+ or MySQL 8.0+ database. "
            "A second run changes nothing. The cleanup events run only with event_scheduler=ON."
        ),
    )
    migrate.add_argument("--dsn", required=True, help="mysql://user@host:port/database (no password here)")
    migrate.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="VAR",
        help=f"environment variable holding the password (default: {DEFAULT_PASSWORD_ENV})",
    )
    migrate.add_argument("--password-file", type=Path, default=None, help="file whose first line is the password")
    migrate.add_argument(
        "--health-check-retention-days",
        type=int,
        default=None,
        metavar="DAYS",
        help="how long the daily event keeps ha_health_checks rows (default on first run: 7)",
    )
    migrate.add_argument("--sql-dir", type=Path, default=None, help=argparse.SUPPRESS)
    migrate.set_defaults(handler=_run_migrate)

    backup_task = sub.add_parser(
        "backup-task",
        help="one try of a MySQLBackup (the operator runs it; the task comes as JSON on standard input)",
        description=(
            "Take one backup: read the task the operator resolved (store, credentials, member) as JSON from standard "
            "input, stream the dump to the store, print the manifest as JSON; exit 1 with one line on standard error "
            "when it failed (nothing of it is then listed as usable)."
        ),
    )
    backup_task.add_argument(
        "--task-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the task from this file instead (a backup Job's mounted Secret); the try then outlives the operator",
    )
    backup_task.set_defaults(handler=_run_backup_task)

    restore_task = sub.add_parser(
        "restore-task",
        help="load a backup into one empty member (the operator runs it; the task comes as JSON on standard input)",
        description=(
            "Load a backup into one member for spec.bootstrap.recovery: read the task the operator resolved (store, "
            "backup, member) as JSON from standard input, empty a member holding part of this backup, load it, print "
            "the backup's manifest as JSON; exit 3 when trying again would not help, 1 when it might."
        ),
    )
    restore_task.set_defaults(handler=_run_restore_task)

    archive = sub.add_parser(
        "binlog-archive",
        formatter_class=DefaultsShown,
        help="stream a MySQLReplication's primary's binary logs to its backup storage (the archiver Deployment)",
        description=(
            "Archive the binary logs of the replication's current primary into spec.backup.storage (under binlogs/), "
            "in segments every half second while writes flow, following promotions and switchovers without a gap; "
            "report the lag as metrics and in status.archive."
        ),
    )
    archive.add_argument("--namespace", "-n", required=True, help="the MySQLReplication's namespace")
    archive.add_argument("--replication", required=True, help="the MySQLReplication's name")
    archive.add_argument("--metrics-port", type=int, default=None, metavar="PORT", help="serve Prometheus metrics here")
    archive.add_argument(
        "--spool",
        type=Path,
        default=Path("/tmp/whm-ha-binlog-spool"),
        help="a directory of its own for the binlog tool's copies until they are uploaded",
    )
    archive.set_defaults(handler=_run_binlog_archive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KubeConfigError as exc:
        print(f"whm-ha {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

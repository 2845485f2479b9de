"""The chart's alerts and dashboard against a real Prometheus (Debian's ``prometheus`` package, which
hack/setup installs): ``promtool check rules`` and ``promtool test rules`` on the rendered PrometheusRule, and a
Prometheus that scrapes a real operator and proxy (with MariaDB replication and WHM nodes) finds every metric the
rules and the dashboard use, evaluates every rule without error, and fires nothing on a healthy system."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client

from tests.backups.test_operator_backups import Backups
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartServers
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.proxy_process import StartProxy
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import Cluster, three_nodes
from tests.integration.test_operator_replication import SERVER_ARGS, Replication, member_host
from tests.kube_helpers import wait_for
from whm_ha.db.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "whm-ha"
UNIT_TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"
OPERATOR_JOB = "whm-ha-operator-metrics"  # the chart's default for release whm-ha: the metrics Service's name
METRIC = re.compile(r"\b(whm_ha_[a-z0-9_]+|up)\b(?=\s*[{(\[]|\s*$|\s*[=!<>)])")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: hack/setup installs Debian's prometheus package"
    return found


def rendered() -> dict[str, Any]:
    """The PrometheusRule and the dashboard the chart renders with both enabled."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(
            {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
            name="whm-ha",
            namespace="whm-ha",
        )
    docs = [d for name, text in files.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "whm-ha-dashboard")
    return {"groups": rule["spec"]["groups"], "dashboard": json.loads(dashboard["data"]["whm-ha.json"])}


def rules_file(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered()["groups"]}))
    return path


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rendered()["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in rendered()["dashboard"]["panels"] for target in panel["targets"]]


def metric_names(expressions: list[str]) -> set[str]:
    names = set()
    for expression in expressions:
        for name in METRIC.findall(expression):
            names.add(name)
    return names


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(rules_file(tmp_path))], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_every_alert_fires_in_its_promtool_unit_test(tmp_path: Path) -> None:
    rules_file(tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(tmp_path / UNIT_TESTS.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c["exp_alerts"]}
    quiet = {c["alertname"] for t in cases for c in t["alert_rule_test"] if not c["exp_alerts"]}
    assert fired == {a["alert"] for a in alerts()}, "every alert has a case where it fires"
    assert len(quiet) >= 8, "and most have one where it does not yet"


def test_the_dashboard_is_grafana_json_over_a_datasource_variable() -> None:
    board = rendered()["dashboard"]
    assert board["uid"] == "whm-ha" and board["templating"]["list"][0]["type"] == "datasource"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


class Prometheus:
    """A real Prometheus on loopback scraping the given targets every second, with the chart's rules."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = rules_file(workdir)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.ready, 30, "Prometheus ready")

    def ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5).read())
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def whole_system(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    node_servers: StartNodes,
    operator_process: StartOperator,
    proxy_process: StartProxy,
    mariadb_servers: StartServers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> tuple[Any, Any, int]:
    """A WHMCluster of three nodes and a MySQLReplication of three MariaDB servers, with backups asked for, that
    has switched over once, with the operator and the proxy that serve them and the binlog archiver (its metrics
    port)."""
    host = member_host(kube_api.tier)
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    replication = Replication(kube_client, kube_namespace, mariadb_servers(3, extra_args=SERVER_ARGS + bind), host)
    storage = {"filesystem": {"path": str(tmp_path / "backups")}}
    replication.create(backup={"storage": storage, "archive": {"enabled": True}})
    cluster = Cluster(kube_client, kube_namespace)
    cluster.create()
    three_nodes(cluster, node_servers)
    operator = operator_process(kube_api.kubeconfig, kube_namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    replication.healthy()
    replication.annotate({"ha.whm.io/promote": "m1", "ha.whm.io/request-id": "monitoring"})
    replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 30, "m1 primary")
    Backups(replication).create("monitoring")
    assert Backups(replication).finished("monitoring")["phase"] == "Completed"
    proxy = proxy_process(kube_api.kubeconfig, kube_namespace)
    archiver_port = free_port()
    with (tmp_path / "archiver.log").open("ab") as log:
        archiver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "whm_ha",
                "binlog-archive",
                f"--namespace={kube_namespace}",
                "--replication=db",
                f"--metrics-port={archiver_port}",
                f"--spool={tmp_path / 'spool'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kube_api.kubeconfig)},
        )
    request.addfinalizer(lambda: (archiver.kill(), archiver.wait()))

    def streaming() -> bool:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{archiver_port}/metrics", timeout=5).read().decode()
        except OSError:
            return False
        return bool(re.search(r"^whm_ha_binlog_archive_streaming\{[^}]*\} 1\.0$", text, re.MULTILINE))

    wait_for(streaming, 30, "the archiver streaming (archiver.log in the test's directory says why not)")

    def served() -> bool:
        try:
            return bool(urllib.request.urlopen(proxy.url, timeout=5).status == 200)
        except OSError:
            return False

    wait_for(served, 15, "a GET through the proxy")
    return operator, proxy, archiver_port


@pytest.fixture
def prometheus(whole_system: tuple[Any, Any, int], tmp_path: Path) -> Iterator[Prometheus]:
    operator, proxy, archiver_port = whole_system
    targets = {
        OPERATOR_JOB: f"127.0.0.1:{operator.metrics_port}",
        "whm-ha-proxy-admin": f"127.0.0.1:{proxy.admin_port}",
        "whm-ha-binlog-archive": f"127.0.0.1:{archiver_port}",
    }
    server = Prometheus(tmp_path, targets)
    yield server
    server.stop()


@pytest.mark.mariadb
def test_prometheus_finds_every_metric_the_rules_and_dashboard_use_and_nothing_fires(prometheus: Prometheus) -> None:
    used = metric_names([a["expr"] for a in alerts()] + dashboard_queries())
    assert {"whm_ha_primary_node", "whm_ha_mysql_condition", "whm_ha_proxy_responses_total", "up"} <= used

    def unexported() -> list[str]:
        names = set(prometheus.api("label/__name__/values"))
        return sorted(n for n in used if n not in names and f"{n}_bucket" not in names)

    try:
        wait_for(lambda: not unexported(), 30, "every metric used scraped")
    except AssertionError:
        raise AssertionError(f"used but not exported: {unexported()}") from None
    up = {r["metric"]["job"]: r["value"][1] for r in prometheus.api("query", query="up")["result"]}
    assert up == {OPERATOR_JOB: "1", "whm-ha-proxy-admin": "1", "whm-ha-binlog-archive": "1"}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for(evaluated, 15, "every rule evaluated")
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], [r.get("lastError") for r in rules]
    # Rules evaluated before the first scrape saw no operator yet: the next evaluations settle that.
    try:
        wait_for(lambda: prometheus.api("alerts")["alerts"] == [], 10, "no alert pending or firing")
    except AssertionError:
        raise AssertionError(f"a healthy system fires: {prometheus.api('alerts')['alerts']}") from None

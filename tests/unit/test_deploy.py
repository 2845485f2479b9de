"""The Helm chart and the plain manifests: they render, lint, validate against Kubernetes 1.33 schemas and our
CRDs, keep a restrictive security context, and never drift from crds/ or from each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from whm_ha.crd.generate import resource_schema
from whm_ha.crd.resources import ALL
from whm_ha.crd.validation import admit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "whm-ha"
KUBERNETES_VERSION = "1.33"
OURS = {r.kind: r for r in ALL}
sys.path.insert(0, str(ROOT / "hack"))
import render_manifests  # noqa: E402


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name="whm-ha", namespace="whm-ha")
    docs = []
    for name, text in files.items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def validate(obj: dict[str, Any]) -> None:
    """Built-in kinds against the Kubernetes schemas (strict: no unknown fields); ours against our CRDs."""
    if obj["kind"] in OURS:
        _, errors = admit(resource_schema(OURS[obj["kind"]]), obj)
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
    elif obj["kind"] == "ServiceMonitor":
        assert obj["spec"]["endpoints"], "a ServiceMonitor with no endpoints"
    elif obj["kind"] == "PrometheusRule":
        assert all(g["rules"] for g in obj["spec"]["groups"]), "a rule group with no rules"
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


VALUE_SETS = {
    "defaults": {},
    "single-namespace": {"watchNamespace": "apps", "shim": {"anonymousReads": True, "staticTokensSecret": "tokens"}},
    "monitoring-and-policy": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "WHM"}},
        "networkPolicy": {"metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    },
    "no-policy": {"networkPolicy": {"enabled": False}},
    "operator-only": {"proxy": {"enabled": False}, "shim": {"enabled": False}, "operator": {"replicas": 1}},
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_renders_valid_objects(name: str) -> None:
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        validate(doc)


def test_chart_lints_clean() -> None:
    result = helm.lint(str(CHART))
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


def test_values_schema_rejects_bad_values_clearly() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for bad, words in (
            ({"proxy": {"port": 70000}}, "port"),
            ({"operator": {"replicas": "two"}}, "replicas"),
            ({"watchNamespace": "Not_A_Namespace"}, "watchNamespace"),
            ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
            ({"colour": "blue"}, "colour"),
            ({"networkPolicy": {"metricsNamespaceSelector": {"matchLabel": {}}}}, "matchLabel"),
        ):
            with pytest.raises(helm.HelmError) as refused:
                chart.validate_schema(bad)
            assert words in str(refused.value), str(refused.value)


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]


def test_restrictive_security_probes_and_resources() -> None:
    docs = render({})
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"whm-ha-operator", "whm-ha-proxy", "whm-ha-shim"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(docs):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["livenessProbe"] and container["readinessProbe"]
        assert container["resources"]["limits"] and container["resources"]["requests"]
    operator = next(d for d in deployments if d["metadata"]["name"] == "whm-ha-operator")
    assert operator["spec"]["replicas"] == 2, "kopf peering keeps one of two active"
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"} == {
        "whm-ha-operator",
        "whm-ha-proxy",
        "whm-ha-shim",
    }


def test_proxy_admin_port_is_closed_to_traffic() -> None:
    """The admin port listens on the pod IP (never 0.0.0.0), is not on the traffic Service, and the
    NetworkPolicy (on by default) admits it from the namespace and the chosen monitoring namespaces only."""
    docs = render({})
    proxy = next(c for c in _containers(docs) if c["name"] == "proxy")
    assert "--admin=$(POD_IP):8081" in proxy["args"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in proxy["env"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert [p["port"] for p in services["whm-ha-proxy"]["spec"]["ports"]] == [80]
    assert all(p["port"] != 8081 for s in services.values() for p in s["spec"]["ports"])
    (policy,) = (d for d in docs if d["kind"] == "NetworkPolicy")
    open_rule, admin_rule = policy["spec"]["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {8080, 4000}
    assert admin_rule["from"] == [{"podSelector": {}}] and {"port": 8081} in admin_rule["ports"]

    monitored = render(VALUE_SETS["monitoring-and-policy"])
    admin = next(d for d in monitored if d["kind"] == "Service" and d["metadata"]["name"] == "whm-ha-proxy-admin")
    assert admin["spec"]["clusterIP"] == "None" and [p["name"] for p in admin["spec"]["ports"]] == ["admin"]
    monitor = next(d for d in monitored if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == "whm-ha-proxy")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    (policy,) = (d for d in monitored if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"][1]["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    assert not any(d["kind"] == "NetworkPolicy" for d in render(VALUE_SETS["no-policy"]))


def test_single_namespace_mode_uses_roles() -> None:
    docs = render(VALUE_SETS["single-namespace"])
    roles = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs if "Role" in d["kind"]}
    assert ("Role", "whm-ha-operator", "apps") in roles
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "whm-ha-operator")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    operator = next(c for c in _containers(docs) if c["name"] == "operator")
    assert "--namespace=apps" in operator["args"]


def test_chart_crds_are_the_generated_ones() -> None:
    ours = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == ours
    for name in ours:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), f"{name}: run make crds"


def test_plain_manifests_are_rendered_from_the_chart_and_crds() -> None:
    assert render_manifests.OUT.read_text() == render_manifests.render(), "stale: run make crds"
    assert render_manifests.CRDS_OUT.read_text() == render_manifests.render_crds(), "stale: run make crds"
    assert render_manifests.EXAMPLES_OUT.read_text() == render_manifests.render_examples(), "stale: run make crds"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its built-in kustomize) not installed")
@pytest.mark.parametrize("kustomization", ["manifests/base", "manifests/overlays/example"])
def test_kustomize_builds_valid_objects(kustomization: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / kustomization)], capture_output=True, text=True, timeout=60, check=True
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Namespace", "Deployment", "Service", "ClusterRole"} <= kinds
    for doc in docs:
        validate(doc)


def test_dockerfile_is_small_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]  # one base, a build argument (hack/build-images sets it)
    (default,) = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ARG BASE_IMAGE=")]
    assert ":" in default and not default.endswith(":latest")
    assert "USER 10001" in text and 'ENTRYPOINT ["whm-ha"]' in text
    ignored = (ROOT / ".dockerignore").read_text()
    assert ".venv" in ignored and ".git" in ignored
    final = text.split("FROM ")[2]  # the image must not carry build tools: only the builder stage has them
    assert "build-essential" not in final and "gcc" not in final

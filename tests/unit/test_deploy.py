"""The Helm chart and the plain manifests: they render, lint, validate against Kubernetes 1.33 schemas, our
CRDs and cert-manager's Certificate CRD, keep a restrictive security context, and never drift from crds/ or from
each other."""

from __future__ import annotations

import argparse
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
from whm_ha.crd.validation import admit, unknown_fields
from whm_ha.crd.validation import validate as validate_against
from whm_ha_proxy.options import ProxyOptions, add_arguments

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "whm-ha"
KUBERNETES_VERSION = "1.33"
OURS = {r.kind: r for r in ALL}
# cert-manager's own CRD (vendored with its licence header): the chart's Certificates must pass its schema.
CERTIFICATE_CRD = yaml.safe_load(
    (ROOT / "tests" / "fixtures" / "cert-manager" / "cert-manager.io_certificates.yaml").read_text()
)
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


def certificate_problems(obj: dict[str, Any]) -> list[str]:
    """What kube-apiserver would refuse in a cert-manager Certificate (strictly: unknown fields too)."""
    (version,) = (v for v in CERTIFICATE_CRD["spec"]["versions"] if f"cert-manager.io/{v['name']}" == obj["apiVersion"])
    schema = version["schema"]["openAPIV3Schema"]
    return [str(e) for e in validate_against(schema, obj)] + [
        f"{f}: unknown field" for f in unknown_fields(schema, obj)
    ]


def validate(obj: dict[str, Any]) -> None:
    """Built-in kinds against the Kubernetes schemas (strict: no unknown fields); ours against our CRDs;
    cert-manager's Certificates against its CRD."""
    if obj["kind"] in OURS:
        _, errors = admit(resource_schema(OURS[obj["kind"]]), obj)
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
    elif obj["kind"] == "Certificate":
        assert certificate_problems(obj) == [], obj["metadata"]["name"]
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
    "tls-cert-manager": {
        "proxy": {
            "tls": {
                "enabled": True,
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
                    "dnsNames": ["whm.example.com", "*.whm.example.com"],
                    "privateKey": {"algorithm": "RSA", "size": 3072},
                },
            }
        },
        "shim": {
            "tls": {
                "enabled": True,
                "certManager": {"enabled": True, "issuerRef": {"name": "internal-ca"}, "ipAddresses": ["10.0.0.7"]},
            }
        },
    },
    "tls-secrets": {
        "proxy": {"tls": {"enabled": True, "port": 9443, "service": {"port": 8443}}},
        "shim": {"tls": {"enabled": True, "secretName": "legacy-api-tls", "keepHttp": True}},
    },
    "passthrough": {"proxy": {"passthrough": {"enabled": True}, "tls": {"enabled": True}}},
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


def _ports(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, int]:
    obj = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    if kind == "Service":
        return {p["name"]: p["port"] for p in obj["spec"]["ports"]}
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_tls_values_open_https_listeners() -> None:
    """proxy.tls adds --listen-tls beside the plain listener, an https port on the pod, the Service and the
    NetworkPolicy; shim.tls adds --listen-tls with its Secret and, unless keepHttp, keeps plain HTTP on the
    pod's loopback (off the Service and the policy) and probes over HTTPS. Off (the default), nothing changes."""
    plain = render({})
    assert not any("--listen-tls" in a for c in _containers(plain) for a in c["args"])
    assert not any(d["kind"] == "Certificate" for d in plain)

    docs = render(VALUE_SETS["tls-cert-manager"])
    proxy, shim = (next(c for c in _containers(docs) if c["name"] == n) for n in ("proxy", "shim"))
    assert {"--listen=0.0.0.0:8080", "--listen-tls=0.0.0.0:8443"} <= set(proxy["args"])
    assert _ports(docs, "Deployment", "whm-ha-proxy") == {"http": 8080, "https": 8443, "admin": 8081}
    assert _ports(docs, "Service", "whm-ha-proxy") == {"http": 80, "https": 443}
    assert {"--listen=127.0.0.1:4000", "--listen-tls=0.0.0.0:4443", "--tls-secret=whm-ha-shim-tls"} <= set(shim["args"])
    assert _ports(docs, "Deployment", "whm-ha-shim") == {"https": 4443}
    assert _ports(docs, "Service", "whm-ha-shim") == {"https": 4443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert shim[probe]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    (policy,) = (d for d in docs if d["kind"] == "NetworkPolicy")
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {8080, 8443, 4443}

    docs = render(VALUE_SETS["tls-secrets"])
    proxy, shim = (next(c for c in _containers(docs) if c["name"] == n) for n in ("proxy", "shim"))
    assert "--listen-tls=0.0.0.0:9443" in proxy["args"]
    assert _ports(docs, "Service", "whm-ha-proxy") == {"http": 80, "https": 8443}
    assert {"--listen=0.0.0.0:4000", "--tls-secret=legacy-api-tls"} <= set(shim["args"])
    assert _ports(docs, "Service", "whm-ha-shim") == {"http": 4000, "https": 4443}
    assert shim["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert not any(d["kind"] == "Certificate" for d in docs), "a named Secret needs no Certificate"
    (policy,) = (d for d in docs if d["kind"] == "NetworkPolicy")
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {8080, 9443, 4000, 4443}


def test_cert_manager_certificates_pass_its_crd() -> None:
    """The Certificates the chart renders pass cert-manager's own CRD schema and write the Secrets the
    listeners use; the check is not vacuous: a wrong value or an unknown field in them is refused."""
    docs = render(VALUE_SETS["tls-cert-manager"])
    certificates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    assert set(certificates) == {"whm-ha-proxy-tls", "whm-ha-shim-tls"}
    for certificate in certificates.values():
        assert certificate_problems(certificate) == []
    proxy, shim = certificates["whm-ha-proxy-tls"]["spec"], certificates["whm-ha-shim-tls"]["spec"]
    assert proxy["secretName"] == "whm-ha-proxy-tls" and shim["secretName"] == "whm-ha-shim-tls"
    assert proxy["issuerRef"] == {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert proxy["dnsNames"] == ["whm.example.com", "*.whm.example.com"]
    assert proxy["privateKey"] == {"algorithm": "RSA", "size": 3072, "rotationPolicy": "Always"}
    assert "whm-ha-shim.whm-ha.svc" in shim["dnsNames"] and shim["ipAddresses"] == ["10.0.0.7"]
    assert shim["duration"] == "2160h" and shim["renewBefore"] == "360h"

    wrong = yaml.safe_load(yaml.safe_dump(certificates["whm-ha-proxy-tls"]))
    wrong["spec"]["privateKey"]["algorithm"] = "DSA"
    wrong["spec"]["usage"] = ["server auth"]
    del wrong["spec"]["issuerRef"]["name"]
    problems = certificate_problems(wrong)
    assert any("spec.privateKey.algorithm" in p for p in problems), problems
    assert "spec.usage: unknown field" in problems
    ed25519 = render(
        {
            "shim": {
                "tls": {
                    "enabled": True,
                    "certManager": {
                        "enabled": True,
                        "issuerRef": {"name": "ca"},
                        "privateKey": {"algorithm": "Ed25519"},
                    },
                }
            }
        }
    )
    (certificate,) = (d for d in ed25519 if d["kind"] == "Certificate")
    assert certificate["spec"]["privateKey"] == {"algorithm": "Ed25519", "rotationPolicy": "Always"}
    assert certificate_problems(certificate) == []


def test_tls_values_refuse_a_listener_without_a_certificate() -> None:
    """A Certificate needs an issuer (schema), and the shim a Secret or a Certificate (render fails, naming
    the value to set)."""
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError) as refused:
            chart.validate_schema({"proxy": {"tls": {"enabled": True, "certManager": {"enabled": True}}}})
        assert "/proxy/tls/certManager/issuerRef/name" in str(refused.value), str(refused.value)
        with pytest.raises(helm.HelmError) as refused:
            chart.validate_schema({"shim": {"tls": {"certManager": {"duration": "90 days"}}}})
        assert "duration" in str(refused.value), str(refused.value)
    with pytest.raises(helm.HelmError) as refused:
        render({"shim": {"tls": {"enabled": True}}})
    assert "shim.tls.secretName" in str(refused.value)


def proxy_options(docs: list[dict[str, Any]]) -> ProxyOptions:
    """The proxy container's arguments as the proxy itself parses them."""
    (proxy,) = (c for c in _containers(docs) if c["name"] == "proxy")
    assert proxy["args"][0] == "proxy"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return ProxyOptions.from_args(parser.parse_args(proxy["args"][1:]))


def _open_ports(docs: list[dict[str, Any]]) -> set[int]:
    (policy,) = (d for d in docs if d["kind"] == "NetworkPolicy")
    return {p["port"] for p in policy["spec"]["ingress"][0]["ports"]}


def test_passthrough_value_opens_the_passthrough_listener() -> None:
    """proxy.passthrough adds --listen-passthrough and its idle timeout (as the proxy parses them) beside the
    other listeners, a port on the pod, the Service and the NetworkPolicy; off (the default), none of them."""
    plain = render({})
    assert proxy_options(plain).listen_passthrough is None
    assert "passthrough" not in _ports(plain, "Deployment", "whm-ha-proxy")
    assert "passthrough" not in _ports(plain, "Service", "whm-ha-proxy")
    assert 2087 not in _open_ports(plain)

    docs = render(VALUE_SETS["passthrough"])
    options = proxy_options(docs)
    assert options.listen_passthrough == ("0.0.0.0", 2087) and options.passthrough_idle_timeout == 600
    assert (options.listen, options.listen_tls) == (("0.0.0.0", 8080), ("0.0.0.0", 8443)), "beside the others"
    assert _ports(docs, "Deployment", "whm-ha-proxy") == {
        "http": 8080,
        "https": 8443,
        "admin": 8081,
        "passthrough": 2087,
    }
    assert _ports(docs, "Service", "whm-ha-proxy") == {"http": 80, "https": 443, "passthrough": 2087}
    assert _open_ports(docs) == {8080, 8443, 4000, 2087}

    custom = {"enabled": True, "port": 9444, "service": {"port": 443}, "idleTimeoutSeconds": 2.5}
    docs = render({"proxy": {"passthrough": custom}})
    options = proxy_options(docs)
    assert options.listen_passthrough == ("0.0.0.0", 9444) and options.passthrough_idle_timeout == 2.5
    assert _ports(docs, "Deployment", "whm-ha-proxy")["passthrough"] == 9444
    assert _ports(docs, "Service", "whm-ha-proxy") == {"http": 80, "passthrough": 443}
    assert 9444 in _open_ports(docs)
    unguarded = render({**VALUE_SETS["passthrough"], "networkPolicy": {"enabled": False}})
    assert not any(d["kind"] == "NetworkPolicy" for d in unguarded)

    with helm.Chart.load(str(CHART)) as chart:
        for bad, words in (
            ({"idleTimeoutSeconds": 0}, "idleTimeoutSeconds"),
            ({"port": 0}, "port"),
            ({"nodePort": 2087}, "nodePort"),
        ):
            with pytest.raises(helm.HelmError) as refused:
                chart.validate_schema({"proxy": {"passthrough": bad}})
            assert words in str(refused.value), str(refused.value)


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

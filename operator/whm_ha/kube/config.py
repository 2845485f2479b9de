"""Find the API server by the standard rules: KUBECONFIG, then ~/.kube/config, then in-cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, config

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeConfigError(RuntimeError):
    """No usable way to reach the API server was found."""


@dataclass(frozen=True)
class ApiEndpoint:
    """Everything a client needs to talk to the API server, whatever library it uses."""

    server: str
    token: str | None
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify_tls: bool
    source: str


def one_line(exc: BaseException) -> str:
    """An error's text on one line (YAML parse errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _kubeconfig_paths() -> list[str]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    default = Path.home() / ".kube" / "config"
    return [str(default)] if default.exists() else []


def _load(context: str | None) -> tuple[client.Configuration, str]:
    configuration = client.Configuration()
    paths = _kubeconfig_paths()
    if paths:
        existing = [p for p in paths if Path(p).exists()]
        if not existing:
            raise KubeConfigError(f"KUBECONFIG names no existing file: {os.pathsep.join(paths)}")
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=existing[0], context=context, client_configuration=configuration
            )
        except (config.ConfigException, yaml.YAMLError, TypeError, KeyError, AttributeError, ValueError) as exc:
            raise KubeConfigError(f"cannot use kubeconfig {existing[0]}: {one_line(exc)}") from exc
        return configuration, f"kubeconfig {existing[0]}"
    if IN_CLUSTER_TOKEN.exists():
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise KubeConfigError(f"cannot use the in-cluster service account: {one_line(exc)}") from exc
        return configuration, "in-cluster service account"
    raise KubeConfigError("no Kubernetes API found: set KUBECONFIG, create ~/.kube/config, or run in a cluster")


def load(context: str | None = None) -> client.Configuration:
    """A kubernetes-client Configuration found by the standard rules.

    Raises KubeConfigError with one readable line when nothing is found.
    """
    return _load(context)[0]


def api_client(context: str | None = None) -> client.ApiClient:
    """An ApiClient for the API server found by the standard rules."""
    return client.ApiClient(load(context))


def endpoint(context: str | None = None) -> ApiEndpoint:
    """The API server's address and credentials, for clients other than kubernetes-client."""
    configuration, source = _load(context)
    token = None
    auth = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    if auth:
        scheme, _, rest = auth.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" and rest else auth.strip()
    return ApiEndpoint(
        server=configuration.host.rstrip("/"),
        token=token,
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        verify_tls=bool(configuration.verify_ssl),
        source=source,
    )

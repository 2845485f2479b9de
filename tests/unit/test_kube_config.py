"""Every component finds the API server: KUBECONFIG, then ~/.kube/config, then in-cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from whm_ha.kube import config


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_kubeconfig_env_wins_over_home(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_kubeconfig(home / ".kube" / "config", "https://127.0.0.1:1111", "home-token")
    env_file = write_kubeconfig(tmp_path / "env.yaml", "https://127.0.0.1:2222", "env-token")
    monkeypatch.setenv("KUBECONFIG", str(env_file))
    found = config.endpoint()
    assert found.server == "https://127.0.0.1:2222"
    assert found.token == "env-token"
    assert found.verify_tls is False
    assert str(env_file) in found.source


def test_home_kubeconfig_is_second(home: Path) -> None:
    write_kubeconfig(home / ".kube" / "config", "https://127.0.0.1:1111", "home-token")
    assert config.endpoint().server == "https://127.0.0.1:1111"


def test_nothing_found_is_one_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "IN_CLUSTER_TOKEN", tmp_path / "no-such-token")
    with pytest.raises(config.KubeConfigError, match="no Kubernetes API found"):
        config.load()


def test_kubeconfig_env_naming_missing_file(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(config.KubeConfigError, match="KUBECONFIG names no existing file"):
        config.load()


def test_in_cluster_is_last(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "sa" / "token"
    token.parent.mkdir()
    token.write_text("sa-token")
    (tmp_path / "sa" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(config, "IN_CLUSTER_TOKEN", token)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(config.config.incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(config.config.incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "sa" / "ca.crt"))
    found = config.endpoint()
    assert found.server == "https://10.96.0.1:443"
    assert found.token == "sa-token"
    assert found.source == "in-cluster service account"


@pytest.mark.parametrize(
    "command",
    [["operator"], ["proxy", "--cluster=whm"], ["shim"], ["demo", "--proxy-port=0", "--shim-port=0"]],
    ids=lambda c: c[0],
)
def test_a_malformed_kubeconfig_is_one_line_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nclusters: [oops\n")
    env = {**os.environ, "KUBECONFIG": str(broken)}
    if command[0] == "demo":
        command = [*command, f"--kubeconfig={broken}"]
    result = subprocess.run(
        [sys.executable, "-m", "whm_ha", *command], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"cannot use kubeconfig {broken}" in result.stderr

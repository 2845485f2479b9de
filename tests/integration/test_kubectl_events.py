"""The operator's Events as kubectl shows them (``get events`` sorted and selected by field, ``describe``): the
same kubectl commands give the same output on both API tiers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.integration.test_operator_nodes import Cluster
from whm_ha.control_plane import find_bin_dir
from whm_ha.kube.client import WHMCLUSTERS, KubeClient


def kubectl_binary() -> str:
    """The kubectl built with the control plane (the real API tier's version), else one on PATH."""
    bin_dir = find_bin_dir()
    found = str(bin_dir / "kubectl") if bin_dir is not None and (bin_dir / "kubectl").exists() else None
    found = found or shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl: run hack/build-control-plane")
    return found


def kubectl(kubeconfig: Path, namespace: str, *args: str) -> str:
    argv = [kubectl_binary(), f"--kubeconfig={kubeconfig}", "-n", namespace, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout, done.stderr
    return done.stdout


@pytest.fixture
def recorded(
    kube_api: KubeAPI, kube_client: client.ApiClient, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Two WHMClusters and the Events the operator would post about them (through its own client)."""
    for name in ("whm", "other"):
        Cluster(kube_client, kube_namespace, name).create()

    async def post() -> None:
        async with KubeClient() as kube:
            whm = await kube.get(WHMCLUSTERS, kube_namespace, "whm")
            other = await kube.get(WHMCLUSTERS, kube_namespace, "other")
            await kube.event(whm, "WHMCluster", "FailedOver", "primary n1 -> n2: n1 unhealthy", warning=True)
            await kube.event(whm, "WHMCluster", "PrimaryElected", "n2 is primary")
            await kube.event(other, "WHMCluster", "PrimaryElected", "m1 is primary")

    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    asyncio.run(post())
    return kube_namespace


def rows(output: str) -> tuple[list[str], set[tuple[str, ...]]]:
    """The header's columns, and each row without its first (LAST SEEN, an age)."""
    header, *lines = output.splitlines()
    return header.split(), {tuple(line.split(None, 4)[1:]) for line in lines}


def test_get_events_sorted_and_selected_by_field(recorded: str, kube_api: KubeAPI) -> None:
    header, found = rows(kubectl(kube_api.kubeconfig, recorded, "get", "events", "--sort-by=.lastTimestamp"))
    assert header == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert found == {
        ("Warning", "FailedOver", "whmcluster/whm", "primary n1 -> n2: n1 unhealthy"),
        ("Normal", "PrimaryElected", "whmcluster/whm", "n2 is primary"),
        ("Normal", "PrimaryElected", "whmcluster/other", "m1 is primary"),
    }
    _, other = rows(
        kubectl(kube_api.kubeconfig, recorded, "get", "events", "--field-selector=involvedObject.name=other")
    )
    assert other == {("Normal", "PrimaryElected", "whmcluster/other", "m1 is primary")}
    selector = "--field-selector=involvedObject.kind=WHMCluster,type=Warning,reason=FailedOver"
    _, warnings = rows(kubectl(kube_api.kubeconfig, recorded, "get", "events", selector))
    assert warnings == {("Warning", "FailedOver", "whmcluster/whm", "primary n1 -> n2: n1 unhealthy")}
    wide = kubectl(kube_api.kubeconfig, recorded, "get", "events", "-o", "wide", "--field-selector=reason=FailedOver")
    assert wide.splitlines()[0].split()[-6:] == ["SOURCE", "MESSAGE", "FIRST", "SEEN", "COUNT", "NAME"]
    assert "whm-ha-operator" in wide


def test_describe_lists_the_objects_own_events(recorded: str, kube_api: KubeAPI) -> None:
    described = kubectl(kube_api.kubeconfig, recorded, "describe", "whmcluster", "whm")
    events = described[described.index("\nEvents:") + 1 :].splitlines()[1:]
    assert events[0].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert {(line.split()[0], line.split()[1], line.split(None, 4)[4]) for line in events[2:]} == {
        ("Warning", "FailedOver", "primary n1 -> n2: n1 unhealthy"),
        ("Normal", "PrimaryElected", "n2 is primary"),
    }
    assert all("whm-ha-operator" in line for line in events[2:])

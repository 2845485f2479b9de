"""A settled request's annotations are removed only while they still carry it (`whm_ha.kube.requests`), on either
API tier: a request a user made after the outcome of the one before was written stays for the operator's next
pass. (On the real API the operator's removal of a refused promotion once erased the request made right after.)"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.integration.test_operator_nodes import Cluster
from tests.kube_helpers import GROUP, VERSION
from whm_ha.crd.annotations import FAILOVER_TO, REQUEST_ID
from whm_ha.kube.client import WHMCLUSTERS, KubeClient
from whm_ha.kube.requests import clear_request

KEYS = (FAILOVER_TO, REQUEST_ID)


def annotate(custom: client.CustomObjectsApi, namespace: str, annotations: dict[str, str]) -> None:
    body = {"metadata": {"annotations": annotations}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "whmclusters", "whm", body)


def annotations(custom: client.CustomObjectsApi, namespace: str) -> dict[str, str]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "whmclusters", "whm")
    return dict(obj["metadata"].get("annotations") or {})


def test_a_request_made_after_the_one_settled_stays(
    kube_api: KubeAPI, kube_client: client.ApiClient, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Cluster(kube_client, kube_namespace, "whm").create()
    custom = client.CustomObjectsApi(kube_client)
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))

    async def clear(request_id: str, user_writes: dict[str, str] | None = None) -> None:
        async with KubeClient() as kube:
            settled = await kube.get(WHMCLUSTERS, kube_namespace, "whm")  # as the operator read it
            if user_writes is not None:
                annotate(custom, kube_namespace, user_writes)  # the user asks again meanwhile
            await clear_request(
                kube, WHMCLUSTERS, settled, request_id, annotation=FAILOVER_TO, kind="failover", keys=KEYS
            )

    annotate(custom, kube_namespace, {FAILOVER_TO: "n1", REQUEST_ID: "r-1"})
    asyncio.run(clear("r-1", {FAILOVER_TO: "n2", REQUEST_ID: "r-2"}))
    assert {k: v for k, v in annotations(custom, kube_namespace).items() if k in KEYS} == {
        FAILOVER_TO: "n2",
        REQUEST_ID: "r-2",
    }, "the newer request stays"

    asyncio.run(clear("r-1"))
    assert annotations(custom, kube_namespace).get(REQUEST_ID) == "r-2", "another request's id is never removed"

    asyncio.run(clear("r-2", {"unrelated": "x"}))  # an unrelated write meanwhile: read again, then removed
    assert not set(KEYS) & set(annotations(custom, kube_namespace)), "the settled request is removed"

"""Pods matching a cluster's discovery selector become WHMNodes owned by the cluster."""

from __future__ import annotations

import logging
from typing import Any

from ..crd.annotations import CLUSTER_LABEL
from ..crd.common import LabelSelector
from ..crd.whmcluster import Discovery
from ..kube.client import PODS, WHMNODES, ApiError, KubeClient

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def selector_string(selector: LabelSelector) -> str:
    """A label selector in the query-string syntax of the API."""
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        if req.operator == "In":
            parts.append(f"{req.key} in ({','.join(req.values)})")
        elif req.operator == "NotIn":
            parts.append(f"{req.key} notin ({','.join(req.values)})")
        elif req.operator == "Exists":
            parts.append(req.key)
        else:
            parts.append(f"!{req.key}")
    return ",".join(parts)


def node_name(cluster: str, pod: str) -> str:
    return f"{cluster}-{pod}"[:63].rstrip("-")


async def sync_discovered_nodes(kube: KubeClient, cluster: Obj, discovery: Discovery, nodes: list[Obj]) -> list[Obj]:
    """Create, re-address and delete the cluster's pod-backed WHMNodes; returns the nodes to work with."""
    meta = cluster["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    pods = (await kube.list(PODS, namespace, label_selector=selector_string(discovery.pod_selector)))["items"]
    running = {
        p["metadata"]["name"]: p
        for p in pods
        if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
    }
    result = []
    for node in nodes:
        pod_ref = node["spec"].get("podRef")
        if pod_ref is None:
            result.append(node)
            continue
        pod = running.pop(pod_ref["name"], None)
        if pod is None or (pod_ref.get("uid") and pod["metadata"]["uid"] != pod_ref["uid"]):
            if not node["metadata"].get("deletionTimestamp"):
                log.info("pod %s/%s is gone: removing node %s", namespace, pod_ref["name"], node["metadata"]["name"])
                try:
                    await kube.delete(WHMNODES, namespace, node["metadata"]["name"])
                except ApiError as exc:
                    if exc.status != 404:
                        raise
            result.append(node)
            if pod is not None:
                running[pod_ref["name"]] = pod
            continue
        if pod["status"]["podIP"] != node["spec"]["address"]:
            readdressed = await kube.patch(
                WHMNODES, namespace, node["metadata"]["name"], {"spec": {"address": pod["status"]["podIP"]}}
            )
            result.append(readdressed)
        else:
            result.append(node)
    for pod_name, pod in sorted(running.items()):
        body: Obj = {
            "apiVersion": "ha.whm.io/v1alpha1",
            "kind": "WHMNode",
            "metadata": {
                "name": node_name(name, pod_name),
                "labels": {CLUSTER_LABEL: name},
                "ownerReferences": [
                    {
                        "apiVersion": "ha.whm.io/v1alpha1",
                        "kind": "WHMCluster",
                        "name": name,
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "cluster": name,
                "hostname": pod_name,
                "address": pod["status"]["podIP"],
                "port": discovery.port,
                "priority": discovery.priority,
                "podRef": {"name": pod_name, "uid": pod["metadata"]["uid"]},
            },
        }
        try:
            result.append(await kube.create(WHMNODES, namespace, body))
            log.info("pod %s/%s discovered: node %s created", namespace, pod_name, body["metadata"]["name"])
        except ApiError as exc:
            if exc.status != 409:
                raise
    return result

"""The binlog archiver of a MySQLReplication as a Deployment the operator owns (``--backup-runner=job``):
``<replication>-binlog-archive``, one replica, replaced with strategy Recreate so that two archivers never stream
at once, running ``whm-ha binlog-archive`` in the operator's image as the chart's archiver ServiceAccount. It exists
while ``spec.backup.archive.enabled`` is true and is deleted when it is not. With ``--backup-runner=process`` the
operator leaves the archiver alone (``whm-ha binlog-archive`` is run by whoever wants one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..crd.mysqlreplication import MySQLReplicationSpec
from ..kube.client import DEPLOYMENTS, ApiError, KubeClient
from .launch import COMPONENT_LABEL, RunnerSettings

Obj = dict[str, Any]
SPEC_HASH = "ha.whm.io/spec-hash"
"""The hash of the Deployment's spec as the operator made it: a different one is replaced."""
REPLICATION_LABEL = "ha.whm.io/replication"
SPOOL = "/var/lib/whm-ha/spool"


def archiver_name(replication: str) -> str:
    return f"{replication}-binlog-archive"


def archiver_deployment(replication: Obj, settings: RunnerSettings) -> Obj:
    """The archiver Deployment of ``replication``, owned by it, its spec's hash in an annotation."""
    meta = replication["metadata"]
    labels = {"app.kubernetes.io/name": "whm-ha", COMPONENT_LABEL: "binlog-archive", REPLICATION_LABEL: meta["name"]}
    port = settings.archiver_metrics_port
    pod: Obj = {
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "archiver",
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                "args": [
                    "binlog-archive",
                    f"--namespace={meta['namespace']}",
                    f"--replication={meta['name']}",
                    f"--metrics-port={port}",
                    f"--spool={SPOOL}",
                ],
                "ports": [{"name": "metrics", "containerPort": port}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "spool", "mountPath": SPOOL}, {"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "spool", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    if settings.archiver_service_account:
        pod["serviceAccountName"] = settings.archiver_service_account
    spec = {
        "replicas": 1,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": archiver_name(meta["name"]),
            "labels": labels,
            "annotations": {SPEC_HASH: digest},
            "ownerReferences": [
                {
                    "apiVersion": replication["apiVersion"],
                    "kind": replication["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": spec,
    }


def wants_archiver(spec: MySQLReplicationSpec) -> bool:
    return spec.backup is not None and spec.backup.archive.enabled


@dataclass
class ArchiverDeployments:
    """Keeps a replication's archiver Deployment as its spec asks."""

    kube: KubeClient
    settings: RunnerSettings

    async def reconcile(self, replication: Obj, spec: MySQLReplicationSpec) -> str | None:
        """Create, replace or delete the archiver Deployment of ``replication``; what it did, None when nothing."""
        namespace, name = replication["metadata"]["namespace"], archiver_name(replication["metadata"]["name"])
        try:
            current: Obj | None = await self.kube.get(DEPLOYMENTS, namespace, name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            current = None
        if not wants_archiver(spec):
            if current is None:
                return None
            try:
                await self.kube.delete(DEPLOYMENTS, namespace, name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
            return f"deleted Deployment {name} (the archive is disabled)"
        desired = archiver_deployment(replication, self.settings)
        if current is None:
            await self.kube.create(DEPLOYMENTS, namespace, desired)
            return f"created Deployment {name}"
        if (current["metadata"].get("annotations") or {}).get(SPEC_HASH) == desired["metadata"]["annotations"][
            SPEC_HASH
        ]:
            return None
        patch = {"metadata": {"annotations": desired["metadata"]["annotations"]}, "spec": desired["spec"]}
        await self.kube.patch(DEPLOYMENTS, namespace, name, patch)
        return f"updated Deployment {name}"

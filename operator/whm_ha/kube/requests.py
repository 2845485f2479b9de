"""Settled request annotations removed without losing a newer one (``ha.whm.io/promote``, ``failover-to``)."""

from __future__ import annotations

from ..crd.annotations import pending_request
from .client import ApiError, KubeClient, Obj, Resource


async def clear_request(
    kube: KubeClient,
    resource: Resource,
    obj: Obj,
    request_id: str,
    *,
    annotation: str,
    kind: str,
    keys: tuple[str, ...],
) -> None:
    """Remove ``keys`` from the annotations of ``obj`` only while they still carry the request ``request_id``: the
    patch is conditional on the resourceVersion of ``obj``, then of the object read again. A user may have asked
    again since the request's outcome was written; that request stays, for the next pass."""
    namespace, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
    for attempt in range(2):
        if attempt:
            obj = await kube.get(resource, namespace, name)
        found = pending_request(obj["metadata"].get("annotations") or {}, {}, annotation, kind)
        if found is None or found[0] != request_id:
            return
        try:
            await kube.patch(
                resource,
                namespace,
                name,
                {"metadata": {"annotations": dict.fromkeys(keys)}},
                resource_version=obj["metadata"]["resourceVersion"],
            )
            return
        except ApiError as exc:
            if exc.status != 409:
                raise

"""WHMNode: one WHM application node of a cluster."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import Condition, CRDModel, Name, Port, cel, conditions_field

Health = Literal["Healthy", "Unhealthy", "Unknown"]
Role = Literal["Primary", "Secondary"]


class PodReference(CRDModel):
    """The pod behind a discovered node."""

    name: Name
    """Name of the pod (same namespace)."""
    uid: str | None = Field(default=None, max_length=64)
    """UID of the pod, to tell a recreated pod of the same name apart."""


class WHMNodeSpec(CRDModel):
    """Desired state of a WHM node."""

    cluster: Name = Field(
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "cluster is immutable")]}
    )
    """Name of the WHMCluster (same namespace) this node belongs to; immutable."""
    hostname: str | None = Field(default=None, min_length=1, max_length=253)
    """Host name shown to people and legacy tools; defaults to the object's name."""
    address: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")
    """IP address or DNS name the operator probes and the proxy routes to."""
    port: Port = 4000
    """Port of the WHM service."""
    priority: int = Field(default=100, ge=0, le=1000)
    """Election priority: the healthy node with the highest priority becomes primary; 0 means never primary."""
    weight: int = Field(default=1, ge=0, le=1000)
    """Relative share of traffic under the weighted algorithm; 0 takes no traffic."""
    maintenance: bool = False
    """Drain the node: never elected, no new traffic; a primary hands its role over first."""
    pod_ref: PodReference | None = None
    """The pod behind this node, for nodes created by pod discovery."""


class WHMNodeStatus(CRDModel):
    """Observed state of a WHM node, written by the operator."""

    health: Health | None = None
    """Healthy, Unhealthy or Unknown (not probed yet)."""
    role: Role | None = None
    """Primary or Secondary."""
    node_id: int | None = Field(default=None, ge=1, le=100000)
    """Small integer, stable and unique within the cluster, for legacy tools that address nodes by number."""
    last_probe_time: datetime | None = None
    """When the probe that last changed this status ran. Unchanged statuses are not rewritten: the cluster's
    status.lastProbeTime says when every node was last probed."""
    latency_ms: float | None = Field(default=None, ge=0)
    """Duration of the last successful probe, in milliseconds."""
    consecutive_failures: int | None = Field(default=None, ge=0)
    """Failed probes in a row (written when it crosses the threshold)."""
    consecutive_successes: int | None = Field(default=None, ge=0)
    """Successful probes in a row (written when it crosses the threshold)."""
    message: str | None = Field(default=None, max_length=4096)
    """The last probe's outcome in plain words."""
    conditions: list[Condition] = conditions_field()
    """Standard conditions (Ready)."""

"""Building blocks shared by the custom resources: base model, conditions, references, history records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "ha.whm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label: the shape of Kubernetes object names we reference."""

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
Port = Annotated[int, Field(ge=1, le=65535)]


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry (a CEL rule the API server evaluates)."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class CRDModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the Kubernetes API stores it (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(CRDModel):
    """A reference to an object in the same namespace."""

    name: Name
    """Name of the referenced object."""


class SecretKeySelector(CRDModel):
    """A key of a Secret in the same namespace."""

    name: Name
    """Name of the Secret."""
    key: str = Field(default="ca.crt", min_length=1, max_length=253)
    """Key within the Secret."""


class LabelSelectorRequirement(CRDModel):
    """One set-based requirement of a label selector."""

    key: str = Field(min_length=1, max_length=317)
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(CRDModel):
    """A Kubernetes label selector (matchLabels and matchExpressions are ANDed)."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, max_length=32)
    """Labels that must all match exactly."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)
    """Set-based requirements that must all hold."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CRDModel):
    """A condition in the standard metav1.Condition shape."""

    type: str = Field(min_length=1, max_length=316)
    """Type of condition in CamelCase, e.g. Ready, Degraded."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024)
    """A CamelCase machine-readable reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """A human-readable explanation of the state."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was computed from."""


def conditions_field() -> Any:
    """A conditions list keyed by type, as Kubernetes API conventions require."""
    return Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


RequestResult = Literal["Succeeded", "Refused", "Failed"]


class RequestOutcome(CRDModel):
    """The outcome of the last manual request made through an annotation."""

    id: str = Field(max_length=253)
    """The request id (ha.whm.io/request-id, or one derived from the annotation)."""
    type: Literal["failover", "promote", "reload"]
    """What was requested."""
    target: str = Field(default="", max_length=253)
    """The node or member the request named."""
    result: RequestResult
    """Succeeded, Refused (not eligible, nothing changed) or Failed (attempted, did not complete)."""
    reason: str = Field(default="", max_length=4096)
    """Why, in plain words."""
    time: datetime
    """When the request was settled."""


class FailoverRecord(CRDModel):
    """One change of primary."""

    time: datetime
    """When the new primary took over."""
    from_: str = Field(default="", alias="from", max_length=253)
    """The previous primary (empty when there was none)."""
    to: str = Field(max_length=253)
    """The new primary."""
    reason: str = Field(default="", max_length=4096)
    """Why the primary changed."""
    type: Literal["automatic", "failback", "manual"]
    """automatic: the operator replaced a failed primary; failback: it handed the role back to a recovered
    higher-priority node (WHM nodes with failback on); manual: a user asked for it."""
    duration_ms: int = Field(default=0, ge=0)
    """Milliseconds from detection (or request) to the new primary being in place."""


HISTORY_LIMIT = 20
"""How many failover records a status keeps, newest first."""

"""Who is primary: pure decisions, property-tested.

The primary is the healthy, non-maintenance node with the highest priority (ties: by name). A
healthy primary is kept when a higher-priority node recovers unless failback is on. Priority 0
means never primary. Automatic failover happens when the primary is Unhealthy (its probes reached
the failure threshold), at most once per minimum interval; a manual request is not limited by it.
A failback is an automatic role change too: it needs automatic failover on and not paused, and waits
for the minimum interval since the last automatic change (failover or failback); it never counts
against the next failover, which waits only for the last failover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .health import Health

Kind = Literal["keep", "initial", "automatic", "failback", "manual", "handover", "none"]


@dataclass(frozen=True)
class Candidate:
    """What the election knows of one node."""

    name: str
    priority: int
    health: Health
    maintenance: bool = False
    deleting: bool = False


@dataclass(frozen=True)
class Policy:
    """The cluster's failover settings at decision time."""

    automatic: bool = True
    paused: bool = False
    failback: bool = False
    min_interval_seconds: float = 60.0
    seconds_since_last_automatic: float | None = None
    """Since the last automatic failover (failbacks do not count); None when there has been none."""
    seconds_since_last_change: float | None = None
    """Since the last automatic failover or failback; None when there has been none."""


@dataclass(frozen=True)
class Decision:
    """The outcome: who is primary after this step, and why."""

    primary: str | None
    kind: Kind
    reason: str
    refusals: dict[str, str] = field(default_factory=dict)
    """Nodes that could not be chosen, each with why (filled when the choice mattered)."""

    @property
    def changed(self) -> bool:
        return self.kind in ("initial", "automatic", "failback", "manual", "handover")


def refusal(node: Candidate) -> str | None:
    """Why a node cannot be primary, or None when it can."""
    if node.deleting:
        return "being deleted"
    if node.maintenance:
        return "in maintenance"
    if node.priority <= 0:
        return "priority 0 (never primary)"
    if node.health != "Healthy":
        return f"health is {node.health}"
    return None


def _rank(node: Candidate) -> tuple[int, str]:
    # Highest priority first; among equals, the name decides (a stable, documented order).
    return (-node.priority, node.name)


def best(nodes: list[Candidate], exclude: str | None = None) -> tuple[Candidate | None, dict[str, str]]:
    """The best eligible node and the refusals of the others."""
    refusals: dict[str, str] = {}
    eligible = []
    for node in nodes:
        if node.name == exclude:
            continue
        why = refusal(node)
        if why is None:
            eligible.append(node)
        else:
            refusals[node.name] = why
    eligible.sort(key=_rank)
    return (eligible[0] if eligible else None), refusals


def _describe(refusals: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in sorted(refusals.items())) or "no other nodes"


def elect(nodes: list[Candidate], current: str | None, policy: Policy) -> Decision:
    """One election step from the observed nodes and the current primary."""
    by_name = {node.name: node for node in nodes}
    primary = by_name.get(current) if current else None
    if primary is None:
        choice, refusals = best(nodes)
        if choice is None:
            return Decision(None, "none", f"no eligible node ({_describe(refusals)})", refusals)
        kind: Kind = "initial" if current is None else "handover"
        reason = "initial election" if current is None else f"primary {current} no longer exists"
        return Decision(choice.name, kind, f"{reason}: {choice.name} has the highest priority", refusals)

    if primary.deleting or primary.maintenance:
        choice, refusals = best(nodes, exclude=primary.name)
        state = "being deleted" if primary.deleting else "in maintenance"
        if choice is None:
            return Decision(
                primary.name,
                "keep",
                f"primary {primary.name} is {state} but no node can take over: {_describe(refusals)}",
                refusals,
            )
        return Decision(choice.name, "handover", f"primary {primary.name} is {state}", refusals)

    if primary.health == "Unhealthy":
        choice, refusals = best(nodes, exclude=primary.name)
        if policy.paused:
            return Decision(primary.name, "keep", f"primary {primary.name} is Unhealthy; automation is paused")
        if not policy.automatic:
            return Decision(primary.name, "keep", f"primary {primary.name} is Unhealthy; automatic failover is off")
        since = policy.seconds_since_last_automatic
        if since is not None and since < policy.min_interval_seconds:
            wait = policy.min_interval_seconds - since
            return Decision(
                primary.name,
                "keep",
                f"primary {primary.name} is Unhealthy; the last automatic failover was {int(since)}s ago, "
                f"next allowed in {math.ceil(wait)}s (minIntervalSeconds)",
            )
        if choice is None:
            return Decision(
                primary.name,
                "keep",
                f"primary {primary.name} is Unhealthy and no node can take over: {_describe(refusals)}",
                refusals,
            )
        return Decision(choice.name, "automatic", f"primary {primary.name} is Unhealthy", refusals)

    if policy.failback and policy.automatic and not policy.paused and primary.health == "Healthy":
        choice, refusals = best(nodes)
        if choice is not None and choice.name != primary.name and choice.priority > primary.priority:
            since = policy.seconds_since_last_change
            if since is not None and since < policy.min_interval_seconds:
                wait = policy.min_interval_seconds - since
                return Decision(
                    primary.name,
                    "keep",
                    f"{primary.name} is primary; failback to {choice.name} in {math.ceil(wait)}s (minIntervalSeconds)",
                )
            return Decision(choice.name, "failback", f"failback to higher-priority {choice.name}", refusals)
    return Decision(primary.name, "keep", f"{primary.name} is primary")


def manual(nodes: list[Candidate], current: str | None, target: str) -> Decision:
    """A requested switch to target: done if target is eligible, refused with the reason otherwise."""
    node = next((n for n in nodes if n.name == target), None)
    if node is None:
        return Decision(current, "none", f"node {target} is not part of the cluster", {target: "not found"})
    why = refusal(node)
    if why is not None:
        return Decision(current, "none", f"node {target} cannot be primary: {why}", {target: why})
    if target == current:
        return Decision(current, "keep", f"{target} is already primary")
    return Decision(target, "manual", f"requested switch to {target}")

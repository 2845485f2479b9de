"""Probe outcomes turned into node health, as Kubernetes probes do, and when to write it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Health = Literal["Healthy", "Unhealthy", "Unknown"]
HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one node."""

    ok: bool
    latency_ms: float
    message: str


@dataclass(frozen=True)
class NodeHealth:
    """A node's health as observed by this operator process (never read back from status)."""

    health: Health = "Unknown"
    failures: int = 0
    successes: int = 0
    latency_ms: float | None = None
    message: str = "not probed yet"
    failing_since: float | None = None
    """Monotonic time of the first failure of the current run of failures."""

    def observe(self, result: ProbeResult, failure_threshold: int, success_threshold: int, now: float) -> NodeHealth:
        """The health after one more probe."""
        if result.ok:
            successes = self.successes + 1
            health: Health = "Healthy" if successes >= success_threshold else self.health
            return replace(
                self,
                health=health,
                failures=0,
                successes=successes,
                latency_ms=result.latency_ms,
                message=result.message,
                failing_since=None,
            )
        failures = self.failures + 1
        return replace(
            self,
            health="Unhealthy" if failures >= failure_threshold else self.health,
            failures=failures,
            successes=0,
            message=result.message,
            failing_since=self.failing_since if self.failing_since is not None else now,
        )


def status_changed(
    written: dict[str, object], new: dict[str, object], *, failure_threshold: int, success_threshold: int
) -> bool:
    """Whether a node's status must be written: health, role, id or message changed, or a counter
    reached its threshold. Counters and latency alone never cause a write (see ``heartbeat_due``)."""
    for key in ("health", "role", "nodeId", "message"):
        if written.get(key) != new.get(key):
            return True
    failures = new.get("consecutiveFailures")
    successes = new.get("consecutiveSuccesses")
    return (failures == failure_threshold and written.get("consecutiveFailures") != failures) or (
        successes == success_threshold and written.get("consecutiveSuccesses") != successes
    )


def heartbeat_due(last_written: float | None, now: float) -> bool:
    """A cluster's lastProbeTime is refreshed at most every HEARTBEAT_SECONDS while nothing changes."""
    return last_written is None or now - last_written >= HEARTBEAT_SECONDS

"""A replica's lag measured against the primary's history, not only as the replica reports it; no I/O.

Seconds_Behind_Master counts only what a replica *received*: one held back by a slow link applies all it has and
reports 0 s while it lacks seconds of the primary's commits. The primary's executed set, read at each inspection,
tells more: a replica that lacks a set the primary had executed at time t lacks a commit made no later than t,
so it is at least now - t behind. That figure is a lower bound, exact to within one inspection period.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .gtid import GtidSet
from .member import MemberState

MAX_SAMPLES = 3600
"""Distinct primary sets kept (an hour of a busy primary at a 1 s period, five at the default 5 s): a replica
lacking the oldest is reported at least that far behind."""


@dataclass(frozen=True)
class Sample:
    """A set the primary had executed by ``at`` (monotonic seconds): the first time it was read."""

    at: float
    executed: GtidSet


@dataclass(frozen=True)
class PrimaryHistory:
    """One primary's executed sets, oldest first, each strictly containing the one before, and the last time it
    answered (``answered``, no earlier than the newest sample's time)."""

    primary: str
    samples: tuple[Sample, ...]
    answered: float


def record(history: PrimaryHistory | None, primary: str, at: float, executed: GtidSet) -> PrimaryHistory:
    """``history`` with ``primary``'s set, read no later than ``at``, added. Another primary, or a set not
    containing the newest (the primary lost transactions or was reset), starts afresh, so that the samples stay
    sets the primary holds, each containing the ones before. A set equal to the newest only moves ``answered``:
    the newest's earlier time is the tighter bound. At most `MAX_SAMPLES` are kept, the oldest dropped first."""
    if history is None or history.primary != primary or not executed.contains(history.samples[-1].executed):
        return PrimaryHistory(primary, (Sample(at, executed),), at)
    if history.samples[-1].executed.contains(executed):
        return replace(history, answered=at)
    return PrimaryHistory(primary, (*history.samples, Sample(at, executed))[-MAX_SAMPLES:], at)


def behind(history: PrimaryHistory, executed: GtidSet) -> float:
    """Seconds the holder of ``executed`` was at least behind the primary when it last answered: from the oldest
    sample it lacks to ``answered``; 0 when it holds the newest. Samples being nested, what it lacks is a suffix
    of them, found by bisection."""
    samples = history.samples
    if executed.contains(samples[-1].executed):
        return 0.0
    low, high = -1, len(samples) - 1  # samples[high] is lacking; samples[low] is held (or before the first)
    while high - low > 1:
        middle = (low + high) // 2
        if executed.contains(samples[middle].executed):
            low = middle
        else:
            high = middle
    return history.answered - samples[high].at


def truthful_lag(state: MemberState, history: PrimaryHistory | None) -> int | None:
    """A replica's lag: the larger of what it reports and how far behind the primary's history it is (whole
    seconds, rounded down: still a lower bound). Unknown stays unknown (it reports none: a replication thread is
    not running); the primary itself, or no history of the primary yet, is what it reports."""
    if state.seconds_behind is None or history is None or state.name == history.primary:
        return state.seconds_behind
    if state.gtid_executed is None:
        return state.seconds_behind
    return max(state.seconds_behind, int(behind(history, state.gtid_executed)))

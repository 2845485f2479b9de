"""Decisions about backups, free of I/O: the member a backup is taken from, when a scheduled backup is due, and which
scheduled backups retention deletes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from ..crd.backup import BackupTarget
from ..crd.mysqlreplication import MemberStatus

STARTING_DEADLINE = timedelta(hours=1)
"""A scheduled time missed (the operator down) is still taken this long after it; older ones are skipped."""
FAILED_KEPT = 3
"""Failed scheduled backups kept for their messages; older ones are deleted."""
SCHEDULED_NAME_FORMAT = "%Y%m%d%H%M%S"


class NoMember(ValueError):
    """No member can be backed up now; the message says why."""


def choose_member(
    target: BackupTarget, primary: str | None, members: list[MemberStatus], *, max_lag_seconds: int
) -> str:
    """The member to back up: for PreferReplica the replica with both threads running, reachable and within
    ``max_lag_seconds``, with the least lag (then by name), else the primary; for Primary the primary."""
    by_name = {m.name: m for m in members}
    if target == "PreferReplica":
        healthy = [
            m
            for m in members
            if m.name != primary
            and m.role == "Replica"
            and m.reachable
            and m.io_running
            and m.sql_running
            and m.lag_seconds is not None
            and m.lag_seconds <= max_lag_seconds
        ]
        if healthy:
            return min(healthy, key=lambda m: (m.lag_seconds or 0, m.name)).name
    if primary is None:
        raise NoMember("the replication has no primary yet")
    current = by_name.get(primary)
    if current is None or not current.reachable:
        healthy_replica = "" if target == "Primary" else " and no replica is healthy"
        raise NoMember(f"the primary {primary} is not reachable{healthy_replica}")
    return primary


def parse_schedule(schedule: str) -> croniter:
    """The schedule's iterator; ValueError naming what is wrong when it is not a valid cron expression."""
    try:
        return croniter(schedule, datetime(2000, 1, 1, tzinfo=UTC))
    except (ValueError, KeyError) as exc:
        raise ValueError(f"schedule {schedule!r} is not a valid cron expression: {exc}") from exc


def latest_time(schedule: str, now: datetime) -> datetime:
    """The latest scheduled time at or before ``now`` (UTC); always on a whole minute."""
    moment = now.astimezone(UTC).replace(second=0, microsecond=0)
    if croniter.match(schedule, moment):
        return moment
    parse_schedule(schedule)
    return croniter(schedule, moment).get_prev(datetime).astimezone(UTC)


def next_time(schedule: str, now: datetime) -> datetime:
    """The first scheduled time after ``now`` (UTC)."""
    parse_schedule(schedule)
    return croniter(schedule, now.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def due_time(schedule: str, now: datetime, last_taken: datetime | None, since: datetime) -> datetime | None:
    """The scheduled time whose backup should be created now: the latest one at or before ``now`` when it is later
    than ``last_taken`` (the newest scheduled backup's time) and than ``since`` (when the schedule was set), and
    no older than STARTING_DEADLINE; None otherwise."""
    latest = latest_time(schedule, now)
    if latest <= since or (last_taken is not None and latest <= last_taken) or now - latest > STARTING_DEADLINE:
        return None
    return latest


def scheduled_name(replication: str, at: datetime) -> str:
    """The name of the scheduled backup of ``replication`` for the time ``at``: one per scheduled time, so that two
    operators, or one restarted, create it once."""
    return f"{replication}-{at.astimezone(UTC).strftime(SCHEDULED_NAME_FORMAT)}"


@dataclass(frozen=True)
class ScheduledBackup:
    """A scheduled backup as retention sees it."""

    name: str
    completed_at: datetime | None
    """When it became usable; None for a failed one."""
    due: datetime
    """The time it was scheduled for (its creation time if it does not say): what "newest" means, since
    backups of different times may complete in any order."""


def expired(backups: list[ScheduledBackup], keep: int, max_age: timedelta | None, now: datetime) -> list[str]:
    """The scheduled backups retention deletes: completed ones beyond the newest ``keep`` (by the time they were
    scheduled for) or older than ``max_age``, never the newest completed one; failed ones beyond the newest
    FAILED_KEPT. Backups neither completed nor failed are never listed (the caller passes only finished ones)."""
    completed = sorted(((b.due, b.completed_at, b.name) for b in backups if b.completed_at is not None), reverse=True)
    failed = sorted(((b.due, b.name) for b in backups if b.completed_at is None), reverse=True)
    gone = [
        name
        for rank, (_, completed_at, name) in enumerate(completed)
        if rank > 0 and (rank >= keep or (max_age is not None and now - completed_at > max_age))
    ]
    return gone + [name for _, name in failed[FAILED_KEPT:]]


def stale(newest_completed: datetime | None, since: datetime, max_age: timedelta, now: datetime) -> bool:
    """Whether the "no successful backup" alert holds: the newest complete backup is older than ``max_age``, or
    there is none and backups were asked for (``since``) longer ago than that."""
    return now - (newest_completed or since) > max_age

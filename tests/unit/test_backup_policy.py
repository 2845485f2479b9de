"""Backup decisions: the member backed up, scheduled times, and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.backup.policy import (
    FAILED_KEPT,
    STARTING_DEADLINE,
    NoMember,
    ScheduledBackup,
    choose_member,
    due_time,
    expired,
    next_time,
    parse_schedule,
    scheduled_name,
)
from whm_ha.crd.mysqlreplication import MemberStatus

T0 = datetime(2026, 12, 7, 3, 15, tzinfo=UTC)


def replica(name: str, lag: int | None = 0, **changes: object) -> MemberStatus:
    fields = {"name": name, "role": "Replica", "reachable": True, "io_running": True, "sql_running": True}
    return MemberStatus.model_validate({**fields, "lag_seconds": lag, **changes})


PRIMARY = MemberStatus(name="db-0", role="Primary", reachable=True)


def test_prefer_replica_takes_the_healthy_replica_with_the_least_lag() -> None:
    members = [PRIMARY, replica("db-1", 5), replica("db-2", 1), replica("db-3", 1)]
    assert choose_member("PreferReplica", "db-0", members, max_lag_seconds=30) == "db-2"


@pytest.mark.parametrize(
    "unhealthy",
    [
        {"reachable": False},
        {"io_running": False},
        {"sql_running": False},
        {"lag_seconds": 31},
        {"lag_seconds": None},
        {"role": "Quarantined"},
    ],
)
def test_prefer_replica_falls_back_to_the_primary_when_no_replica_is_healthy(unhealthy: dict[str, object]) -> None:
    members = [PRIMARY, replica("db-1", 0, **unhealthy)]
    assert choose_member("PreferReplica", "db-0", members, max_lag_seconds=30) == "db-0"


def test_primary_target_takes_the_primary_even_with_healthy_replicas() -> None:
    assert choose_member("Primary", "db-0", [PRIMARY, replica("db-1")], max_lag_seconds=30) == "db-0"


def test_no_member_when_nothing_answers() -> None:
    down = PRIMARY.model_copy(update={"reachable": False})
    with pytest.raises(NoMember, match="db-0 is not reachable and no replica is healthy"):
        choose_member("PreferReplica", "db-0", [down, replica("db-1", reachable=False)], max_lag_seconds=30)
    with pytest.raises(NoMember, match="no primary yet"):
        choose_member("Primary", None, [], max_lag_seconds=30)


def test_invalid_schedules_are_refused_with_the_expression() -> None:
    for schedule in ("61 * * * *", "* * * *", "a b c d e"):
        with pytest.raises(ValueError, match="is not a valid cron expression"):
            parse_schedule(schedule)


def test_due_time_is_the_latest_scheduled_time_once() -> None:
    daily = "15 3 * * *"
    since = T0 - timedelta(days=10)
    assert due_time(daily, T0 + timedelta(minutes=5), None, since) == T0
    assert due_time(daily, T0 + timedelta(minutes=5), T0, since) is None, "already taken"
    assert due_time(daily, T0 - timedelta(minutes=1), None, since) is None, "yesterday's is past its deadline"
    assert due_time(daily, T0 + STARTING_DEADLINE + timedelta(seconds=1), None, since) is None, "missed too long ago"
    assert due_time(daily, T0 + timedelta(minutes=5), None, T0 + timedelta(minutes=1)) is None, "set after it"
    assert due_time("@hourly", T0 + timedelta(minutes=50), None, since) == T0.replace(minute=0) + timedelta(hours=1)


def test_every_minute_is_due_once_per_minute_on_the_whole_minute() -> None:
    since = T0 - timedelta(days=1)
    first = due_time("* * * * *", T0 + timedelta(seconds=35), None, since)
    assert first == T0
    assert due_time("* * * * *", T0 + timedelta(seconds=36), first, since) is None
    assert due_time("* * * * *", T0 + timedelta(seconds=61), first, since) == T0 + timedelta(minutes=1)


@given(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)))
def test_the_next_time_is_never_due_before_it_comes_and_is_due_when_it_does(now: datetime) -> None:
    schedule = "*/7 * * * *"
    upcoming = next_time(schedule, now)
    assert upcoming > now
    assert due_time(schedule, upcoming, None, now) == upcoming
    assert due_time(schedule, upcoming - timedelta(seconds=1), None, now) is None


def test_scheduled_names_are_one_per_time_and_valid_object_names() -> None:
    assert scheduled_name("whm-db", T0) == "whm-db-20261207031500"
    assert scheduled_name("whm-db", T0.astimezone(timezone(timedelta(hours=2)))) == scheduled_name("whm-db", T0)


def _completed(name: str, days_ago: float, now: datetime = T0) -> ScheduledBackup:
    at = now - timedelta(days=days_ago)
    return ScheduledBackup(name, at, at)


def test_retention_keeps_the_newest_by_count_and_age_and_always_the_newest() -> None:
    backups = [_completed(f"b{i}", i) for i in range(10)]
    assert sorted(expired(backups, 3, None, T0)) == [f"b{i}" for i in range(3, 10)]
    assert sorted(expired(backups, 7, timedelta(days=2), T0)) == [f"b{i}" for i in range(3, 10)]
    old = [_completed("old", 40), _completed("older", 50)]
    assert expired(old, 7, timedelta(days=30), T0) == ["older"], "the newest completed backup stays"


def test_retention_ranks_by_the_time_scheduled_for_not_the_order_of_completion() -> None:
    """Backups of three days that completed in another order (a slow upload): the two newest days stay."""
    days = [T0 - timedelta(days=d) for d in (3, 2, 1)]
    completed = [T0, T0 - timedelta(minutes=1), T0 - timedelta(minutes=2)]  # the oldest day completed last
    backups = [ScheduledBackup(f"day{i}", done, due) for i, (due, done) in enumerate(zip(days, completed, strict=True))]
    assert expired(backups, 2, None, T0) == ["day0"]


def test_retention_keeps_a_few_failed_backups_for_their_messages() -> None:
    failed = [ScheduledBackup(f"f{i}", None, T0 - timedelta(hours=i)) for i in range(FAILED_KEPT + 2)]
    assert sorted(expired(failed, 7, None, T0)) == [f"f{i}" for i in range(FAILED_KEPT, FAILED_KEPT + 2)]


@given(
    st.lists(st.floats(min_value=0, max_value=400), min_size=1, max_size=30, unique=True),
    st.integers(min_value=1, max_value=10),
    st.one_of(st.none(), st.integers(min_value=1, max_value=100)),
)
def test_retention_never_deletes_the_newest_and_keeps_at_most_keep(
    ages: list[float], keep: int, days: int | None
) -> None:
    backups = [_completed(f"b{i}", age) for i, age in enumerate(ages)]
    gone = set(expired(backups, keep, None if days is None else timedelta(days=days), T0))
    newest = max(backups, key=lambda b: (b.due, b.completed_at, b.name))  # equal times: the later name, as retention
    assert newest.name not in gone
    kept = [b for b in backups if b.name not in gone]
    assert 1 <= len(kept) <= keep
    if days is not None:
        assert all(b is newest or T0 - b.completed_at <= timedelta(days=days) for b in kept if b.completed_at)

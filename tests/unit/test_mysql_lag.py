"""A replica's lag against the primary's history: a lower bound, within one inspection of the truth."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.mysql.gtid import MariaDBGtidSet, MySQLGtidSet
from whm_ha.mysql.lag import MAX_SAMPLES, PrimaryHistory, behind, record, truthful_lag
from whm_ha.mysql.member import MemberState

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def upto(n: int) -> MySQLGtidSet:
    """The primary's first ``n`` transactions."""
    return MySQLGtidSet.parse(f"{U1}:1-{n}" if n else "")


def replica(name: str, executed: int, seconds_behind: int | None = 0) -> MemberState:
    return MemberState(
        name=name,
        host=f"{name}.db",
        port=3306,
        reachable=True,
        is_replica=True,
        io_running=True,
        sql_running=True,
        seconds_behind=seconds_behind,
        gtid_executed=upto(executed),
    )


def history(*samples: tuple[float, int], primary: str = "m0") -> PrimaryHistory:
    found: PrimaryHistory | None = None
    for at, count in samples:
        found = record(found, primary, at, upto(count))
    assert found is not None
    return found


def test_a_replica_holding_the_newest_set_is_not_behind() -> None:
    assert behind(history((0, 5), (5, 9)), upto(9)) == 0
    assert behind(history((0, 5), (5, 9)), upto(12)) == 0


def test_a_replica_is_behind_from_the_oldest_set_it_lacks_to_the_last_answer() -> None:
    seen = history((0, 5), (5, 9), (10, 14), (15, 20))
    assert behind(seen, upto(4)) == 15
    assert behind(seen, upto(9)) == 5
    assert behind(seen, upto(13)) == 5


def test_an_idle_primary_keeps_the_first_time_of_its_set_and_moves_its_last_answer() -> None:
    seen = history((0, 5), (5, 9), (10, 9), (15, 9))
    assert [s.at for s in seen.samples] == [0, 5] and seen.answered == 15
    assert behind(seen, upto(9)) == 0
    assert behind(seen, upto(6)) == 10


def test_another_primary_or_a_set_that_lost_transactions_starts_afresh() -> None:
    seen = history((0, 5), (5, 9))
    assert record(seen, "m1", 10, upto(9)).samples == record(None, "m1", 10, upto(9)).samples
    lost = record(seen, "m0", 10, upto(7))
    assert [(s.at, s.executed) for s in lost.samples] == [(10, upto(7))]


def test_at_most_max_samples_are_kept_and_a_replica_lacking_the_oldest_is_at_least_that_far_behind() -> None:
    seen = history(*((float(i), i + 1) for i in range(MAX_SAMPLES + 10)))
    assert len(seen.samples) == MAX_SAMPLES and seen.samples[0].at == 10
    assert behind(seen, upto(0)) == MAX_SAMPLES - 1


def test_mariadb_positions_of_one_history() -> None:
    seen: PrimaryHistory | None = None
    for at, seq in ((0, 100), (1, 140), (2, 180)):
        seen = record(seen, "m0", at, MariaDBGtidSet.parse(f"0-1-{seq}"))
    assert seen is not None
    assert behind(seen, MariaDBGtidSet.parse("0-1-150")) == 0
    assert behind(seen, MariaDBGtidSet.parse("0-1-120")) == 1


def test_the_lag_reported_is_the_larger_of_the_replicas_own_and_the_historys() -> None:
    seen = history((0, 5), (5, 9), (10, 14))
    assert truthful_lag(replica("m1", 6, seconds_behind=0), seen) == 5  # a slow link: it reports 0
    assert truthful_lag(replica("m1", 6, seconds_behind=30), seen) == 30  # applying an old event
    assert truthful_lag(replica("m1", 14, seconds_behind=0), seen) == 0


def test_unknown_stays_unknown_and_without_history_the_lag_is_the_replicas_own() -> None:
    seen = history((0, 5), (5, 9))
    assert truthful_lag(replica("m1", 2, seconds_behind=None), seen) is None
    assert truthful_lag(replica("m1", 2, seconds_behind=3), None) == 3
    assert truthful_lag(replace(replica("m0", 2), seconds_behind=None), seen) is None


def test_whole_seconds_rounded_down() -> None:
    assert truthful_lag(replica("m1", 4), history((0.2, 5), (1.9, 9))) == 1  # 1.7 s


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[float], list[float], int]:
    """Commit times of the primary's transactions, the inspections' times (both increasing), and how many
    transactions the replica holds."""
    commits = sorted(draw(st.lists(st.floats(0, 100, allow_nan=False), max_size=40)))
    inspections = sorted(set(draw(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30))))
    return commits, inspections, draw(st.integers(0, len(commits)))


@given(workloads())
def test_the_lag_is_a_lower_bound_within_one_inspection_of_the_truth(
    workload: tuple[list[float], list[float], int],
) -> None:
    commits, inspections, held = workload
    seen: PrimaryHistory | None = None
    for at in inspections:
        seen = record(seen, "m0", at, upto(sum(1 for c in commits if c <= at)))
    assert seen is not None
    measured = behind(seen, upto(held))
    committed = sum(1 for c in commits if c <= seen.answered)
    if held >= committed:
        assert measured == 0  # it holds all the primary had when last read
        return
    truth = seen.answered - commits[held]  # since the oldest commit it lacks
    assert 0 <= measured <= truth
    before = [at for at in inspections if at < commits[held]]
    if before:  # read once before that commit: the bound is off by at most the gap between two inspections
        gap = max(b - a for a, b in pairwise(inspections))
        assert truth - measured <= gap

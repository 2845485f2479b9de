"""The checkers every scenario, the demo's tour and the benchmarks trust (whm_ha.demo.checkers)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.demo.checkers import (
    Ack,
    Acks,
    Beside,
    acknowledging_order,
    arguments,
    missing,
    primaries_from,
    two_acknowledging,
)


def test_a_writer_process_is_given_an_account_whose_user_and_password_start_with_a_dash(tmp_path: Path) -> None:
    """A generated password may start with "-" (the fault tier's application account once did): the writer
    process must still read it as the password, not as an option."""
    started: list[list[str]] = []

    def popen(argv: list[str]) -> subprocess.Popen[bytes]:
        started.append(argv)
        return subprocess.Popen(["true"])

    side = Beside.start(popen, port=3306, user="-u", password="-pw", label="a", first=1, out=tmp_path / "acks", count=8)
    side.stop()
    (argv,) = started
    assert argv[1:3] == ["-m", "whm_ha.demo.checkers"]
    args = arguments().parse_args(argv[3:])
    assert (args.user, args.password, args.count) == ("-u", "-pw", 8)


def test_a_write_answered_late_by_the_old_primary_is_not_two_acknowledging() -> None:
    acks = [Ack(1, "a", 0.0, 0.1), Ack(2, "a", 0.2, 5.0), Ack(3, "b", 3.0, 3.5), Ack(4, "b", 4.0, 4.1)]
    assert acknowledging_order(acks) == ["a", "b"]
    assert two_acknowledging(acks, ["a", "b"]) == []


def test_the_old_primary_taking_a_write_sent_after_the_new_one_acknowledged_is_reported() -> None:
    acks = [Ack(1, "a", 0.0, 0.1), Ack(3, "b", 3.0, 3.5), Ack(2, "a", 3.6, 3.7)]
    (found,) = two_acknowledging(acks, ["a", "b"])
    assert found == "writes acknowledged by a -> b -> a; primaries were a -> b"


def test_a_member_made_primary_again_is_not_two_acknowledging_and_a_primary_may_take_no_write() -> None:
    acks = [Ack(1, "a", 0.0, 0.1), Ack(2, "b", 1.0, 1.1), Ack(3, "a", 2.0, 2.1)]
    assert two_acknowledging(acks, ["a", "b", "a"]) == []
    assert two_acknowledging(acks, ["a", "c", "b", "a"]) == []
    assert two_acknowledging(acks, ["a", "b"]) != []


@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.floats(0, 100))
def test_members_taking_writes_one_after_another_pass(moments: list[float], switch: float) -> None:
    acks = [Ack(i, "a" if at < switch else "b", at, at + 0.01) for i, at in enumerate(sorted(moments))]
    assert two_acknowledging(acks, ["a", "b"]) == []


def test_the_primaries_in_order_from_a_status_whose_history_is_newest_first() -> None:
    status = {"promotionHistory": [{"from": "db-1", "to": "db-0"}, {"from": "db-0", "to": "db-1"}]}
    labels = {"db-0": "h:1", "db-1": "h:2"}
    assert primaries_from(status, labels, "db-0") == ["h:1", "h:2", "h:1"]


def test_missing_and_the_counts_between_moments() -> None:
    acks = Acks([Ack(1, "a", 0, 1), Ack(2, "a", 1, 2), Ack(3, "b", 2, 3)])
    assert missing(acks.all(), {1, 3}) == [2]
    assert [a.id for a in acks.between(2)] == [2, 3] and [a.id for a in acks.between(1, 2)] == [1]

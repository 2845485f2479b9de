"""The replay plan of a point-in-time restore (`backup.replay.plan`): which streams and segments, what the tool
leaves out, where it stops, and the targets the archive cannot reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.backup.archive import Segment, data_key
from whm_ha.backup.replay import Unreachable, plan
from whm_ha.crd.backup import RecoveryTarget
from whm_ha.mysql.gtid import Flavor, MySQLGtidSet

START = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
END = RecoveryTarget(end_of_archive=True)


def segment(
    n: int,
    gtids: str,
    covered: str,
    *,
    run: str = "r1",
    offset: int = 0,
    resumed: str = "",
    superseded: str = "",
    flavor: Flavor = "mariadb",
) -> Segment:
    """Segment ``n``: its transactions' timestamps in second ``10 n`` .. ``10 n + 5`` after START."""
    return Segment(
        sequence=n,
        data=data_key(n),
        flavor=flavor,
        member="m0",
        server_id=1,
        run=run,
        file="mysql-bin.000001",
        stream=f"{run}/mysql-bin.000001",
        offset=offset,
        size=100,
        sha256="0" * 64,
        source_start=0,
        source_end=100,
        transactions=1,
        first_gtid=gtids,
        last_gtid=gtids,
        gtids=gtids,
        covered=covered,
        resumed_from=resumed,
        superseded=superseded,
        first_time=START + timedelta(seconds=10 * n),
        last_time=START + timedelta(seconds=10 * n + 5),
        uploaded=START + timedelta(seconds=10 * n + 6),
    )


# Run r1 archived 0-1-1..9; the primary failed over to a replica that had 0-1-7: r2 resumed there, 0-1-8..9
# superseded (never acknowledged), and went on with 0-2-8..12.
MARIADB = [
    segment(0, "0-1-1..5", "0-1-5"),
    segment(1, "0-1-6..9", "0-1-9", offset=100),
    segment(2, "0-2-8..10", "0-1-7,0-2-10", run="r2", resumed="0-1-7", superseded="0-1-8..9"),
    segment(3, "0-2-11..12", "0-1-7,0-2-12", run="r2", offset=100, resumed="0-1-7", superseded="0-1-8..9"),
]


def streams(p: object) -> list[tuple[str, list[int], tuple[str, ...]]]:
    return [(s.stream, [seg.sequence for seg in s.segments], s.stops) for s in p.streams]  # type: ignore[attr-defined]


def test_the_end_of_the_archive_replays_every_stream_from_its_start_without_the_superseded_tail() -> None:
    p = plan("mariadb", "0-1-3", MARIADB, END)
    assert streams(p) == [("r1/mysql-bin.000001", [0, 1], ("0-1-7",)), ("r2/mysql-bin.000001", [2, 3], ())]
    assert p.stop_time is None
    # A backup within the first segment still reads it: its header events start the stream.
    assert streams(plan("mariadb", "0-1-6", MARIADB, END))[0][1] == [0, 1]
    # A backup after the first stream: only the second.
    assert streams(plan("mariadb", "0-1-7", MARIADB, END)) == [("r2/mysql-bin.000001", [2, 3], ())]


def test_a_gtid_target_stops_at_it_inclusive_and_reads_nothing_after_it() -> None:
    assert streams(plan("mariadb", "0-1-3", MARIADB, RecoveryTarget(gtid="0-1-5"))) == [
        ("r1/mysql-bin.000001", [0], ())  # the segment ends there
    ]
    assert streams(plan("mariadb", "0-1-3", MARIADB, RecoveryTarget(gtid="0-1-4"))) == [
        ("r1/mysql-bin.000001", [0], ("0-1-4",))
    ]
    assert streams(plan("mariadb", "0-1-3", MARIADB, RecoveryTarget(gtid="0-2-10"))) == [
        ("r1/mysql-bin.000001", [0, 1], ("0-1-7",)),
        ("r2/mysql-bin.000001", [2], ()),
    ]


def test_a_time_target_leaves_out_the_segments_that_start_at_or_after_it() -> None:
    target = RecoveryTarget(time=(START + timedelta(seconds=15)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    p = plan("mariadb", "0-1-3", MARIADB, target)
    assert p.stop_time == START + timedelta(seconds=15)
    assert streams(p) == [("r1/mysql-bin.000001", [0, 1], ("0-1-7",))]


@pytest.mark.parametrize(
    ("backup", "chain", "target", "message"),
    [
        ("0-1-3", [], END, "the binary log archive is empty"),
        ("0-1-3", MARIADB, RecoveryTarget(time="2026-12-07T13:00:00Z"), "the archive ends at 2026-12-07T12:00:35Z"),
        ("0-1-3", MARIADB, RecoveryTarget(gtid="0-1-9"), "does not hold 0-1-9"),  # superseded
        ("0-1-3", MARIADB, RecoveryTarget(gtid="0-1-8"), "does not hold 0-1-8"),  # superseded; 0-2-8 is not it
        ("0-1-3", MARIADB, RecoveryTarget(gtid="0-2-13"), "does not hold 0-2-13"),
        ("0-1-3", MARIADB, RecoveryTarget(gtid="0-1-2"), "the backup already holds 0-1-2"),
        ("0-1-3", [MARIADB[0], MARIADB[2], MARIADB[3]], END, "segment 1 is missing"),
        ("0-1-3", MARIADB[1:], END, "stream r1/mysql-bin.000001 continues at 100"),  # its start is gone
        ("0-1-3", [segment(0, "0-1-6..9", "0-1-9", resumed="0-1-5")], END, "the archive starts after the backup's"),
    ],
)
def test_targets_the_archive_cannot_reach(
    backup: str, chain: list[Segment], target: RecoveryTarget, message: str
) -> None:
    with pytest.raises(Unreachable, match=message):
        plan("mariadb", backup, chain, target)


def test_mysql_leaves_out_the_backup_the_superseded_and_what_follows_the_target_by_gtid_set() -> None:
    new = "4e11fa47-71ca-11e1-9e33-c80aa9429562"
    chain = [
        segment(0, f"{UUID}:1-5", f"{UUID}:1-5", flavor="mysql"),
        segment(1, f"{UUID}:6-9", f"{UUID}:1-9", offset=100, flavor="mysql"),
        segment(
            2,
            f"{new}:1-4",
            f"{UUID}:1-7,{new}:1-4",
            run="r2",
            resumed=f"{UUID}:1-7",
            superseded=f"{UUID}:8-9",
            flavor="mysql",
        ),
    ]
    p = plan("mysql", f"{UUID}:1-3", chain, RecoveryTarget(gtid=f"{new}:2"))
    assert [([s.sequence for s in x.segments], x.stops) for x in p.streams] == [([0, 1], ()), ([2], ())]
    assert p.streams[0].excluded == MySQLGtidSet.parse(f"{UUID}:1-3:8-9")
    assert p.streams[1].excluded == MySQLGtidSet.parse(f"{UUID}:1-3,{new}:3-4")


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8),
    data=st.data(),
)
def test_the_plan_replays_exactly_the_transactions_after_the_backup_up_to_the_target(
    sizes: list[int], data: st.DataObject
) -> None:
    """One run, segments of ``sizes`` transactions (MySQL: what the tool prints is what a stream holds minus
    ``excluded``): a GTID target replays exactly ``backup+1 .. target``."""
    chain, first = [], 1
    for n, size in enumerate(sizes):
        last = first + size - 1
        chain.append(segment(n, f"{UUID}:{first}-{last}", f"{UUID}:1-{last}", offset=100 * n, flavor="mysql"))
        first = last + 1
    total = first - 1
    backup = data.draw(st.integers(min_value=0, max_value=total - 1), label="backup")
    target = data.draw(st.integers(min_value=backup + 1, max_value=total), label="target")
    held = f"{UUID}:1-{backup}" if backup else ""
    p = plan("mysql", held, chain, RecoveryTarget(gtid=f"{UUID}:{target}"))
    replayed = MySQLGtidSet.parse("")
    for stream in p.streams:
        assert [s.offset for s in stream.segments] == [100 * i for i in range(len(stream.segments))], "from its start"
        for s in stream.segments:
            replayed = replayed.union(MySQLGtidSet.parse(s.gtids).difference(stream.excluded))
    assert str(replayed) == (f"{UUID}:{backup + 1}-{target}" if target > backup + 1 else f"{UUID}:{target}")

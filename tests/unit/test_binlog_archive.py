"""The binlog archive's pure decisions: the scanner on synthetic binary logs of both flavours fed in any pieces,
continuity of GTID lines, segment keys, the chain check, the resume point after a failover, the lag."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_replay import segment
from whm_ha.backup.archive import (
    MAGIC,
    MARIADB_GTID,
    MARIADB_GTID_LIST,
    MARIADB_STANDALONE,
    MYSQL_GTID,
    MYSQL_PREVIOUS_GTIDS,
    QUERY,
    XID,
    ArchiveGap,
    BinlogFormatError,
    BinlogScanner,
    Gtid,
    Observation,
    Transaction,
    advance,
    archive_lag,
    check_chain,
    data_key,
    index_key,
    last_sequence,
    lines_of,
    resume_point,
    segment_due,
    sequence_of,
    start_option,
    transactions_set,
)
from whm_ha.backup.archiver_service import archive_status
from whm_ha.backup.binlog_stream import ArchiveReport
from whm_ha.crd.backup import BinlogArchiveStatus
from whm_ha.mysql.gtid import MariaDBGtidSet, MySQLGtidSet, parse_gtid_set

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
TABLE_MAP, WRITE_ROWS, FORMAT_DESCRIPTION, ROTATE = 19, 30, 15, 4


def event(kind: int, body: bytes, server_id: int = 1, timestamp: int = 1_700_000_000) -> bytes:
    """An event with a trailing CRC32-sized checksum (its value does not matter to the scanner)."""
    size = 19 + len(body) + 4
    return struct.pack("<IBIIIH", timestamp, kind, server_id, size, 0, 0) + body + b"\0\0\0\0"


def query(statement: str) -> bytes:
    status = b"\x00\x01"
    return event(QUERY, struct.pack("<IIBHH", 7, 0, 3, 0, len(status)) + status + b"app\0" + statement.encode())


def mariadb_gtid(domain: int, seq: int, server: int = 1, standalone: bool = False) -> bytes:
    flags = MARIADB_STANDALONE if standalone else 0
    return event(MARIADB_GTID, struct.pack("<QIB", seq, domain, flags) + b"\0" * 6, server)


def mysql_gtid(gno: int, source: str = UUID) -> bytes:
    return event(MYSQL_GTID, b"\x01" + uuid.UUID(source).bytes + struct.pack("<q", gno) + b"\0" * 30)


def header(flavor: str, before: str = "") -> bytes:
    out = MAGIC + event(FORMAT_DESCRIPTION, b"\x04\x00" + b"\0" * 90)
    if flavor == "mariadb":
        items = [tuple(map(int, g.split("-"))) for g in before.split(",") if g]
        body = struct.pack("<I", len(items)) + b"".join(struct.pack("<IIQ", d, s, n) for d, s, n in items)
        return out + event(MARIADB_GTID_LIST, body)
    sets = MySQLGtidSet.parse(before)
    body = struct.pack("<Q", len(sets.entries))
    for (source, _), intervals in sets.entries:
        body += uuid.UUID(source).bytes + struct.pack("<Q", len(intervals))
        body += b"".join(struct.pack("<qq", first, last + 1) for first, last in intervals)
    return out + event(MYSQL_PREVIOUS_GTIDS, body)


def transaction(flavor: str, seq: int, kind: str) -> bytes:
    """One transaction: "dml" (rows, then XID), "ddl" (one statement) or "myisam" (rows, then COMMIT)."""
    rows = event(TABLE_MAP, b"\0" * 12) + event(WRITE_ROWS, b"\0" * 20)
    if flavor == "mariadb":
        if kind == "ddl":
            return mariadb_gtid(0, seq, standalone=True) + query("CREATE TABLE t (id INT)")
        end = event(XID, b"\0" * 8) if kind == "dml" else query("COMMIT")
        return mariadb_gtid(0, seq) + rows + end
    if kind == "ddl":
        return mysql_gtid(seq) + query("CREATE TABLE t (id INT)")
    end = event(XID, b"\0" * 8) if kind == "dml" else query("COMMIT")
    return mysql_gtid(seq) + query("BEGIN") + rows + end


KINDS = st.lists(st.sampled_from(["dml", "ddl", "myisam"]), min_size=1, max_size=12)


def binlog(flavor: str, kinds: list[str], first: int = 1, before: str = "") -> tuple[bytes, list[int]]:
    """A binary log file and the end offset of each transaction."""
    data = header(flavor, before)
    ends = []
    for i, kind in enumerate(kinds):
        data += transaction(flavor, first + i, kind)
        ends.append(len(data))
    return data + event(ROTATE, b"\0" * 8 + b"mysql-bin.000002"), ends


@given(flavor=st.sampled_from(["mariadb", "mysql"]), kinds=KINDS, cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_the_scanner_finds_every_transaction_once_however_the_file_is_cut(
    flavor: str, kinds: list[str], cuts: list[int]
) -> None:
    data, ends = binlog(flavor, kinds)
    scanner = BinlogScanner(flavor)  # type: ignore[arg-type]
    found: list[Transaction] = []
    last = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        found += scanner.feed(data[last:cut])
        last = cut
        # Never past a transaction not yet complete; always at the end of the last complete one or later.
        complete = [e for e in ends if e <= cut]
        assert scanner.safe_end <= cut and scanner.fed == cut
        assert not complete or scanner.safe_end >= complete[-1]
        assert all(not (t.end - 1 < scanner.safe_end < e) for t, e in zip(found, ends, strict=False))
    assert [t.end for t in found] == ends
    assert [t.gtid.seq for t in found] == list(range(1, len(kinds) + 1))
    assert [t.start for t in found[1:]] == ends[:-1]
    assert scanner.safe_end == len(data) and scanner.header == ""


def test_the_scanner_reads_the_header_gtids_and_refuses_what_is_not_a_binlog() -> None:
    data, _ = binlog("mariadb", ["dml"], first=8, before="0-1-7,1-2-3")
    scanner = BinlogScanner("mariadb")
    (t,) = scanner.feed(data)
    assert scanner.header == "0-1-7,1-2-3" and t.gtid == Gtid("0", "1", 8)
    data, _ = binlog("mysql", ["dml"], first=6, before=f"{UUID}:1-5")
    scanner = BinlogScanner("mysql")
    (t,) = scanner.feed(data)
    assert scanner.header == f"{UUID}:1-5" and t.gtid.text("mysql") == f"{UUID}:6"
    with pytest.raises(BinlogFormatError):
        BinlogScanner("mysql").feed(b"not a binlog at all")
    with pytest.raises(BinlogFormatError):
        BinlogScanner("mysql").feed(binlog("mariadb", ["dml"])[0])


def tx(line: str, seq: int, server: str = "1") -> Transaction:
    return Transaction(Gtid(line, server, seq), 0, 1, 0, 1)


def test_advance_refuses_a_hole_and_a_repeat_in_a_line() -> None:
    assert advance({"0": 4}, [tx("0", 5), tx("1", 1), tx("0", 6)]) == {"0": 6, "1": 1}
    with pytest.raises(ArchiveGap, match="a hole in line 0"):
        advance({"0": 4}, [tx("0", 6)])
    with pytest.raises(ArchiveGap, match="a repeat in line 0"):
        advance({"0": 4}, [tx("0", 4)])


@given(st.integers(1, 50), st.integers(1, 50), st.integers(0, 30))
def test_a_segments_set_is_its_transactions_and_joins_the_archive_before_it(first: int, count: int, cut: int) -> None:
    cut = min(cut, count)
    mariadb = [tx("0", s, "1" if s < first + cut else "2") for s in range(first, first + count)]
    gtids = transactions_set("mariadb", mariadb)
    assert isinstance(gtids, MariaDBGtidSet) and gtids.count == count
    before = MariaDBGtidSet.parse(f"0-1-{first - 1}") if first > 1 else MariaDBGtidSet()
    assert lines_of(before.union(gtids)) == {"0": first + count - 1}
    assert parse_gtid_set("mariadb", str(gtids)) == gtids, "the index's text reads back the same"
    mysql = [tx(UUID, s, UUID) for s in range(first, first + count)]
    assert transactions_set("mysql", mysql) == MySQLGtidSet.from_intervals({(UUID, ""): [(first, first + count - 1)]})


def test_segment_keys_sort_by_sequence_and_read_back() -> None:
    keys = [index_key(n) for n in (0, 9, 10, 123456789)]
    assert sorted(keys) == keys and [sequence_of(k) for k in keys] == [0, 9, 10, 123456789]
    assert sequence_of(data_key(3)) is None and sequence_of("binlogs/index/x.json") is None
    assert last_sequence([*keys, data_key(999999999)]) == 123456789 and last_sequence([]) is None


def test_the_chain_check_finds_missing_segments_holes_repeats_and_broken_streams() -> None:
    good = [
        segment(0, "0-1-1..3", "0-1-3"),
        segment(1, "0-1-4..9", "0-1-9", offset=100),
        # A new run on a new primary, resumed after what the archive held.
        segment(2, "0-1-10,0-2-10..12", "0-1-10,0-2-12", run="r2", resumed="0-1-9"),
    ]
    assert check_chain("mariadb", good) == []
    assert "segment 1 is missing" in check_chain("mariadb", [good[0], good[2]])[0].problem
    hole = [good[0], segment(1, "0-1-5..9", "0-1-9", offset=100)]
    assert any("a hole" in p.problem for p in check_chain("mariadb", hole))
    repeat = [good[0], segment(1, "0-1-3..9", "0-1-9", offset=100)]
    assert any("a repeat" in p.problem for p in check_chain("mariadb", repeat))
    stream = [good[0], segment(1, "0-1-4..9", "0-1-9", offset=150)]
    assert any("continues at 150" in p.problem for p in check_chain("mariadb", stream))
    beyond = [good[0], segment(1, "0-1-10", "0-1-10", run="r2", resumed="0-1-9")]
    assert any("beyond the archive" in p.problem for p in check_chain("mariadb", beyond))


def test_the_resume_point_is_the_archive_without_what_the_new_primary_never_had() -> None:
    # MariaDB: 0-1-101 reached the archive (the old primary's binlog) but not the new primary, m2.
    archived = MariaDBGtidSet.parse("0-1-101")
    resume = resume_point(archived, MariaDBGtidSet.parse("0-1-100,0-2-105"))
    assert start_option("mariadb", resume.start) == "0-1-100" and str(resume.superseded) == "0-1-101..101"
    same = resume_point(archived, MariaDBGtidSet.parse("0-1-101,0-2-105"))
    assert same.start == archived and not same.superseded
    # MySQL: the exact difference.
    a, b = UUID, "4e11fa47-71ca-11e1-9e33-c80aa9429562"
    resume = resume_point(MySQLGtidSet.parse(f"{a}:1-101"), MySQLGtidSet.parse(f"{a}:1-100,{b}:1-5"))
    assert str(resume.start) == f"{a}:1-100" and str(resume.superseded) == f"{a}:101"


@given(
    archived=st.integers(0, 40),
    agreed=st.integers(0, 40),
    ahead=st.integers(0, 10),
)
def test_the_resume_point_never_skips_or_repeats_what_the_primary_has(archived: int, agreed: int, ahead: int) -> None:
    """The archive took server 1 up to ``archived``; the new primary (server 2) has server 1 up to ``agreed`` and
    ``ahead`` transactions of its own after: resuming after `start` fetches exactly what the archive lacks."""
    if archived == 0:
        return
    agreed = min(agreed, archived + 5)
    primary_text = ",".join(
        item for item in (f"0-1-{agreed}" if agreed else "", f"0-2-{agreed + ahead}" if ahead else "") if item
    )
    primary = MariaDBGtidSet.parse(primary_text)
    resume = resume_point(MariaDBGtidSet.parse(f"0-1-{archived}"), primary)
    start_top = lines_of(resume.start).get("0", 0)
    assert start_top == min(archived, agreed), "the agreement point, no further"
    assert resume.superseded.count == archived - start_top, "the rest of the archive is superseded"


@given(
    interval=st.floats(0.1, 5),
    since=st.floats(0, 10),
    pending=st.integers(0, 5),
    size=st.integers(0, 100),
)
def test_a_segment_is_due_when_transactions_wait_and_the_interval_passed_or_it_is_full(
    interval: float, since: float, pending: int, size: int
) -> None:
    due = segment_due(
        pending_bytes=size, pending_transactions=pending, since_upload=since, interval=interval, max_bytes=50
    )
    assert due == (pending > 0 and (since >= interval or size >= 50))


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 100)), max_size=10), st.integers(0, 100))
def test_the_lag_is_the_age_of_the_oldest_observation_the_archive_does_not_hold(
    observed: list[tuple[float, int]], archived_top: int
) -> None:
    observed.sort()
    observations = [Observation(t, {"0": max(seq, 0)}) for t, seq in observed]
    now = 200.0
    lag, held = archive_lag(observations, {"0": archived_top}, now)
    first_missing = next((o for o in observations if o.executed["0"] > archived_top), None)
    assert lag == (now - first_missing.time if first_missing is not None else 0.0)
    assert all(o.executed["0"] <= archived_top for o in observations[:held])
    assert archive_lag(observations, None, now)[0] == (now - observations[0].time if observations else 0.0)


def test_status_archive_says_lagging_beyond_the_bound_and_keeps_the_transition_time_while_it_holds() -> None:
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    report = ArchiveReport("Streaming", "m0", 0.4, "0-1-9", 3, at)
    fine = archive_status(report, 30, None, at)
    BinlogArchiveStatus.model_validate(fine)
    assert fine["conditions"][0]["status"] == "False" and fine["conditions"][0]["reason"] == "WithinBound"
    late = archive_status(ArchiveReport("Streaming", "m0", 31, "0-1-9", 3, at), 30, fine, at)
    assert (late["conditions"][0]["status"], late["conditions"][0]["reason"]) == ("True", "LagHigh")
    down = archive_status(ArchiveReport("StorageUnavailable", "m0", 31, "", 3, at, "refused"), 30, late, at)
    assert down["conditions"][0]["reason"] == "StorageUnavailable" and down["message"] == "refused"
    assert down["conditions"][0]["lastTransitionTime"] == late["conditions"][0]["lastTransitionTime"]
    off = archive_status(report, 30, down, at, enabled=False)
    assert off["state"] == "Disabled" and off["conditions"][0]["status"] == "False"

"""GTID sets: MySQL exactly (checked against Python sets), MariaDB against simulated linear histories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.mysql.gtid import GtidParseError, MariaDBGtidSet, MySQLGtidSet, parse_gtid_set, resume_position

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4f22ab58-82db-22f2-af44-d91bb0530673"


def mysql(text: str) -> MySQLGtidSet:
    return MySQLGtidSet.parse(text)


def maria(text: str) -> MariaDBGtidSet:
    return MariaDBGtidSet.parse(text)


# --- MySQL -----------------------------------------------------------------------------------------------------


def test_mysql_parse_normalizes_case_whitespace_and_adjacent_intervals() -> None:
    parsed = mysql(f" {U1.upper()}:3-4:1-2:7,\n{U2}:5 ")
    assert str(parsed) == f"{U1}:1-4:7,{U2}:5"
    assert parsed.count == 6
    assert repr(parsed) == f"MySQLGtidSet('{U1}:1-4:7,{U2}:5')"


def test_mysql_tags_are_separate_keys_grouped_under_their_uuid() -> None:
    parsed = mysql(f"{U1}:1-3:Batch:1-2,{U1}:5")
    assert str(parsed) == f"{U1}:1-3:5:batch:1-2"
    assert parsed.count == 6
    assert not parsed.contains(mysql(f"{U1}:4"))
    assert parsed.contains(mysql(f"{U1}:batch:2"))
    assert mysql(f"{U1}:batch:1-2") == mysql(f"{U1}:BATCH:1:2")


@pytest.mark.parametrize(
    "text",
    ["nonsense:1", f"{U1}", f"{U1}:0", f"{U1}:5-3", f"{U1}:1:tag", f"{U1}:t1:t2:1", f"{U1}:1-2-3", f"{U1}:Bad-Tag:1"],
)
def test_mysql_rejects_malformed_text(text: str) -> None:
    with pytest.raises(GtidParseError):
        mysql(text)


def test_empty_text_is_the_empty_set_of_either_flavor() -> None:
    for flavor in ("mysql", "mariadb"):
        empty = parse_gtid_set(flavor, None)
        assert empty == parse_gtid_set(flavor, " ")
        assert not empty and empty.count == 0 and str(empty) == ""


def test_flavors_do_not_mix() -> None:
    with pytest.raises(TypeError, match="mysql GTID set with a mariadb one"):
        mysql(f"{U1}:1").contains(maria("0-1-1"))


Pool = frozenset[tuple[tuple[str, str], int]]


def expand(gtids: MySQLGtidSet) -> Pool:
    return frozenset(
        (key, n) for key, intervals in gtids.entries for first, last in intervals for n in range(first, last + 1)
    )


def from_pool(pool: Pool) -> MySQLGtidSet:
    by_key: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for key, n in pool:
        by_key.setdefault(key, []).append((n, n))
    return MySQLGtidSet.from_intervals(by_key)


keys = st.sampled_from([(U1, ""), (U2, ""), (U1, "tag")])
pools = st.frozensets(st.tuples(keys, st.integers(1, 30)), max_size=40)


@given(pools)
def test_mysql_format_round_trips(pool: Pool) -> None:
    gtids = from_pool(pool)
    assert expand(gtids) == pool
    assert mysql(str(gtids)) == gtids
    assert gtids.count == len(pool)


@given(pools, pools)
def test_mysql_operations_match_python_sets(a: Pool, b: Pool) -> None:
    x, y = from_pool(a), from_pool(b)
    assert x.contains(y) == (a >= b)
    assert expand(x.difference(y)) == a - b
    assert expand(x.union(y)) == a | b
    assert (not x.difference(y)) == y.contains(x)


@given(pools, pools, pools)
def test_mysql_contains_is_a_partial_order(a: Pool, b: Pool, c: Pool) -> None:
    x, y, z = from_pool(a), from_pool(b), from_pool(c)
    assert x.contains(x)
    if x.contains(y) and y.contains(x):
        assert x == y
    if x.contains(y) and y.contains(z):
        assert x.contains(z)


# --- MariaDB ---------------------------------------------------------------------------------------------------


def test_mariadb_parse_and_format_positions_and_states() -> None:
    assert str(maria("1-2-5, 0-1-17")) == "0-1-17,1-2-5"
    state = maria("0-2-105,0-1-98,1-3-7")
    assert str(state) == "0-1-98,0-2-105,1-3-7"
    assert state.position() == "0-2-105,1-3-7"
    assert state.count == 105 + 7


@pytest.mark.parametrize(
    "text",
    ["0-1", "a-1-2", "0-1-0", "0-1-5,0-1-6", "0-1-3..2", "0-1-5..9,0-2-4", "0-1-2..3,0-2-1..4", "4294967296-1-1"],
)
def test_mariadb_rejects_malformed_text(text: str) -> None:
    with pytest.raises(GtidParseError):
        maria(text)


def test_mariadb_same_seq_from_another_server_is_divergent() -> None:
    a, b = maria("0-1-10"), maria("0-2-10")
    assert not a.contains(b) and not b.contains(a)
    assert a.difference(b) == a, "no server in common: nothing is known to be shared"


def test_mariadb_old_primary_writes_after_failover_are_errant() -> None:
    old = maria("0-1-101")
    new = maria("0-1-98,0-2-105")
    assert not new.contains(old)
    errant = old.difference(new)
    assert str(errant) == "0-1-99..101"
    assert errant.count == 3
    assert maria(str(errant)) == errant
    assert new.difference(old).count == 7


def test_mariadb_replica_behind_on_the_same_history_is_contained() -> None:
    primary = maria("0-1-98,0-2-105")
    replica = maria("0-1-98,0-2-100")
    assert primary.contains(replica) and not replica.contains(primary)
    assert str(primary.difference(replica)) == "0-2-101..105"
    assert not replica.difference(primary)


def test_mariadb_position_and_state_of_one_history_contain_each_other() -> None:
    state, position = maria("0-1-98,0-2-105"), maria("0-2-105")
    assert state.contains(position) and position.contains(state)
    assert state.union(position) == state


def test_mariadb_state_of_a_replica_seeded_from_a_backup_lacks_older_servers() -> None:
    primary = maria("0-1-101,0-2-50")
    seeded = maria("0-1-101")
    assert seeded.contains(primary) and primary.contains(seeded)


def test_mariadb_union_takes_the_later_gtid_per_server() -> None:
    executed, relay = maria("0-1-98,0-2-100"), maria("0-2-103,1-5-2")
    assert str(executed.union(relay)) == "0-1-98,0-2-103,1-5-2"


def test_mariadb_difference_and_union_refuse_results_that_are_not_one_range() -> None:
    late = maria("0-1-50..60")
    with pytest.raises(ValueError, match="not one range"):
        maria("0-1-60").difference(late)
    with pytest.raises(ValueError, match="not one range"):
        maria("0-1-10").union(late)
    assert maria("0-1-55").contains(maria("0-1-50..55"))
    assert not maria("0-1-50..55").contains(maria("0-1-55"))


servers = st.integers(1, 6)


@st.composite
def two_histories(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """Two histories of one domain (the writer of each seq) sharing a prefix of a base history, each then
    continued by servers that never write in the other one: a server's own transactions form one line."""
    base = draw(st.lists(st.integers(1, 3), max_size=20))
    i = draw(st.integers(0, len(base)))
    j = draw(st.integers(0, len(base)))
    free_x = sorted({1, 2, 3, 4, 5, 6} - set(base[i:]))
    suffix_x = draw(st.lists(st.sampled_from(free_x), max_size=5)) if free_x else []
    free_y = sorted({1, 2, 3, 4, 5, 6} - set(base[j:]) - set(suffix_x))
    suffix_y = draw(st.lists(st.sampled_from(free_y), max_size=5)) if free_y else []
    return base[:i] + suffix_x, base[:j] + suffix_y, min(i, j)


def state_of(history: list[int], domain: int = 0) -> MariaDBGtidSet:
    last = {server: seq for seq, server in enumerate(history, start=1)}
    return maria(",".join(f"{domain}-{server}-{seq}" for server, seq in last.items()))


@given(two_histories())
def test_mariadb_model_matches_simulated_histories(histories: tuple[list[int], list[int], int]) -> None:
    x_history, y_history, shared = histories
    x, y = state_of(x_history), state_of(y_history)
    assert x.contains(y) == (y_history == x_history[: len(y_history)])
    assert x.difference(y).count == len(x_history) - shared
    assert y.difference(x).count == len(y_history) - shared
    position = maria(x.position())
    assert position.contains(x) and x.contains(position)
    assert x.union(position) == x


states = st.dictionaries(st.tuples(st.integers(0, 2), servers), st.integers(1, 30), max_size=6).map(
    lambda d: maria(",".join(f"{dom}-{srv}-{seq}" for (dom, srv), seq in d.items()))
)


@given(states, states)
def test_mariadb_algebra_on_server_states(x: MariaDBGtidSet, y: MariaDBGtidSet) -> None:
    assert x.contains(x)
    assert maria(str(x)) == x
    difference = x.difference(y)
    assert maria(str(difference)) == difference
    assert (not difference) == y.contains(x)
    assert x.contains(difference)
    assert difference.difference(y) == difference
    union = x.union(y)
    assert union.contains(x) and union.contains(y)


def test_resume_position_takes_what_the_binlog_holds_when_the_slave_position_lags() -> None:
    # Seen on MariaDB 10.11: the applier, killed while it committed a replicated DDL, binlogged 0-2-6 but left
    # gtid_slave_pos at 0-2-5; @@gtid_current_pos (0-2-5, another server's GTID) re-applied 0-2-6.
    assert resume_position("0-2-6", "0-2-5") == "0-2-6"


def test_resume_position_of_a_demoted_primary_and_of_a_seeded_replica() -> None:
    assert resume_position("0-1-9", "0-2-5") == "0-1-9"  # its own writes after it last replicated
    assert resume_position("", "0-1-101") == "0-1-101"  # seeded from a backup, nothing binlogged
    assert resume_position("0-3-2,1-1-4", "0-1-101") == "0-1-101,1-1-4"  # a local write before it was seeded
    assert resume_position("", "") == ""


@given(st.lists(servers, min_size=1, max_size=20), st.data())
def test_resume_position_is_the_end_of_one_domains_history(history: list[int], data: st.DataObject) -> None:
    """A replica that applied ``history`` (binlogged all of it) with its slave position recorded up to any
    earlier point, or not at all, resumes after the whole history."""
    binlog = maria(state_of(history).position())
    recorded = data.draw(st.integers(0, len(history)))
    slave = f"0-{history[recorded - 1]}-{recorded}" if recorded else ""
    assert resume_position(binlog.position(), slave) == f"0-{history[-1]}-{len(history)}"


def test_origins_are_the_servers_a_set_holds_transactions_of() -> None:
    assert maria("0-1-10,0-2-11,1-3-4").origins == {"1", "2", "3"}
    assert maria("0-1-12").difference(maria("0-1-10")).origins == {"1"}
    assert mysql(f"{U1}:1-5,{U2}:tag:1").origins == {U1, U2}

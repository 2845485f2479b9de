"""The dump's stream: compressed losslessly, its position found wherever the reads cut it; the read-ahead: every
chunk in order, the producer's failure raised in its place, and a consumer that gives up stops the producer."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.backup.dump import READ_CHUNK, _CompressedDump, _ReadAhead
from whm_ha.mysql.dialect import DumpPosition, dialect_for


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=50), st.integers(min_value=1, max_value=4))
def test_every_chunk_arrives_in_order(chunks: list[bytes], depth: int) -> None:
    ahead = _ReadAhead(iter(chunks), depth)
    try:
        assert list(ahead) == chunks
    finally:
        ahead.close()


def test_the_producers_failure_is_raised_after_what_it_produced() -> None:
    def failing() -> Iterator[bytes]:
        yield b"a"
        raise RuntimeError("the dump tool failed")

    ahead = _ReadAhead(failing(), 2)
    got = []
    with pytest.raises(RuntimeError, match="the dump tool failed"):
        got.extend(ahead)
    assert got == [b"a"]
    ahead.close()


def test_close_stops_a_producer_the_consumer_gave_up_on() -> None:
    produced = itertools.count()
    ahead = _ReadAhead((str(next(produced)).encode() for _ in itertools.repeat(None)), 2)
    assert next(iter(ahead)) == b"0"
    ahead.close()
    assert not ahead._thread.is_alive()


@pytest.mark.parametrize("cut", [1, 20, 60])
def test_the_position_is_found_when_its_line_straddles_two_chunks(cut: int) -> None:
    """mariadb-dump writes its GTID position after the data: the line may be cut between the last two reads."""
    head = b"-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=4711;\n"
    gtid = b"-- SET GLOBAL gtid_slave_pos='0-1-12345';\n"
    line = b"INSERT INTO t VALUES (1);\n"
    body = 2 * READ_CHUNK - cut - len(head)
    lines, rest = divmod(body, len(line))
    dump = head + line * (lines - 1) + b"-" * (len(line) + rest - 1) + b"\n" + gtid + b"-- Dump completed\n"
    assert dump[2 * READ_CHUNK - cut :].startswith(gtid)
    compressed = _CompressedDump(io.BytesIO(dump), dialect_for("mariadb"))
    stored = b"".join(compressed.chunks(lambda: None))
    assert compressed.position() == DumpPosition("0-1-12345", "mysql-bin.000002", 4711)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == dump
    assert compressed.uncompressed_size == len(dump)
    assert compressed.size == len(stored)

"""The dump's read-ahead: every chunk in order, the producer's failure raised in its place, and a consumer that gives
up stops the producer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.backup.dump import _ReadAhead


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

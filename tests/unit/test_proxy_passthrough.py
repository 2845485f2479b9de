"""Passthrough's pure parts: the ClientHello reader (on real hellos from OpenSSL) and sticky node choice."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.tls_nodes import client_hello
from whm_ha_proxy.balancer import Balancer, NodeSpec
from whm_ha_proxy.client_hello import MAX_RECORD, ClientHello, HelloError, read_client_hello

LABEL = r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
host_names = st.from_regex(rf"({LABEL}\.){{0,3}}[a-z]{LABEL}", fullmatch=True)


def fragmented(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into records of at most ``size`` bytes."""
    message = hello[5:]
    return b"".join(
        hello[:3] + len(piece).to_bytes(2, "big") + piece
        for piece in (message[i : i + size] for i in range(0, len(message), size))
    )


REAL_HELLOS = settings(deadline=None)
"""For the examples that make a real ClientHello with OpenSSL: a few hundred ms each on a loaded machine."""


@REAL_HELLOS
@given(host_names, st.binary(max_size=100))
def test_the_server_name_is_read_from_a_real_hello(name: str, after: bytes) -> None:
    hello = client_hello(name, ["http/1.1"])
    assert read_client_hello(hello + after) == ClientHello(name, len(hello))


def test_no_server_name() -> None:
    hello = client_hello(None)
    assert read_client_hello(hello) == ClientHello(None, len(hello))


@REAL_HELLOS
@given(host_names, st.data())
def test_a_hello_cut_short_asks_for_more(name: str, data: st.DataObject) -> None:
    hello = client_hello(name)
    assert read_client_hello(hello[: data.draw(st.integers(0, len(hello) - 1))]) is None


@REAL_HELLOS
@given(st.integers(200, 600))
def test_a_hello_over_several_records(size: int) -> None:
    hello = client_hello("panel.example.com")
    assert read_client_hello(fragmented(hello, size)) == ClientHello("panel.example.com", len(fragmented(hello, size)))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x80\x2e\x01\x03\x01",  # an SSLv2-style hello
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data first
        b"\x16\x02\x00\x00\x10",  # SSL 2 record version
        b"\x16\x03\x01" + (MAX_RECORD + 1).to_bytes(2, "big"),  # refused before it arrives
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x10\x02",  # a ServerHello
        b"\x16\x03\x01\x00\x08\x01\x00\x40\x01",  # 16 KiB + 1 of ClientHello announced
    ],
)
def test_refused_at_once(data: bytes) -> None:
    with pytest.raises(HelloError):
        read_client_hello(data)


def test_a_corrupt_hello_is_refused() -> None:
    hello = bytearray(client_hello("panel.example.com"))
    at = hello.index(b"panel.example.com")
    hello[at + 5] = ord(" ")  # not a host name
    with pytest.raises(HelloError, match="not a host name"):
        read_client_hello(bytes(hello))
    with pytest.raises(HelloError, match="records"):
        read_client_hello(fragmented(bytes(client_hello("panel.example.com")), 20))


@given(st.binary(max_size=400))
def test_reading_never_fails_otherwise(data: bytes) -> None:
    try:
        hello = read_client_hello(b"\x16\x03\x01" + data)
    except HelloError:
        return
    assert hello is None or 0 < hello.length <= len(data) + 3


# -- sticky choice ------------------------------------------------------------------------------------------


def balancer(*weights: int) -> Balancer:
    b = Balancer("roundRobin")
    b.configure("roundRobin", [NodeSpec(f"n{i}", "127.0.0.1", 1, weight=w) for i, w in enumerate(weights)])
    return b


clients = st.lists(st.ip_addresses(v=4).map(lambda a: str(a).encode()), min_size=1, max_size=50, unique=True)


@given(clients)
def test_a_client_keeps_its_node_and_only_a_leaving_nodes_clients_move(keys: list[bytes]) -> None:
    b = balancer(1, 1, 1, 1)
    before = {key: b.pick_affine(0, key) for key in keys}
    assert before == {key: b.pick_affine(0, key) for key in keys}, "the same node every time"
    gone = b.backends["n1"]
    b.configure("roundRobin", [NodeSpec(n, "127.0.0.1", 1, healthy=n != "n1") for n in ("n0", "n1", "n2", "n3")])
    after = {key: b.pick_affine(0, key) for key in keys}
    for key in keys:
        backend = after[key]
        assert backend is not None and backend.name != "n1"
        if before[key] is not gone:
            assert backend is before[key], "a client of a node that stayed did not move"


def test_clients_spread_by_weight_and_exclusion_is_honoured() -> None:
    b = balancer(1, 3)
    counts = Counter(b.pick_affine(0, f"10.0.{i // 256}.{i % 256}".encode()).name for i in range(4000))  # type: ignore[union-attr]
    assert 0.2 < counts["n0"] / 4000 < 0.3
    first = b.pick_affine(0, b"192.0.2.1")
    assert first is not None
    assert b.pick_affine(0, b"192.0.2.1", exclude=[first]) not in (first, None)
    assert b.pick_affine(0, b"192.0.2.1", exclude=list(b.backends.values())) is None

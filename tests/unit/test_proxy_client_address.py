"""The client-address rules and the PROXY protocol parser: pure, so checked exhaustively without sockets."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whm_ha.crd.whmcluster import ClientAddress
from whm_ha_proxy.client_address import ORIGINS_KEPT, Addressing, forwarded_node, real_client
from whm_ha_proxy.proxy_protocol import (
    NO_HEADER,
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
    read_preface,
)

LB = Addressing.from_settings(["10.0.0.0/8", "fd00::/8"], proxy_protocol=False)
addresses = st.one_of(
    st.ip_addresses(v=4), st.ip_addresses(v=6).filter(lambda address: address.ipv4_mapped is None)
).map(str)


def header_lines(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")
    assert all(": " in line for line in lines), block
    return dict(line.split(": ", 1) for line in lines)  # type: ignore[misc]


def test_forwarded_node_brackets_and_quotes_ipv6() -> None:
    assert forwarded_node("192.0.2.1") == b"192.0.2.1"
    assert forwarded_node("2001:db8::1") == b'"[2001:db8::1]"'


@given(addresses, st.lists(st.text("0123456789.:, abcdef", max_size=30).map(str.encode), max_size=3), st.booleans())
def test_at_the_edge_the_connection_is_the_truth(peer: str, chain: list[bytes], https: bool) -> None:
    origin = Addressing().origin(peer, https=https)
    proto = "https" if https else "http"
    forged = [(b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-proto", b"https" if not https else b"http")]
    lines = header_lines(origin.lines([*((b"x-forwarded-for", hop) for hop in chain), *forged]))
    assert lines["X-Real-IP"] == peer
    assert lines["X-Forwarded-Proto"] == proto
    assert lines["Forwarded"] == f"for={forwarded_node(peer).decode()};proto={proto}"
    assert lines["X-Forwarded-For"] == ", ".join([*(hop.decode() for hop in chain), peer])


def test_an_ipv4_mapped_peer_is_told_as_ipv4() -> None:
    assert Addressing().origin("::ffff:192.0.2.9", https=False).address == "192.0.2.9"


@pytest.mark.parametrize(
    ("chain", "client"),
    [
        ([b"203.0.113.9, 10.0.0.5", b"10.0.0.1"], b"203.0.113.9"),
        ([b"6.6.6.6, 203.0.113.9", b"10.1.2.3"], b"203.0.113.9"),  # the client may prepend anything
        ([b"10.0.0.3, 10.0.0.2", b"10.0.0.1"], b"10.0.0.3"),  # all trusted: the leftmost
        ([b"203.0.113.9, junk, 10.0.0.2", b"10.0.0.1"], b"10.0.0.2"),  # the walk stops at what is no address
        ([b"2001:db8::9 , fd00::1", b"10.0.0.1"], b"2001:db8::9"),
    ],
)
def test_real_client_is_the_last_untrusted_hop(chain: list[bytes], client: bytes) -> None:
    assert real_client(chain, LB.networks) == client


@given(st.lists(addresses, min_size=1, max_size=6))
def test_real_client_is_a_hop_and_every_hop_right_of_it_is_trusted(hops: list[str]) -> None:
    chain = [", ".join(hops).encode()]
    client = real_client(chain, LB.networks).decode()
    untrusted = [i for i, hop in enumerate(hops) if not any(ip_address(hop) in net for net in LB.networks)]
    # The rightmost untrusted hop; the leftmost when all are trusted (by position: a chain may repeat an address).
    index = untrusted[-1] if untrusted else 0
    assert client == hops[index]
    assert all(any(ip_address(hop) in net for net in LB.networks) for hop in hops[index + 1 :])


def test_a_trusted_peer_keeps_its_headers_and_is_appended_to() -> None:
    origin = LB.origin("10.0.0.1", https=False)
    assert origin.trusted
    received = [
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"forwarded", b"for=203.0.113.9;proto=https"),
        (b"x-forwarded-proto", b"https"),
    ]
    lines = header_lines(origin.lines(received))
    assert lines == {
        "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "203.0.113.9",
        "Forwarded": "for=203.0.113.9;proto=https, for=10.0.0.1;proto=http",
    }
    bare = header_lines(origin.lines([]))  # a trusted peer that forwarded nothing is the client
    assert bare["X-Real-IP"] == "10.0.0.1" and bare["X-Forwarded-Proto"] == "http"


def test_origins_are_kept_per_address_and_protocol_within_a_bound() -> None:
    addressing = Addressing.from_settings(["10.0.0.0/8"], proxy_protocol=False)
    client = addressing.origin("192.0.2.7", https=True)
    assert addressing.origin("192.0.2.7", https=True) is client
    assert addressing.origin("192.0.2.7", https=False).proto == b"http"
    assert addressing.origin("10.1.2.3", https=True).trusted and not client.trusted
    for n in range(2 * ORIGINS_KEPT):  # addresses are the clients' to choose: what is kept stays bounded
        assert addressing.origin(str(ip_address(0x0A000000 + n)), https=True).trusted
    assert len(addressing._origins) <= ORIGINS_KEPT
    assert Addressing.from_settings(["10.0.0.0/8"], proxy_protocol=False) == addressing


def test_cluster_setting_canonicalises_cidrs_and_refuses_addresses() -> None:
    assert ClientAddress.model_validate({"trustedNetworks": ["10.1.2.3/8"]}).trusted_networks == ["10.0.0.0/8"]
    with pytest.raises(ValueError, match="not a CIDR"):
        ClientAddress.model_validate({"trustedNetworks": ["10.1.2.3"]})


# -- PROXY protocol ----------------------------------------------------------------------------------------


def v2(command: int, family: int, transport: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport]) + len(payload).to_bytes(2, "big") + payload


def v2_tcp(source: IPv4Address | IPv6Address, tlvs: bytes = b"") -> bytes:
    family = 1 if source.version == 4 else 2
    size = 4 if family == 1 else 16
    return v2(1, family, 1, source.packed + bytes(size) + b"\x01\xbb\x20\xfb" + tlvs)


@given(st.ip_addresses(v=4), st.integers(0, 65535), st.binary(max_size=50))
def test_v1_tcp4_gives_the_source_and_leaves_the_rest(source: IPv4Address, port: int, rest: bytes) -> None:
    header = f"PROXY TCP4 {source} 10.0.0.1 {port} 443\r\n".encode()
    assert parse(header + rest) == ProxyHeader(str(source), len(header))


@given(st.ip_addresses(v=6))
def test_v1_tcp6(source: IPv6Address) -> None:
    header = f"PROXY TCP6 {source} ::1 1 2\r\n".encode()
    assert parse(header) == ProxyHeader(str(source), len(header))


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.binary(max_size=40))
def test_v2_gives_the_source_and_skips_tlvs(source: IPv4Address | IPv6Address, tlvs: bytes) -> None:
    header = v2_tcp(source, tlvs)
    assert parse(header + b"GET /") == ProxyHeader(str(source), len(header))


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ff::1 ::1 1 2\r\n",
        v2(0, 1, 1, bytes(12)),  # LOCAL: the balancer's own connection
        v2(1, 0, 0, b""),  # unspecified addresses
        v2(1, 3, 1, bytes(216)),  # UNIX sockets
    ],
)
def test_headers_without_a_client_address_leave_the_peer(header: bytes) -> None:
    assert parse(header) == ProxyHeader(None, len(header))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\n",  # LF without CR
        b"PROXY TCP4 " + b"1" * V1_MAX,
        b"PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 01 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n",
        b"PROXY TCP4 192.0.2.1  10.0.0.1 1 2\r\n",
        b"PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 \xff 10.0.0.1 1 2\r\n",
        b'PROXY TCP6 fe80::1%a\rX-Evil:;for="x" ::1 1 2\r\n',  # a scope ID: any text, CR included, into headers
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        V2_SIGNATURE + b"\x12\x11\x00\x0c" + bytes(12),  # version 1 in a v2 signature
        V2_SIGNATURE + b"\x23\x11\x00\x0c" + bytes(12),  # command 3
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # family 4
        V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # too short for two IPv4 addresses
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # too short for IPv6
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP
        V2_SIGNATURE + b"\x21\x11" + (V2_MAX_PAYLOAD + 1).to_bytes(2, "big"),  # refused before it arrives
    ],
)
def test_refused_headers(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.data())
def test_a_header_cut_short_asks_for_more(source: IPv4Address | IPv6Address, data: st.DataObject) -> None:
    family = "TCP4" if source.version == 4 else "TCP6"
    for header in (f"PROXY {family} {source} {source} 1 2\r\n".encode(), v2_tcp(source, b"\x04\x00\x01x")):
        cut = data.draw(st.integers(0, len(header) - 1))
        assert parse(header[:cut]) is None


@given(st.binary(max_size=300))
def test_parse_never_fails_otherwise_and_stays_in_bounds(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    if header is None:
        assert len(data) < V1_MAX or data[:12] == V2_SIGNATURE
    else:
        assert 0 < header.length <= len(data)
        assert header.source is None or ip_address(header.source)


@given(st.binary(max_size=40))
def test_preface_from_an_untrusted_peer(data: bytes) -> None:
    """An untrusted peer's bytes pass as they are unless they could start a PROXY header."""
    try:
        outcome = read_preface(data, trusted=False)
    except ProxyProtocolError:
        assert data.startswith(b"PROXY ") or data.startswith(V2_SIGNATURE)
        return
    if outcome is None:
        assert b"PROXY "[: len(data)] == data or V2_SIGNATURE[: len(data)] == data
    else:
        assert outcome == NO_HEADER


def test_preface_from_a_trusted_peer_requires_the_header() -> None:
    with pytest.raises(ProxyProtocolError):
        read_preface(b"GET / HTTP/1.1\r\n", trusted=True)
    assert read_preface(b"PROX", trusted=True) is None
    header = v2_tcp(IPv4Address(socket.inet_aton("198.51.100.7")))
    assert read_preface(header, trusted=True) == ProxyHeader("198.51.100.7", len(header))

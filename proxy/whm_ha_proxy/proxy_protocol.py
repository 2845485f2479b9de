"""The PROXY protocol (HAProxy's, versions 1 and 2): what a load balancer in front says about the client.

Pure parsing, bounded: a v1 header is one line of at most 107 bytes, a v2 header 16 bytes and a payload of at
most ``V2_MAX_PAYLOAD``. Only peers in a trusted network may send one; from them it is required, from anyone
else it closes the connection (``read_preface``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

V1_PREFIX = b"PROXY "
V1_MAX = 107
"""The longest v1 header, CRLF included (the specification's bound)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = 16
V2_MAX_PAYLOAD = 4096
"""Addresses and TLVs of a v2 header, in bytes; a longer one is refused (load balancers send a few dozen)."""
V2_ADDRESS_BYTES = {1: 12, 2: 36, 3: 216}
"""Size of the address block per v2 family (INET, INET6, UNIX)."""
PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ValueError):
    """Bytes that are not the PROXY header expected (or one where none may be): the connection is closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY header read off the start of a connection."""

    source: str | None
    """The client's address; None when the header names none (v1 UNKNOWN, v2 LOCAL, UNIX or unspecified
    addresses: the load balancer's own connection, e.g. a health check), so the peer's address stands."""
    length: int
    """Bytes the header took; what follows is the client's."""


NO_HEADER = ProxyHeader(None, 0)


def signature(data: bytes) -> Literal["v1", "v2", "none"] | None:
    """Which PROXY header ``data`` starts with; "none" when it cannot start one, None when too short to tell."""
    for version, prefix in (("v1", V1_PREFIX), ("v2", V2_SIGNATURE)):
        size = min(len(data), len(prefix))
        if data[:size] == prefix[:size]:
            return None if size < len(prefix) else version  # type: ignore[return-value]
    return "none"


def parse(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``; None while more bytes are needed. Raises ProxyProtocolError
    for anything else, as soon as the bytes seen show it (never reading past the bounds)."""
    version = signature(data)
    if version is None:
        return None
    if version == "v1":
        return _parse_v1(data)
    if version == "v2":
        return _parse_v2(data)
    raise ProxyProtocolError("no PROXY protocol header")


def read_preface(data: bytes, *, trusted: bool) -> ProxyHeader | None:
    """What starts a connection when PROXY protocol is on: from a ``trusted`` peer its (required) header, from
    any other peer ``NO_HEADER`` once the bytes cannot start one. None while too few bytes tell;
    ProxyProtocolError when the connection must be closed."""
    if trusted:
        return parse(data)
    version = signature(data)
    if version is None:
        return None
    if version != "none":
        raise ProxyProtocolError("a PROXY protocol header from a peer outside the trusted networks")
    return NO_HEADER


def _parse_v1(data: bytes) -> ProxyHeader | None:
    line_feed = data.find(b"\n", 0, V1_MAX)
    if line_feed < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    end = line_feed - 1
    if data[end] != 0x0D:
        raise ProxyProtocolError("PROXY v1 header not ending in CRLF")
    try:
        fields = data[len(V1_PREFIX) : end].decode("ascii").split(" ")
    except UnicodeDecodeError as exc:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from exc
    if fields[0] == "UNKNOWN":
        return ProxyHeader(None, end + 2)
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header: {data[:end]!r}")
    family, source, destination, source_port, destination_port = fields
    kind = IPv4Address if family == "TCP4" else IPv6Address
    for address in (source, destination):
        try:
            # No scope ID (fe80::1%eth0): Python takes any text after the %, and the source is told to nodes.
            if "%" in address:
                raise ValueError("scope ID")
            kind(address)
        except ValueError as exc:
            raise ProxyProtocolError(f"PROXY v1 {family} address {address!r}") from exc
    for port in (source_port, destination_port):
        if not PORT.fullmatch(port) or int(port) > 65535:
            raise ProxyProtocolError(f"PROXY v1 port {port!r}")
    return ProxyHeader(str(ip_address(source)), end + 2)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEAD:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyProtocolError(f"PROXY v2 version/command byte {data[12]:#04x}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    payload = int.from_bytes(data[14:16], "big")
    if payload > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2 payload of {payload} bytes (at most {V2_MAX_PAYLOAD})")
    if family > 3 or transport > 2:
        raise ProxyProtocolError(f"PROXY v2 family/transport byte {data[13]:#04x}")
    if payload < V2_ADDRESS_BYTES.get(family, 0):
        raise ProxyProtocolError(f"PROXY v2 payload of {payload} bytes is too short for its addresses")
    if len(data) < V2_HEAD + payload:
        return None
    length = V2_HEAD + payload
    if command == 0 or family in (0, 3):  # LOCAL (the balancer's own connection), unspecified or UNIX addresses
        return ProxyHeader(None, length)
    if transport != 1:
        raise ProxyProtocolError("PROXY v2 header for a transport other than TCP")
    raw = data[V2_HEAD : V2_HEAD + (4 if family == 1 else 16)]
    return ProxyHeader(str(IPv4Address(raw) if family == 1 else IPv6Address(raw)), length)

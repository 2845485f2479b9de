"""Who the client is: the address and protocol a node is told, and whose forwarded headers are believed.

At the edge (the default) the connection is the truth: X-Real-IP and Forwarded (RFC 7239) are set from its
peer, X-Forwarded-Proto from its transport, whatever the client sent, and X-Forwarded-For is appended to as
nginx's ``$proxy_add_x_forwarded_for`` does. A peer in a trusted network (a load balancer in front) keeps its
Forwarded, X-Forwarded-For and X-Forwarded-Proto, each appended to or kept; the client is then the last
untrusted hop of X-Forwarded-For (nginx's ``real_ip_recursive``). With PROXY protocol on, the address in a
trusted peer's PROXY header takes the peer's place (``proxy_protocol.read_preface``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPNetwork = IPv4Network | IPv6Network
FORWARDING = frozenset({b"x-forwarded-for", b"forwarded", b"x-forwarded-proto"})
"""The headers (lower-case) a trusted peer may pass on; ``Origin.lines`` decides what becomes of them."""
ORIGINS_KEPT = 4096
"""Origins an ``Addressing`` keeps for the next connections from the same address (then it starts afresh)."""


def parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    """The address ``text`` holds (an IPv4-mapped IPv6 address as IPv4); None when it holds none."""
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> IPNetwork:
    """A CIDR (``10.0.0.0/8``, ``fd00::/8``; host bits are ignored); ValueError for anything else."""
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR (ADDRESS/PREFIX)")
    return ip_network(text.strip(), strict=False)


def within(address: IPv4Address | IPv6Address | None, networks: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in network for network in networks)


def forwarded_node(address: str) -> bytes:
    """``address`` as an RFC 7239 node: IPv4 as it is, IPv6 in brackets and quotes."""
    return f'"[{address}]"'.encode() if ":" in address else address.encode()


def real_client(chain: Sequence[bytes], networks: Sequence[IPNetwork]) -> bytes:
    """The client's address in an X-Forwarded-For chain whose last hop is the proxy's peer (nginx's
    ``real_ip_recursive``): walking from the right, the first hop outside ``networks``; the leftmost when all
    are trusted. A hop that is not an address stops the walk: the hop to its right is the last one vouched for."""
    hops = [hop.strip(b" \t") for value in chain for hop in value.split(b",")]
    vouched = hops[-1]
    for hop in reversed(hops):
        address = parse_ip(hop.decode("latin-1"))
        if address is None:
            return vouched
        if not within(address, networks):
            return hop
        vouched = hop
    return vouched


class Origin:
    """Where one connection's requests come from, and the forwarding header lines a node gets for them."""

    __slots__ = ("_edge", "_tail", "address", "https", "networks", "trusted")

    def __init__(self, address: str, *, https: bool, trusted: bool, networks: tuple[IPNetwork, ...]) -> None:
        self.address = address
        """The client's address as the proxy knows it: the peer's, or the one in its PROXY header."""
        self.https = https
        self.trusted = trusted
        """Whether the forwarded headers sent from this address are kept (it is in a trusted network)."""
        self.networks = networks
        proto = b"https" if https else b"http"
        raw = address.encode()
        self._tail = b"%s\r\nX-Forwarded-Proto: %s\r\nX-Real-IP: %s\r\nForwarded: for=%s;proto=%s" % (
            raw,
            proto,
            raw,
            forwarded_node(address),
            proto,
        )
        self._edge = b"X-Forwarded-For: " + self._tail
        """The lines for a request that carried no X-Forwarded-For (computed once per connection)."""

    @property
    def proto(self) -> bytes:
        return b"https" if self.https else b"http"

    def lines(self, received: list[tuple[bytes, bytes]]) -> bytes:
        """X-Forwarded-For, X-Forwarded-Proto, X-Real-IP and Forwarded for a request that carried the ``FORWARDING``
        headers ``received`` (lower-case name, value; in order): CRLF between lines, none after the last."""
        chain = [value for name, value in received if name == b"x-forwarded-for"] if received else []
        if not self.trusted:
            return self._edge if not chain else b"X-Forwarded-For: " + b", ".join(chain) + b", " + self._tail
        forwarded = [value for name, value in received if name == b"forwarded"]
        proto = next((value for name, value in received if name == b"x-forwarded-proto"), None)
        chain.append(self.address.encode())
        element = b"for=%s;proto=%s" % (forwarded_node(self.address), self.proto)
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Real-IP: %s\r\nForwarded: %s" % (
            b", ".join(chain),
            proto if proto is not None else self.proto,
            real_client(chain, self.networks),
            b", ".join([*forwarded, element]),
        )


@dataclass(frozen=True)
class Addressing:
    """A cluster's ``spec.loadBalancer.clientAddress``, ready for connections to consult."""

    networks: tuple[IPNetwork, ...] = ()
    """Trusted networks: peers whose forwarded headers (and PROXY headers) are believed."""
    proxy_protocol: bool = False
    """A PROXY header is required from trusted peers (and refused from others)."""
    _origins: dict[tuple[str, bool], Origin] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    """Origins made so far, for the next connections from the same clients (parsing an address and making its
    header lines showed in profiles of new connections). Bounded, as addresses are the clients' to choose."""

    @classmethod
    def from_settings(cls, trusted_networks: Iterable[str], proxy_protocol: bool) -> Addressing:
        return cls(tuple(parse_network(text) for text in trusted_networks), proxy_protocol)

    def origin(self, address: str, *, https: bool) -> Origin:
        """The origin of a connection from ``address`` (its peer's, or a PROXY header's)."""
        origins = self._origins
        origin = origins.get((address, https))
        if origin is None:
            if len(origins) >= ORIGINS_KEPT:
                origins.clear()
            origin = origins[address, https] = self._make_origin(address, https=https)
        return origin

    def _make_origin(self, address: str, *, https: bool) -> Origin:
        parsed = parse_ip(address) if address else None
        if parsed is not None and parsed.version == 4 and ":" in address:  # IPv4-mapped: told as IPv4
            address = str(parsed)
        trusted = within(parsed, self.networks) if self.networks else False
        return Origin(address, https=https, trusted=trusted, networks=self.networks)


EDGE = Addressing()
"""No trusted network: every peer is a client."""

"""The proxy's command-line settings, shared by the parent and its workers."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from .balancer import EjectionPolicy
from .forward import Timeouts
from .server import ClientLimits


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class ProxyOptions:
    """Everything ``whm-ha proxy`` was told."""

    cluster: str
    namespace: str
    listen: tuple[str, int]
    admin: tuple[str, int]
    workers: int = 0
    """Worker processes; 0 means one per core."""
    eject_after: int = 5
    eject_seconds: float = 5.0
    eject_max_seconds: float = 300.0
    connect_timeout: float = 5.0
    header_timeout: float = 60.0
    idle_timeout: float = 60.0
    resync_seconds: float = 300.0
    drain_seconds: float = 30.0
    limits: ClientLimits = field(default_factory=ClientLimits)
    listen_tls: tuple[str, int] | None = None
    """The HTTPS listener's address; None for none."""
    tls_handshake_timeout: float = 10.0
    listen_passthrough: tuple[str, int] | None = None
    """L4 TLS passthrough address (``spec.loadBalancer.passthrough``); None: no such listener."""
    passthrough_idle_timeout: float = 600.0
    """Seconds a spliced passthrough connection may pass no byte either way before both sides are closed."""

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else os.cpu_count() or 1

    @property
    def policy(self) -> EjectionPolicy:
        return EjectionPolicy(self.eject_after, self.eject_seconds, self.eject_max_seconds)

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(self.connect_timeout, self.header_timeout, self.idle_timeout)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProxyOptions:
        data = json.loads(text)
        return cls(
            **{
                **data,
                "listen": tuple(data["listen"]),
                "admin": tuple(data["admin"]),
                "listen_tls": tuple(data["listen_tls"]) if data["listen_tls"] is not None else None,
                "listen_passthrough": tuple(data["listen_passthrough"]) if data["listen_passthrough"] else None,
                "limits": ClientLimits(**data["limits"]),
            }
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProxyOptions:
        """The options parsed by a parser that ``add_arguments`` filled; ValueError on a bad address."""
        simple = {f.name for f in fields(cls)} - {"listen", "admin", "limits", "listen_tls", "listen_passthrough"}
        return cls(
            listen=parse_address(args.listen),
            listen_tls=parse_address(args.listen_tls) if args.listen_tls is not None else None,
            admin=parse_address(args.admin),
            listen_passthrough=parse_address(args.listen_passthrough) if args.listen_passthrough else None,
            limits=ClientLimits(**{f.name: getattr(args, f.name) for f in fields(ClientLimits)}),
            **{name: getattr(args, name) for name in simple},
        )


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: ``kind`` of the text, refused unless above zero."""

    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


CLIENT_LIMITS = {
    "client_header_timeout": ("seconds a client may take to send a request head, then 408", "client_header_timeout"),
    "client_body_timeout": ("seconds a request body may stay silent, then 408", "client_body_timeout"),
    "keepalive_timeout": ("seconds a client connection may stay open with no request", "keepalive_timeout"),
    "max_request_line": ("longest request target in bytes, then 414", "large_client_header_buffers"),
    "max_header_line": ("longest header line in bytes, then 431", "large_client_header_buffers"),
    "max_header_bytes": ("all header lines of a request in bytes, then 431", "large_client_header_buffers 4 8k"),
    "max_headers": ("header lines per request, then 431", ""),
    "max_connections": ("client connections per worker; further ones are closed", "worker_connections"),
}
"""Flag help and the equivalent nginx directive, per ClientLimits field (the defaults are its defaults)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``whm-ha proxy`` flags (nginx's equivalent directive in brackets where there is one)."""
    seconds = _positive(float)
    add = parser.add_argument
    add("--cluster", required=True, help="name of the WHMCluster")
    add("--namespace", "-n", default="default", help="namespace of the WHMCluster (default: default)")
    add("--listen", default="0.0.0.0:8080", metavar="HOST:PORT", help="traffic address (default: 0.0.0.0:8080)")
    add(
        "--listen-tls",
        metavar="HOST:PORT",
        help="HTTPS address (default: none), serving the certificates the WHMCluster's loadBalancer.tls names",
    )
    add(
        "--tls-handshake-timeout",
        type=seconds,
        default=10.0,
        help="seconds a client may take to complete its TLS handshake [ssl_handshake_timeout]",
    )
    add(
        "--listen-passthrough",
        metavar="HOST:PORT",
        help="L4 TLS passthrough address: TLS connections spliced unread to the nodes' TLS port, sticky by client "
        "address, when the WHMCluster's spec.loadBalancer.passthrough.enabled (default: none) [stream ssl_preread]",
    )
    add(
        "--passthrough-idle-timeout",
        type=seconds,
        default=600.0,
        help="seconds a spliced passthrough connection may pass no byte either way, then both sides are closed "
        "(default 600) [stream proxy_timeout]",
    )
    add(
        "--admin",
        default="127.0.0.1:8081",
        metavar="HOST:PORT",
        help="stats/metrics/health address (default: 127.0.0.1:8081; the pod IP to be scraped; POST /reload "
        "answers loopback clients only)",
    )
    add("--workers", type=int, default=0, help="worker processes (default: one per core)")
    add(
        "--eject-after",
        type=int,
        default=5,
        metavar="N",
        help="consecutive 5xx answers that eject a node for a while (a refused connection ejects at once)",
    )
    add("--eject-seconds", type=float, default=5.0, help="first ejection's length; repeated ejections double it")
    add("--eject-max-seconds", type=float, default=300.0, help="longest ejection")
    add("--connect-timeout", type=seconds, default=5.0, help="seconds to connect to a node [proxy_connect_timeout]")
    add(
        "--header-timeout",
        type=seconds,
        default=60.0,
        help="seconds from a sent request to the node's response headers [proxy_read_timeout]",
    )
    add(
        "--idle-timeout",
        type=seconds,
        default=60.0,
        help="seconds a response body may stay silent; idle node connections close after it [proxy_read_timeout]",
    )
    add("--resync-seconds", type=float, default=300.0, help="re-read everything this often")
    add("--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long requests in flight may take")
    for limit in fields(ClientLimits):
        text, directive = CLIENT_LIMITS[limit.name]
        default = getattr(ClientLimits, limit.name)
        add(
            "--" + limit.name.replace("_", "-"),
            type=_positive(type(default)),
            default=default,
            help=f"{text} (default {default})" + (f" [{directive}]" if directive else ""),
        )

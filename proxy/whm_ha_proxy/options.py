"""The proxy's command-line settings, shared by the parent and its workers."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from .balancer import EjectionPolicy
from .forward import Timeouts


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
        return cls(**{**data, "listen": tuple(data["listen"]), "admin": tuple(data["admin"])})

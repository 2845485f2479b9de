"""Choosing a node for each request: the algorithms, sticky sessions and passive health (ejection).

Pure and synchronous: the caller passes the time (any monotonic clock, in seconds), so the rules
can be tested without waiting. One ``Balancer`` lives in each worker process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

Algorithm = Literal["roundRobin", "leastConnections", "weighted"]
ALGORITHMS: tuple[Algorithm, ...] = ("roundRobin", "leastConnections", "weighted")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What the configuration says about one node."""

    name: str
    address: str
    port: int
    weight: int = 1
    healthy: bool = True
    maintenance: bool = False

    @property
    def routable(self) -> bool:
        """Healthy, not in maintenance and weight > 0 (weight 0 takes no traffic under any algorithm)."""
        return self.healthy and not self.maintenance and self.weight > 0


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """Passive health: when a node is taken out of rotation, and for how long."""

    failures: int = 5
    """Consecutive 5xx answers (or failed exchanges) that eject a node; a refused connection ejects at once."""
    base_seconds: float = 5.0
    """Length of the first ejection; each repeated ejection doubles it."""
    max_seconds: float = 300.0
    """Cap of the ejection length."""

    def duration(self, ejections: int) -> float:
        """Length of the ``ejections``-th consecutive ejection (1-based)."""
        return min(self.base_seconds * 2.0 ** min(ejections - 1, 62), self.max_seconds)


@dataclass(eq=False, slots=True)
class Backend:
    """A node as the balancer tracks it: configuration plus in-flight and passive-health state."""

    spec: NodeSpec
    active: int = 0
    """Requests (and WebSockets) in flight."""
    current: int = 0
    """Smooth weighted round-robin: the current weight."""
    failures: int = 0
    """Consecutive failed answers."""
    ejections: int = 0
    """Consecutive ejections (reset by a success), for the backoff."""
    ejections_total: int = 0
    ejected_until: float = 0.0
    authority: bytes = field(init=False)
    """``host:port`` of the node (IPv6 in brackets), for a Host header when the client sent none."""

    def __post_init__(self) -> None:
        self.authority = _authority(self.spec)

    @property
    def name(self) -> str:
        return self.spec.name

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now


def _authority(spec: NodeSpec) -> bytes:
    host = f"[{spec.address}]" if ":" in spec.address and not spec.address.startswith("[") else spec.address
    return f"{host}:{spec.port}".encode()


class Balancer:
    """Picks a backend per request; configuration changes in place keep in-flight accounting."""

    def __init__(self, algorithm: Algorithm = "roundRobin", policy: EjectionPolicy | None = None) -> None:
        self.algorithm: Algorithm = algorithm
        self.policy = policy or EjectionPolicy()
        self.backends: dict[str, Backend] = {}
        self._routable: list[Backend] = []
        self._signature: list[tuple[str, int]] = []
        self._dirty = True
        self._next_return = float("inf")
        self._turn = 0

    # -- configuration ----------------------------------------------------------------------------

    def configure(self, algorithm: Algorithm, nodes: Iterable[NodeSpec]) -> None:
        """Replace the algorithm and node set; nodes that stay keep their state, removed ones drain.

        A removed node's ``Backend`` is only dropped from the table: requests holding it finish and
        release it as usual.
        """
        fresh: dict[str, Backend] = {}
        for spec in nodes:
            backend = self.backends.get(spec.name)
            if backend is None:
                backend = Backend(spec)
            elif backend.spec != spec:
                backend.spec = spec
                backend.authority = _authority(spec)
            fresh[spec.name] = backend
        self.backends = fresh
        self.algorithm = algorithm
        self._dirty = True

    # -- choosing ---------------------------------------------------------------------------------

    def routable(self, now: float) -> list[Backend]:
        """Backends that may take new requests now (routable by configuration and not ejected)."""
        if self._dirty or now >= self._next_return:
            self._refresh(now)
        return self._routable

    def _refresh(self, now: float) -> None:
        routable = []
        next_return = float("inf")
        for backend in self.backends.values():
            if not backend.spec.routable:
                continue
            if backend.ejected(now):
                next_return = min(next_return, backend.ejected_until)
                continue
            routable.append(backend)
        signature = [(backend.name, backend.spec.weight) for backend in routable]
        if signature != self._signature:  # a new set or new weights: the smooth sequence starts afresh
            for backend in routable:
                backend.current = 0
            self._signature = signature
        self._routable = routable
        self._next_return = next_return
        self._dirty = False

    def pick(self, now: float, *, sticky: str | None = None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The backend for a new request, or None when no node can serve.

        ``sticky`` names the node a session is pinned to; it is used while routable, otherwise the
        algorithm chooses. ``exclude`` holds the backends a retried request already tried.
        """
        candidates = self.routable(now)
        if sticky is not None:
            pinned = self.backends.get(sticky)
            if pinned is not None and pinned not in exclude and pinned in candidates:
                return pinned
        if exclude:
            candidates = [backend for backend in candidates if backend not in exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.algorithm == "weighted":
            return self._smooth_weighted(candidates)
        turn = self._turn
        self._turn = turn + 1
        if self.algorithm == "roundRobin":
            return candidates[turn % len(candidates)]
        return _least_active(candidates, turn)

    def pick_affine(self, now: float, key: bytes, *, exclude: Collection[Backend] = ()) -> Backend | None:
        """The backend for a client known by ``key`` (its address) when no cookie can pin it: the same one while it
        stays routable, whatever the algorithm. Weighted rendezvous hashing: a node leaving the rotation moves only
        its own clients, to the others in proportion to their weights, and one coming back takes its share back."""
        best: Backend | None = None
        best_score = -1.0
        for backend in self.routable(now):
            if backend in exclude:
                continue
            score = _rendezvous_score(key, backend)
            if score > best_score:
                best, best_score = backend, score
        return best

    @staticmethod
    def _smooth_weighted(candidates: list[Backend]) -> Backend:
        """nginx's smooth weighted round-robin: add each weight, take the largest, subtract the total."""
        total = 0
        best = candidates[0]
        best_current = -(2**62)
        for backend in candidates:
            weight = backend.spec.weight
            current = backend.current + weight
            backend.current = current
            total += weight
            if current > best_current:
                best, best_current = backend, current
        best.current = best_current - total
        return best

    # -- accounting and passive health --------------------------------------------------------------

    @staticmethod
    def acquire(backend: Backend) -> None:
        backend.active += 1

    @staticmethod
    def release(backend: Backend) -> None:
        backend.active -= 1

    def succeeded(self, backend: Backend) -> None:
        """A good answer (below 500): the failure count and the backoff start over."""
        backend.failures = 0
        backend.ejections = 0

    def failed(self, backend: Backend, now: float, *, refused: bool = False) -> bool:
        """A 5xx answer or failed exchange; ``refused`` when no connection could be made.

        Returns True when the backend was ejected. The last routable backend is never ejected.
        """
        backend.failures += 1
        if not refused and backend.failures < self.policy.failures:
            return False
        if backend.ejected(now) or not backend.spec.routable:
            return False
        others = [b for b in self.routable(now) if b is not backend]
        if not others:
            return False
        backend.ejections += 1
        backend.ejections_total += 1
        backend.failures = 0
        backend.ejected_until = now + self.policy.duration(backend.ejections)
        self._dirty = True
        return True

    def reset_ejections(self) -> None:
        """Bring every ejected backend back (a reload)."""
        for backend in self.backends.values():
            backend.ejected_until = 0.0
            backend.ejections = 0
            backend.failures = 0
        self._dirty = True


def _rendezvous_score(key: bytes, backend: Backend) -> float:
    """``weight / -ln(u)`` for a uniform ``u`` in (0, 1) drawn from the key and the node's name: the largest score
    wins with a probability proportional to the weight."""
    digest = hashlib.blake2b(key + b"\0" + backend.spec.name.encode(), digest_size=8).digest()
    uniform = ((int.from_bytes(digest, "big") >> 12) + 1) / (2**52 + 2)  # 52 bits: exact in a float, never 0 or 1
    return backend.spec.weight / -math.log(uniform)


def _least_active(candidates: list[Backend], turn: int) -> Backend:
    """The backend with the fewest requests in flight; ties go round, starting at ``turn``."""
    count = len(candidates)
    start = turn % count
    best = candidates[start]
    fewest = best.active
    for offset in range(1, count):
        backend = candidates[(start + offset) % count]
        if backend.active < fewest:
            best, fewest = backend, backend.active
    return best

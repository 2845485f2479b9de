"""Where to write and where to read: the topology a MySQLReplication's status publishes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client


@dataclass(frozen=True)
class Endpoint:
    """One member an application may connect to."""

    name: str
    host: str
    port: int
    lag_seconds: int | None = None


@dataclass(frozen=True)
class Topology:
    """The current primary and the replicas fit for reads."""

    primary: Endpoint | None
    replicas: tuple[Endpoint, ...] = ()


def topology_from(replication: dict[str, Any], max_lag_seconds: int) -> Topology:
    """Read the topology out of a MySQLReplication object (spec for addresses, status for roles)."""
    members = {m["name"]: m for m in (replication.get("spec") or {}).get("members", [])}
    status = replication.get("status") or {}

    def endpoint(name: str, lag: int | None = None) -> Endpoint | None:
        member = members.get(name)
        return Endpoint(name, member["host"], int(member.get("port", 3306)), lag) if member else None

    primary = endpoint(status["currentPrimary"]) if status.get("currentPrimary") else None
    replicas = []
    for observed in status.get("members", []):
        lag = observed.get("lagSeconds")
        if (
            observed.get("role") == "Replica"
            and observed.get("reachable")
            and observed.get("ioRunning")
            and observed.get("sqlRunning")
            and lag is not None
            and lag <= max_lag_seconds
        ):
            found = endpoint(observed["name"], lag)
            if found is not None:
                replicas.append(found)
    return Topology(primary, tuple(replicas))


class KubernetesTopology:
    """The topology of one MySQLReplication, re-read at most every ``refresh`` seconds (thread-safe)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        *,
        max_lag_seconds: int = 30,
        refresh: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._where = (namespace, name)
        self._max_lag = max_lag_seconds
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Topology] | None = None

    def current(self, *, fresh: bool = False) -> Topology:
        with self._lock:
            if fresh or self._cached is None or self._clock() - self._cached[0] >= self._refresh:
                namespace, name = self._where
                obj = cast(
                    dict[str, Any],
                    self._custom.get_namespaced_custom_object(
                        "ha.whm.io", "v1alpha1", namespace, "mysqlreplications", name
                    ),
                )
                self._cached = (self._clock(), topology_from(obj, self._max_lag))
            return self._cached[1]

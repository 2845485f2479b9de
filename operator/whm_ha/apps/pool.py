"""A read/write-splitting connection pool for applications.

Writes go to the current primary; reads are spread over the replicas within the lag limit, falling back
to the primary. The topology comes from the MySQLReplication status, so the pool follows a promotion
without a restart. Pooled connections are bounded per member, validated when taken, and dropped when their
member changes role; a statement still running on a primary that was demoted is interrupted (its client gets
an error at once instead of waiting its read timeout on a member that may never answer or acknowledge). A
watcher thread re-reads the topology every ``watch`` seconds for that. A writer connection is checked to be on a
writable server before it is handed out, and
an account that fencing does not bind is refused: on MariaDB one read_only lets write (SUPER, READ ONLY ADMIN,
ALL PRIVILEGES), so no write reaches a fenced member even when a promotion fences it between the check and the
write; on MySQL one offline_mode does not disconnect (SUPER, CONNECTION_ADMIN, ALL PRIVILEGES), so no commit
waiting for an acknowledgement on a member being fenced can be reported to it as done.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pymysql

from ..mysql.dialect import fencing_bypass
from .topology import Endpoint, Topology


class TopologySource(Protocol):
    def current(self, *, fresh: bool = False) -> Topology: ...


class PoolError(RuntimeError):
    """No member could serve the request in time."""


@dataclass
class _MemberPool:
    """Idle connections to one member, and how many are lent out."""

    endpoint: Endpoint
    idle: list[pymysql.Connection[Any]] = field(default_factory=list)
    lent: int = 0
    busy: set[pymysql.Connection[Any]] = field(default_factory=set)
    """The lent connections."""
    generation: int = 0


class ReadWritePool:
    """Thread-safe; use ``with pool.writer() as conn`` and ``with pool.reader() as conn``."""

    def __init__(
        self,
        topology: TopologySource,
        *,
        user: str,
        password: str,
        database: str | None = None,
        max_per_member: int = 10,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        watch: float = 1.0,
    ) -> None:
        self._topology = topology
        self._credentials = (user, password)
        self._database = database
        self._max = max_per_member
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        self._members: dict[tuple[str, int], _MemberPool] = {}
        self._roles: dict[tuple[str, int], str] = {}
        self._lock = threading.Condition()
        self._round_robin = itertools.count()
        self._account_checked = False
        self._closed = threading.Event()
        if watch > 0:
            threading.Thread(target=self._watch, args=(watch,), name="pool-topology", daemon=True).start()

    def _watch(self, interval: float) -> None:
        while not self._closed.wait(interval):
            with contextlib.suppress(Exception):  # the topology source failed: the next round tries again
                self._observe(self._topology.current())

    # -- topology --------------------------------------------------------------------------------

    def _observe(self, topology: Topology) -> None:
        """Drop the idle connections of members whose role changed; lent ones are closed on return."""
        roles = {}
        if topology.primary is not None:
            roles[(topology.primary.host, topology.primary.port)] = "primary"
        for replica in topology.replicas:
            roles[(replica.host, replica.port)] = "replica"
        with self._lock:
            for key, member in self._members.items():
                if self._roles.get(key) != roles.get(key):
                    member.generation += 1
                    for conn in member.idle:
                        conn.close()
                    member.idle.clear()
                    if self._roles.get(key) == "primary":
                        for conn in member.busy:
                            _interrupt(conn)
            self._roles = roles

    # -- connections -----------------------------------------------------------------------------

    def _connect(self, endpoint: Endpoint) -> pymysql.Connection[Any]:
        user, password = self._credentials
        return pymysql.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=user,
            password=password,
            database=self._database,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            read_timeout=30,
            write_timeout=30,
            charset="utf8mb4",
        )

    def _take(self, endpoint: Endpoint) -> tuple[_MemberPool, pymysql.Connection[Any], int]:
        key = (endpoint.host, endpoint.port)
        deadline = time.monotonic() + self._acquire_timeout
        with self._lock:
            member = self._members.setdefault(key, _MemberPool(endpoint))
            while not member.idle and member.lent >= self._max:
                if not self._lock.wait(deadline - time.monotonic()):
                    raise PoolError(f"no free connection to {endpoint.name} within {self._acquire_timeout:g}s")
            conn = member.idle.pop() if member.idle else None
            if conn is not None:
                member.busy.add(conn)  # from here on a demotion interrupts it, the ping included
            member.lent += 1
            generation = member.generation
        try:
            if conn is None:
                conn = self._connect(endpoint)
                with self._lock:
                    member.busy.add(conn)
            else:
                conn.ping(reconnect=False)
        except pymysql.MySQLError:
            if conn is not None:
                conn.close()
            self._give_back(member, None, generation)
            raise
        return member, conn, generation

    def _give_back(self, member: _MemberPool, conn: pymysql.Connection[Any] | None, generation: int) -> None:
        with self._lock:
            member.lent -= 1
            member.busy = {c for c in member.busy if c is not conn and c.open}
            if conn is not None and conn.open and generation == member.generation:
                member.idle.append(conn)
            elif conn is not None:
                conn.close()
            self._lock.notify()

    @contextmanager
    def _hold(
        self, member: _MemberPool, conn: pymysql.Connection[Any], generation: int
    ) -> Iterator[pymysql.Connection[Any]]:
        """Lend a taken connection; a connection that failed is closed rather than pooled again."""
        healthy = True
        try:
            yield conn
        except pymysql.OperationalError:
            healthy = False
            raise
        finally:
            if not healthy:
                conn.close()
            self._give_back(member, conn if healthy else None, generation)

    def _try_take(self, endpoint: Endpoint) -> tuple[_MemberPool, pymysql.Connection[Any], int] | None:
        try:
            return self._take(endpoint)
        except pymysql.OperationalError:
            return None

    def _check_account(self, conn: pymysql.Connection[Any]) -> None:
        """Once: refuse an account that fencing does not bind (PoolError; `fencing_bypass`)."""
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            cur.execute("SHOW GRANTS FOR CURRENT_USER()")
            grants = [str(row[0]) for row in cur.fetchall()]
        bypass = fencing_bypass(version, grants)
        if bypass is not None:
            raise PoolError(
                f"the account {self._credentials[0]} holds {bypass}; use the operator's application account"
                " (Secret <replication>-app)"
            )
        self._account_checked = True

    def _writable_primary(self, topology: Topology) -> tuple[_MemberPool, pymysql.Connection[Any], int] | None:
        """A taken connection to the primary, if it answers and is writable."""
        if topology.primary is None:
            return None
        taken = self._try_take(topology.primary)
        if taken is None:
            return None
        member, conn, generation = taken
        try:
            if not self._account_checked:
                self._check_account(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT @@global.read_only")
                row = cur.fetchone()
        except pymysql.OperationalError:
            conn.close()
            self._give_back(member, None, generation)
            return None
        except (PoolError, pymysql.MySQLError):
            self._give_back(member, conn, generation)
            raise
        if not row or int(row[0]) != 0:
            self._give_back(member, conn, generation)
            return None
        return taken

    @contextmanager
    def writer(self) -> Iterator[pymysql.Connection[Any]]:
        """A connection to the current primary, checked to be writable."""
        deadline = time.monotonic() + self._acquire_timeout
        fresh = False
        while True:
            topology = self._topology.current(fresh=fresh)
            self._observe(topology)
            taken = self._writable_primary(topology)
            if taken is not None:
                with self._hold(*taken) as conn:
                    yield conn
                return
            if time.monotonic() > deadline:
                raise PoolError("no writable primary within the acquire timeout")
            fresh = True
            time.sleep(0.1)  # a promotion is under way: look again shortly

    @contextmanager
    def reader(self) -> Iterator[pymysql.Connection[Any]]:
        """A connection to a replica within the lag limit, round-robin; the primary when there is none."""
        topology = self._topology.current()
        self._observe(topology)
        replicas = list(topology.replicas)
        if replicas:
            start = next(self._round_robin) % len(replicas)
            replicas = replicas[start:] + replicas[:start]
        for endpoint in replicas:
            taken = self._try_take(endpoint)
            if taken is not None:
                with self._hold(*taken) as conn:
                    yield conn
                return
        with self.writer() as conn:
            yield conn

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for member in self._members.values():
                for conn in member.idle:
                    conn.close()
                member.idle.clear()


def _interrupt(conn: pymysql.Connection[Any]) -> None:
    """End the statement running on ``conn`` from another thread: its socket is shut down, so the blocked read
    returns and the driver raises a lost-connection error (pymysql has no public way to cancel)."""
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

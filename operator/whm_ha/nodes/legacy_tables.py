"""The legacy tables the node controller fills: whm_cluster_nodes, ha_health_checks, ha_failover_events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymysql
import pymysql.cursors

from ..db.cluster_database import DatabaseUnavailable, application_credentials, primary_address
from ..db.dsn import DSN
from ..db.migrate import MigrationError, migrate
from ..kube.client import ApiError, KubeClient
from ..workers import WorkerBudget

log = logging.getLogger(__name__)
FIRST_RETRY, LAST_RETRY = 1.0, 30.0
"""Seconds to wait after a failure before trying the same primary again: doubling from the first to the last
while failures go on (a new primary is tried at once)."""
MAX_PENDING_ROWS = 10_000
"""Health rows kept for the next batch while the database cannot take them; the oldest go first."""
AUTH_ERRNOS = frozenset({1045})
MAX_PENDING_STATEMENTS = 1_000
"""Registry and failover writes kept for the next round while the database cannot take them."""
READ_ONLY_ERRNOS = frozenset({1290, 1836})
"""The server refused a write because it is read-only (1836: a replica in MariaDB's read-only replication mode)."""

Replication = Callable[[], Awaitable[dict[str, Any]]]
"""The cluster's MySQLReplication as last seen: from the operator's watch, so a promotion is seen at once."""


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


class NotPrimary(RuntimeError):
    """The member the status names is read-only: a promotion is under way."""


@dataclass
class LegacyTables:
    """Writes for one cluster; database trouble is logged, never fatal to the controller.

    Every batch goes to the primary that the MySQLReplication's status names at that moment, as the application
    account (which read-only members refuse), after checking in the same session that the member is writable.
    A promotion fences the old primary before the new one opens, so a batch can never land on a former primary:
    it is refused there and written to the new primary once the status names it."""

    kube: KubeClient
    namespace: str
    cluster: str
    replication: str
    schema: str
    replication_view: Replication
    _dsn: DSN | None = None
    _failed: tuple[float, tuple[str, int]] | None = None
    """When the next attempt may be made, after a failure on which primary."""
    _retry: float = FIRST_RETRY
    _last_problem: str = ""
    _migrated: set[tuple[str, int, str]] = field(default_factory=set)
    _credentials: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The application account's (username, password) by Secret name, read once, again after a refused login."""
    workers: WorkerBudget = field(init=False)
    """One thread: batches go one at a time."""
    _health_rows: list[tuple[object, ...]] = field(default_factory=list)
    _pending: list[tuple[str, list[tuple[object, ...]]]] = field(default_factory=list)
    """Registry and failover writes not written yet, in order."""

    def __post_init__(self) -> None:
        self.workers = WorkerBudget(f"legacy-{self.namespace}/{self.cluster}", 1)

    def _problem(self, problem: str) -> None:
        """Log a problem once, not at every write; back off before trying the same primary again."""
        if self._dsn is not None:
            self._failed = (asyncio.get_running_loop().time() + self._retry, (self._dsn.host, self._dsn.port))
            self._retry = min(self._retry * 2, LAST_RETRY)
        self._dsn = None
        if problem != self._last_problem:
            log.warning("legacy tables of %s/%s unavailable: %s", self.namespace, self.cluster, problem)
            self._last_problem = problem

    async def _target(self) -> DSN | None:
        """The current primary, as the status names it now; None while backing off from a failure on it."""
        try:
            where = primary_address(await self.replication_view(), self.schema)
            if where.secret not in self._credentials:
                self._credentials[where.secret] = await application_credentials(self.kube, self.namespace, where.secret)
        except (ApiError, DatabaseUnavailable) as exc:
            self._problem(str(exc))
            return None
        if self._failed is not None:
            not_before, failed_on = self._failed
            if failed_on != (where.host, where.port):
                self._failed, self._retry = None, FIRST_RETRY
            elif asyncio.get_running_loop().time() < not_before:
                return None
        username, password = self._credentials[where.secret]
        dsn = DSN(where.host, where.port, username, self.schema, password)
        if (where.host, where.port, username) not in self._migrated:
            self._dsn = dsn
            try:
                await self.workers.run(migrate, dsn)
            except MigrationError as exc:
                self._failure(exc)
                return None
            self._migrated.add((where.host, where.port, username))
        self._dsn = dsn
        return dsn

    def _on_primary(self, dsn: DSN, read_timeout: float) -> pymysql.Connection[pymysql.cursors.Cursor]:
        """A session to ``dsn`` checked to be writable (blocking); raises NotPrimary or a driver error."""
        conn = dsn.connect(connect_timeout=2, read_timeout=read_timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.read_only")
                row = cur.fetchone()
        except BaseException:
            conn.close()
            raise
        if not row or int(row[0]) != 0:
            conn.close()
            raise NotPrimary(f"{dsn.host}:{dsn.port} is read-only: a promotion is under way")
        return conn

    def _failure(self, exc: Exception) -> None:
        errno = exc.args[0] if isinstance(exc, pymysql.MySQLError) and exc.args else None
        if isinstance(exc, MigrationError) and isinstance(exc.__cause__, pymysql.MySQLError) and exc.__cause__.args:
            errno = exc.__cause__.args[0]
        if errno in AUTH_ERRNOS:
            self._credentials.clear()  # the Secret may have changed: read it again
        if errno in READ_ONLY_ERRNOS:
            self._problem(f"{self._dsn}: read-only now: a promotion is under way")
        else:
            self._problem(str(exc))

    async def _execute(self, sql: str, rows: list[tuple[object, ...]]) -> bool:
        if not rows:
            return True
        dsn = await self._target()
        if dsn is None:
            return False

        def run() -> None:
            conn = self._on_primary(dsn, read_timeout=5)
            try:
                with conn.cursor() as cur:
                    cur.executemany(sql, rows)
            finally:
                conn.close()

        try:
            await self.workers.run(run)
        except (pymysql.MySQLError, NotPrimary) as exc:
            self._failure(exc)
            return False
        self._last_problem, self._failed, self._retry = "", None, FIRST_RETRY
        return True

    async def delete_expired(self) -> tuple[int, int] | None:
        """Delete expired sessions and cache entries (besides the SQL events); (sessions, cache) deleted."""
        dsn = await self._target()
        if dsn is None:
            return None

        def run() -> tuple[int, int]:
            conn = self._on_primary(dsn, read_timeout=30)
            try:
                with conn.cursor() as cur:
                    sessions = cur.execute("DELETE FROM ha_sessions WHERE expires_at < NOW(3)")
                    cache = cur.execute("DELETE FROM ha_cache WHERE expires_at IS NOT NULL AND expires_at < NOW(3)")
                return int(sessions), int(cache)
            finally:
                conn.close()

        try:
            return await self.workers.run(run)
        except (pymysql.MySQLError, NotPrimary) as exc:
            self._failure(exc)
            return None

    def add_health_check(self, node: str, healthy: bool, latency_ms: float | None, message: str, at: float) -> None:
        self._health_rows.append(
            (self.namespace, self.cluster, node, int(healthy), latency_ms, message[:1024], _dt(at))
        )

    async def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        """Write now, in order after anything still pending; kept (bounded) for the next round when it cannot be."""
        self._pending.append((sql, rows))
        del self._pending[:-MAX_PENDING_STATEMENTS]
        await self._flush_pending()

    async def _flush_pending(self) -> bool:
        while self._pending:
            sql, rows = self._pending[0]
            if not await self._execute(sql, rows):
                return False
            self._pending.pop(0)
        return True

    async def flush(self) -> None:
        """Each probe round: what earlier rounds could not write, then the collected probe results in one batch
        (kept, the newest MAX_PENDING_ROWS, when they cannot be written)."""
        rows = list(self._health_rows)
        if await self._flush_pending() and await self._execute(
            "INSERT INTO ha_health_checks (cluster_namespace, cluster_name, node_name, healthy, latency_ms, message,"
            " checked_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        ):
            del self._health_rows[: len(rows)]  # rows added meanwhile stay for the next batch
        else:
            del self._health_rows[:-MAX_PENDING_ROWS]

    async def upsert_nodes(self, nodes: list[dict[str, object]]) -> None:
        """The node registry, one row per WHMNode."""
        rows: list[tuple[object, ...]] = [
            (
                self.namespace,
                self.cluster,
                n["name"],
                n["nodeId"],
                n["hostname"],
                n["address"],
                n["port"],
                n["priority"],
                n["weight"],
                n["role"],
                n["status"],
                _dt(float(n["checkedAt"])) if n.get("checkedAt") else None,  # type: ignore[arg-type]
            )
            for n in nodes
        ]
        await self._write(
            "INSERT INTO whm_cluster_nodes (cluster_namespace, cluster_name, node_name, node_id, hostname, ip_address,"
            " port, priority, weight, role, status, last_health_check) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE node_id = VALUES(node_id),"
            " hostname = VALUES(hostname), ip_address = VALUES(ip_address), port = VALUES(port),"
            " priority = VALUES(priority), weight = VALUES(weight), role = VALUES(role), status = VALUES(status),"
            " last_health_check = VALUES(last_health_check)",
            rows,
        )

    async def delete_nodes(self, names: list[str]) -> None:
        await self._write(
            "DELETE FROM whm_cluster_nodes WHERE cluster_namespace = %s AND cluster_name = %s AND node_name = %s",
            [(self.namespace, self.cluster, name) for name in names],
        )

    async def record_failover(
        self, *, key: str, from_node: str, to_node: str, kind: str, reason: str, duration_ms: int, at: float
    ) -> None:
        """One row per failover; key makes a retried write idempotent."""
        event_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        await self._write(
            "INSERT IGNORE INTO ha_failover_events (event_uid, cluster_namespace, cluster_name, scope, from_node,"
            " to_node, failover_type, reason, duration_ms, success, occurred_at)"
            " VALUES (%s, %s, %s, 'node', %s, %s, %s, %s, %s, 1, %s)",
            [(event_uid, self.namespace, self.cluster, from_node, to_node, kind, reason[:4096], duration_ms, _dt(at))],
        )

"""The legacy tables the node controller fills: whm_cluster_nodes, ha_health_checks, ha_failover_events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pymysql

from ..db.cluster_database import DatabaseUnavailable, primary_dsn
from ..db.dsn import DSN
from ..db.migrate import MigrationError, migrate
from ..kube.client import ApiError, KubeClient

log = logging.getLogger(__name__)
RESOLVE_EVERY = 30.0
RETRY_AFTER = 5.0


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


@dataclass
class LegacyTables:
    """Writes for one cluster; database trouble is logged, never fatal to the controller."""

    kube: KubeClient
    namespace: str
    cluster: str
    replication: str
    schema: str
    _dsn: DSN | None = None
    _resolved_at: float = 0.0
    _failed_at: float | None = None
    _last_problem: str = ""
    _health_rows: list[tuple[object, ...]] = field(default_factory=list)

    def _problem(self, problem: str) -> None:
        """Log a problem once, not at every write; back off before trying again."""
        self._dsn, self._failed_at = None, asyncio.get_running_loop().time()
        if problem != self._last_problem:
            log.warning("legacy tables of %s/%s unavailable: %s", self.namespace, self.cluster, problem)
            self._last_problem = problem

    async def _target(self) -> DSN | None:
        now = asyncio.get_running_loop().time()
        if self._failed_at is not None and now - self._failed_at < RETRY_AFTER:
            return None
        if self._dsn is None or now - self._resolved_at > RESOLVE_EVERY:
            try:
                dsn = await primary_dsn(self.kube, self.namespace, self.replication, self.schema)
                if dsn != self._dsn:
                    await asyncio.to_thread(migrate, dsn)
            except (ApiError, DatabaseUnavailable, MigrationError) as exc:
                self._problem(str(exc))
                return None
            self._dsn, self._resolved_at, self._failed_at, self._last_problem = dsn, now, None, ""
        return self._dsn

    async def _execute(self, sql: str, rows: list[tuple[object, ...]]) -> bool:
        dsn = await self._target()
        if dsn is None or not rows:
            return False

        def run() -> None:
            conn = dsn.connect(connect_timeout=2, read_timeout=5)
            try:
                with conn.cursor() as cur:
                    cur.executemany(sql, rows)
            finally:
                conn.close()

        try:
            await asyncio.to_thread(run)
        except pymysql.MySQLError as exc:
            self._problem(str(exc))
            return False
        return True

    async def delete_expired(self) -> tuple[int, int] | None:
        """Delete expired sessions and cache entries (besides the SQL events); (sessions, cache) deleted."""
        dsn = await self._target()
        if dsn is None:
            return None

        def run() -> tuple[int, int]:
            conn = dsn.connect(connect_timeout=2, read_timeout=30)
            try:
                with conn.cursor() as cur:
                    sessions = cur.execute("DELETE FROM ha_sessions WHERE expires_at < NOW(3)")
                    cache = cur.execute("DELETE FROM ha_cache WHERE expires_at IS NOT NULL AND expires_at < NOW(3)")
                return int(sessions), int(cache)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except pymysql.MySQLError as exc:
            self._problem(str(exc))
            return None

    def add_health_check(self, node: str, healthy: bool, latency_ms: float | None, message: str, at: float) -> None:
        self._health_rows.append(
            (self.namespace, self.cluster, node, int(healthy), latency_ms, message[:1024], _dt(at))
        )

    async def flush_health_checks(self) -> None:
        """Insert the collected probe results in one batch."""
        rows, self._health_rows = self._health_rows, []
        await self._execute(
            "INSERT INTO ha_health_checks (cluster_namespace, cluster_name, node_name, healthy, latency_ms, message,"
            " checked_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )

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
        await self._execute(
            "INSERT INTO whm_cluster_nodes (cluster_namespace, cluster_name, node_name, node_id, hostname, ip_address,"
            " port, priority, weight, role, status, last_health_check) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE node_id = VALUES(node_id),"
            " hostname = VALUES(hostname), ip_address = VALUES(ip_address), port = VALUES(port),"
            " priority = VALUES(priority), weight = VALUES(weight), role = VALUES(role), status = VALUES(status),"
            " last_health_check = VALUES(last_health_check)",
            rows,
        )

    async def delete_nodes(self, names: list[str]) -> None:
        await self._execute(
            "DELETE FROM whm_cluster_nodes WHERE cluster_namespace = %s AND cluster_name = %s AND node_name = %s",
            [(self.namespace, self.cluster, name) for name in names],
        )

    async def record_failover(
        self, *, key: str, from_node: str, to_node: str, kind: str, reason: str, duration_ms: int, at: float
    ) -> None:
        """One row per failover; key makes a retried write idempotent."""
        event_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        await self._execute(
            "INSERT IGNORE INTO ha_failover_events (event_uid, cluster_namespace, cluster_name, scope, from_node,"
            " to_node, failover_type, reason, duration_ms, success, occurred_at)"
            " VALUES (%s, %s, %s, 'node', %s, %s, %s, %s, %s, 1, %s)",
            [(event_uid, self.namespace, self.cluster, from_node, to_node, kind, reason[:4096], duration_ms, _dt(at))],
        )

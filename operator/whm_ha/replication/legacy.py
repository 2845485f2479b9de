"""The legacy ``ha_failover_events`` row of a promotion (scope 'database'), written into the new primary."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from ..db.dsn import DSN
from ..db.migrate import migrate

SCHEMA = "whm_ha"
"""The database on the primary that holds the legacy tables."""


@dataclass(frozen=True)
class PromotionRow:
    """One promotion; ``key`` makes a retried insert a no-op."""

    key: str
    namespace: str
    replication: str
    from_member: str
    to_member: str
    kind: str
    reason: str
    duration_ms: int
    at: datetime


def record_promotion(dsn: DSN, row: PromotionRow) -> None:
    """Apply the legacy schema if needed, then insert the row once. Blocking; raises MigrationError or pymysql
    errors."""
    migrate(dsn)
    conn = dsn.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT IGNORE INTO ha_failover_events (event_uid, cluster_namespace, cluster_name, scope, from_node,"
                " to_node, failover_type, reason, duration_ms, success, occurred_at)"
                " VALUES (%s, %s, %s, 'database', %s, %s, %s, %s, %s, 1, %s)",
                (
                    str(uuid.uuid5(uuid.NAMESPACE_URL, row.key)),
                    row.namespace,
                    row.replication,
                    row.from_member,
                    row.to_member,
                    row.kind,
                    row.reason[:4096],
                    row.duration_ms,
                    row.at.astimezone(UTC).replace(tzinfo=None),
                ),
            )
    finally:
        conn.close()

"""Prometheus metrics of the replication controller, on the default registry the node metrics use."""

from prometheus_client import Counter, Gauge

LABELS = ["namespace", "replication"]

REPLICA_LAG = Gauge("whm_ha_mysql_replica_lag_seconds", "Seconds a replica is behind its primary.", [*LABELS, "member"])
REPLICA_THREAD = Gauge(
    "whm_ha_mysql_replica_thread_running", "1 when the replica thread (io or sql) runs.", [*LABELS, "member", "thread"]
)
INSPECTIONS = Counter("whm_ha_mysql_inspections_total", "Rounds of inspection of every member.", LABELS)
MEMBER_UP = Gauge("whm_ha_mysql_member_up", "1 when the operator could inspect the member.", [*LABELS, "member"])
PROMOTIONS = Counter("whm_ha_mysql_promotions_total", "Promotions of a new primary by type.", [*LABELS, "type"])
SINCE_PROMOTION = Gauge(
    "whm_ha_mysql_seconds_since_last_promotion", "Seconds since the last promotion finished.", LABELS
)
CONDITION = Gauge(
    "whm_ha_mysql_condition",
    "1 when the MySQLReplication's condition (Ready, Degraded, ReplicationBroken, LagHigh, ErrantTransactions, "
    "PrimaryUnreachable) is True, 0 when False; only from the replica that decides.",
    [*LABELS, "condition"],
)

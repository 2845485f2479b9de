"""Prometheus metrics of the node controller."""

from prometheus_client import Counter, Gauge, Histogram

PROBES = Counter("whm_ha_probes_total", "Node health probes by result.", ["namespace", "cluster", "result"])
PROBE_LATENCY = Histogram(
    "whm_ha_probe_latency_seconds",
    "Duration of node health probes.",
    ["namespace", "cluster"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FAILOVERS = Counter("whm_ha_failovers_total", "Changes of primary node by type.", ["namespace", "cluster", "type"])
FAILOVER_TYPES = ("automatic", "failback", "manual")
HEALTHY_NODES = Gauge("whm_ha_healthy_nodes", "Healthy nodes per cluster.", ["namespace", "cluster"])
PRIMARY = Gauge(
    "whm_ha_primary_node", "1 for the current primary node of each cluster.", ["namespace", "cluster", "node"]
)
EXPIRED_DELETED = Counter(
    "whm_ha_expired_rows_deleted_total",
    "Expired rows the operator deleted from the legacy tables.",
    ["namespace", "cluster", "table"],
)

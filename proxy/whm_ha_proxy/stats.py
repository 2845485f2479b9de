"""Per-node counters: kept by each worker, summed by the parent, shown as JSON and Prometheus metrics."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the request duration histogram; a last bucket counts the rest."""
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class NodeStats:
    """Counters of one node in one worker (``active`` is read from the balancer when snapshotting)."""

    __slots__ = ("buckets", "ejections", "errors", "latency_sum", "requests", "responses", "retries", "tls_failures")

    def __init__(self) -> None:
        self.requests = 0
        self.responses = [0, 0, 0, 0, 0]
        self.errors = 0
        self.retries = 0
        self.ejections = 0
        self.tls_failures = 0
        """Connects whose TLS handshake failed (a certificate refused, or no TLS spoken)."""
        self.latency_sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def answered(self, status: int, seconds: float) -> None:
        """A response from the node went to the client; ``seconds`` from pick to last byte."""
        self.responses[min(max(status // 100, 1), 5) - 1] += 1
        self.latency_sum += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def snapshot(self, active: int, tls_handshakes: int = 0) -> dict[str, Any]:
        return {
            "active": active,
            "requests": self.requests,
            "responses": dict(zip(CLASSES, self.responses, strict=True)),
            "errors": self.errors,
            "retries": self.retries,
            "ejections": self.ejections,
            "tls_handshakes": tls_handshakes,
            "tls_failures": self.tls_failures,
            "latency": {"count": sum(self.buckets), "sum": self.latency_sum, "buckets": list(self.buckets)},
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum worker snapshots (``{"nodes": {name: node snapshot}, "unrouted": n, "passthrough": {counter: n}}``)
    into one."""
    nodes: dict[str, dict[str, Any]] = {}
    unrouted = 0
    passthrough: dict[str, int] = {}
    for snapshot in snapshots:
        unrouted += snapshot["unrouted"]
        for key, count in snapshot.get("passthrough", {}).items():
            passthrough[key] = passthrough.get(key, 0) + count
        for name, node in snapshot["nodes"].items():
            total = nodes.get(name)
            if total is None:
                nodes[name] = {
                    **node,
                    "responses": dict(node["responses"]),
                    "latency": {**node["latency"], "buckets": list(node["latency"]["buckets"])},
                }
                continue
            for key in ("active", "requests", "errors", "retries", "ejections", "tls_handshakes", "tls_failures"):
                total[key] += node[key]
            for cls, count in node["responses"].items():
                total["responses"][cls] += count
            latency = total["latency"]
            latency["count"] += node["latency"]["count"]
            latency["sum"] += node["latency"]["sum"]
            latency["buckets"] = [a + b for a, b in zip(latency["buckets"], node["latency"]["buckets"], strict=True)]
    return {"nodes": dict(sorted(nodes.items())), "unrouted": unrouted, "passthrough": passthrough}


class StatsCollector(Collector):
    """Prometheus metrics from a merged snapshot, produced on each scrape by ``source()``."""

    def __init__(self, source: Any, labels: dict[str, str]) -> None:
        self._source = source
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Any] = self._source()
        keys = [*self._labels, "node"]
        base = list(self._labels.values())
        active = GaugeMetricFamily("whm_ha_proxy_active_requests", "Requests in flight per node.", labels=keys)
        requests = CounterMetricFamily("whm_ha_proxy_requests", "Requests sent to each node.", labels=keys)
        responses = CounterMetricFamily(
            "whm_ha_proxy_responses", "Responses from each node by status class.", labels=[*keys, "code"]
        )
        errors = CounterMetricFamily("whm_ha_proxy_errors", "Failed exchanges with each node.", labels=keys)
        retries = CounterMetricFamily("whm_ha_proxy_retries", "Requests retried away from each node.", labels=keys)
        ejections = CounterMetricFamily("whm_ha_proxy_ejections", "Passive-health ejections.", labels=keys)
        handshakes = CounterMetricFamily(
            "whm_ha_proxy_tls_handshakes", "TLS connections made to each node (nodeTLS).", labels=keys
        )
        tls_failures = CounterMetricFamily(
            "whm_ha_proxy_tls_failures", "Connects to each node whose TLS handshake failed.", labels=keys
        )
        latency = HistogramMetricFamily(
            "whm_ha_proxy_request_duration_seconds", "Time from choosing a node to the last byte.", labels=keys
        )
        for name, node in merged["nodes"].items():
            values = [*base, name]
            active.add_metric(values, node["active"])
            requests.add_metric(values, node["requests"])
            for cls, count in node["responses"].items():
                responses.add_metric([*values, cls], count)
            errors.add_metric(values, node["errors"])
            retries.add_metric(values, node["retries"])
            ejections.add_metric(values, node["ejections"])
            handshakes.add_metric(values, node["tls_handshakes"])
            tls_failures.add_metric(values, node["tls_failures"])
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), node["latency"]["buckets"], strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric(values, buckets, node["latency"]["sum"])
        unrouted = CounterMetricFamily(
            "whm_ha_proxy_unrouted", "Requests answered 503 because no node could serve.", labels=list(self._labels)
        )
        unrouted.add_metric(base, merged["unrouted"])
        yield from (
            active,
            requests,
            responses,
            errors,
            retries,
            ejections,
            handshakes,
            tls_failures,
            latency,
            unrouted,
        )

"""Prometheus metrics of backups, on the default registry the operator's other metrics use."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

LABELS = ["namespace", "replication"]

BACKUPS = Counter("whm_ha_backups_total", "Backups finished, by result (completed or failed).", [*LABELS, "result"])
LAST_SUCCESS = Gauge(
    "whm_ha_backup_last_success_timestamp_seconds", "When the newest complete backup finished (Unix time).", LABELS
)
LAST_SIZE = Gauge("whm_ha_backup_last_size_bytes", "Bytes stored by the newest complete backup.", LABELS)
LAST_DURATION = Gauge(
    "whm_ha_backup_last_duration_seconds", "Seconds the last backup completed by this operator took.", LABELS
)
STALE = Gauge(
    "whm_ha_backup_stale",
    "1 when the replication's newest complete backup is older than spec.backup.maxAge (or none was taken within it).",
    LABELS,
)


def completed(namespace: str, replication: str, seconds: float) -> None:
    BACKUPS.labels(namespace, replication, "completed").inc()
    LAST_DURATION.labels(namespace, replication).set(seconds)


def failed(namespace: str, replication: str) -> None:
    BACKUPS.labels(namespace, replication, "failed").inc()


def newest(namespace: str, replication: str, finished: float | None, size: int | None, stale: bool) -> None:
    """What the scheduler found: the newest complete backup (if any) and whether it is too old. The counters are
    exported at 0 from the start, so that alerts see the first failure as an increase."""
    for result in ("completed", "failed"):
        BACKUPS.labels(namespace, replication, result)
    if finished is not None:
        LAST_SUCCESS.labels(namespace, replication).set(finished)
    if size is not None:
        LAST_SIZE.labels(namespace, replication).set(size)
    STALE.labels(namespace, replication).set(int(stale))


def forget(namespace: str, replication: str) -> None:
    """The replication is gone or has no backup settings any more."""
    for gauge in (LAST_SUCCESS, LAST_SIZE, LAST_DURATION, STALE):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, replication)

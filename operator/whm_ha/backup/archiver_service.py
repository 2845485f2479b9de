"""``whm-ha binlog-archive``: the binary log archiver of one MySQLReplication (the chart's archiver Deployment).

The archiver (`binlog_stream.BinlogArchiver`) runs in a thread of its own; this module's asyncio loop reads the
MySQLReplication every `POLL_SECONDS` and tells it the member to archive (``status.currentPrimary``, reached with
``spec.credentialsSecret``; none while ``spec.backup.archive.enabled`` is false), and reports what it does as
Prometheus metrics and in ``status.archive``: a merge patch of that key alone, which only this process writes (the
operator's own status patches name the keys they change, so they leave it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, start_http_server

from ..crd.backup import BackupStorageSpec
from ..crd.conditions import set_condition
from ..crd.mysqlreplication import MySQLReplicationSpec
from ..db.cluster_database import DatabaseUnavailable, secret_credentials
from ..kube.client import MYSQLREPLICATIONS, ApiError, KubeClient
from ..kube.config import KubeConfigError, endpoint
from ..mysql.dialect import dialect_for
from ..mysql.member import Credentials
from .binlog_stream import ArchiveReport, ArchiverSettings, BinlogArchiver
from .dump import Member
from .runner import Misconfigured, members_ca, store_access

log = logging.getLogger(__name__)
Obj = dict[str, Any]

POLL_SECONDS = 1.0
"""How often the MySQLReplication is read (a promotion is followed within it)."""
STATUS_SECONDS = 2.0
"""How often status.archive is written at most (at once when the state or the Lagging condition changes)."""
SECRET_SECONDS = 60.0

LABELS = ["namespace", "replication"]
LAG = Gauge("whm_ha_binlog_archive_lag_seconds", "Seconds the binary log archive is behind the primary.", LABELS)
STREAMING = Gauge("whm_ha_binlog_archive_streaming", "1 while the archiver streams the primary's binary logs.", LABELS)
SEGMENTS = Counter("whm_ha_binlog_archive_segments_total", "Segments of binary log uploaded to the store.", LABELS)
BYTES = Counter("whm_ha_binlog_archive_bytes_total", "Bytes of binary log uploaded to the store.", LABELS)
LAST_UPLOAD = Gauge(
    "whm_ha_binlog_archive_last_upload_timestamp_seconds", "When the newest segment was stored (Unix time).", LABELS
)


def archive_status(
    report: ArchiveReport, max_lag: float, previous: Obj | None, now: datetime, *, enabled: bool = True
) -> Obj:
    """The ``status.archive`` of a report: Lagging is True beyond ``max_lag`` seconds or while the archive cannot
    advance; its transition time stays while it holds (from ``previous``)."""
    state = report.state if enabled else "Disabled"
    if not enabled:
        lagging, reason, why = False, "Disabled", "the archive is disabled"
    elif state != "Streaming":
        lagging, reason, why = True, state, report.message or state
    elif report.lag_seconds > max_lag:
        lagging, reason, why = True, "LagHigh", f"{report.lag_seconds:.1f} s behind the primary (> {max_lag:g} s)"
    else:
        lagging, reason, why = False, "WithinBound", f"{report.lag_seconds:.1f} s behind the primary"
    conditions = set_condition(list((previous or {}).get("conditions") or []), "Lagging", lagging, reason, why)
    return {
        "state": state,
        "member": report.member,
        "lagSeconds": round(report.lag_seconds, 3),
        "archivedGtids": report.covered or None,
        "lastSegment": report.sequence,
        "lastUploadTime": _iso(report.last_upload),
        "message": report.message or None,
        "updatedAt": _iso(now),
        "conditions": conditions,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


@dataclass
class _Shared:
    """What the asyncio loop and the archiver's thread hand each other (plain assignments)."""

    primary: Member | None = None
    report: ArchiveReport | None = None
    counted: tuple[int, int] = (0, 0)


@dataclass
class ArchiverService:
    kube: KubeClient
    namespace: str
    name: str
    spool: Path
    shared: _Shared = field(default_factory=_Shared)
    secrets: tuple[float, tuple[str, str], tuple[str, str, str | None]] | None = None
    written: Obj | None = None
    written_at: float = 0.0

    async def storage(self) -> BackupStorageSpec:
        """The replication's storage, waited for (it may be set later)."""
        while True:
            obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)
            spec = MySQLReplicationSpec.model_validate(obj["spec"])
            if spec.backup is not None:
                return spec.backup.storage
            log.info("binlog archive: %s/%s has no spec.backup yet", self.namespace, self.name)
            await asyncio.sleep(POLL_SECONDS * 10)

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the archiver on the current primary and status.archive up to date, until ``stop``."""
        while not stop.is_set():
            try:
                obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)
                spec = MySQLReplicationSpec.model_validate(obj["spec"])
                enabled = spec.backup is not None and spec.backup.archive.enabled
                self.shared.primary = await self._primary(spec, obj) if enabled else None
                await self._record(obj, spec, enabled)
            except (ApiError, DatabaseUnavailable, Misconfigured, OSError) as exc:
                log.warning("binlog archive: %s/%s: %s", self.namespace, self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    async def _primary(self, spec: MySQLReplicationSpec, obj: Obj) -> Member | None:
        current = (obj.get("status") or {}).get("currentPrimary")
        member = next((m for m in spec.members if m.name == current), None)
        if member is None:
            return None
        username, password, ca = await self._secrets(spec)
        return Member(
            member.name,
            member.host,
            member.port,
            Credentials(username, password),
            dialect_for(spec.flavor),
            tls_ca=ca,
            verify_server_name=spec.tls.verify_server_name,
        )

    async def _secrets(self, spec: MySQLReplicationSpec) -> tuple[str, str, str | None]:
        """The admin account and the members' CA (``spec.tls``), read again after SECRET_SECONDS."""
        key = (spec.credentials_secret.name, spec.tls.model_dump_json())
        if self.secrets is not None and self.secrets[1] == key and time.monotonic() - self.secrets[0] < SECRET_SECONDS:
            return self.secrets[2]
        username, password = await secret_credentials(self.kube, self.namespace, spec.credentials_secret.name)
        value = (username, password, await members_ca(self.kube, self.namespace, spec))
        self.secrets = (time.monotonic(), key, value)
        return value

    async def _record(self, obj: Obj, spec: MySQLReplicationSpec, enabled: bool) -> None:
        report = self.shared.report
        if report is None:
            return
        labels = (self.namespace, self.name)
        LAG.labels(*labels).set(report.lag_seconds)
        STREAMING.labels(*labels).set(1 if report.state == "Streaming" and enabled else 0)
        segments, stored = self.shared.counted
        SEGMENTS.labels(*labels).inc(report.segments - segments)
        BYTES.labels(*labels).inc(report.bytes - stored)
        self.shared.counted = (report.segments, report.bytes)
        if report.last_upload is not None:
            LAST_UPLOAD.labels(*labels).set(report.last_upload.timestamp())
        max_lag = spec.backup.archive.max_lag_seconds if spec.backup is not None else 0
        previous = (obj.get("status") or {}).get("archive")
        status = archive_status(report, max_lag, previous, datetime.now(UTC), enabled=enabled)
        if not self._due(status):
            return
        await self.kube.patch(
            MYSQLREPLICATIONS, self.namespace, self.name, {"status": {"archive": status}}, subresource="status"
        )
        self.written, self.written_at = status, time.monotonic()

    def _due(self, status: Obj) -> bool:
        """A change of state or of the Lagging condition at once, anything else every STATUS_SECONDS."""
        if self.written is None or time.monotonic() - self.written_at >= STATUS_SECONDS:
            return True
        return _essentials(status) != _essentials(self.written)


def _essentials(status: Obj) -> tuple[Any, ...]:
    return (status["state"], status["member"], [(c["type"], c["status"]) for c in status["conditions"]])


async def serve(*, namespace: str, replication: str, metrics_port: int | None, spool: Path) -> int:
    try:
        kube = KubeClient(endpoint())
    except KubeConfigError as exc:
        print(f"whm-ha binlog-archive: {exc}", file=sys.stderr)
        return 1
    if metrics_port:
        start_http_server(metrics_port)
    service = ArchiverService(kube, namespace, replication, spool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        storage = await service.storage()
        access = await store_access(kube, namespace, storage)
    except (ApiError, Misconfigured) as exc:
        print(f"whm-ha binlog-archive: {namespace}/{replication}: {exc}", file=sys.stderr)
        await kube.close()
        return 1
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    halt = threading.Event()

    def report(value: ArchiveReport) -> None:
        service.shared.report = value

    with access.opened() as store:
        archiver = BinlogArchiver(store, lambda: service.shared.primary, ArchiverSettings(spool=spool), report)
        thread = threading.Thread(target=archiver.serve, args=(halt,), name="binlog-archiver", daemon=True)
        thread.start()
        log.info("binlog archive of %s/%s into %s", namespace, replication, store.describe())
        try:
            await service.follow(stop)
        finally:
            halt.set()
            await asyncio.to_thread(thread.join, 30)
            await kube.close()
    return 0


def run(**options: Any) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(**options))

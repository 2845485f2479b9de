"""The loop of one MySQLReplication: inspect the members, decide (`plan`), act (`procedures`, in worker threads),
record the outcome in status, Events, logs, metrics, Services and the legacy table.

The primary is ``status.currentPrimary`` (``spec.primary`` until the bootstrap primary is recorded). A promotion is
first recorded in ``status.promotion``, with the resourceVersion it was decided on, before any server is touched:
two operator processes can never start two, and a restarted operator finishes the recorded one instead of
deciding anew (step ``Preparing`` may still be abandoned, ``Promoting`` is only ever finished). The old primary is
fenced before any promotion and every other member is fenced before it joins, so no two members accept writes.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..backup.recovery import recover
from ..crd.annotations import FORCE, PROMOTE, REQUEST_ID, pending_request
from ..crd.common import HISTORY_LIMIT
from ..crd.conditions import now_iso, set_condition
from ..crd.mysqlreplication import MySQLReplicationSpec, PromotionProgress, application_secret_name
from ..db.cluster_database import DatabaseUnavailable, application_secret, secret_credentials
from ..db.dsn import DSN
from ..db.migrate import MigrationError
from ..kube.client import MYSQLREPLICATIONS, SECRETS, ApiError, KubeClient
from ..kube.requests import clear_request
from ..mysql.actions import PromotionError
from ..mysql.dialect import dialect_for
from ..mysql.lag import PrimaryHistory, record, truthful_lag
from ..mysql.member import Credentials, MemberState, tls_context
from ..mysql.topology import errant_members
from ..node_tls import ca_from_secret
from ..workers import WorkerBudget
from . import metrics, procedures
from .authority import Basis, Confirm, Superseded, confirmer
from .legacy import SCHEMA, PromotionRow, record_promotion
from .plan import (
    Failover,
    Summary,
    choose_bootstrap,
    converge_plan,
    decide_failover,
    decide_request,
    member_timeout,
    replica_net_timeout,
    stale_replicas,
    summarize,
    waiting_timeout,
)
from .procedures import Access, DatabaseError
from .services import ServicePublisher

log = logging.getLogger(__name__)
Obj = dict[str, Any]

ACCESS_DENIED = 1045

CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
"""What a session's error says when the member's certificate did not verify (OpenSSL's reason)."""
SECRET_TTL = 30.0
"""Seconds the credentials read from a Secret are used before it is read again (at once after a refused login)."""
STALL_ATTEMPTS = 3
"""Failed attempts in a row at finishing a promotion before a PromotionStalled Event."""


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Request:
    """A promote annotation; ``handled`` when status.lastRequest already carries its id."""

    id: str
    target: str
    force: bool
    handled: bool


@dataclass
class ReplicationController:
    """State and steps of one replication's loop. The state is what this process observed, never status."""

    kube: KubeClient
    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    states: dict[str, MemberState] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    """Failed inspections in a row, per member."""
    failing_since: dict[str, float] = field(default_factory=dict)
    """Wall-clock time of the first failed inspection of the current run, per member."""
    quarantined: dict[str, str] = field(default_factory=dict)
    """Members with errant transactions, and why; seeded from status on the first step."""
    not_receiving_since: dict[str, float] = field(default_factory=dict)
    """Wall-clock time since which a replica has not been receiving from the primary, as seen while the primary
    answered (what this process observed: empty after a restart)."""
    fenced_seen: dict[str, bool] = field(default_factory=dict)
    """Whether each member was fenced the last time it answered and not opened by this process since (promotion
    skips fencing those that were)."""
    back: str | None = None
    """The primary, when the last inspection found it read-only (back after a restart, or being set up)."""
    answered_since_back: dict[str, MemberState] = field(default_factory=dict)
    """Each member's last answer since the primary was found back read-only (`plan.reopen_held`)."""
    primary_history: PrimaryHistory | None = None
    """The current primary's executed sets as inspections read them, for the replicas' lag (`lag.truthful_lag`):
    empty after a restart, when the lag is what the replicas report until it builds up."""
    finish_failures: int = 0
    """Attempts in a row at finishing the recorded promotion that failed."""
    seeded: bool = False
    generation: int | None = None
    period: float = 5.0
    full: bool = True
    """Check everything at the next reconcile: after a start, a spec or credentials change, a promotion."""
    inspect_now: bool = False
    deferred: bool = False
    """The last step changed the topology and left status alone; the next one writes it whatever happens."""
    blocked: str = ""
    """The cause of the last FailoverBlocked Event, so that it is posted once."""
    conditions_published: set[str] = field(default_factory=set)
    """The conditions this process exports as metrics (removed when it stops deciding)."""
    credentials: tuple[str, ...] = ()
    secrets: dict[str, tuple[float, tuple[str, str]]] = field(default_factory=dict)
    """Credentials by Secret name, with when they were read."""
    ca: tuple[float, tuple[str, str, bool], ssl.SSLContext] | None = None
    """The TLS context of the operator's sessions, when it was made, and from what (Secret, key, name check)."""
    services: ServicePublisher = field(init=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    deciding: bool = False
    """The loop runs: worker threads may change roles (``confirm``) unless ``stop`` is set too."""
    stop: Any = None
    """kopf's stop flag of the daemon running the loop (true once asked to stop)."""

    workers: WorkerBudget = field(init=False)
    """The threads of this replication's blocking calls: one per member, plus two (errant check, legacy row)."""

    def __post_init__(self) -> None:
        self.services = ServicePublisher(self.kube, self.namespace, self.name)
        self.workers = WorkerBudget(f"mysql-{self.namespace}/{self.name}", 5)

    def notice(self, generation: int | None, annotations: dict[str, str]) -> None:
        """Wake for a request or a spec change, not for the status writes of this controller."""
        if PROMOTE in annotations or generation != self.generation:
            self.wake.set()

    # -- the loop --------------------------------------------------------------------------------------------

    def confirmer(self, obj: Obj) -> Confirm:
        """For the worker threads of a decision made on ``obj`` (see `authority`)."""

        async def read() -> Obj:
            return await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)

        return confirmer(asyncio.get_running_loop(), read, lambda: not self.deciding or bool(self.stop), Basis.of(obj))

    async def run(self, stopped: Any) -> None:
        """Inspect every periodSeconds; decide after each inspection and at once when woken, without inspecting
        more often than the period (but right after a promotion, to reconfigure the others at once)."""
        inspected = float("-inf")
        self.deciding, self.stop = True, stopped
        try:
            while not stopped:
                self.wake.clear()
                inspect = self.inspect_now or time.monotonic() >= inspected + self.period
                if inspect:
                    self.inspect_now, inspected = False, time.monotonic()
                try:
                    await self.step(inspect=inspect)
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("replication %s/%s: API error, retrying: %s", self.namespace, self.name, exc)
                remaining = inspected + self.period - time.monotonic()
                if remaining > 0 and not self.inspect_now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), remaining)
        finally:
            self.deciding = False
            for condition in self.conditions_published:
                metrics.CONDITION.remove(self.namespace, self.name, condition)
            self.conditions_published = set()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=5)
            self.workers.close()

    async def step(self, *, inspect: bool) -> None:
        for kind in ("automatic", "manual"):  # at 0 from the start, so that alerts see the first as an increase
            metrics.PROMOTIONS.labels(self.namespace, self.name, kind)
        obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)
        spec = MySQLReplicationSpec.model_validate(obj.get("spec") or {})
        status: Obj = obj.get("status") or {}
        self.period = float(spec.period_seconds)
        self.workers.resize(len(spec.members) + 2)
        generation = obj["metadata"].get("generation")
        if generation != self.generation:
            self.generation, self.full = generation, True
        if not self.seeded:
            self.seeded = True
            self.quarantined = {
                m["name"]: m.get("lastError", "") for m in status.get("members", []) if m.get("role") == "Quarantined"
            }
        try:
            access = await self._access(obj, spec)
        except DatabaseUnavailable as exc:
            await self._write_summary(obj, summarize(spec, None, {}, quarantined=self.quarantined, pending=str(exc)))
            return
        if inspect:
            await self._inspect(spec, access, status)
        if not self.states:
            return
        if status.get("promotion"):
            await self._promote(obj, spec, access, PromotionProgress.model_validate(status["promotion"]))
            return
        members = {m.name: m for m in spec.members}
        self.quarantined = {name: why for name, why in self.quarantined.items() if name in members}
        primary = status.get("currentPrimary")
        if not primary:
            await self._first_primary(obj, spec, access)
            return
        if primary not in members:
            pending = f"the current primary {primary} is no longer a member"
            await self._write_summary(obj, summarize(spec, None, {}, quarantined=self.quarantined, pending=pending))
            return
        if inspect:
            self._track_receiving(spec, primary)
            self._track_back(primary)
        await self._detect_errant(obj, access, primary)
        request = self._request(obj, status)
        if request is not None:
            await self._handle(obj, spec, access, primary, request)
            return
        failover = self._failover(spec, status, primary)
        if failover is not None and failover.candidate is not None:
            detected = self.failing_since.get(primary, time.time())
            record = PromotionProgress(
                from_=primary,
                to=failover.candidate,
                type="automatic",
                planned=failover.planned,
                reason=failover.reason,
                detected_at=datetime.fromtimestamp(detected, UTC),
            )
            await self._start(obj, spec, access, record)
            return
        await self._announce(obj, primary, failover)
        if await self._reconcile(obj, spec, access, primary) and not self.deferred:
            # The inspection predates these changes: status and the replicas Service wait for the next one.
            self.deferred = True
            await self.services.publish(obj, members[primary], None)
            return
        self.deferred = False
        summary = summarize(
            spec,
            primary,
            self.states,
            quarantined=self.quarantined,
            failover=failover,
            answered_since_back=self.answered_since_back,
        )
        await self._write_summary(obj, summary)
        await self.services.publish(obj, members[primary], [members[n] for n in summary.ready])

    # -- observation -----------------------------------------------------------------------------------------

    async def _access(self, obj: Obj, spec: MySQLReplicationSpec) -> Access:
        """Credentials from the Secrets only; a change of them checks everything again."""
        secrets = []
        for ref in (spec.credentials_secret, spec.replication_secret):
            try:
                secrets.append(await self._secret(ref.name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                raise DatabaseUnavailable(f"Secret {self.namespace}/{ref.name} not found") from exc
        secrets.append(await self._application_credentials(obj, spec))
        (admin_user, admin_password), (repl_user, repl_password), (app_user, app_password) = secrets
        if (key := (admin_user, admin_password, repl_user, repl_password, app_user, app_password)) != self.credentials:
            self.credentials, self.full = key, True
        return Access(
            members={m.name: m for m in spec.members},
            admin=Credentials(admin_user, admin_password),
            replication=Credentials(repl_user, repl_password),
            application=Credentials(app_user, app_password),
            schemas=tuple(spec.application_account.schemas),
            dialect=dialect_for(spec.flavor),
            timeout=member_timeout(spec),
            waiting_timeout=waiting_timeout(spec),
            net_timeout=replica_net_timeout(spec),
            tls=(tls := await self._tls(spec)),
            tls_ca_file=spec.tls.ca_file if tls is not None else None,
        )

    async def _tls(self, spec: MySQLReplicationSpec) -> ssl.SSLContext | None:
        """The context the operator's sessions verify the members with, from the CA Secret read again after
        SECRET_TTL (a CA change is taken within it); None when TLS is off."""
        settings = spec.tls
        ref = settings.ca_secret
        if not settings.enabled or ref is None:
            return None
        source = (ref.name, ref.key, settings.verify_server_name)
        now = time.monotonic()
        if self.ca is not None and self.ca[1] == source and now - self.ca[0] < SECRET_TTL:
            return self.ca[2]
        where = f"Secret {self.namespace}/{ref.name}"
        try:
            secret = await self.kube.get(SECRETS, self.namespace, ref.name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise DatabaseUnavailable(f"{where} (tls.caSecret) not found") from exc
        try:
            context = tls_context(ca_from_secret(secret, ref.key), check_hostname=settings.verify_server_name)
        except (ValueError, binascii.Error, ssl.SSLError) as exc:  # SSLError: PEM markers around no certificate
            raise DatabaseUnavailable(f"{where} (tls.caSecret) {exc}") from exc
        self.ca = (now, source, context)
        return context

    async def _application_credentials(self, obj: Obj, spec: MySQLReplicationSpec) -> tuple[str, str]:
        """The application account's Secret, created (owned by this MySQLReplication) when missing."""
        name = application_secret_name(self.name, spec.application_account)
        try:
            return await self._secret(name)
        except ApiError as exc:
            if exc.status != 404:
                raise
        body = application_secret(self.name, name, obj["metadata"].get("uid", ""))
        try:
            await self.kube.create(SECRETS, self.namespace, body)
            log.info("replication %s/%s: created the application account's Secret %s", self.namespace, self.name, name)
        except ApiError as exc:
            if exc.status != 409:
                raise  # 409: another process created it first; read theirs
        return await self._secret(name)

    async def _secret(self, name: str) -> tuple[str, str]:
        """(username, password) of a Secret, read again after SECRET_TTL."""
        now = time.monotonic()
        cached = self.secrets.get(name)
        if cached is not None and now - cached[0] < SECRET_TTL:
            return cached[1]
        credentials = await secret_credentials(self.kube, self.namespace, name)
        self.secrets[name] = (now, credentials)
        return credentials

    async def _inspect(self, spec: MySQLReplicationSpec, access: Access, status: Obj) -> None:
        """Every member at once, each in a worker thread; count failures in a row."""
        states = await asyncio.gather(*(self.workers.run(access.inspect, m.name) for m in spec.members))
        now, answered = time.time(), time.monotonic()  # every set was read by then
        self._track_primary(status.get("currentPrimary"), states, answered)
        self.states = {s.name: replace(s, seconds_behind=truthful_lag(s, self.primary_history)) for s in states}
        if any(s.error and s.error.endswith(f"({ACCESS_DENIED})") for s in states):
            self.secrets.clear()  # the password may have changed: read the Secrets again
        if any(s.error and CERTIFICATE_REFUSED in s.error for s in states):
            self.ca = None  # the members may serve certificates of a new CA: read the CA Secret again
        for gone in set(self.failures) - set(self.states):
            del self.failures[gone]
        labels = (self.namespace, self.name)
        metrics.INSPECTIONS.labels(*labels).inc()
        for state in self.states.values():
            if state.reachable:
                self.failures[state.name] = 0
                self.failing_since.pop(state.name, None)
                self.fenced_seen[state.name] = bool(state.fenced)
            else:
                self.failures[state.name] = self.failures.get(state.name, 0) + 1
                self.failing_since.setdefault(state.name, now)
            metrics.MEMBER_UP.labels(*labels, state.name).set(1 if state.reachable else 0)
            replicating = state.reachable and state.is_replica
            for thread, running in (("io", state.io_running), ("sql", state.sql_running)):
                if replicating:
                    metrics.REPLICA_THREAD.labels(*labels, state.name, thread).set(1 if running else 0)
                else:
                    with contextlib.suppress(KeyError):
                        metrics.REPLICA_THREAD.remove(*labels, state.name, thread)
            if replicating and state.seconds_behind is not None:
                metrics.REPLICA_LAG.labels(*labels, state.name).set(state.seconds_behind)
            else:
                with contextlib.suppress(KeyError):
                    metrics.REPLICA_LAG.remove(*labels, state.name)
        if status.get("lastPromotionTime"):
            metrics.SINCE_PROMOTION.labels(*labels).set(now - _epoch(status["lastPromotionTime"]))

    def _track_primary(self, primary: str | None, states: list[MemberState], answered: float) -> None:
        """Add the primary's executed set to its history (`lag.record`); forget the history of any other."""
        if self.primary_history is not None and self.primary_history.primary != primary:
            self.primary_history = None
        head = next((s for s in states if s.name == primary), None)
        if head is not None and head.reachable and head.gtid_executed is not None:
            self.primary_history = record(self.primary_history, head.name, answered, head.gtid_executed)

    async def _detect_errant(self, obj: Obj, access: Access, primary: str) -> None:
        """Quarantine every member holding transactions the primary lacks, at the first inspection that shows
        them. Suspects from the last inspection are confirmed against the primary's set read afterwards. Not
        while the primary is read-only: one that came back so may have lost what a replica holds, and is
        switched over from (`primary_behind`)."""
        head = self.states.get(primary)
        if head is None or head.gtid_executed is None or head.read_only is True:
            return
        if not errant_members(self.states, primary, head.gtid_executed, skip=self.quarantined):
            return
        try:
            fresh = await self.workers.run(access.executed, primary)
        except DatabaseError:
            return  # the primary stopped answering: the next inspection says more
        for name, verdict in errant_members(self.states, primary, fresh, skip=self.quarantined).items():
            self.quarantined[name] = verdict.reason
            await self._event(obj, "Quarantined", f"{name} kept out of replication: {verdict.reason}", warning=True)
            log.warning("replication %s/%s: %s: %s", self.namespace, self.name, name, verdict.reason)

    def _track_receiving(self, spec: MySQLReplicationSpec, primary: str) -> None:
        """Note since when each replica has not been receiving from the primary: set while the primary answers
        (then not receiving is the replica's own doing), cleared whenever the replica receives from it."""
        member = next(m for m in spec.members if m.name == primary)
        head = self.states.get(primary)
        now = time.time()
        for name in list(self.not_receiving_since):
            if name not in self.states or name == primary:
                del self.not_receiving_since[name]
        for name, state in self.states.items():
            if name == primary:
                continue
            receiving = (
                state.reachable
                and state.io_running is True
                and (state.source_host, state.source_port) == (member.host, member.port)
            )
            if receiving:
                self.not_receiving_since.pop(name, None)
            elif head is not None and head.reachable:
                self.not_receiving_since.setdefault(name, now)

    def _track_back(self, primary: str) -> None:
        """Keep the members' answers given after an inspection that found the primary read-only, as long as every
        inspection since found it so (an answer given in the same inspection may predate its restart)."""
        head = self.states.get(primary)
        if head is None or not head.reachable or head.read_only is not True:
            self.back = None
            self.answered_since_back.clear()
            return
        if self.back == primary:
            self.answered_since_back.update((n, s) for n, s in self.states.items() if s.reachable and n != primary)
        self.back = primary

    def _opening(self, name: str) -> None:
        """``name`` is about to be opened by this process: no longer known fenced, nor back read-only."""
        self.fenced_seen[name] = False
        self.back = None
        self.answered_since_back.clear()

    def _failover(self, spec: MySQLReplicationSpec, status: Obj, primary: str) -> Failover | None:
        if primary not in self.states:
            return None
        stale = stale_replicas(spec, primary, self.not_receiving_since, self.failing_since.get(primary))
        history = status.get("promotionHistory", [])
        last = next((h for h in history if h.get("type") == "automatic"), None)
        since = time.time() - _epoch(last["time"]) if last else None
        return decide_failover(
            spec,
            primary,
            self.states,
            failures=self.failures.get(primary, 0),
            seconds_since_automatic=since,
            quarantined=self.quarantined,
            stale=stale,
        )

    @staticmethod
    def _request(obj: Obj, status: Obj) -> Request | None:
        annotations = obj["metadata"].get("annotations") or {}
        found = pending_request(annotations, status.get("lastRequest") or {}, PROMOTE, "promote")
        if found is None:
            return None
        request_id, target, handled = found
        return Request(request_id, target, annotations.get(FORCE, "").lower() == "true", handled)

    # -- decisions that write ----------------------------------------------------------------------------------

    async def _first_primary(self, obj: Obj, spec: MySQLReplicationSpec, access: Access) -> None:
        """No primary yet: with spec.bootstrap.recovery, the next step of the restore (`backup.recovery`) until
        every member holds the backup; then the first primary (`_bootstrap`), on what the members hold."""
        recovered = (obj.get("status") or {}).get("recovery", {}).get("phase") == "Completed"
        if spec.bootstrap is not None and spec.bootstrap.recovery is not None and not recovered:
            waiting = await recover(
                self.kube, obj, spec, admin=access.admin, patch_status=self._patch_status, event=self._event
            )
            if waiting is not None:
                await self._write_summary(
                    obj, summarize(spec, None, self.states, quarantined=self.quarantined, pending=waiting)
                )
                return
            self.inspect_now = True  # the members changed: inspect them again before choosing
            self.wake.set()
            return
        if await self._bootstrap(obj, spec):
            self.wake.set()  # go on from the new resourceVersion

    async def _bootstrap(self, obj: Obj, spec: MySQLReplicationSpec) -> bool:
        """Record the first primary (``choose_bootstrap``); whether it was."""
        choice = choose_bootstrap(spec, self.states)
        if choice.primary is None:
            pending = f"choosing the first primary: {choice.reason}"
            await self._write_summary(
                obj, summarize(spec, None, self.states, quarantined=self.quarantined, pending=pending)
            )
            return False
        if await self._patch_status(obj, {"currentPrimary": choice.primary}) is None:
            return False
        line = {"event": "bootstrap", "namespace": self.namespace, "replication": self.name}
        log.info(json.dumps({**line, "primary": choice.primary, "reason": choice.reason}))
        return True

    async def _handle(
        self, obj: Obj, spec: MySQLReplicationSpec, access: Access, primary: str, request: Request
    ) -> None:
        """A promote annotation: settled once per id, then removed; never replayed."""
        if request.handled:
            await self._clear_request(obj, request.id)
            self.wake.set()
            return
        decision = decide_request(
            spec,
            primary,
            self.states,
            self.failures.get(primary, 0),
            request.target,
            force=request.force,
            quarantined=self.quarantined,
        )
        if decision.action != "promote":
            result = "Succeeded" if decision.action == "keep" else "Refused"
            written = await self.kube.patch(
                MYSQLREPLICATIONS,
                self.namespace,
                self.name,
                {"status": {"lastRequest": self._outcome(request.id, request.target, result, decision.reason)}},
                subresource="status",
            )
            if result == "Refused":
                await self._event(obj, "PromotionRefused", f"promote {request.target}: {decision.reason}", warning=True)
            await self._clear_request(written, request.id)
            self.wake.set()
            return
        record = PromotionProgress(
            from_=primary,
            to=request.target,
            type="manual",
            planned=decision.planned,
            reason=decision.reason,
            force=request.force,
            request_id=request.id,
            detected_at=datetime.now(UTC),
        )
        await self._start(obj, spec, access, record)

    async def _start(self, obj: Obj, spec: MySQLReplicationSpec, access: Access, record: PromotionProgress) -> None:
        """Record the promotion with the resourceVersion it was decided on, then run it."""
        patch = {
            "promotion": record.to_k8s(),
            "phase": "Promoting",
            "reason": f"promoting {record.to}: {record.reason}",
        }
        written = await self._patch_status(obj, patch)
        if written is None:
            return
        self._log("promotion-started", record)
        self.finish_failures = 0
        await self._promote(written, spec, access, record)

    async def _promote(self, obj: Obj, spec: MySQLReplicationSpec, access: Access, record: PromotionProgress) -> None:
        """Drive the recorded promotion: prepare (abandoned on failure), then promote (retried until done)."""
        removed = [n for n in (record.from_, record.to) if n and n not in access.members]
        if removed and record.step == "Preparing":
            await self._abandon(obj, record, f"{', '.join(removed)} removed from spec.members")
            return
        if record.to not in access.members:
            # Past the point of no return the candidate may be writable: never abandon (the next pass would open
            # the old primary again); wait for the member to be listed again.
            why = f"promoting {record.to}, which was removed from spec.members: add it back to finish"
            if (obj.get("status") or {}).get("reason") != why:
                log.warning("replication %s/%s: %s", self.namespace, self.name, why)
                await self._patch_record(obj, {"reason": why}, record)
            return
        prepared = procedures.Prepared()
        try:
            if record.step == "Preparing":
                prepared = await self.workers.run(
                    procedures.prepare, access, record, spec, self.quarantined, self.confirmer(obj)
                )
                record = record.model_copy(update={"step": "Promoting"})
                written = await self._patch_record(obj, {"promotion": record.to_k8s()}, record)
                if written is None:
                    return
                obj = written
            fenced = {name for name, was in self.fenced_seen.items() if was}.union(prepared.fenced)
            self._opening(record.to)
            finished = await self.workers.run(
                procedures.finish,
                access,
                record,
                self.confirmer(obj),
                prepared.unreachable,
                fenced,
                semi_sync=spec.semi_sync,
            )
        except Superseded as exc:
            log.warning("replication %s/%s: %s", self.namespace, self.name, exc)
            self.wake.set()
            return
        except PromotionError as exc:
            await self._abandon(obj, record, access.mask(str(exc)))
            return
        except DatabaseError as exc:
            if record.step == "Preparing":
                await self._abandon(obj, record, access.describe(exc))
            else:
                await self._stalled(obj, record, access.describe(exc))
            return
        self.finish_failures = 0
        await self._record(obj, record.to, finished.joins)
        await self._complete(obj, access, record, list(finished.unfenced))

    async def _stalled(self, obj: Obj, record: PromotionProgress, error: str) -> None:
        """A promotion past its point of no return that failed to finish: retried every period, and after
        STALL_ATTEMPTS failures in a row one PromotionStalled Event says what holds it up."""
        self.finish_failures += 1
        why = f"promoting {record.to}, not finished, retrying: {error}"
        log.warning("replication %s/%s: %s", self.namespace, self.name, why)
        if (obj.get("status") or {}).get("reason") != why:
            await self._patch_record(obj, {"reason": why}, record)
        if self.finish_failures == STALL_ATTEMPTS:
            message = (
                f"promotion of {record.to} stalled after {STALL_ATTEMPTS} attempts: {error}. {record.to} accepts "
                "writes only once every other member is read-only or unreachable: free or stop the member named, "
                "or remove it from spec.members"
            )
            await self._event(obj, "PromotionStalled", message, warning=True)

    async def _complete(self, obj: Obj, access: Access, record: PromotionProgress, unfenced: list[str]) -> None:
        now = datetime.now(UTC)
        duration_ms = max(0, int((now - record.detected_at).total_seconds() * 1000))
        entry = {
            "time": now_iso(),
            "from": record.from_,
            "to": record.to,
            "reason": record.reason,
            "type": record.type,
            "durationMs": duration_ms,
        }
        if unfenced:
            entry["unfenced"] = unfenced
        status = obj.get("status") or {}
        patch: Obj = {
            "currentPrimary": record.to,
            "promotion": None,
            "promotionHistory": [entry, *status.get("promotionHistory", [])][:HISTORY_LIMIT],
            "lastPromotionTime": entry["time"],
            "phase": "Degraded",
            "reason": f"{record.to} promoted; reconfiguring the other members",
        }
        if record.request_id:
            patch["lastRequest"] = self._outcome(record.request_id, record.to, "Succeeded", record.reason)
        written = await self._patch_record(obj, patch, record)
        if written is None:
            return
        self.full, self.inspect_now = True, True  # reconfigure the others right away
        self.not_receiving_since.clear()  # it was about the old primary
        metrics.PROMOTIONS.labels(self.namespace, self.name, record.type).inc()
        kind = f"{record.type}, planned" if record.planned else record.type
        message = f"primary {record.from_ or 'none'} -> {record.to} ({kind}, {duration_ms} ms): {record.reason}"
        await self._event(written, "Promoted", message, warning=record.type == "automatic")
        if unfenced:
            await self._event(
                written,
                "FencePending",
                f"{', '.join(unfenced)} could not be reached to be made read-only; each is fenced as soon as it "
                "answers, before it may rejoin",
                warning=True,
            )
        self._log("promoted", record, durationMs=duration_ms)
        member = access.members[record.to]
        app = access.application  # the new primary is writable; read-only members would refuse this account
        dsn = DSN(member.host, member.port, app.username, SCHEMA, app.password, tls=access.tls)
        row = PromotionRow(
            key=f"{written['metadata'].get('uid')}/{record.detected_at.isoformat()}/{record.to}",
            namespace=self.namespace,
            replication=self.name,
            from_member=record.from_,
            to_member=record.to,
            kind=record.type,
            reason=record.reason,
            duration_ms=duration_ms,
            at=now,
        )
        task = asyncio.create_task(self._legacy_row(access, dsn, row))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _legacy_row(self, access: Access, dsn: DSN, row: PromotionRow) -> None:
        """In the background: with semi-sync the new primary may wait for its first replica before it commits."""
        try:
            await self.workers.run(record_promotion, dsn, row)
        except (MigrationError, *DatabaseError) as exc:
            log.warning(
                "replication %s/%s: no legacy failover row: %s", self.namespace, self.name, access.mask(str(exc))
            )

    async def _abandon(self, obj: Obj, record: PromotionProgress, why: str) -> None:
        """Nothing irreversible was done: forget the promotion (a fenced primary is reopened by the next pass)."""
        patch: Obj = {"promotion": None, "phase": "Degraded", "reason": f"promotion of {record.to} abandoned: {why}"}
        if record.request_id:
            patch["lastRequest"] = self._outcome(record.request_id, record.to, "Failed", why)
        written = await self._patch_record(obj, patch, record)
        if written is None:
            return
        await self._event(written, "PromotionFailed", f"promotion of {record.to} abandoned: {why}", warning=True)
        self._log("promotion-abandoned", record, why=why)

    # -- reconcile -----------------------------------------------------------------------------------------------

    async def _reconcile(self, obj: Obj, spec: MySQLReplicationSpec, access: Access, primary: str) -> bool:
        """Apply the fixes the last inspection calls for; Events for members fenced or quarantined. Whether
        anything changed."""
        quarantined = self.quarantined
        plan = converge_plan(
            primary,
            self.states,
            semi_sync=spec.semi_sync,
            full=self.full,
            quarantined=quarantined,
            net_timeout=access.net_timeout,
            secure_transport=spec.tls.require_secure_transport,
            answered_since_back=self.answered_since_back,
        )
        if not plan:
            return False
        if plan.open_primary:
            self._opening(primary)
        try:
            outcome = await self.workers.run(procedures.reconcile, access, primary, plan, self.confirmer(obj))
        except Superseded as exc:
            log.warning("replication %s/%s: %s", self.namespace, self.name, exc)
            self.wake.set()
            return False
        self.full = self.full and bool(outcome.errors)
        await self._record(obj, primary, outcome)
        return bool(outcome.changes)

    async def _record(self, obj: Obj, primary: str, outcome: procedures.Outcome) -> None:
        """Events for the members an operation fenced or quarantined, its changes and errors logged."""
        quarantined = self.quarantined
        for name in outcome.joined:
            quarantined.pop(name, None)
        for name, why in outcome.quarantined.items():
            if quarantined.get(name) != why:
                await self._event(obj, "Quarantined", f"{name} kept out of replication: {why}", warning=True)
            quarantined[name] = why
        for name in outcome.fenced:
            await self._event(obj, "Fenced", f"{name} was writable and is now read-only; {primary} is primary")
        if outcome.changes:
            log.info("replication %s/%s: %s", self.namespace, self.name, "; ".join(outcome.changes))
        for error in outcome.errors:
            log.warning("replication %s/%s: %s", self.namespace, self.name, error)

    async def _announce(self, obj: Obj, primary: str, failover: Failover | None) -> None:
        """One FailoverBlocked Event per cause, naming each candidate and why it was refused."""
        cause = failover.blocked_by if failover is not None else ""
        if cause and cause != self.blocked and failover is not None:
            refusals = "; ".join(f"{n}: {why}" for n, why in sorted(failover.refusals.items()))
            message = f"primary {primary} is down, not promoting: {cause}" + (
                f" (candidates: {refusals})" if refusals else ""
            )
            await self._event(obj, "FailoverBlocked", message, warning=True)
        self.blocked = cause

    # -- writes --------------------------------------------------------------------------------------------------

    async def _status_on(self, obj: Obj, patch: Obj) -> Obj:
        """A status patch with the resourceVersion of ``obj``: ApiError 409 when the object has changed since."""
        written: Obj = await self.kube.patch(
            MYSQLREPLICATIONS,
            self.namespace,
            self.name,
            {"status": patch},
            subresource="status",
            resource_version=obj["metadata"]["resourceVersion"],
        )
        return written

    async def _patch_status(self, obj: Obj, patch: Obj) -> Obj | None:
        """A status patch with the resourceVersion the decision was made on; None (and decide again) on conflict."""
        try:
            written = await self._status_on(obj, patch)
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.info("replication %s/%s changed while deciding; deciding again", self.namespace, self.name)
            self.wake.set()
            return None
        return written

    async def _patch_record(self, obj: Obj, patch: Obj, record: PromotionProgress) -> Obj | None:
        """A status patch during our own promotion: on a conflict (say, a new annotation), again on the fresh
        object as long as it still records this promotion."""
        for _ in range(3):
            try:
                return await self._status_on(obj, patch)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)
                current = (obj.get("status") or {}).get("promotion")
                if not current or not _same_promotion(PromotionProgress.model_validate(current), record):
                    log.info("replication %s/%s: promotion taken over elsewhere", self.namespace, self.name)
                    return None
        self.wake.set()
        return None

    async def _write_summary(self, obj: Obj, summary: Summary) -> None:
        """Phase, reason, members, counts and conditions, written only when they change."""
        status = obj.get("status") or {}
        generation = obj["metadata"].get("generation")
        conditions = status.get("conditions", [])
        for c in summary.conditions:
            conditions = set_condition(conditions, c.type, c.status, c.reason, c.message, generation=generation)
            metrics.CONDITION.labels(self.namespace, self.name, c.type).set(1 if c.status else 0)
            self.conditions_published.add(c.type)
        new: Obj = {
            "phase": summary.phase,
            "reason": summary.reason[:4096],
            "members": summary.members,
            "readyReplicas": len(summary.ready),
            "maxObservedLagSeconds": summary.max_lag,
            "observedGeneration": generation,
            "conditions": conditions,
        }
        if not _same_summary(status, new):
            await self._patch_status(obj, new)

    async def _clear_request(self, obj: Obj, request_id: str) -> None:
        keys = (PROMOTE, FORCE, REQUEST_ID)
        await clear_request(
            self.kube, MYSQLREPLICATIONS, obj, request_id, annotation=PROMOTE, kind="promote", keys=keys
        )

    async def _event(self, obj: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            await self.kube.event(obj, "MySQLReplication", reason, message, warning=warning)
        except ApiError as exc:
            log.warning("cannot post event on %s/%s: %s", self.namespace, self.name, exc)

    @staticmethod
    def _outcome(request_id: str, target: str, result: str, reason: str) -> Obj:
        return {
            "id": request_id,
            "type": "promote",
            "target": target,
            "result": result,
            "reason": reason[:4096],
            "time": now_iso(),
        }

    def _log(self, event: str, record: PromotionProgress, **extra: object) -> None:
        """One JSON line per promotion event."""
        line = {
            "event": event,
            "namespace": self.namespace,
            "replication": self.name,
            "from": record.from_,
            "to": record.to,
            "type": record.type,
            "planned": record.planned,
            "step": record.step,
            "reason": record.reason,
            **extra,
        }
        log.info(json.dumps(line))


def _same_promotion(a: PromotionProgress, b: PromotionProgress) -> bool:
    return (a.from_, a.to, a.detected_at) == (b.from_, b.to, b.detected_at)


def _same_summary(current: Obj, new: Obj) -> bool:
    def strip(conditions: list[Obj] | None) -> list[tuple[str, str, str, str]]:
        return sorted((c["type"], c["status"], c["reason"], c["message"]) for c in conditions or [])

    return all(current.get(k) == v for k, v in new.items() if k != "conditions") and strip(
        current.get("conditions")
    ) == strip(new["conditions"])

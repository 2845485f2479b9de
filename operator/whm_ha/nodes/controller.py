"""The probe-and-elect loop of one WHMCluster: probes, health, election, failover, status, roles.

Decisions come from the pure functions of ``election`` and ``health``; this module only observes and
writes. The primary is the WHMCluster's ``status.primaryNode``, written with the resourceVersion the
decision was made on, so two operator processes can never both change it. Node roles and labels are
derived from it (demotions first) and converge after a restart, so a failover cut short is rolled
forward and never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..crd.annotations import CLUSTER_LABEL, FAILOVER_TO, REQUEST_ID, ROLE_LABEL, pending_request
from ..crd.common import HISTORY_LIMIT
from ..crd.conditions import now_iso, set_condition
from ..crd.whmcluster import WHMClusterSpec
from ..kube.client import MYSQLREPLICATIONS, PODS, SECRETS, WHMCLUSTERS, WHMNODES, ApiError, KubeClient
from ..kube.requests import clear_request
from ..node_tls import ClientTLS, ca_from_secret, settings
from . import metrics
from .discovery import sync_discovered_nodes
from .election import Candidate, Decision, Policy, elect, manual
from .health import HEARTBEAT_SECONDS, NodeHealth, ProbeResult, heartbeat_due, status_changed
from .legacy_tables import LegacyTables
from .probe import probe_all

log = logging.getLogger(__name__)
FINALIZER = "ha.whm.io/primary-handover"
CA_TTL = 30.0
"""Seconds a CA read from a Secret is used before it is read again: a rotated CA reaches the probes within it."""
LOST_RACE_WAIT = 1.0
"""After a write lost a race, how long to wait for the watch to bring the change before deciding again."""
Obj = dict[str, Any]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _seconds_since(iso: str) -> float:
    """Seconds at least since a recorded time. A time to the second (as ``_iso`` writes them) stands for any
    moment of that second, so it counts from the second's end: an interval measured from it is never cut short
    (minIntervalSeconds: a failover at 12:00:00.9, recorded 12:00:00, allows the next one at 12:00:11)."""
    epoch = _epoch(iso)
    return time.time() - (epoch + 1 if epoch.is_integer() else epoch)


def _ca_problem(secret: str, error: Exception) -> str:
    """Why the probes cannot verify: the CA Secret is missing, unreadable or holds no CA under its key."""
    if isinstance(error, ApiError):
        why = "not found" if error.status == 404 else f"unreadable ({error})"
    else:
        why = str(error)
    return f"cannot verify node certificates: CA Secret {secret} {why}"


@dataclass
class ClusterController:
    """State and steps of one cluster's loop. The state is what this process observed, never status."""

    kube: KubeClient
    namespace: str
    name: str
    health: dict[str, NodeHealth] = field(default_factory=dict)
    written: dict[str, Obj] = field(default_factory=dict)
    heartbeat: float | None = None
    """When this process last wrote the cluster's status.lastProbeTime (monotonic)."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    legacy: LegacyTables | None = None
    pod_roles: dict[str, str] = field(default_factory=dict)
    next_cleanup: float = 0.0
    replications: Callable[[str], Obj | None] = lambda _: None
    """A MySQLReplication by name, as the operator's watch last saw it (None: not seen)."""
    primary_series: set[str] = field(default_factory=set)
    """The nodes with a whm_ha_primary_node series: a node that goes takes its series with it."""
    ca: tuple[float, str, str, str] | None = None
    """The probes' CA: (monotonic time read, Secret name, key, PEM text)."""
    insecure_warned: bool = False
    """Whether this process posted the InsecureNodeTLS Event while insecureSkipVerify has been on."""

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, stopped: Any, cluster: Callable[[], Obj], nodes: Callable[[], list[Obj]]) -> None:
        """Probe every periodSeconds; decide after each probe round and at once when woken (a request, a
        node change, a lost write race), without probing more often than the period.

        The first round runs at once and the second after a random 50-100 % of the period: loops started
        together (every cluster, when the operator starts) do not probe, nor write, in step ever after."""
        next_probe = time.monotonic()
        first = True
        retry = False
        try:
            while not stopped:
                self.wake.clear()
                probe = not retry and time.monotonic() >= next_probe
                if probe:
                    period = float(cluster().get("spec", {}).get("healthCheck", {}).get("periodSeconds", 5))
                    interval = period * random.uniform(0.5, 1.0) if first else period
                    next_probe, first = max(next_probe + interval, time.monotonic()), False
                try:
                    lost_race = await self.step(cluster, nodes(), probe=probe)
                except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                    lost_race = False
                    log.warning("cluster %s/%s: API trouble, retrying next period: %r", self.namespace, self.name, exc)
                retry = lost_race and not retry  # once: decide again, without probing, when the watch has caught up
                if retry:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), LOST_RACE_WAIT)
                    continue
                remaining = next_probe - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), remaining)
        finally:
            if self.legacy is not None:
                self.legacy.workers.close()
            self._drop_series()

    def _drop_series(self) -> None:
        """This process no longer works on the cluster (deleted, or another replica is active): no series of it."""
        for name in self.primary_series:
            metrics.PRIMARY.remove(self.namespace, self.name, name)
        self.primary_series = set()
        with contextlib.suppress(KeyError):
            metrics.HEALTHY_NODES.remove(self.namespace, self.name)

    async def step(self, current: Callable[[], Obj], nodes: list[Obj], *, probe: bool = True) -> bool:
        """Probe (when ``probe``), decide and write; True when a write lost a race to another change of the
        cluster (``current`` had not caught up yet), so that the caller decides again at once."""
        cluster = current()
        for kind in metrics.FAILOVER_TYPES:  # at 0 from the start, so that alerts see the first failover as an increase
            metrics.FAILOVERS.labels(self.namespace, self.name, kind)
        spec = WHMClusterSpec.model_validate(cluster.get("spec") or {})
        status: Obj = cluster.get("status") or {}
        if spec.discovery is not None:
            nodes = await sync_discovered_nodes(self.kube, cluster, spec.discovery, nodes)
        if spec.database is None:
            self.legacy = None
        elif self.legacy is None or (self.legacy.replication, self.legacy.schema) != (
            spec.database.replication_ref.name,
            spec.database.schema_name,
        ):
            self.legacy = LegacyTables(
                self.kube,
                self.namespace,
                self.name,
                spec.database.replication_ref.name,
                spec.database.schema_name,
                self._replication_view(spec.database.replication_ref.name),
            )
        await self._ensure_finalizers(nodes)
        await self._warn_if_insecure(cluster, spec)
        live = [n for n in nodes if not n["metadata"].get("deletionTimestamp")]
        node_ids = self._node_ids(nodes)
        if probe:
            await self._probe(spec, live)
            # The probe took up to timeoutSeconds: decide on the cluster as it is now (a write of the last
            # step, e.g. primaryFailingSince, may have landed meanwhile), or the switch would lose that race.
            cluster = current()
            status = cluster.get("status") or {}
        for gone in set(self.health) - {n["metadata"]["name"] for n in nodes}:
            del self.health[gone]

        request = self._pending_request(cluster, status)
        if request is not None and request["handled"]:
            await self._clear_request(cluster, request["id"])  # settled before a restart: never replayed
            request = None
        decision = self._decide(spec, status, nodes, request)
        primary = status.get("primaryNode")
        if decision.changed and decision.primary != primary:
            written = await self._switch(cluster, status, decision, request)
            if written is None:
                return True
            cluster, status, primary = written, written.get("status") or {}, decision.primary
        elif request is not None:
            await self._settle_request(cluster, request, decision)
        await self._publish_nodes(spec, nodes, primary, node_ids)
        await self._release_deleted(nodes, primary)
        await self._write_summary(
            spec=spec, cluster=cluster, status=status, nodes=live, primary=primary, decision=decision, probed=probe
        )
        if self.legacy is not None and probe:
            await self.legacy.flush()
            if time.monotonic() >= self.next_cleanup:
                await self._delete_expired(spec)
        return False

    def _replication_view(self, name: str) -> Callable[[], Awaitable[Obj]]:
        """The MySQLReplication ``name`` from the watch, or from the API while the watch has not seen it."""

        async def view() -> Obj:
            watched = self.replications(name)
            if watched is not None:
                return watched
            return await self.kube.get(MYSQLREPLICATIONS, self.namespace, name)

        return view

    async def _delete_expired(self, spec: WHMClusterSpec) -> None:
        """Every sessions.cleanupIntervalSeconds: expired sessions and cache entries go, counted."""
        assert self.legacy is not None
        deleted = await self.legacy.delete_expired()
        if deleted is None:
            return  # database unavailable: try again at the next probe round
        self.next_cleanup = time.monotonic() + spec.sessions.cleanup_interval_seconds
        sessions, cache = deleted
        metrics.EXPIRED_DELETED.labels(self.namespace, self.name, "ha_sessions").inc(sessions)
        metrics.EXPIRED_DELETED.labels(self.namespace, self.name, "ha_cache").inc(cache)
        log.info(
            json.dumps(
                {
                    "event": "expired-rows-deleted",
                    "namespace": self.namespace,
                    "cluster": self.name,
                    "sessions": sessions,
                    "cache": cache,
                }
            )
        )

    # -- observation -----------------------------------------------------------------------------

    async def _probe(self, spec: WHMClusterSpec, nodes: list[Obj]) -> None:
        check = spec.health_check
        targets = [
            (node["metadata"]["name"], node["spec"]["address"], check.port or int(node["spec"].get("port", 4000)))
            for node in nodes
        ]
        if check.type == "http" and spec.probe_scheme == "https":
            tls, problem = await self._probe_tls(spec)
            if problem is not None:  # nothing to verify with: every node fails, saying why, rather than go unverified
                results = [(name, ProbeResult(False, 0.0, problem)) for name, _, _ in targets]
            else:
                results = await probe_all(targets, kind="http", path=check.path, timeout=check.timeout_seconds, tls=tls)
        else:
            results = await probe_all(targets, kind=check.type, path=check.path, timeout=check.timeout_seconds)
        now = time.monotonic()
        for name, result in results:
            previous = self.health.get(name, NodeHealth())
            self.health[name] = previous.observe(result, check.failure_threshold, check.success_threshold, now)
            metrics.PROBES.labels(self.namespace, self.name, "success" if result.ok else "failure").inc()
            metrics.PROBE_LATENCY.labels(self.namespace, self.name).observe(result.latency_ms / 1000)
            if self.legacy is not None:
                self.legacy.add_health_check(name, result.ok, result.latency_ms, result.message, time.time())

    async def _probe_tls(self, spec: WHMClusterSpec) -> tuple[ClientTLS, str | None]:
        """The https probes' verification settings, with the CA from nodeTLS.caSecret, and the problem that
        prevents verifying. A CA read is used for CA_TTL; a missing one is looked for again every period, and
        while the API fails the last one read stands."""
        selector = spec.node_tls.ca_secret
        if selector is None:
            return settings(spec.node_tls, None), None
        now, cached = time.monotonic(), self.ca
        if cached is not None and cached[1:3] != (selector.name, selector.key):
            cached = self.ca = None
        if cached is None or now - cached[0] >= CA_TTL:
            try:
                secret = await self.kube.get(SECRETS, self.namespace, selector.name)
                self.ca = cached = (now, selector.name, selector.key, ca_from_secret(secret, selector.key))
            except (ApiError, ValueError) as exc:
                if cached is None or not isinstance(exc, ApiError) or exc.status == 404:
                    self.ca = None
                    return settings(spec.node_tls, None), _ca_problem(selector.name, exc)
                log.warning(
                    "cluster %s/%s: CA Secret %s not read again: %s", self.namespace, self.name, selector.name, exc
                )
        return settings(spec.node_tls, cached[3]), None

    async def _warn_if_insecure(self, cluster: Obj, spec: WHMClusterSpec) -> None:
        """One InsecureNodeTLS Warning Event while the cluster's node certificates go unverified."""
        insecure = spec.node_tls.insecure_skip_verify and (spec.node_tls.enabled or spec.probe_scheme == "https")
        if insecure and not self.insecure_warned:
            await self._event(
                cluster,
                "InsecureNodeTLS",
                "nodeTLS.insecureSkipVerify is on: the proxy and the probes accept any certificate from the nodes "
                "(encrypted, not authenticated)",
                warning=True,
            )
        self.insecure_warned = insecure

    def _candidates(self, nodes: list[Obj]) -> list[Candidate]:
        return [
            Candidate(
                name=n["metadata"]["name"],
                priority=int(n["spec"].get("priority", 100)),
                health=self.health.get(n["metadata"]["name"], NodeHealth()).health,
                maintenance=bool(n["spec"].get("maintenance", False)),
                deleting=bool(n["metadata"].get("deletionTimestamp")),
            )
            for n in nodes
        ]

    @staticmethod
    def _node_ids(nodes: list[Obj]) -> dict[str, int]:
        """Keep every node's id; give new nodes the smallest free ones, in name order."""
        ids = {
            n["metadata"]["name"]: int(n["status"]["nodeId"]) for n in nodes if (n.get("status") or {}).get("nodeId")
        }
        taken = set(ids.values())
        for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
            name = node["metadata"]["name"]
            if name not in ids:
                free = next(i for i in range(1, len(nodes) + len(taken) + 2) if i not in taken)
                ids[name] = free
                taken.add(free)
        return ids

    # -- decision --------------------------------------------------------------------------------

    def _decide(self, spec: WHMClusterSpec, status: Obj, nodes: list[Obj], request: Obj | None) -> Decision:
        candidates = self._candidates(nodes)
        current = status.get("primaryNode")
        if request is not None:
            return manual(candidates, current, request["target"])
        history = status.get("failoverHistory", [])
        last_failover = next((h for h in history if h.get("type") == "automatic"), None)
        last_change = next((h for h in history if h.get("type") in ("automatic", "failback")), None)
        policy = Policy(
            automatic=spec.failover.automatic,
            paused=spec.failover.paused,
            failback=spec.failover.failback,
            min_interval_seconds=spec.failover.min_interval_seconds,
            seconds_since_last_automatic=_seconds_since(last_failover["time"]) if last_failover else None,
            seconds_since_last_change=_seconds_since(last_change["time"]) if last_change else None,
        )
        return elect(candidates, current, policy)

    @staticmethod
    def _pending_request(cluster: Obj, status: Obj) -> Obj | None:
        """The failover-to request on the cluster, unless its id was already handled."""
        found = pending_request(
            cluster["metadata"].get("annotations") or {}, status.get("lastRequest") or {}, FAILOVER_TO, "failover"
        )
        if found is None:
            return None
        request_id, target, handled = found
        return {"id": request_id, "target": target, "seen": time.monotonic(), "handled": handled}

    # -- writes ----------------------------------------------------------------------------------

    async def _switch(self, cluster: Obj, status: Obj, decision: Decision, request: Obj | None) -> Obj | None:
        """Record the new primary with the resourceVersion the decision was made on; None on conflict."""
        old = status.get("primaryNode") or ""
        new = decision.primary or ""
        now = time.time()
        kind = decision.kind if decision.kind in ("manual", "failback") else "automatic"
        if request is not None:
            started = request["seen"]
        else:
            failing = self.health.get(old, NodeHealth()).failing_since
            started = failing if failing is not None and decision.kind == "automatic" else time.monotonic()
        duration_ms = int((time.monotonic() - started) * 1000)
        generation = cluster["metadata"].get("generation")
        conditions = set_condition(
            status.get("conditions", []),
            "FailoverInProgress",
            True,
            "PrimaryChanging",
            f"switching primary from {old or 'none'} to {new}: {decision.reason}",
            generation=generation,
        )
        patch: Obj = {
            "status": {
                "primaryNode": new,
                "primarySince": _iso(now),
                "conditions": conditions,
                "phase": "FailingOver",
                "reason": decision.reason,
            }
        }
        record = None
        if decision.kind != "initial":
            record = {
                "time": _iso(now),
                "from": old,
                "to": new,
                "reason": decision.reason,
                "type": kind,
                "durationMs": duration_ms,
            }
            history = [record, *status.get("failoverHistory", [])][:HISTORY_LIMIT]
            patch["status"].update({"lastFailover": record, "failoverHistory": history, "primaryFailingSince": None})
        if request is not None:
            patch["status"]["lastRequest"] = self._outcome(request, "Succeeded", decision.reason)
        try:
            written = await self.kube.patch(
                WHMCLUSTERS,
                self.namespace,
                self.name,
                patch,
                subresource="status",
                resource_version=cluster["metadata"]["resourceVersion"],
            )
        except ApiError as exc:
            if exc.status == 409:
                log.info("cluster %s/%s changed while deciding; deciding again", self.namespace, self.name)
                return None
            raise
        if request is not None:
            await self._clear_request(written, request["id"])
        if record is not None:
            await self._record_failover(cluster, record, kind)
        log.info(
            json.dumps(
                {
                    "event": "primary-changed",
                    "namespace": self.namespace,
                    "cluster": self.name,
                    "from": old,
                    "to": new,
                    "type": kind if record else "initial",
                    "reason": decision.reason,
                    "durationMs": duration_ms,
                }
            )
        )
        return written

    async def _record_failover(self, cluster: Obj, record: Obj, kind: str) -> None:
        metrics.FAILOVERS.labels(self.namespace, self.name, kind).inc()
        message = (
            f"primary {record['from'] or 'none'} -> {record['to']} ({kind}, {record['durationMs']} ms): "
            f"{record['reason']}"
        )
        await self._event(cluster, "Failover", message, warning=kind == "automatic")
        if self.legacy is not None:
            key = f"{cluster['metadata'].get('uid')}/{record['time']}/{record['to']}"
            await self.legacy.record_failover(
                key=key,
                from_node=record["from"],
                to_node=record["to"],
                kind="manual" if kind == "manual" else "automatic",  # the legacy column knows these two
                reason=record["reason"],
                duration_ms=record["durationMs"],
                at=_epoch(record["time"]),
            )

    async def _event(self, cluster: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            await self.kube.event(cluster, "WHMCluster", reason, message, warning=warning)
        except ApiError as exc:
            log.warning("cannot post event on %s/%s: %s", self.namespace, self.name, exc)

    @staticmethod
    def _outcome(request: Obj, result: str, reason: str) -> Obj:
        return {
            "id": request["id"],
            "type": "failover",
            "target": request["target"],
            "result": result,
            "reason": reason,
            "time": now_iso(),
        }

    async def _settle_request(self, cluster: Obj, request: Obj, decision: Decision) -> None:
        """A request that changes nothing: already primary (Succeeded) or not eligible (Refused)."""
        result = "Succeeded" if decision.kind == "keep" else "Refused"
        written = await self.kube.patch(
            WHMCLUSTERS,
            self.namespace,
            self.name,
            {"status": {"lastRequest": self._outcome(request, result, decision.reason)}},
            subresource="status",
        )
        if result == "Refused":
            await self._event(cluster, "FailoverRefused", decision.reason, warning=True)
        await self._clear_request(written, request["id"])

    async def _clear_request(self, cluster: Obj, request_id: str) -> None:
        keys = (FAILOVER_TO, REQUEST_ID)
        await clear_request(
            self.kube, WHMCLUSTERS, cluster, request_id, annotation=FAILOVER_TO, kind="failover", keys=keys
        )

    async def _ensure_finalizers(self, nodes: list[Obj]) -> None:
        for node in nodes:
            meta = node["metadata"]
            if FINALIZER not in (meta.get("finalizers") or []) and not meta.get("deletionTimestamp"):
                try:
                    await self.kube.patch(
                        WHMNODES,
                        self.namespace,
                        meta["name"],
                        {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}},
                        resource_version=meta["resourceVersion"],
                    )
                except ApiError as exc:
                    if exc.status not in (404, 409):  # changed or gone meanwhile: next period
                        raise

    async def _release_deleted(self, nodes: list[Obj], primary: str | None) -> None:
        """A deleted node goes once it is no longer primary (the election hands the role over first)."""
        for node in nodes:
            meta = node["metadata"]
            if (
                meta.get("deletionTimestamp")
                and meta["name"] != primary
                and FINALIZER in (meta.get("finalizers") or [])
            ):
                remaining = [f for f in meta["finalizers"] if f != FINALIZER]
                try:
                    await self.kube.patch(
                        WHMNODES,
                        self.namespace,
                        meta["name"],
                        {"metadata": {"finalizers": remaining or None}},
                        resource_version=meta["resourceVersion"],
                    )
                except ApiError as exc:
                    if exc.status not in (404, 409):
                        raise
                if self.legacy is not None:
                    await self.legacy.delete_nodes([meta["name"]])

    async def _publish_nodes(
        self, spec: WHMClusterSpec, nodes: list[Obj], primary: str | None, ids: dict[str, int]
    ) -> None:
        """Node statuses and role labels, written only when they change; demotions before the promotion."""
        check = spec.health_check
        ordered = sorted(nodes, key=lambda n: n["metadata"]["name"] == primary)
        registry = []
        for node in ordered:
            name = node["metadata"]["name"]
            state = self.health.get(name, NodeHealth())
            role = "Primary" if name == primary else "Secondary"
            new = {
                "health": state.health,
                "role": role,
                "nodeId": ids[name],
                "message": state.message,
                "consecutiveFailures": state.failures,
                "consecutiveSuccesses": state.successes,
            }
            written = self.written.get(name) or {k: (node.get("status") or {}).get(k) for k in new}
            changed = status_changed(
                written, new, failure_threshold=check.failure_threshold, success_threshold=check.success_threshold
            )
            if changed:
                body = {**new, "lastProbeTime": now_iso()}
                if state.latency_ms is not None:
                    body["latencyMs"] = round(state.latency_ms, 2)
                body["conditions"] = set_condition(
                    (node.get("status") or {}).get("conditions", []),
                    "Ready",
                    state.health == "Healthy",
                    state.health,
                    state.message,
                )
                try:
                    await self.kube.patch(WHMNODES, self.namespace, name, {"status": body}, subresource="status")
                except ApiError as exc:
                    if exc.status == 404:
                        continue
                    raise
                self.written[name] = new
                registry.append(self._registry_row(node, new, state))
            await self._publish_role_labels(node, role)
        if self.legacy is not None and registry:
            await self.legacy.upsert_nodes(registry)

    @staticmethod
    def _registry_row(node: Obj, new: Obj, state: NodeHealth) -> dict[str, object]:
        spec = node["spec"]
        status = "maintenance" if spec.get("maintenance") else str(new["health"]).lower()
        return {
            "name": node["metadata"]["name"],
            "nodeId": new["nodeId"],
            "hostname": spec.get("hostname") or node["metadata"]["name"],
            "address": spec["address"],
            "port": spec.get("port", 4000),
            "priority": spec.get("priority", 100),
            "weight": spec.get("weight", 1),
            "role": str(new["role"]).lower(),
            "status": status,
            "checkedAt": time.time(),
        }

    async def _publish_role_labels(self, node: Obj, role: str) -> None:
        label = role.lower()
        meta = node["metadata"]
        labels = meta.get("labels") or {}
        if labels.get(ROLE_LABEL) != label or labels.get(CLUSTER_LABEL) != self.name:
            await self.kube.patch(
                WHMNODES,
                self.namespace,
                meta["name"],
                {"metadata": {"labels": {ROLE_LABEL: label, CLUSTER_LABEL: self.name}}},
            )
        pod_ref = node["spec"].get("podRef")
        if pod_ref and self.pod_roles.get(pod_ref["name"]) != label:
            try:
                await self.kube.patch(
                    PODS, self.namespace, pod_ref["name"], {"metadata": {"labels": {ROLE_LABEL: label}}}
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
            self.pod_roles[pod_ref["name"]] = label

    async def _write_summary(
        self,
        *,
        spec: WHMClusterSpec,
        cluster: Obj,
        status: Obj,
        nodes: list[Obj],
        primary: str | None,
        decision: Decision,
        probed: bool,
    ) -> None:
        """Counts, phase, reason and conditions, written when they change; after a probe round, with
        lastProbeTime, and at least every HEARTBEAT_SECONDS (the heartbeat of the cluster and its nodes)."""
        total = len(nodes)
        healthy = sum(1 for n in nodes if self.health.get(n["metadata"]["name"], NodeHealth()).health == "Healthy")
        primary_state = self.health.get(primary or "", NodeHealth())
        generation = cluster["metadata"].get("generation")
        blocked = decision.kind in ("keep", "none") and (primary is None or primary_state.health != "Healthy")
        if total == 0:
            phase, reason = "Pending", "no nodes"
        elif primary is None:
            phase, reason = "NoPrimary", decision.reason
        elif primary_state.health == "Unknown":
            phase, reason = "Pending", f"waiting for the first probes of {primary}"
        elif primary_state.health != "Healthy":
            phase, reason = "Degraded", decision.reason
        elif healthy < total:
            phase, reason = "Degraded", f"{total - healthy} of {total} nodes unhealthy"
        else:
            phase, reason = "Healthy", f"{primary} is primary; all {total} nodes healthy"
        refusals = "; ".join(f"{n}: {why}" for n, why in sorted(decision.refusals.items()))
        conditions = status.get("conditions", [])
        conditions = set_condition(
            conditions,
            "Ready",
            phase == "Healthy" or (primary is not None and primary_state.health == "Healthy"),
            phase,
            reason,
            generation=generation,
        )
        conditions = set_condition(
            conditions,
            "Degraded",
            phase in ("Degraded", "NoPrimary"),
            "FailoverBlocked" if blocked else phase,
            f"{reason}" + (f" (candidates: {refusals})" if blocked and refusals else ""),
            generation=generation,
        )
        conditions = set_condition(
            conditions, "FailoverInProgress", False, "Idle", "no failover in progress", generation=generation
        )
        failing = primary_state.failing_since
        summary: Obj = {
            "phase": phase,
            "reason": reason,
            "totalNodes": total,
            "healthyNodes": healthy,
            "healthy": f"{healthy}/{total}",
            "observedGeneration": generation,
            "primaryFailingSince": _iso(time.time() - (time.monotonic() - failing)) if failing is not None else None,
            "conditions": conditions,
        }
        current = {k: status.get(k) for k in summary}
        if current.get("primaryFailingSince") and summary["primaryFailingSince"]:
            summary["primaryFailingSince"] = current["primaryFailingSince"]
        now = time.monotonic()
        if self._same_summary(current, summary) and not (probed and heartbeat_due(self.heartbeat, now)):
            return
        if probed:
            summary["lastProbeTime"] = now_iso()
        await self.kube.patch(WHMCLUSTERS, self.namespace, self.name, {"status": summary}, subresource="status")
        if probed:  # the first heartbeat after a start comes after a random share of the interval, not in step
            spread = random.uniform(0, HEARTBEAT_SECONDS / 2) if self.heartbeat is None else 0.0
            self.heartbeat = now - spread
        metrics.HEALTHY_NODES.labels(self.namespace, self.name).set(healthy)
        names = {node["metadata"]["name"] for node in nodes}
        for gone in self.primary_series - names:
            metrics.PRIMARY.remove(self.namespace, self.name, gone)
        for name in names:
            metrics.PRIMARY.labels(self.namespace, self.name, name).set(1 if name == primary else 0)
        self.primary_series = names

    @staticmethod
    def _same_summary(current: Obj, new: Obj) -> bool:
        def strip(conditions: list[Obj] | None) -> list[tuple[str, str, str, str]]:
            return sorted((c["type"], c["status"], c["reason"], c["message"]) for c in conditions or [])

        return all(current.get(k) == v for k, v in new.items() if k != "conditions") and strip(
            current.get("conditions")
        ) == strip(new["conditions"])

"""The proxy's configuration, read from the WHMCluster and its WHMNodes and kept current by watching them.

``ConfigWatcher`` lists both kinds, then watches each from the list's resourceVersion (the operator's
``relisting`` loop and ``follow`` watch); with ``spec.nodeTLS`` enabled, likewise the one Secret its caSecret
names (a field selector on its name), so that a rotated CA reaches the workers as a cluster change does; with an
HTTPS listener, likewise each Secret ``loadBalancer.tls`` names (its certificate kept at its last good value while
the Secret is missing or broken), and no other: the proxy never reads the private keys of Secrets it does not serve.
It lists again on 410 Gone, after API errors (with a growing backoff, so an API server restart is survived),
every ``resync`` seconds, when the cluster's ``ha.whm.io/reload`` annotation takes a new value or its CA Secret
or certificate Secrets other names, and when ``reload()`` is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from whm_ha.crd.annotations import RELOAD
from whm_ha.crd.whmcluster import LoadBalancer, NodeTLS
from whm_ha.kube.client import SECRETS, WHMCLUSTERS, WHMNODES, KubeClient, Obj
from whm_ha.kube.informer import follow, relisting
from whm_ha.node_tls import ClientTLS, ca_from_secret, settings
from whm_ha.tls import TLS_SECRET_TYPE, Certificate, SecretCertificates

from .balancer import Algorithm, NodeSpec

log = logging.getLogger("whm_ha_proxy.config")

WATCH_SECONDS = 60
"""How long one watch request lasts before it is renewed from its last resourceVersion."""


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the workers need to route: derived from one WHMCluster and its WHMNodes."""

    algorithm: Algorithm = "roundRobin"
    retries: int = 2
    retry_after_timeout: bool = True
    """Whether an idempotent request without a body is retried when its node took it and did not answer in time."""
    no_retry_after_timeout: tuple[str, ...] = ()
    """Path patterns (fnmatch, ``*`` matching ``/`` too) never retried after a timeout."""
    sticky_cookie: str | None = None
    """Name of the affinity cookie, None when sticky sessions are off."""
    trusted_networks: tuple[str, ...] = ()
    """CIDRs whose peers' forwarded headers (and PROXY headers) are believed."""
    proxy_protocol: bool = False
    passthrough: bool = False
    """Whether connections on the passthrough listener are spliced to nodes."""
    passthrough_port: int | None = None
    """The nodes' TLS port for passthrough; None: each node's port."""
    nodes: tuple[NodeSpec, ...] = ()
    generation: int = 0
    """Number of reloads (annotation or admin) so far: a new value makes workers forget passive ejections."""
    tls: ClientTLS | None = None
    """How the nodes are verified when the proxy connects to them with TLS (nodeTLS.enabled); None: plain HTTP."""
    tls_problem: str | None = None
    """Why the nodes cannot be verified as nodeTLS asks (its CA Secret is missing or holds no certificate):
    every connect fails with it, rather than go unverified."""
    redirect_http: bool = False
    """The plain listener answers 308 to https (``https.redirect_location``)."""
    hsts: str = ""
    """The Strict-Transport-Security value on HTTPS answers; empty for none."""
    certificates: tuple[tuple[str, str, str], ...] = ()
    """(Secret, certificate chain PEM, key PEM) the HTTPS listener serves, the first the default."""

    @property
    def routable(self) -> list[str]:
        return [node.name for node in self.nodes if node.routable]

    def retries_after_timeout(self, target: bytes) -> bool:
        """Whether a request for ``target`` (path and query) may go to another node after its node timed out."""
        if not self.retry_after_timeout:
            return False
        path = target.partition(b"?")[0].decode("latin-1")
        return not any(fnmatchcase(path, pattern) for pattern in self.no_retry_after_timeout)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": [asdict(node) for node in self.nodes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProxyConfig:
        return cls(
            **{
                **data,
                "no_retry_after_timeout": tuple(data["no_retry_after_timeout"]),
                "trusted_networks": tuple(data["trusted_networks"]),
                "nodes": tuple(NodeSpec(**node) for node in data["nodes"]),
                "tls": ClientTLS(**data["tls"]) if data.get("tls") is not None else None,
                "certificates": tuple(tuple(served) for served in data["certificates"]),
            }
        )


def node_spec(obj: Obj) -> NodeSpec:
    """A WHMNode object as the balancer sees it (routable only when the operator says Healthy)."""
    spec = obj.get("spec", {})
    return NodeSpec(
        name=obj["metadata"]["name"],
        address=str(spec.get("address", "")),
        port=int(spec.get("port", 4000)),
        weight=int(spec.get("weight", 1)),
        healthy=(obj.get("status") or {}).get("health") == "Healthy",
        maintenance=bool(spec.get("maintenance", False)),
    )


def ca_secret_name(cluster: Obj | None) -> str | None:
    """The Secret whose CA the proxy verifies the nodes with: nodeTLS.caSecret while nodeTLS is enabled."""
    if cluster is None:
        return None
    node_tls = NodeTLS.model_validate(cluster.get("spec", {}).get("nodeTLS", {}))
    return node_tls.ca_secret.name if node_tls.enabled and node_tls.ca_secret is not None else None


def upstream_tls(cluster: Obj, secret: Obj | None) -> tuple[ClientTLS | None, str | None]:
    """The cluster's upstream TLS settings (None when nodeTLS is off), and why they cannot be used, if they cannot
    (the CA Secret, ``secret`` as watched, is missing or holds no certificate under its key)."""
    node_tls = NodeTLS.model_validate(cluster.get("spec", {}).get("nodeTLS", {}))
    if not node_tls.enabled:
        return None, None
    selector = node_tls.ca_secret
    if selector is None:
        return settings(node_tls, None), None
    if secret is None:
        return settings(node_tls, None), f"CA Secret {selector.name} not found"
    try:
        return settings(node_tls, ca_from_secret(secret, selector.key)), None
    except ValueError as exc:
        return settings(node_tls, None), f"CA Secret {selector.name} {exc}"


def load_balancer(cluster: Obj) -> LoadBalancer:
    return LoadBalancer.model_validate(cluster.get("spec", {}).get("loadBalancer", {}))


def certificate_secret_names(cluster: Obj | None) -> tuple[str, ...]:
    """The Secrets whose certificates the HTTPS listener serves, in the cluster's order (the first the default)."""
    if cluster is None:
        return ()
    return tuple(reference.secret_name for reference in load_balancer(cluster).tls.certificates)


def build_config(
    cluster: Obj | None,
    nodes: list[Obj],
    generation: int,
    ca_secret: Obj | None = None,
    certificates: tuple[Certificate, ...] = (),
) -> ProxyConfig | None:
    """The configuration for a cluster object, its nodes, the Secret of its nodeTLS CA and the certificates the
    HTTPS listener serves; None when the cluster does not exist."""
    if cluster is None:
        return None
    balancing = load_balancer(cluster)
    sticky = balancing.sticky_sessions
    tls, tls_problem = upstream_tls(cluster, ca_secret)
    hsts = balancing.tls.hsts
    return ProxyConfig(
        algorithm=balancing.algorithm,
        retries=balancing.retries,
        retry_after_timeout=balancing.retry_after_timeout.enabled,
        no_retry_after_timeout=tuple(balancing.retry_after_timeout.exclude_paths),
        sticky_cookie=sticky.cookie_name if sticky.enabled else None,
        trusted_networks=tuple(balancing.client_address.trusted_networks),
        proxy_protocol=balancing.client_address.proxy_protocol,
        passthrough=balancing.passthrough.enabled,
        passthrough_port=balancing.passthrough.node_port,
        nodes=tuple(sorted((node_spec(obj) for obj in nodes), key=lambda node: node.name)),
        generation=generation,
        tls=tls,
        tls_problem=tls_problem,
        redirect_http=balancing.tls.redirect_http,
        hsts=f"max-age={hsts.max_age_seconds}" + ("; includeSubDomains" if hsts.include_sub_domains else "")
        if hsts.max_age_seconds
        else "",
        certificates=tuple((served.source, *served.pem) for served in certificates),
    )


class _Relist(Exception):
    """The watch loop must list again (reload annotation changed)."""


@dataclass
class ConfigWatcher:
    """Keeps ``config`` current and calls ``on_change`` with the first and every new value."""

    client: KubeClient
    namespace: str
    cluster: str
    on_change: Callable[[ProxyConfig | None], None]
    resync: float = 300.0
    https: bool = False
    """Watch the namespace's Secrets for the certificates the cluster names (the proxy has an HTTPS listener)."""
    config: ProxyConfig | None = None
    loaded: bool = False
    """True once the first list succeeded."""
    lists: int = 0
    """Full reads so far (initial, resyncs, reloads, recoveries)."""
    reloads: int = 0
    """Reloads requested so far (annotation or ``reload()``)."""
    _cluster_obj: Obj | None = None
    _nodes: dict[str, Obj] = field(default_factory=dict)
    _ca_name: str | None = None
    """The nodeTLS CA Secret watched (None: none)."""
    _ca_secret: Obj | None = None
    _certificate_names: tuple[str, ...] = ()
    """With ``https``, the certificate Secrets the cluster names, each listed and watched by name."""
    _secrets: dict[str, Obj] = field(default_factory=dict)
    """Those of them that exist (of other types than kubernetes.io/tls, only what says so)."""
    _certificates: SecretCertificates = field(default_factory=SecretCertificates)
    certificate_problems: dict[str, str] = field(default_factory=dict)
    """What is wrong with each certificate Secret the cluster names, by Secret."""
    served_certificates: tuple[Certificate, ...] = ()
    """The certificates the HTTPS listener serves."""
    _reload_value: str | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _listed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """List and watch until cancelled."""
        await relisting("configuration", self._list, self._watch)

    async def reload(self, timeout: float = 10.0) -> ProxyConfig | None:
        """Read everything again now; returns the configuration after that read."""
        self._listed.clear()
        self.reloads += 1
        self._wake.set()
        await asyncio.wait_for(self._listed.wait(), timeout)
        return self.config

    async def _list(self) -> tuple[str, str, str | None, tuple[tuple[str, str], ...]]:
        self._wake.clear()
        clusters, nodes = await asyncio.gather(
            *(self.client.list(kind, self.namespace) for kind in (WHMCLUSTERS, WHMNODES))
        )
        self._cluster_obj = next((c for c in clusters["items"] if c["metadata"]["name"] == self.cluster), None)
        self._certificate_names = certificate_secret_names(self._cluster_obj) if self.https else ()
        listed_certificates = await asyncio.gather(
            *(
                self.client.list(SECRETS, self.namespace, field_selector=f"metadata.name={name}")
                for name in self._certificate_names
            )
        )
        self._secrets = {
            s["metadata"]["name"]: _certificate_part(s) for listed in listed_certificates for s in listed["items"]
        }
        self._reload_value = _reload_value(self._cluster_obj)
        self._nodes = {n["metadata"]["name"]: n for n in nodes["items"] if self._mine(n)}
        self._ca_name = ca_secret_name(self._cluster_obj)
        secrets_version = None
        self._ca_secret = None
        if self._ca_name is not None:
            secrets = await self.client.list(SECRETS, self.namespace, field_selector=f"metadata.name={self._ca_name}")
            self._ca_secret = next(iter(secrets["items"]), None)
            secrets_version = secrets["metadata"]["resourceVersion"]
        self.lists += 1
        first = not self.loaded
        self.loaded = True
        self._publish(always=first)
        self._listed.set()
        certificate_versions = tuple(
            (name, str(listed["metadata"]["resourceVersion"]))
            for name, listed in zip(self._certificate_names, listed_certificates, strict=True)
        )
        return (
            clusters["metadata"]["resourceVersion"],
            nodes["metadata"]["resourceVersion"],
            secrets_version,
            certificate_versions,
        )

    async def _watch(self, versions: tuple[str, str, str | None, tuple[tuple[str, str], ...]]) -> None:
        """Watch both kinds (and the CA Secret, and with ``https`` each certificate Secret) until a re-list is due;
        raises what ended a watch abnormally."""
        clusters_version, nodes_version, secrets_version, certificate_versions = versions
        watches = [
            (WHMCLUSTERS, clusters_version, self._on_cluster, ""),
            (WHMNODES, nodes_version, self._on_node, ""),
        ]
        if secrets_version is not None:
            watches.append((SECRETS, secrets_version, self._on_ca_secret, f"metadata.name={self._ca_name}"))
        for name, version in certificate_versions:
            watches.append((SECRETS, version, self._on_secret, f"metadata.name={name}"))
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(
                follow(self.client, kind, self.namespace, version, apply, seconds=WATCH_SECONDS, field_selector=fields)
            )
            for kind, version, apply, fields in watches
        ]
        tasks.append(asyncio.create_task(self._wake.wait()))
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.resync, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, _Relist):
                raise error

    def _on_cluster(self, kind: str, obj: Obj) -> None:
        if obj["metadata"]["name"] != self.cluster:
            return
        self._cluster_obj = None if kind == "DELETED" else obj
        if kind != "DELETED" and _reload_value(obj) != self._reload_value:
            log.info("reload requested by annotation %s", RELOAD)
            self.reloads += 1
            raise _Relist
        if ca_secret_name(self._cluster_obj) != self._ca_name or (
            self.https and certificate_secret_names(self._cluster_obj) != self._certificate_names
        ):
            raise _Relist  # another CA Secret, or other certificate Secrets, to read and watch
        self._publish()

    def _on_ca_secret(self, kind: str, obj: Obj) -> None:
        self._ca_secret = None if kind == "DELETED" else obj
        self._publish()

    def _on_secret(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if name not in self._certificate_names:  # the watches ask for these only; anything else is not kept
            return
        if kind == "DELETED":
            self._secrets.pop(name, None)
        else:
            self._secrets[name] = _certificate_part(obj)
        self._publish()

    def _on_node(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED" or not self._mine(obj):
            if self._nodes.pop(name, None) is None:
                return
        else:
            self._nodes[name] = obj
        self._publish()

    def _mine(self, node: Obj) -> bool:
        return bool(node.get("spec", {}).get("cluster") == self.cluster)

    def _publish(self, always: bool = False) -> None:
        """Calls ``on_change`` when the configuration changed, or ``always`` (the first list: even no cluster
        is news to workers, which listen only once they have a configuration)."""
        self.served_certificates = self._serve_certificates() if self.https else ()
        config = build_config(
            self._cluster_obj, list(self._nodes.values()), self.reloads, self._ca_secret, self.served_certificates
        )
        if always or config != self.config:
            _log_tls_change(self.config, config)
            self.config = config
            self.on_change(config)

    def _serve_certificates(self) -> tuple[Certificate, ...]:
        """The certificates of the Secrets the cluster names (logging each problem once, as it appears)."""
        names = self._certificate_names
        served = self._certificates.update(names, self._secrets)
        for name, problem in served.problems.items():
            if self.certificate_problems.get(name) != problem:
                log.error("TLS certificate from Secret %s/%s: %s", self.namespace, name, problem)
        for name in self.certificate_problems.keys() - served.problems.keys():
            if name in names:
                log.info("TLS certificate from Secret %s/%s: loaded", self.namespace, name)
        self.certificate_problems = served.problems
        return served.certificates


def _certificate_part(secret: Obj) -> Obj:
    """What the proxy keeps of a Secret: all of a TLS one, only the name, version and type of others."""
    if secret.get("type") == TLS_SECRET_TYPE:
        return secret
    return {"metadata": secret["metadata"], "type": secret.get("type")}


def _log_tls_change(old: ProxyConfig | None, new: ProxyConfig | None) -> None:
    """Say it once when the nodes' certificates stop being verified, and when they cannot be verified."""
    was_insecure = old is not None and old.tls is not None and old.tls.insecure
    if new is not None and new.tls is not None and new.tls.insecure and not was_insecure:
        log.warning("nodeTLS.insecureSkipVerify is on: any certificate the nodes present is accepted")
    problem = new.tls_problem if new is not None else None
    if problem is not None and problem != (old.tls_problem if old is not None else None):
        log.warning("nodes cannot be verified, every connection to them fails: %s", problem)


def _reload_value(cluster: Obj | None) -> str | None:
    if cluster is None:
        return None
    return (cluster["metadata"].get("annotations") or {}).get(RELOAD)

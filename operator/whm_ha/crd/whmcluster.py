"""WHMCluster: a group of WHM nodes with one primary, health checking, failover and load balancing."""

from __future__ import annotations

from datetime import datetime
from ipaddress import ip_network
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from .common import (
    HISTORY_LIMIT,
    Condition,
    CRDModel,
    FailoverRecord,
    LabelSelector,
    LocalObjectReference,
    Port,
    RequestOutcome,
    SecretKeySelector,
    cel,
    conditions_field,
)


class HealthCheck(CRDModel):
    """How the operator probes each node, named as Kubernetes probes are."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.timeoutSeconds <= self.periodSeconds",
                    "timeoutSeconds must not exceed periodSeconds",
                    ".timeoutSeconds",
                ),
                cel("!has(self.scheme) || self.type == 'http'", "scheme applies to http probes only", ".scheme"),
            ]
        }
    }

    type: Literal["http", "tcp"] = "http"
    """http: GET on path, healthy on a 2xx or 3xx answer; tcp: healthy when a connection opens."""
    scheme: Literal["http", "https"] | None = None
    """http or https (http probes only); default https when nodeTLS is enabled, else http. https verifies the
    node's certificate as nodeTLS says (caSecret, serverName, insecureSkipVerify), also when nodeTLS is off."""
    path: str = Field(default="/healthz", max_length=2048, pattern=r"^/")
    """Path of the HTTP GET (http only)."""
    port: Port | None = None
    """Port to probe; defaults to the node's port."""
    period_seconds: int = Field(default=5, ge=1, le=3600)
    """How often to probe, in seconds."""
    timeout_seconds: int = Field(default=2, ge=1, le=600)
    """Seconds after which a probe counts as failed."""
    failure_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive failures after which a node is Unhealthy."""
    success_threshold: int = Field(default=1, ge=1, le=100)
    """Consecutive successes after which an Unhealthy node is Healthy again."""


class NodeTLS(CRDModel):
    """TLS from the proxy to the nodes, and how the nodes' certificates are verified (by the proxy and by
    https probes)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!(self.insecureSkipVerify && has(self.caSecret))",
                    "insecureSkipVerify and caSecret are exclusive: a CA is pointless when nothing is verified",
                    ".insecureSkipVerify",
                ),
            ]
        }
    }

    enabled: bool = False
    """The proxy connects to the nodes with TLS (re-encryption); https probes follow unless scheme says."""
    ca_secret: SecretKeySelector | None = None
    """Secret key holding the PEM CA certificate(s) the nodes' certificates must chain to (default key ca.crt);
    without it, the system's trusted CAs."""
    server_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    """Host name sent as SNI and that every node's certificate must be valid for; default each node's
    spec.address (its DNS name or IP address)."""
    insecure_skip_verify: bool = False
    """Accept any certificate (encryption without authentication); the operator posts an InsecureNodeTLS Warning
    Event on the cluster while it is on."""


class Failover(CRDModel):
    """When and how the primary node is replaced."""

    automatic: bool = True
    """Elect a new primary when the current one becomes Unhealthy."""
    paused: bool = False
    """Pause all automation for this cluster (manual failover still works)."""
    min_interval_seconds: int = Field(default=60, ge=0, le=86400)
    """Minimum seconds between two automatic failovers, against flapping."""
    failback: bool = False
    """Hand the role back to a higher-priority node when it recovers (default: keep a healthy primary)."""


class StickySessions(CRDModel):
    """Cookie-based session affinity in the proxy."""

    enabled: bool = False
    """Pin a client to the node that served it first, while that node is healthy."""
    cookie_name: str = Field(default="WHMHA_NODE", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the affinity cookie."""


class RetryAfterTimeout(CRDModel):
    """Whether the proxy sends a request to another node when the one it went to took it but did not answer
    within the proxy's header timeout (the node may still be carrying it out)."""

    enabled: bool = True
    """Retry GET, HEAD, OPTIONS, PUT and DELETE without a body after a timeout (WHM's APIs change state on GET)."""
    exclude_paths: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64
    )
    """Path patterns never retried after a timeout (shell-style, `*` matches `/` too; the query is ignored)."""


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""RFC 1123 subdomain: the shape of a Secret's name."""


class TLSCertificate(CRDModel):
    """A certificate the proxy serves."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """A `kubernetes.io/tls` Secret in the cluster's namespace (tls.crt: the certificate, then its intermediates;
    tls.key: its private key)."""


class HSTS(CRDModel):
    """The Strict-Transport-Security header on HTTPS answers."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!self.includeSubDomains || self.maxAgeSeconds > 0",
                    "includeSubDomains needs a maxAgeSeconds above 0",
                    ".includeSubDomains",
                ),
            ]
        }
    }

    max_age_seconds: int = Field(default=0, ge=0, le=63072000)
    """How long browsers keep to HTTPS for the host (0: no header; at most two years)."""
    include_sub_domains: bool = False
    """Apply it to every subdomain of the host too."""


class LoadBalancerTLS(CRDModel):
    """HTTPS on the proxy's TLS listener (`whm-ha proxy --listen-tls`)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.certificates.all(c, self.certificates.filter(d, d.secretName == c.secretName).size() == 1)",
                    "each Secret may be named once",
                    ".certificates",
                ),
            ]
        }
    }

    certificates: list[TLSCertificate] = Field(default_factory=list, max_length=32)
    """The certificates served: the first to clients whose server name (SNI) no other one matches, the others to
    the names (and wildcards) they carry."""
    redirect_http: bool = False
    """The plain listener answers requests with 308 to the same host and path over https. Forwarded as without it:
    ACME HTTP-01 challenges (under /.well-known/acme-challenge/), and requests with no Host or one that is not
    host[:port] (a redirect could not name their host)."""
    hsts: HSTS = Field(default_factory=HSTS)
    """Strict-Transport-Security on HTTPS answers (replacing a node's own)."""


def _cidr(text: str) -> str:
    """A CIDR in its canonical form (host bits cleared), as the API server's ``isCIDR`` accepts it."""
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR (ADDRESS/PREFIX, e.g. 10.0.0.0/8)")
    return str(ip_network(text, strict=False))


CIDR = Annotated[
    str,
    Field(
        min_length=3,
        max_length=49,
        json_schema_extra={"x-kubernetes-validations": [cel("isCIDR(self)", "must be a CIDR, e.g. 10.0.0.0/8")]},
    ),
    AfterValidator(_cidr),
]


class ClientAddress(CRDModel):
    """Whose word the proxy takes for the client's address. By default none: the proxy is the edge, and the
    X-Real-IP, Forwarded and X-Forwarded-Proto a node gets are the connection's, whatever the client sent."""

    trusted_networks: list[CIDR] = Field(
        default_factory=list, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Networks of load balancers in front of the proxy: from a peer in one, forwarded headers are kept and the
    client is the last untrusted hop of X-Forwarded-For."""
    proxy_protocol: bool = False
    """Require a PROXY protocol (v1 or v2) header from peers in trustedNetworks and take the client's address from
    it; a connection from elsewhere that sends one is closed."""


class Passthrough(CRDModel):
    """L4 TLS passthrough, for nodes that terminate TLS themselves: on the proxy's ``--listen-passthrough`` port,
    connections are spliced to a node's TLS port unread (the server name is read from the ClientHello), sticky
    by client address."""

    enabled: bool = False
    """Splice connections on the passthrough port (when off, connections to it are closed)."""
    node_port: Port | None = None
    """The nodes' TLS port, e.g. 2087 for WHM; defaults to each node's port."""


class LoadBalancer(CRDModel):
    """How the proxy spreads requests over the healthy nodes."""

    algorithm: Literal["roundRobin", "leastConnections", "weighted"] = "roundRobin"
    """roundRobin, leastConnections, or weighted (smooth weighted round-robin on the nodes' weights)."""
    port: Port = 8080
    """Port the proxy listens on in the cluster."""
    sticky_sessions: StickySessions = Field(default_factory=StickySessions)
    """Cookie-based session affinity."""
    retries: int = Field(default=2, ge=0, le=10)
    """How many other nodes a failed request may be retried on."""
    retry_after_timeout: RetryAfterTimeout = Field(default_factory=RetryAfterTimeout)
    """Which requests are retried once a node took them and did not answer in time."""
    tls: LoadBalancerTLS = Field(default_factory=LoadBalancerTLS)
    """HTTPS: certificates, redirect from HTTP, HSTS."""
    client_address: ClientAddress = Field(default_factory=ClientAddress)
    """Trusted load balancers in front of the proxy, and PROXY protocol."""
    passthrough: Passthrough = Field(default_factory=Passthrough)
    """L4 TLS passthrough to nodes that terminate TLS themselves."""


class Discovery(CRDModel):
    """Turn pods into WHMNodes automatically."""

    pod_selector: LabelSelector
    """Pods in the cluster's namespace matching this selector become WHMNodes owned by the operator."""
    port: Port = 4000
    """Port of the WHM service on each discovered pod."""
    priority: int = Field(default=100, ge=0, le=1000)
    """Priority given to discovered nodes."""


class Database(CRDModel):
    """The MySQL replication that holds the legacy tables of this cluster."""

    replication_ref: LocalObjectReference
    """The MySQLReplication (same namespace) whose primary holds the legacy tables."""
    schema_name: str = Field(default="whm_ha", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")
    """Database (schema) holding the legacy tables."""


class Sessions(CRDModel):
    """The shared session store in the cluster's database."""

    ttl_seconds: int = Field(default=86400, ge=60, le=31536000)
    """Lifetime of an idle session."""
    cleanup_interval_seconds: int = Field(default=3600, ge=60, le=86400)
    """How often the operator deletes expired sessions and cache entries."""


class WHMClusterSpec(CRDModel):
    """Desired state of a WHM cluster."""

    health_check: HealthCheck = Field(default_factory=HealthCheck)
    """How nodes are probed."""
    node_tls: NodeTLS = Field(default_factory=NodeTLS, alias="nodeTLS")
    """TLS to the nodes: the proxy's upstream connections and the verification of https probes."""
    failover: Failover = Field(default_factory=Failover)
    """Failover policy."""
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    """Proxy settings."""
    discovery: Discovery | None = None
    """Optional pod discovery; without it nodes are the WHMNodes that name this cluster."""
    database: Database | None = None
    """Optional database for the legacy tables (health checks, failover events, sessions, cache)."""
    sessions: Sessions = Field(default_factory=Sessions)
    """Shared session store settings."""

    @property
    def probe_scheme(self) -> Literal["http", "https"]:
        """The scheme of http probes: as healthCheck.scheme says, else https exactly when nodeTLS is enabled."""
        if self.health_check.scheme is not None:
            return self.health_check.scheme
        return "https" if self.node_tls.enabled else "http"


ClusterPhase = Literal["Pending", "Healthy", "Degraded", "FailingOver", "NoPrimary"]


class WHMClusterStatus(CRDModel):
    """Observed state of a WHM cluster, written by the operator."""

    phase: ClusterPhase | None = None
    """Pending, Healthy, Degraded, FailingOver or NoPrimary."""
    reason: str | None = Field(default=None, max_length=4096)
    """Why the cluster is in this phase, in plain words."""
    primary_node: str | None = Field(default=None, max_length=253)
    """Name of the WHMNode that is primary."""
    primary_since: datetime | None = None
    """When the current primary took the role."""
    primary_failing_since: datetime | None = None
    """Since when the current primary has been failing its probes (absent while it is healthy)."""
    total_nodes: int | None = Field(default=None, ge=0)
    """Number of nodes in the cluster."""
    healthy_nodes: int | None = Field(default=None, ge=0)
    """Number of Healthy nodes."""
    healthy: str | None = Field(default=None, max_length=32)
    """healthyNodes/totalNodes, for display (e.g. 2/3)."""
    conditions: list[Condition] = conditions_field()
    """Ready, Degraded, FailoverInProgress and others."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this status reflects."""
    last_probe_time: datetime | None = None
    """When the operator last probed every node of the cluster (refreshed at most every 30 s while nothing
    changes: the heartbeat of the cluster and of its nodes, whose statuses are written only when they change)."""
    last_failover: FailoverRecord | None = None
    """The most recent change of primary."""
    failover_history: list[FailoverRecord] = Field(default_factory=list, max_length=HISTORY_LIMIT)
    """Recent changes of primary, newest first."""
    last_request: RequestOutcome | None = None
    """Outcome of the last manual request (failover-to, reload)."""

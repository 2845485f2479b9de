"""MySQLReplication: a MySQL or MariaDB primary with GTID replicas, kept available by the operator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from .backup import BinlogArchiveStatus, BootstrapSpec, ReplicationBackupSpec
from .common import (
    HISTORY_LIMIT,
    Condition,
    CRDModel,
    FailoverRecord,
    LocalObjectReference,
    Name,
    Port,
    RequestOutcome,
    SecretKeySelector,
    cel,
    conditions_field,
)

MAX_MEMBERS = 9


class Member(CRDModel):
    """One database server of the replication."""

    name: Name
    """Unique name of the member."""
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")
    """Host name or IP address the operator and the replicas connect to."""
    port: Port = 3306
    """MySQL port."""
    priority: int = Field(default=100, ge=0, le=1000)
    """Tie-breaker among equally up-to-date candidates: higher wins."""
    never_promote: bool = False
    """Never choose this member as primary (e.g. a delayed or backup replica)."""


class ReplicationTLS(CRDModel):
    """TLS on the replication channels, the operator's sessions to the members, and backups and restores."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                # Members still refusing plaintext would refuse the operator's plaintext sessions (3159): the
                # operator must have set require_secure_transport OFF, with TLS still on, first.
                cel(
                    "!has(oldSelf.requireSecureTransport) || !oldSelf.requireSecureTransport || self.enabled",
                    "turn requireSecureTransport off and let the operator apply it before disabling TLS",
                    ".enabled",
                ),
            ]
        }
    }

    enabled: bool = False
    """Replicas connect to the primary with TLS and verify its certificate; the operator, its backups and its
    restores connect to every member with TLS and verify its certificate."""
    ca_secret: SecretKeySelector | None = None
    """Secret key holding the CA bundle (PEM) the operator verifies the members' certificates with; during a CA
    change, the old and the new CA both. Read again within 30 s of a change."""
    ca_file: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^[^\s'\"\\]+$")
    """Path of the same CA bundle on every member (the caSecret mounted there) that replicas verify their source
    with (MASTER_SSL_CA / SOURCE_SSL_CA); relative paths are relative to the member's data directory. Replicas
    read it each time they connect."""
    verify_server_name: bool = True
    """The operator's sessions also check that a member's certificate names the member's host. Replicas check the
    name wherever their server does (MariaDB 10.11 and MySQL do; MariaDB 11.8 checks only the CA of a source
    reached by IP address)."""
    require_secure_transport: bool = False
    """Members refuse clients without TLS: the operator sets require_secure_transport=ON on every member it
    reaches (again after a restart; put it in the members' configuration too, to close that window). False: it
    sets it OFF on every member found refusing them; TLS can be disabled only in a later change."""


SchemaName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


class ApplicationAccount(CRDModel):
    """The account the operator keeps on the primary for application data (the legacy tables, sessions, cache).
    It holds only schema privileges, which read-only servers refuse, so its writes can land only on the primary."""

    secret: LocalObjectReference | None = None
    """Secret (keys username, password); default ``<name>-app``. Created with a random password when missing."""
    schemas: list[SchemaName] = Field(
        default_factory=lambda: ["whm_ha"],
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Schemas the account may use: SELECT, INSERT, UPDATE, DELETE and the DDL of migrations on each."""


def application_secret_name(replication: str, account: ApplicationAccount) -> str:
    """The Secret of the application account of the MySQLReplication ``replication``."""
    return account.secret.name if account.secret is not None else f"{replication}-app"


class MySQLReplicationSpec(CRDModel):
    """Desired state of a replicated MySQL/MariaDB group."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.members.exists(m, m.name == self.primary)",
                    "primary must name one of the members",
                    ".primary",
                ),
                cel(
                    "!self.members.exists(m, m.name == self.primary && m.neverPromote)",
                    "the bootstrap primary must not be marked neverPromote",
                    ".primary",
                ),
                cel(
                    "!self.tls.enabled || has(self.tls.caSecret)",
                    "tls.caSecret is required when tls.enabled is true",
                    ".tls.caSecret",
                ),
                cel(
                    "!self.tls.enabled || has(self.tls.caFile)",
                    "tls.caFile is required when tls.enabled is true",
                    ".tls.caFile",
                ),
                cel(
                    "!has(self.bootstrap) || !has(self.bootstrap.recovery) || has(self.bootstrap.recovery.storage)"
                    " || has(self.backup)",
                    "bootstrap.recovery needs its storage, or spec.backup.storage",
                    ".bootstrap.recovery.storage",
                ),
                cel(
                    "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == "
                    "oldSelf.bootstrap)",
                    "bootstrap is immutable",
                    ".bootstrap",
                ),
                cel(
                    "!self.tls.requireSecureTransport || self.tls.enabled",
                    "tls.requireSecureTransport needs tls.enabled",
                    ".tls.requireSecureTransport",
                ),
            ]
        }
    }

    flavor: Literal["mariadb", "mysql"] = "mariadb"
    """Server flavor: mariadb (10.6+) or mysql (8.0+)."""
    members: list[Member] = Field(
        min_length=1,
        max_length=MAX_MEMBERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """The database servers; names are unique."""
    primary: Name
    """The bootstrap primary: used only when no member is primary yet."""
    credentials_secret: LocalObjectReference
    """Secret (keys username, password) of an administrative account on every member."""
    replication_secret: LocalObjectReference
    """Secret (keys username, password) of the replication account; created on the primary when missing."""
    application_account: ApplicationAccount = Field(default_factory=ApplicationAccount)
    """The account the operator, the shim and applications write application data with."""
    tls: ReplicationTLS = Field(default_factory=ReplicationTLS)
    """TLS on the replication channels, the operator's sessions, backups and restores."""
    semi_sync: bool = False
    """Semi-synchronous replication: a commit waits for one replica, so no acknowledged write is lost."""
    max_lag_seconds: int = Field(default=30, ge=0, le=86400)
    """Replicas lagging more are not promoted (unless forced) and not served to readers."""
    automatic_failover: bool = True
    """Promote a replica automatically when the primary is confirmed dead."""
    min_interval_seconds: int = Field(default=300, ge=0, le=86400)
    """Minimum seconds between two automatic promotions."""
    period_seconds: int = Field(default=5, ge=1, le=3600)
    """How often every member is inspected."""
    failure_threshold: int = Field(default=3, ge=1, le=100)
    """Failed inspections of the primary in a row before it is considered down."""
    backup: ReplicationBackupSpec | None = None
    """Scheduled backups, their storage and retention, and the binary log archive; none: no backup is scheduled."""
    bootstrap: BootstrapSpec | None = None
    """Where a new replication's data comes from (a backup); none: the members' own data. Immutable."""


class PromotionRecord(FailoverRecord):
    """One promotion."""

    unfenced: list[Name] = Field(default_factory=list, max_length=MAX_MEMBERS)
    """Members that could not be reached to be made read-only; each is fenced when it answers, before it rejoins."""


MemberRole = Literal["Primary", "Replica", "Quarantined", "Unknown"]


class MemberStatus(CRDModel):
    """What the operator last observed of one member."""

    name: Name
    """The member's name."""
    role: MemberRole = "Unknown"
    """Primary, Replica, Quarantined (errant transactions, kept out) or Unknown."""
    reachable: bool = False
    """The operator could connect to it."""
    read_only: bool | None = None
    """Whether the server refuses writes."""
    io_running: bool | None = None
    """Replica IO thread running."""
    sql_running: bool | None = None
    """Replica SQL thread running."""
    lag_seconds: int | None = Field(default=None, ge=0)
    """Seconds behind the primary: what the replica reports, or more when it lacks what the primary had executed
    that long before (a slow link hides that from its own report); to within an inspection period."""
    gtid_executed: str | None = Field(default=None, max_length=65536)
    """The executed GTID set."""
    last_error: str | None = Field(default=None, max_length=4096)
    """The last IO/SQL or connection error."""


ReplicationPhase = Literal["Pending", "Healthy", "Degraded", "Promoting", "Broken"]


class PromotionProgress(CRDModel):
    """A promotion recorded before any server is touched, so that a restarted operator finishes it."""

    from_: str = Field(default="", alias="from", max_length=63)
    """The primary being replaced."""
    to: str = Field(min_length=1, max_length=63)
    """The member being promoted."""
    type: Literal["automatic", "manual"]
    """Whether the operator decided it or a user asked for it."""
    planned: bool = False
    """A switchover: the old primary answered, so it is fenced and caught up with before the promotion."""
    step: Literal["Preparing", "Promoting"] = "Preparing"
    """Preparing: nothing irreversible done, the promotion may be abandoned; Promoting: it is only finished."""
    reason: str = Field(default="", max_length=4096)
    """Why the primary changes."""
    force: bool = False
    """The request allowed a candidate beyond maxLagSeconds."""
    request_id: str | None = Field(default=None, max_length=253)
    """The id of the manual request, reported in lastRequest at the end."""
    detected_at: datetime
    """When the primary was first seen failing, or the request first seen; durations count from here."""


class RecoveryStatus(CRDModel):
    """The restore of spec.bootstrap.recovery, member by member."""

    phase: Literal["Restoring", "Completed", "Failed"]
    """Restoring (retried each period until every member holds the backup), Completed, or Failed (a human must
    act: the message says what)."""
    backup: str | None = Field(default=None, max_length=128)
    """The backup being restored (``latest`` resolved)."""
    gtid: str | None = Field(default=None, max_length=65536)
    """The backup's GTIDs: every member's executed set once restored."""
    target: str | None = Field(default=None, max_length=128)
    """The target spec.primary is replayed to (spec.bootstrap.recovery.target); none: the backup's position."""
    replayed_gtids: str | None = Field(default=None, max_length=65536)
    """The GTIDs replayed from the binary log archive onto spec.primary after the backup's."""
    restored: list[Name] = Field(default_factory=list, max_length=MAX_MEMBERS)
    """Members that hold the backup."""
    message: str | None = Field(default=None, max_length=4096)
    """The last step's outcome, or why it failed."""
    completed_at: datetime | None = None
    """When every member held the backup."""


class MySQLReplicationStatus(CRDModel):
    """Observed state of the replication, written by the operator."""

    phase: ReplicationPhase | None = None
    """Pending, Healthy, Degraded, Promoting or Broken."""
    reason: str | None = Field(default=None, max_length=4096)
    """Why the replication is in this phase, in plain words."""
    current_primary: str | None = Field(default=None, max_length=63)
    """The member that is primary now."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Replicas with both threads running and lag within maxLagSeconds."""
    max_observed_lag_seconds: int | None = Field(default=None, ge=0)
    """The largest lag among the replicas."""
    members: list[MemberStatus] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Per-member observations."""
    conditions: list[Condition] = conditions_field()
    """Ready, Degraded, ReplicationBroken, LagHigh, ErrantTransactions."""
    promotion_history: list[PromotionRecord] = Field(default_factory=list, max_length=HISTORY_LIMIT)
    """Recent promotions, newest first."""
    last_request: RequestOutcome | None = None
    """Outcome of the last manual promotion request."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this status reflects."""
    last_promotion_time: datetime | None = None
    """When the last promotion finished."""
    promotion: PromotionProgress | None = None
    """The promotion in progress, if any."""
    recovery: RecoveryStatus | None = None
    """The restore of spec.bootstrap.recovery, if asked for."""

    archive: BinlogArchiveStatus | None = None
    """The binary log archive (written only by ``whm-ha binlog-archive``, never by the operator)."""

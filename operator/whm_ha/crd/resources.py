"""The three custom resources: names, models and printer columns."""

from __future__ import annotations

from dataclasses import dataclass, field

from .common import API_VERSION, GROUP, VERSION, CRDModel
from .mysqlbackup import MySQLBackupSpec, MySQLBackupStatus
from .mysqlreplication import MySQLReplicationSpec, MySQLReplicationStatus
from .whmcluster import WHMClusterSpec, WHMClusterStatus
from .whmnode import WHMNodeSpec, WHMNodeStatus


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumns entry."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class CustomResource:
    """One custom resource kind of the ha.whm.io group."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[CRDModel]
    status: type[CRDModel]
    columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)

    group = GROUP
    version = VERSION
    api_version = API_VERSION

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

WHM_CLUSTER = CustomResource(
    kind="WHMCluster",
    plural="whmclusters",
    short_names=("whmc",),
    description="A group of WHM nodes with one primary, health checking, automatic failover and load balancing.",
    spec=WHMClusterSpec,
    status=WHMClusterStatus,
    columns=(
        PrinterColumn("Primary", "string", ".status.primaryNode", "The primary node."),
        PrinterColumn("Healthy", "string", ".status.healthy", "Healthy nodes / all nodes."),
        PrinterColumn("Phase", "string", ".status.phase", "Overall state."),
        AGE,
    ),
)

WHM_NODE = CustomResource(
    kind="WHMNode",
    plural="whmnodes",
    short_names=("whmn",),
    description="One WHM application node of a WHMCluster.",
    spec=WHMNodeSpec,
    status=WHMNodeStatus,
    columns=(
        PrinterColumn("Cluster", "string", ".spec.cluster", "The WHMCluster."),
        PrinterColumn("Address", "string", ".spec.address", "Address routed to and probed."),
        PrinterColumn("Role", "string", ".status.role", "Primary or Secondary."),
        PrinterColumn("Health", "string", ".status.health", "Healthy, Unhealthy or Unknown."),
        PrinterColumn("Priority", "integer", ".spec.priority", "Election priority."),
        AGE,
    ),
)

MYSQL_REPLICATION = CustomResource(
    kind="MySQLReplication",
    plural="mysqlreplications",
    short_names=("myrepl",),
    description="A MySQL or MariaDB primary with GTID replicas, monitored and failed over by the operator.",
    spec=MySQLReplicationSpec,
    status=MySQLReplicationStatus,
    columns=(
        PrinterColumn("Primary", "string", ".status.currentPrimary", "The current primary member."),
        PrinterColumn("Ready", "integer", ".status.readyReplicas", "Replicas replicating within the lag limit."),
        PrinterColumn("Max Lag", "integer", ".status.maxObservedLagSeconds", "Largest replica lag, seconds."),
        PrinterColumn("Phase", "string", ".status.phase", "Overall state."),
        AGE,
    ),
)

MYSQL_BACKUP = CustomResource(
    kind="MySQLBackup",
    plural="mysqlbackups",
    short_names=("mybk",),
    description="One consistent logical backup of a MySQLReplication's member, streamed to object storage.",
    spec=MySQLBackupSpec,
    status=MySQLBackupStatus,
    columns=(
        PrinterColumn("Replication", "string", ".spec.replication", "The MySQLReplication backed up."),
        PrinterColumn("Phase", "string", ".status.phase", "Pending, Running, Completed or Failed."),
        PrinterColumn("Member", "string", ".status.member", "The member backed up."),
        PrinterColumn("Size", "integer", ".status.sizeBytes", "Bytes stored (compressed)."),
        PrinterColumn("Completed", "date", ".status.completedAt", "When the backup became usable."),
        AGE,
    ),
)

ALL: tuple[CustomResource, ...] = (WHM_CLUSTER, WHM_NODE, MYSQL_REPLICATION, MYSQL_BACKUP)

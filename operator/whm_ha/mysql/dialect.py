"""All SQL of the replication manager, per flavor: MariaDB 10.6+ and MySQL 8.0.26+.

Every method returns statement text with ``%s`` placeholders and the parameters apart (`SQL`), so secrets travel
as parameters and never appear in the text, in logs or in reprs.

Choices that differ per flavor:

* Executed GTIDs. MariaDB: ``@@gtid_binlog_state``: exactly what the binary log holds, so what the server sends
  its replicas once promoted, with the last GTID of every server per domain, so divergent histories show even
  when their seqs differ (see `gtid`). ``@@gtid_current_pos`` may include ``gtid_slave_pos`` transactions that
  are not in the binlog (``log_slave_updates=OFF``) and keeps only one GTID per domain; replicas therefore need
  ``log_slave_updates=ON``, as any failover does. MySQL: ``@@gtid_executed``.
* Read-only. MySQL: ``super_read_only`` (implies ``read_only``) stops every account. MariaDB has no
  ``super_read_only``: ``read_only=ON`` stops every account without the READ ONLY ADMIN privilege (10.5.2+;
  since 10.11 SUPER no longer implies it, but ALL PRIVILEGES does). Application accounts must not hold it.
  A member is *writable* only when ``read_only`` (and on MySQL ``super_read_only``) is off, and *fenced* only when
  the variable above is on: a MySQL member started with ``read_only=ON`` alone is neither (its applications cannot
  write, accounts with SUPER still can), so it is opened when it is the primary and fenced when it is not.
* Replica position. MariaDB replicas use ``MASTER_USE_GTID=slave_pos``; before (re)configuring, ``gtid_slave_pos``
  is set per domain to the later of ``@@gtid_binlog_pos`` and ``@@gtid_slave_pos`` (`gtid.resume_position`), so
  a demoted primary resumes after its own binlogged transactions, a replica whose ``gtid_slave_pos`` update was
  lost (a killed DDL) after what its binlog holds, and a replica seeded from a backup at its seeded position
  (``@@gtid_current_pos`` gets the second wrong). MySQL uses ``SOURCE_AUTO_POSITION=1``.
* TLS. Both read the same server options (``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``require_secure_transport``);
  MariaDB 11.4+ also serves TLS with a certificate it makes itself when given none, so TLS being on proves
  nothing there: replicas verify their source's certificate against the CA bundle they are given. A server takes
  new files on ``FLUSH NO_WRITE_TO_BINLOG SSL`` (MariaDB, which binlogs a plain FLUSH) or ``ALTER INSTANCE RELOAD
  TLS`` (MySQL, which does not).
* Semi-sync. MariaDB 10.3+ has it built in (``rpl_semi_sync_master_*``/``_slave_*``); MySQL 8.0.26+ needs the
  ``rpl_semi_sync_source``/``rpl_semi_sync_replica`` plugins. Both wait ``AFTER_SYNC`` (lossless). A fenced MySQL
  member (``super_read_only``) refuses ``INSTALL PLUGIN``, so its configuration must load them at startup.
* Logical backups. MariaDB: ``mariadb-dump --single-transaction --gtid --master-data=2``, which reads the binlog
  position of its consistent snapshot (``binlog_snapshot_file``/``_pos``, no global read lock) and writes it, and
  its GTID position, as comments; a restored member is seeded by setting ``gtid_slave_pos``. MySQL: ``mysqldump
  --single-transaction --source-data=2 --set-gtid-purged=ON``, which holds ``FLUSH TABLES WITH READ LOCK`` while
  it opens the snapshot and reads ``gtid_executed``, and whose dump sets ``GTID_PURGED`` itself when loaded. The
  dump tool and the client connect as the operator does: with TLS verifying the member's CA when the replication's
  TLS is on (MariaDB ``--ssl --ssl-ca``, MySQL ``--ssl-mode=VERIFY_CA``; the name too as `client_options` says).
* Binary log archive. ``mariadb-binlog --read-from-remote-server`` starts after a GTID position
  (``--start-position=0-1-5``) and registers with ``--stop-never-slave-server-id``; ``mysqlbinlog
  --read-from-remote-source=BINLOG-DUMP-GTIDS`` is told the GTIDs to leave out (``--exclude-gtids``) and registers
  with ``--connection-server-id``. Both copy the primary's files as they are (``--raw``) and wait for more
  (``--stop-never``). MariaDB has no server UUID.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from .gtid import Flavor, GtidSet, MariaDBGtidSet, parse_gtid_set, resume_position

Thread = Literal["io", "sql"]
SemiSyncRole = Literal["source", "replica"]
IOState = Literal["running", "connecting", "stopped"]

CONNECT_RETRY_SECONDS = 1
HEARTBEAT_SECONDS = 1
REPLICATION_PRIVILEGE = "REPLICATION SLAVE"
SEMI_SYNC_ACKS = 1
"""Replica acknowledgements a semi-sync commit waits for (MariaDB's only setting; set on MySQL)."""
SEMI_SYNC_KILL_SECONDS = 1
"""How long a MariaDB semi-sync replica's STOP waits for the connection it opens to its source to end its dump
thread there (default 5 s). A vanished source never answers it: with the default, stopping a replica of a
blackholed primary took 5-6 s on MariaDB 11.8 (2 s on 10.11), and a failover missed its bound. A live source
answers within it; one that does not loses its stale dump thread when the replica next registers."""
READ_ONLY_ERRNO = 1290
"""ER_OPTION_PREVENTS_STATEMENT: the server is read-only (or super_read_only) and refuses the statement."""
APPLICATION_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "INDEX", "EVENT")
"""What the application account holds on each of its schemas: the DML of the legacy tables and the DDL of their
migrations. All are schema privileges, which read-only servers refuse (unlike SUPER or READ ONLY ADMIN)."""


_GLOBAL_PRIVILEGES = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)
READ_ONLY_BYPASS = ("ALL PRIVILEGES", "SUPER", "READ ONLY ADMIN", "READ_ONLY ADMIN")
"""Global privileges that MariaDB's read_only lets through (MySQL's super_read_only, which fencing sets there,
binds every account)."""
OFFLINE_MODE_BYPASS = ("ALL PRIVILEGES", "SUPER", "CONNECTION_ADMIN")
"""Global privileges that MySQL's offline_mode neither disconnects nor refuses (a grant of ALL lists SUPER and
CONNECTION_ADMIN; privileges of the active roles are listed too)."""


def fencing_bypass(version: str, grants: Iterable[str]) -> str | None:
    """How an account escapes fencing, from ``SELECT VERSION()`` and its ``SHOW GRANTS``: on MariaDB a privilege
    read_only does not bind, on MySQL one offline_mode does not disconnect (the privilege, and why it matters);
    None when fencing binds it."""
    mariadb = "mariadb" in version.lower()
    bypass, why = (
        (READ_ONLY_BYPASS, "read_only does not bind it: it could write to a fenced member")
        if mariadb
        else (
            OFFLINE_MODE_BYPASS,
            "offline_mode does not disconnect it: a member being fenced could tell it of a commit no replica has",
        )
    )
    for grant in grants:
        match = _GLOBAL_PRIVILEGES.match(grant)
        held = {p.strip().upper() for p in match.group(1).split(",")} if match else set()
        for privilege in bypass:
            if privilege in held:
                return f"{privilege} ({why})"
    return None


@dataclass(frozen=True, repr=False)
class SQL:
    """A statement and its parameters (``%s`` placeholders, pymysql style)."""

    text: str
    params: tuple[object, ...] = ()

    def __repr__(self) -> str:
        return f"SQL({self.text!r}, <{len(self.params)} params>)"


@dataclass(frozen=True)
class Source:
    """Where a replica replicates from, as whom, and whether over TLS."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    tls: bool = False
    tls_ca: str | None = None
    """CA file on the replica's file system; when set, the source's certificate (and host name) is verified."""

    @property
    def ca_file(self) -> str | None:
        """The CA file in effect: only with TLS, and "" means none."""
        return (self.tls_ca or None) if self.tls else None


@dataclass(frozen=True)
class ReplicaStatus:
    """One flavor-neutral row of SHOW SLAVE/REPLICA STATUS."""

    source_host: str
    source_port: int
    source_user: str
    auto_position: bool
    """GTID positioning as this library configures it (MariaDB Slave_Pos, MySQL auto position)."""
    tls: bool
    tls_ca: str | None
    tls_verify: bool
    """The replica verifies its source's certificate and host name."""
    io_state: IOState
    sql_running: bool
    seconds_behind: int | None
    last_io_errno: int
    last_io_error: str | None
    last_sql_errno: int
    last_sql_error: str | None
    retrieved: GtidSet
    """GTIDs received into the relay log (MariaDB: the position Gtid_IO_Pos)."""

    @property
    def io_running(self) -> bool:
        return self.io_state == "running"

    def matches(self, source: Source) -> bool:
        """Whether the replica is configured for this source (the password cannot be read back)."""
        return (
            self.source_host == source.host
            and self.source_port == source.port
            and self.source_user == source.user
            and self.auto_position
            and self.tls == source.tls
            and self.tls_ca == source.ca_file
            and self.tls_verify == (source.ca_file is not None)
        )


@dataclass(frozen=True)
class DumpPosition:
    """Where a logical backup's snapshot stands in its server's history, as its dump tool wrote it."""

    gtid: str
    """Executed GTIDs (MariaDB: the GTID position, one GTID per domain)."""
    binlog_file: str
    binlog_position: int


@dataclass(frozen=True)
class SemiSyncStatus:
    """Whether semi-sync is active now (status variables, not settings)."""

    source_active: bool
    replica_active: bool
    source_clients: int


def _text(value: object) -> str | None:
    text = "" if value is None else str(value)
    return text or None


def _yes(value: object) -> bool:
    return str(value).upper() in ("YES", "ON", "1")


class Dialect(ABC):
    """The SQL of one flavor."""

    flavor: ClassVar[Flavor]
    replica_word: ClassVar[str]
    read_only_variable: ClassVar[str]
    """The variable that fences: ON binds every account (that holds no bypass privilege, see above)."""
    not_writable_expression: ClassVar[str]
    """True unless every read-only variable is off."""
    executed_variable: ClassVar[str]
    net_timeout_variable: ClassVar[str]
    """Seconds a replica's IO thread waits for data (events or heartbeats) before it reconnects."""
    columns: ClassVar[Mapping[str, str]]
    """Neutral name -> this flavor's SHOW ... STATUS column."""
    semi_sync_variables: ClassVar[Mapping[str, str]]
    """Neutral name (source_enabled, source_timeout, source_wait_point, replica_enabled and, where they can be set,
    source_acks and replica_kill_timeout) -> variable."""
    semi_sync_status_variables: ClassVar[Mapping[str, str]]
    """Neutral name (source_active, replica_active, source_clients) -> status variable."""
    dump_program: ClassVar[str]
    """The flavour's logical backup tool."""
    client_program: ClassVar[str]
    """The flavour's command-line client (which loads a dump)."""
    dump_position_options: ClassVar[tuple[str, ...]]
    """What makes the dump tool write the snapshot's GTIDs and binlog coordinates (commented out where loading them
    would point the loading server at a source)."""
    _dump_gtid: ClassVar[re.Pattern[str]]
    _dump_binlog: ClassVar[re.Pattern[str]]
    binlog_program: ClassVar[str]
    """The flavour's binary log tool (which reads a server's binary logs over the network)."""
    _binlog_remote: ClassVar[tuple[str, ...]]
    _binlog_server_id: ClassVar[str]
    _binlog_start: ClassVar[str]

    def parse_gtid(self, text: str | None) -> GtidSet:
        return parse_gtid_set(self.flavor, text)

    # --- inspection -----------------------------------------------------------------------------------------

    def executed(self) -> SQL:
        """One row: the executed GTIDs."""
        return SQL(f"SELECT @@GLOBAL.{self.executed_variable}")

    def server_state(self) -> SQL:
        """One row: server id, read-only (not writable), fenced (the read-only this library enforces), executed
        GTIDs, whether clients without TLS are refused."""
        return SQL(
            f"SELECT @@GLOBAL.server_id, {self.not_writable_expression}, @@GLOBAL.{self.read_only_variable}, "
            f"@@GLOBAL.{self.executed_variable}, @@GLOBAL.require_secure_transport"
        )

    def net_timeout(self) -> SQL:
        return SQL(f"SELECT @@GLOBAL.{self.net_timeout_variable}")

    def replica_status(self) -> SQL:
        return SQL(f"SHOW {self.replica_word} STATUS")

    def normalize_replica_status(self, row: Mapping[str, Any] | None) -> ReplicaStatus | None:
        """The neutral status, or None when no source is configured."""
        if not row or not row.get(self.columns["source_host"]):
            return None
        col = {name: row.get(column) for name, column in self.columns.items()}
        io = str(col["io_running"])
        seconds = col["seconds_behind"]
        return ReplicaStatus(
            source_host=str(col["source_host"]),
            source_port=int(col["source_port"] or 0),
            source_user=str(col["source_user"] or ""),
            auto_position=self._auto_position(col["auto_position"]),
            tls=_yes(col["tls"]),
            tls_ca=_text(col["tls_ca"]),
            tls_verify=_yes(col["tls_verify"]),
            io_state="running" if io == "Yes" else "connecting" if io == "Connecting" else "stopped",
            sql_running=_yes(col["sql_running"]),
            seconds_behind=None if seconds is None else int(seconds),
            last_io_errno=int(col["last_io_errno"] or 0),
            last_io_error=_text(col["last_io_error"]),
            last_sql_errno=int(col["last_sql_errno"] or 0),
            last_sql_error=_text(col["last_sql_error"]),
            retrieved=self.parse_gtid(_text(col["retrieved"])),
        )

    @abstractmethod
    def _auto_position(self, value: object) -> bool: ...

    def semi_sync_status(self) -> SQL:
        return SQL("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync%'")

    def normalize_semi_sync_status(self, values: Mapping[str, str]) -> SemiSyncStatus:
        names = self.semi_sync_status_variables
        return SemiSyncStatus(
            source_active=_yes(values.get(names["source_active"])),
            replica_active=_yes(values.get(names["replica_active"])),
            source_clients=int(values.get(names["source_clients"]) or 0),
        )

    # --- replication ----------------------------------------------------------------------------------------

    def resume_position(self) -> SQL | None:
        """One row, what `configure_source` needs to know where the replica resumes; None: the server knows."""
        return None

    @abstractmethod
    def configure_source(self, source: Source, resume: tuple[str, str] | None = None) -> list[SQL]:
        """Point a stopped replica at ``source`` with GTID positioning, 1 s connect retry and heartbeat;
        ``resume`` is the row `resume_position` read."""

    def start_replica(self, thread: Thread | None = None) -> SQL:
        return SQL(f"START {self.replica_word}{self._thread(thread)}")

    def stop_replica(self, thread: Thread | None = None) -> SQL:
        return SQL(f"STOP {self.replica_word}{self._thread(thread)}")

    def reset_replica_all(self) -> SQL:
        return SQL(f"RESET {self.replica_word} ALL")

    @staticmethod
    def _thread(thread: Thread | None) -> str:
        return {None: "", "io": " IO_THREAD", "sql": " SQL_THREAD"}[thread]

    @abstractmethod
    def wait_for_gtid(self, gtid: GtidSet, timeout: float) -> SQL:
        """One row whose value is 0 once ``gtid`` is applied, non-zero after ``timeout`` seconds."""

    def require_secure_transport(self, required: bool = True) -> SQL:
        """Refuse new clients without TLS, or (``required`` False) accept them again (both flavours; the sessions
        open are kept)."""
        return SQL(f"SET GLOBAL require_secure_transport = {'ON' if required else 'OFF'}")

    @abstractmethod
    def reload_tls(self) -> SQL:
        """What makes the server serve the certificate, key and CA files it has now, to new connections (those open
        keep their session)."""

    def set_read_only(self, on: bool) -> list[SQL]:
        value = "ON" if on else "OFF"
        return [SQL(f"SET GLOBAL {self.read_only_variable} = {value}")]

    # --- semi-sync ------------------------------------------------------------------------------------------

    def semi_sync_variables_query(self) -> SQL:
        return SQL("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync%'")

    def semi_sync_waiters(self) -> SQL:
        """The client connections whose commit waits for a replica's acknowledgement (both flavours name the state
        so). Never the replication threads (``system user``): a killed applier may have binlogged a DDL without
        recording it in its position."""
        return SQL(
            "SELECT id FROM information_schema.processlist WHERE state LIKE 'Waiting for semi-sync ACK%' "
            "AND id <> CONNECTION_ID() AND user <> 'system user'"
        )

    def client_connections(self) -> SQL:
        """Every client connection but this session's: not the replication threads (``system user``, see
        `semi_sync_waiters`), the binlog dump threads serving replicas, nor daemons (the event scheduler). Killed
        before the commits waiting for an acknowledgement are ended, so that no client is left to be told of one:
        the waiting state shows only on one connection per group commit (the others, MySQL's 'waiting for handler
        commit', wait for it), and accounts with SUPER or CONNECTION_ADMIN outlive MySQL's offline_mode. Those
        in that state come last: killing one ends the wait of its whole group (MariaDB), whose other clients must
        have been killed before."""
        return SQL(
            "SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND user <> 'system user' "
            "AND command NOT LIKE 'Binlog Dump%' AND command <> 'Daemon' "
            "ORDER BY COALESCE(state, '') LIKE 'Waiting for semi-sync ACK%', id"
        )

    def keep_clients_out(self) -> list[SQL]:
        """Before the client connections are killed to release waiting commits: what refuses new ones; nothing
        on MariaDB (the fence waiting meanwhile holds their writes back, see `procedures.fence`)."""
        return []

    def fence_behind_waiters(self) -> list[SQL]:
        """What fences on a second connection while commits wait for an acknowledgement: queued behind them, it
        holds every new write back until the member is read-only. Setting read-only on MariaDB."""
        return self.set_read_only(True)

    def release_semi_sync_waiters(self) -> list[SQL]:
        """After their connections are killed, what ends the commits still waiting for an acknowledgement (they
        hold the lock that setting read-only needs); nothing where killing ends the wait (MariaDB)."""
        return []

    def after_release(self) -> list[SQL]:
        """What undoes `keep_clients_out` once the member is fenced (or the release failed)."""
        return []

    def semi_sync_settings(self, role: SemiSyncRole, enabled: bool, timeout_ms: int) -> dict[str, str | int]:
        """The variables (name -> value) for this role, in the order to set them (the source's wait settings before
        it is enabled); disabling only turns the role off."""
        names = self.semi_sync_variables
        settings: dict[str, str | int] = {}
        if role == "source" and enabled:
            settings[names["source_timeout"]] = timeout_ms
            settings[names["source_wait_point"]] = "AFTER_SYNC"
            if "source_acks" in names:
                settings[names["source_acks"]] = SEMI_SYNC_ACKS
        if role == "replica" and enabled and "replica_kill_timeout" in names:
            settings[names["replica_kill_timeout"]] = SEMI_SYNC_KILL_SECONDS
        settings[names[f"{role}_enabled"]] = "ON" if enabled else "OFF"
        return settings

    def admin_writes(self) -> list[SQL]:
        """What lets the administrative account write on a read-only member while applications still cannot
        (accounts are made on a primary before it opens): nothing on MariaDB, whose read_only the administrative
        account passes (it holds READ ONLY ADMIN to set it)."""
        return []

    def set_global(self, variable: str, value: str | int) -> SQL:
        """``SET GLOBAL``; ``variable`` must come from this class, never from input."""
        if variable not in (*self.semi_sync_variables.values(), self.net_timeout_variable):
            raise ValueError(f"not a variable this library sets: {variable}")
        return SQL(f"SET GLOBAL {variable} = %s", (value,))

    def install_semi_sync(self, role: SemiSyncRole) -> SQL | None:
        """The statement that makes the role's variables exist, if the flavor needs one."""
        return None

    def semi_sync_prerequisite(self, role: SemiSyncRole) -> str | None:
        """What a read-only member needs in its configuration for the role's variables to exist, if anything."""
        return None

    # --- logical backups ------------------------------------------------------------------------------------

    @abstractmethod
    def client_options(self, ca_file: str | None = None, verify_server_name: bool = True) -> list[str]:
        """Options of the client and the dump tool: with ``ca_file`` (a PEM bundle) a TLS connection that refuses
        a server whose certificate none of its CAs signed, and, with ``verify_server_name``, one not naming the
        host connected to (see each flavour for what its tools check); without it a plaintext connection."""

    def dump_options(self) -> list[str]:
        """The dump tool's options for a consistent dump (one snapshot, no lock held for its duration) of routines,
        events, triggers and data, with the snapshot's GTID and binlog position written into it."""
        return [
            "--single-transaction",
            *self.dump_position_options,
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--default-character-set=utf8mb4",
        ]

    def dump_position(self, text: str) -> DumpPosition | None:
        """The position a dump (its head and its tail: where the dump tool writes it) records; None when it does
        not hold both the GTIDs and the binlog coordinates."""
        gtid = self._dump_gtid.search(text)
        binlog = self._dump_binlog.search(text)
        if gtid is None or binlog is None:
            return None
        return DumpPosition(re.sub(r"\s+", "", gtid.group(1)), binlog.group(1), int(binlog.group(2)))

    @abstractmethod
    def seed_position(self, gtid: str) -> list[SQL]:
        """What makes a member, loaded from a dump without binary logging, hold ``gtid`` as its executed GTIDs, so
        that it replicates from the transaction after it, and so that, made primary, its replicas do too."""

    @abstractmethod
    def forget_gtids(self) -> list[SQL]:
        """What empties a member's binary log and executed GTIDs (before a restore is loaded again)."""

    # --- binary log archive ---------------------------------------------------------------------------------

    def binlog_stream_options(self, server_id: int, directory: str, first_file: str, start: str | None) -> list[str]:
        """The binlog tool's options and arguments that copy the server's binary logs, as they are, into files
        named after them in ``directory`` (a ``/``-terminated path), from ``first_file`` on, and keep waiting for
        more, connected as replica ``server_id``; with ``start`` (`archive.start_option`), only the transactions
        after it."""
        return [
            *self._binlog_remote,
            "--raw",
            "--stop-never",
            f"{self._binlog_server_id}={server_id}",
            f"--result-file={directory}",
            *([f"{self._binlog_start}={start}"] if start is not None else []),
            first_file,
        ]

    @abstractmethod
    def replay_options(
        self, backup: GtidSet, excluded: GtidSet, stops: Sequence[str], stop_time: datetime | None
    ) -> list[str]:
        """The binlog tool's options that print, from a local binary log, the transactions after ``backup`` (a
        member's executed GTIDs), without ``excluded`` (MySQL: it holds ``backup`` too) or only up to ``stops``
        (MariaDB: the stream's last GTID to print in each line it is cut in, inclusive), and before ``stop_time``
        (its first event of that second or later stops it: the tool must run with TZ=UTC)."""

    @staticmethod
    def _stop_time(stop_time: datetime | None) -> list[str]:
        return [] if stop_time is None else [f"--stop-datetime={stop_time.astimezone(UTC):%Y-%m-%d %H:%M:%S}"]

    @abstractmethod
    def server_identity(self) -> SQL:
        """One row: server id, server UUID (NULL on MariaDB)."""

    def binary_logs(self) -> SQL:
        """Rows: the binary log files the server holds, oldest first (name first)."""
        return SQL("SHOW BINARY LOGS")

    # --- accounts -------------------------------------------------------------------------------------------

    def user_exists(self, user: str, host: str) -> SQL:
        return SQL("SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s", (user, host))

    def create_user(self, user: str, host: str, password: str) -> SQL:
        return SQL("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password))

    def set_password(self, user: str, host: str, password: str) -> SQL:
        return SQL("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))

    def show_grants(self, user: str, host: str) -> SQL:
        return SQL("SHOW GRANTS FOR %s@%s", (user, host))

    def grant_replication(self, user: str, host: str) -> SQL:
        return SQL(f"GRANT {REPLICATION_PRIVILEGE} ON *.* TO %s@%s", (user, host))

    def grant_schema(self, user: str, host: str, schema: str) -> SQL:
        """The application privileges on one schema (a name the CRD pattern restricts to [A-Za-z0-9_])."""
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", schema):
            raise ValueError(f"not a schema name: {schema!r}")
        return SQL(f"GRANT {', '.join(APPLICATION_PRIVILEGES)} ON `{schema}`.* TO %s@%s", (user, host))


class MariaDBDialect(Dialect):
    """MariaDB 10.6 and later."""

    flavor = "mariadb"
    replica_word = "SLAVE"
    read_only_variable = "read_only"
    not_writable_expression = "@@GLOBAL.read_only"
    executed_variable = "gtid_binlog_state"
    net_timeout_variable = "slave_net_timeout"
    columns = {
        "source_host": "Master_Host",
        "source_port": "Master_Port",
        "source_user": "Master_User",
        "auto_position": "Using_Gtid",
        "tls": "Master_SSL_Allowed",
        "tls_ca": "Master_SSL_CA_File",
        "tls_verify": "Master_SSL_Verify_Server_Cert",
        "io_running": "Slave_IO_Running",
        "sql_running": "Slave_SQL_Running",
        "seconds_behind": "Seconds_Behind_Master",
        "last_io_errno": "Last_IO_Errno",
        "last_io_error": "Last_IO_Error",
        "last_sql_errno": "Last_SQL_Errno",
        "last_sql_error": "Last_SQL_Error",
        "retrieved": "Gtid_IO_Pos",
    }
    semi_sync_variables = {
        "source_enabled": "rpl_semi_sync_master_enabled",
        "source_timeout": "rpl_semi_sync_master_timeout",
        "source_wait_point": "rpl_semi_sync_master_wait_point",
        "replica_enabled": "rpl_semi_sync_slave_enabled",
        "replica_kill_timeout": "rpl_semi_sync_slave_kill_conn_timeout",
    }
    semi_sync_status_variables = {
        "source_active": "Rpl_semi_sync_master_status",
        "replica_active": "Rpl_semi_sync_slave_status",
        "source_clients": "Rpl_semi_sync_master_clients",
    }
    dump_program = "mariadb-dump"
    dump_position_options = ("--gtid", "--master-data=2")
    client_program = "mariadb"
    _dump_gtid = re.compile(r"^-- SET GLOBAL gtid_slave_pos='([^']*)';$", re.MULTILINE)
    _dump_binlog = re.compile(r"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+);$", re.MULTILINE)
    binlog_program = "mariadb-binlog"
    _binlog_remote = ("--read-from-remote-server",)
    _binlog_server_id = "--stop-never-slave-server-id"
    _binlog_start = "--start-position"

    def server_identity(self) -> SQL:
        return SQL("SELECT @@GLOBAL.server_id, NULL")

    def replay_options(
        self, backup: GtidSet, excluded: GtidSet, stops: Sequence[str], stop_time: datetime | None
    ) -> list[str]:
        assert isinstance(backup, MariaDBGtidSet)
        start = [f"--start-position={backup.position()}"] if backup.count else []
        return [*start, *([f"--stop-position={','.join(stops)}"] if stops else []), *self._stop_time(stop_time)]

    def _auto_position(self, value: object) -> bool:
        return str(value) == "Slave_Pos"

    def client_options(self, ca_file: str | None = None, verify_server_name: bool = True) -> list[str]:
        """``--ssl --ssl-ca``: mariadb and mariadb-dump verify the certificate's chain against the bundle whenever
        it is given (10.11 and 11.8, with or without ``--ssl-verify-server-cert``), so the CA is checked on both.
        The name: 10.11 checks it only with ``--ssl-verify-server-cert``; 11.8 checks a host name always (even
        with ``--disable-ssl-verify-server-cert``, so verifyServerName false does not relax it there) and does not
        check the certificate's name against a host given as an IP address (measured on 127.0.0.1), as for its
        replicas."""
        if ca_file is None:
            return ["--skip-ssl"]
        verify = "--ssl-verify-server-cert" if verify_server_name else "--disable-ssl-verify-server-cert"
        return ["--ssl", f"--ssl-ca={ca_file}", verify]

    def seed_position(self, gtid: str) -> list[SQL]:
        """The replica position, and the binary log's state (its GTID list), which a primary's replicas ask
        from: a binary log without the position would answer them with error 1236."""
        return [
            SQL("RESET MASTER"),
            SQL("SET GLOBAL gtid_binlog_state = %s", (gtid,)),
            SQL("SET GLOBAL gtid_slave_pos = %s", (gtid,)),
        ]

    def forget_gtids(self) -> list[SQL]:
        return [SQL("RESET MASTER"), SQL("SET GLOBAL gtid_slave_pos = ''")]

    def resume_position(self) -> SQL:
        return SQL("SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_slave_pos")

    def configure_source(self, source: Source, resume: tuple[str, str] | None = None) -> list[SQL]:
        if resume is None:
            raise ValueError("a MariaDB replica needs its binlog and slave positions (resume_position)")
        ca = source.ca_file
        return [
            SQL("SET GLOBAL gtid_slave_pos = %s", (resume_position(*resume),)),
            SQL(
                "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, MASTER_PASSWORD = %s, "
                f"MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = {CONNECT_RETRY_SECONDS}, "
                f"MASTER_HEARTBEAT_PERIOD = {HEARTBEAT_SECONDS}, MASTER_SSL = {int(source.tls)}, "
                f"MASTER_SSL_CA = %s, MASTER_SSL_VERIFY_SERVER_CERT = {int(ca is not None)}",
                (source.host, source.port, source.user, source.password, ca or ""),
            ),
        ]

    def wait_for_gtid(self, gtid: GtidSet, timeout: float) -> SQL:
        """``MASTER_GTID_WAIT`` compares per domain seqs of ``gtid_slave_pos``: callers re-check containment."""
        if not isinstance(gtid, MariaDBGtidSet):
            raise TypeError("a MariaDB GTID set is needed")
        return SQL("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid.position(), timeout))

    def reload_tls(self) -> SQL:
        """Not written to the binary log: a replica's plain ``FLUSH SSL`` is a transaction of its own there, errant
        (its replication then stops on the next transaction from its source, out of order in strict mode)."""
        return SQL("FLUSH NO_WRITE_TO_BINLOG SSL")


class MySQLDialect(Dialect):
    """MySQL 8.0.26 and later (REPLICA/SOURCE statements, new semi-sync plugin names)."""

    flavor = "mysql"
    replica_word = "REPLICA"
    read_only_variable = "super_read_only"
    not_writable_expression = "(@@GLOBAL.read_only OR @@GLOBAL.super_read_only)"
    executed_variable = "gtid_executed"
    net_timeout_variable = "replica_net_timeout"
    columns = {
        "source_host": "Source_Host",
        "source_port": "Source_Port",
        "source_user": "Source_User",
        "auto_position": "Auto_Position",
        "tls": "Source_SSL_Allowed",
        "tls_ca": "Source_SSL_CA_File",
        "tls_verify": "Source_SSL_Verify_Server_Cert",
        "io_running": "Replica_IO_Running",
        "sql_running": "Replica_SQL_Running",
        "seconds_behind": "Seconds_Behind_Source",
        "last_io_errno": "Last_IO_Errno",
        "last_io_error": "Last_IO_Error",
        "last_sql_errno": "Last_SQL_Errno",
        "last_sql_error": "Last_SQL_Error",
        "retrieved": "Retrieved_Gtid_Set",
    }
    semi_sync_variables = {
        "source_enabled": "rpl_semi_sync_source_enabled",
        "source_timeout": "rpl_semi_sync_source_timeout",
        "source_wait_point": "rpl_semi_sync_source_wait_point",
        "source_acks": "rpl_semi_sync_source_wait_for_replica_count",
        "replica_enabled": "rpl_semi_sync_replica_enabled",
    }
    semi_sync_status_variables = {
        "source_active": "Rpl_semi_sync_source_status",
        "replica_active": "Rpl_semi_sync_replica_status",
        "source_clients": "Rpl_semi_sync_source_clients",
    }
    semi_sync_plugins: ClassVar[Mapping[SemiSyncRole, tuple[str, str]]] = {
        "source": ("rpl_semi_sync_source", "semisync_source.so"),
        "replica": ("rpl_semi_sync_replica", "semisync_replica.so"),
    }
    dump_program = "mysqldump"
    dump_position_options = ("--source-data=2", "--set-gtid-purged=ON")
    client_program = "mysql"
    _dump_gtid = re.compile(r"^SET @@GLOBAL\.GTID_PURGED=(?:/\*!80000 '\+'\*/ )?'([^']*)';$", re.MULTILINE)
    _dump_binlog = re.compile(
        r"^-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='([^']+)', SOURCE_LOG_POS=(\d+);$", re.MULTILINE
    )
    binlog_program = "mysqlbinlog"
    _binlog_remote = ("--read-from-remote-source=BINLOG-DUMP-GTIDS",)
    _binlog_server_id = "--connection-server-id"
    _binlog_start = "--exclude-gtids"

    def server_identity(self) -> SQL:
        return SQL("SELECT @@GLOBAL.server_id, @@GLOBAL.server_uuid")

    def replay_options(
        self, backup: GtidSet, excluded: GtidSet, stops: Sequence[str], stop_time: datetime | None
    ) -> list[str]:
        skipped = backup.union(excluded)
        return [*([f"--exclude-gtids={skipped}"] if skipped.count else []), *self._stop_time(stop_time)]

    def _auto_position(self, value: object) -> bool:
        return str(value) == "1"

    def client_options(self, ca_file: str | None = None, verify_server_name: bool = True) -> list[str]:
        """``--ssl-mode=VERIFY_CA`` (the chain against the bundle) or ``VERIFY_IDENTITY`` (the host name too, an IP
        address included): mysql and mysqldump check exactly that. Without TLS, caching_sha2_password needs the
        server's RSA key to send the password."""
        if ca_file is None:
            return ["--ssl-mode=DISABLED", "--get-server-public-key"]
        return [f"--ssl-mode={'VERIFY_IDENTITY' if verify_server_name else 'VERIFY_CA'}", f"--ssl-ca={ca_file}"]

    def seed_position(self, gtid: str) -> list[SQL]:
        """Nothing: the dump's ``SET @@GLOBAL.GTID_PURGED`` did it (on a member whose ``gtid_executed`` was
        empty)."""
        return []

    def forget_gtids(self) -> list[SQL]:
        return [SQL("RESET BINARY LOGS AND GTIDS")]

    def configure_source(self, source: Source, resume: tuple[str, str] | None = None) -> list[SQL]:
        ca = source.ca_file
        return [
            SQL(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, "
                f"SOURCE_PASSWORD = %s, SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = {CONNECT_RETRY_SECONDS}, "
                f"SOURCE_HEARTBEAT_PERIOD = {HEARTBEAT_SECONDS}, GET_SOURCE_PUBLIC_KEY = 1, "
                f"SOURCE_SSL = {int(source.tls)}, SOURCE_SSL_CA = %s, "
                f"SOURCE_SSL_VERIFY_SERVER_CERT = {int(ca is not None)}",
                (source.host, source.port, source.user, source.password, ca or ""),
            )
        ]

    def wait_for_gtid(self, gtid: GtidSet, timeout: float) -> SQL:
        return SQL("SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)", (str(gtid), timeout))

    def reload_tls(self) -> SQL:
        return SQL("ALTER INSTANCE RELOAD TLS")

    def set_read_only(self, on: bool) -> list[SQL]:
        """``super_read_only=ON`` also sets ``read_only``; turning off needs both, and ``offline_mode`` off (a fence
        interrupted between `keep_clients_out` and `after_release`, e.g. by an operator killed there, leaves it on)."""
        if on:
            return [SQL("SET GLOBAL super_read_only = ON")]
        return [
            SQL("SET GLOBAL super_read_only = OFF"),
            SQL("SET GLOBAL read_only = OFF"),
            SQL("SET GLOBAL offline_mode = OFF"),
        ]

    def admin_writes(self) -> list[SQL]:
        """``super_read_only`` off, ``read_only`` still on: only accounts with CONNECTION_ADMIN or SUPER write."""
        return [SQL("SET GLOBAL super_read_only = OFF")]

    def install_semi_sync(self, role: SemiSyncRole) -> SQL | None:
        """``INSTALL PLUGIN``, which a ``super_read_only`` member refuses (it writes ``mysql.plugin``): replicas need
        the plugins loaded at startup (`semi_sync_prerequisite`)."""
        name, library = self.semi_sync_plugins[role]
        return SQL(f"INSTALL PLUGIN {name} SONAME '{library}'")

    def keep_clients_out(self) -> list[SQL]:
        """offline_mode: disconnects every client without CONNECTION_ADMIN or SUPER and refuses new ones (those
        with it can still connect: a commit such a client begins between the kill and the release is the one
        case left, which the application pool rules out by refusing such accounts)."""
        return [SQL("SET GLOBAL offline_mode = ON")]

    def fence_behind_waiters(self) -> list[SQL]:
        """The global read lock, then super_read_only set under it. Not ``SET GLOBAL super_read_only = ON``
        alone: with read_only off it takes the global read lock twice, to set read_only and then super_read_only,
        and writes queued behind the first of a client with SUPER or CONNECTION_ADMIN (offline_mode lets it in)
        pass read_only in between, once the release left no acknowledgement to wait for."""
        return [SQL("FLUSH TABLES WITH READ LOCK"), SQL("SET GLOBAL super_read_only = ON"), SQL("UNLOCK TABLES")]

    def release_semi_sync_waiters(self) -> list[SQL]:
        """A killed MySQL session keeps waiting for its acknowledgement (its client is disconnected at once): the
        source side off ends the waits (super_read_only, waiting meanwhile, holds back the writes of any client
        offline_mode lets in)."""
        return [SQL("SET GLOBAL rpl_semi_sync_source_enabled = OFF")]

    def after_release(self) -> list[SQL]:
        return [SQL("SET GLOBAL offline_mode = OFF")]

    def semi_sync_prerequisite(self, role: SemiSyncRole) -> str | None:
        name, library = self.semi_sync_plugins[role]
        return f"the {name} plugin loaded at startup (plugin-load-add={library})"


def dialect_for(flavor: Flavor) -> Dialect:
    """The dialect of a flavor."""
    return MariaDBDialect() if flavor == "mariadb" else MySQLDialect()

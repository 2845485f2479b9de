"""The SQL of both flavors, as text and parameters (only MariaDB runs in the integration tests)."""

from __future__ import annotations

from typing import Any

import pytest

from whm_ha.mysql.dialect import (
    SQL,
    Dialect,
    DumpPosition,
    MariaDBDialect,
    MySQLDialect,
    ReplicaStatus,
    SemiSyncStatus,
    Source,
    dialect_for,
    fencing_bypass,
)
from whm_ha.mysql.gtid import MariaDBGtidSet, MySQLGtidSet

MARIADB = MariaDBDialect()
MYSQL = MySQLDialect()
SECRET = "s3cr3t-'quote"
SOURCE = Source(host="db-0.example", port=3307, user="repl", password=SECRET)
TLS_SOURCE = Source(host="db-0.example", port=3307, user="repl", password=SECRET, tls=True, tls_ca="/tls/ca.crt")
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def test_dialect_for_flavor() -> None:
    assert isinstance(dialect_for("mariadb"), MariaDBDialect)
    assert isinstance(dialect_for("mysql"), MySQLDialect)


def test_secrets_stay_out_of_text_and_reprs() -> None:
    statements = [
        *MARIADB.configure_source(SOURCE, ("", "")),
        *MYSQL.configure_source(TLS_SOURCE),
        MARIADB.create_user("repl", "%", SECRET),
        MYSQL.set_password("repl", "%", SECRET),
    ]
    for sql in statements:
        assert SECRET not in sql.text
        assert SECRET not in repr(sql)
    assert SECRET not in repr(SOURCE)
    assert repr(SQL("SELECT %s", (1, 2))) == "SQL('SELECT %s', <2 params>)"


def test_mariadb_configure_source() -> None:
    assert MARIADB.resume_position() == SQL("SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_slave_pos")
    assert MYSQL.resume_position() is None
    sync, change = MARIADB.configure_source(SOURCE, ("0-2-6", "0-2-5"))
    assert sync == SQL("SET GLOBAL gtid_slave_pos = %s", ("0-2-6",))
    assert change.text == (
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, MASTER_PASSWORD = %s, "
        "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1, MASTER_SSL = 0, "
        "MASTER_SSL_CA = %s, MASTER_SSL_VERIFY_SERVER_CERT = 0"
    )
    assert change.params == ("db-0.example", 3307, "repl", SECRET, "")


def test_mariadb_configure_source_with_tls_verifies_against_the_ca() -> None:
    (_, change) = MARIADB.configure_source(TLS_SOURCE, ("", ""))
    assert "MASTER_SSL = 1" in change.text
    assert "MASTER_SSL_VERIFY_SERVER_CERT = 1" in change.text
    assert change.params[-1] == "/tls/ca.crt"
    (_, encrypted_only) = MARIADB.configure_source(Source("h", 1, "u", "p", tls=True), ("", ""))
    assert "MASTER_SSL = 1" in encrypted_only.text
    assert "MASTER_SSL_VERIFY_SERVER_CERT = 0" in encrypted_only.text


def test_mysql_configure_source() -> None:
    (change,) = MYSQL.configure_source(TLS_SOURCE)
    assert change.text == (
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s, SOURCE_PORT = %s, SOURCE_USER = %s, SOURCE_PASSWORD = %s, "
        "SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, SOURCE_HEARTBEAT_PERIOD = 1, GET_SOURCE_PUBLIC_KEY = 1, "
        "SOURCE_SSL = 1, SOURCE_SSL_CA = %s, SOURCE_SSL_VERIFY_SERVER_CERT = 1"
    )
    assert change.params == ("db-0.example", 3307, "repl", SECRET, "/tls/ca.crt")


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            MARIADB,
            [
                "START SLAVE",
                "START SLAVE IO_THREAD",
                "STOP SLAVE",
                "STOP SLAVE SQL_THREAD",
                "RESET SLAVE ALL",
                "SHOW SLAVE STATUS",
            ],
        ),
        (
            MYSQL,
            [
                "START REPLICA",
                "START REPLICA IO_THREAD",
                "STOP REPLICA",
                "STOP REPLICA SQL_THREAD",
                "RESET REPLICA ALL",
                "SHOW REPLICA STATUS",
            ],
        ),
    ],
)
def test_replica_control_statements(dialect: Dialect, expected: list[str]) -> None:
    produced = [
        dialect.start_replica(),
        dialect.start_replica("io"),
        dialect.stop_replica(),
        dialect.stop_replica("sql"),
        dialect.reset_replica_all(),
        dialect.replica_status(),
    ]
    assert [sql.text for sql in produced] == expected
    assert all(sql.params == () for sql in produced)


def test_server_state_reads_the_binlog_state_on_mariadb_and_gtid_executed_on_mysql() -> None:
    assert MARIADB.server_state().text == (
        "SELECT @@GLOBAL.server_id, @@GLOBAL.read_only, @@GLOBAL.read_only, @@GLOBAL.gtid_binlog_state, "
        "@@GLOBAL.require_secure_transport"
    )
    assert MYSQL.server_state().text == (
        "SELECT @@GLOBAL.server_id, (@@GLOBAL.read_only OR @@GLOBAL.super_read_only), @@GLOBAL.super_read_only, "
        "@@GLOBAL.gtid_executed, @@GLOBAL.require_secure_transport"
    ), "writable only when both are off (issue 16, item 1); fenced only by super_read_only"


def test_tls_statements() -> None:
    assert MARIADB.reload_tls().text == "FLUSH NO_WRITE_TO_BINLOG SSL", "a replica's binlogged FLUSH is errant"
    assert MYSQL.reload_tls().text == "ALTER INSTANCE RELOAD TLS"
    assert MARIADB.require_secure_transport() == MYSQL.require_secure_transport()
    assert MYSQL.require_secure_transport().text == "SET GLOBAL require_secure_transport = ON"
    assert MARIADB.require_secure_transport(False).text == "SET GLOBAL require_secure_transport = OFF"


def test_read_only_statements() -> None:
    assert [s.text for s in MARIADB.set_read_only(True)] == ["SET GLOBAL read_only = ON"]
    assert [s.text for s in MARIADB.set_read_only(False)] == ["SET GLOBAL read_only = OFF"]
    assert [s.text for s in MYSQL.set_read_only(True)] == ["SET GLOBAL super_read_only = ON"]
    assert [s.text for s in MYSQL.set_read_only(False)] == [
        "SET GLOBAL super_read_only = OFF",
        "SET GLOBAL read_only = OFF",
        "SET GLOBAL offline_mode = OFF",
    ], "opening a member also undoes the offline_mode of a fence that was interrupted"


def test_fence_behind_waiters_takes_mysqls_global_read_lock_once() -> None:
    assert MARIADB.fence_behind_waiters() == MARIADB.set_read_only(True)
    assert [s.text for s in MYSQL.fence_behind_waiters()] == [
        "FLUSH TABLES WITH READ LOCK",
        "SET GLOBAL super_read_only = ON",
        "UNLOCK TABLES",
    ], "super_read_only set alone takes the lock twice: writes of SUPER clients queued behind it pass in between"


def test_wait_for_gtid() -> None:
    state = MariaDBGtidSet.parse("0-1-98,0-2-105,1-3-4")
    assert MARIADB.wait_for_gtid(state, 1.5) == SQL("SELECT MASTER_GTID_WAIT(%s, %s)", ("0-2-105,1-3-4", 1.5))
    executed = MySQLGtidSet.parse(f"{UUID}:1-10")
    assert MYSQL.wait_for_gtid(executed, 2) == SQL("SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)", (f"{UUID}:1-10", 2))
    with pytest.raises(TypeError):
        MARIADB.wait_for_gtid(executed, 1)


def test_replication_account_statements_take_every_value_as_a_parameter() -> None:
    for dialect in (MARIADB, MYSQL):
        assert dialect.create_user("repl", "%", SECRET) == SQL(
            "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", ("repl", "%", SECRET)
        )
        assert dialect.set_password("repl", "%", SECRET).text == "ALTER USER %s@%s IDENTIFIED BY %s"
        assert dialect.grant_replication("repl", "%") == SQL("GRANT REPLICATION SLAVE ON *.* TO %s@%s", ("repl", "%"))
        assert dialect.show_grants("repl", "%") == SQL("SHOW GRANTS FOR %s@%s", ("repl", "%"))
        assert dialect.user_exists("repl", "%").params == ("repl", "%")


def test_semi_sync_settings_and_plugins() -> None:
    assert MARIADB.semi_sync_settings("source", True, 5000) == {
        "rpl_semi_sync_master_enabled": "ON",
        "rpl_semi_sync_master_timeout": 5000,
        "rpl_semi_sync_master_wait_point": "AFTER_SYNC",
    }
    assert list(MARIADB.semi_sync_settings("replica", True, 5000).items()) == [
        ("rpl_semi_sync_slave_kill_conn_timeout", 1),
        ("rpl_semi_sync_slave_enabled", "ON"),
    ], "a STOP waits at most 1 s on a vanished source"
    assert MARIADB.semi_sync_settings("replica", False, 0) == {"rpl_semi_sync_slave_enabled": "OFF"}
    assert list(MYSQL.semi_sync_settings("source", True, 5000).items()) == [
        ("rpl_semi_sync_source_timeout", 5000),
        ("rpl_semi_sync_source_wait_point", "AFTER_SYNC"),
        ("rpl_semi_sync_source_wait_for_replica_count", 1),
        ("rpl_semi_sync_source_enabled", "ON"),
    ], "the waits set before the source side goes on"
    assert MYSQL.semi_sync_settings("source", False, 5000) == {"rpl_semi_sync_source_enabled": "OFF"}
    assert MYSQL.semi_sync_settings("replica", True, 0) == {"rpl_semi_sync_replica_enabled": "ON"}
    assert MARIADB.install_semi_sync("source") is None
    install = MYSQL.install_semi_sync("replica")
    assert install == SQL("INSTALL PLUGIN rpl_semi_sync_replica SONAME 'semisync_replica.so'")
    assert MYSQL.set_global("rpl_semi_sync_source_timeout", 100) == SQL(
        "SET GLOBAL rpl_semi_sync_source_timeout = %s", (100,)
    )
    with pytest.raises(ValueError, match="not a variable"):
        MARIADB.set_global("read_only", "OFF")


def test_semi_sync_status_normalized() -> None:
    mariadb = {"Rpl_semi_sync_master_status": "ON", "Rpl_semi_sync_master_clients": "2"}
    assert MARIADB.normalize_semi_sync_status(mariadb) == SemiSyncStatus(True, False, 2)
    assert MYSQL.normalize_semi_sync_status({"Rpl_semi_sync_replica_status": "ON"}) == SemiSyncStatus(False, True, 0)
    assert MYSQL.normalize_semi_sync_status({}) == SemiSyncStatus(False, False, 0)


MARIADB_ROW: dict[str, Any] = {
    "Slave_IO_State": "Waiting for master to send event",
    "Master_Host": "db-0.example",
    "Master_User": "repl",
    "Master_Port": 3307,
    "Slave_IO_Running": "Connecting",
    "Slave_SQL_Running": "Yes",
    "Master_SSL_Allowed": "Yes",
    "Master_SSL_CA_File": "/tls/ca.crt",
    "Master_SSL_Verify_Server_Cert": "Yes",
    "Seconds_Behind_Master": None,
    "Last_IO_Errno": 2003,
    "Last_IO_Error": "error reconnecting to master 'repl@db-0.example:3307'",
    "Last_SQL_Errno": 0,
    "Last_SQL_Error": "",
    "Using_Gtid": "Slave_Pos",
    "Gtid_IO_Pos": "0-1-4",
}
MYSQL_ROW: dict[str, Any] = {
    "Source_Host": "db-0.example",
    "Source_User": "repl",
    "Source_Port": 3307,
    "Replica_IO_Running": "Connecting",
    "Replica_SQL_Running": "Yes",
    "Source_SSL_Allowed": "Yes",
    "Source_SSL_CA_File": "/tls/ca.crt",
    "Source_SSL_Verify_Server_Cert": "Yes",
    "Seconds_Behind_Source": None,
    "Last_IO_Errno": 2003,
    "Last_IO_Error": "error reconnecting to master 'repl@db-0.example:3307'",
    "Last_SQL_Errno": 0,
    "Last_SQL_Error": "",
    "Auto_Position": 1,
    "Retrieved_Gtid_Set": f"{UUID}:1-4",
    "Executed_Gtid_Set": f"{UUID}:1-4",
}


@pytest.mark.parametrize(
    ("dialect", "row", "retrieved"), [(MARIADB, MARIADB_ROW, "0-1-4"), (MYSQL, MYSQL_ROW, f"{UUID}:1-4")]
)
def test_replica_status_normalized_to_one_shape(dialect: Dialect, row: dict[str, Any], retrieved: str) -> None:
    status = dialect.normalize_replica_status(row)
    assert status == ReplicaStatus(
        source_host="db-0.example",
        source_port=3307,
        source_user="repl",
        auto_position=True,
        tls=True,
        tls_ca="/tls/ca.crt",
        tls_verify=True,
        io_state="connecting",
        sql_running=True,
        seconds_behind=None,
        last_io_errno=2003,
        last_io_error="error reconnecting to master 'repl@db-0.example:3307'",
        last_sql_errno=0,
        last_sql_error=None,
        retrieved=dialect.parse_gtid(retrieved),
    )
    assert not status.io_running
    assert status.matches(TLS_SOURCE)
    assert not status.matches(SOURCE)
    assert not status.matches(Source("db-1.example", 3307, "repl", "x", tls=True, tls_ca="/tls/ca.crt"))
    unverified = dialect.normalize_replica_status({**row, dialect.columns["tls_verify"]: "No"})
    assert unverified is not None and not unverified.matches(TLS_SOURCE), "a replica not verifying is reconfigured"


def test_replica_status_running_and_not_configured() -> None:
    running = MARIADB.normalize_replica_status(
        {**MARIADB_ROW, "Slave_IO_Running": "Yes", "Seconds_Behind_Master": 3, "Using_Gtid": "Current_Pos"}
    )
    assert running is not None
    assert running.io_running and running.seconds_behind == 3
    assert not running.matches(TLS_SOURCE), "only slave_pos is what this library configures"
    assert MARIADB.normalize_replica_status(None) is None
    assert MYSQL.normalize_replica_status({**MYSQL_ROW, "Source_Host": ""}) is None


def test_source_without_tls_ignores_a_ca() -> None:
    plain = Source("h", 1, "u", "p", tls=False, tls_ca="/tls/ca.crt")
    assert plain.ca_file is None
    assert Source("h", 1, "u", "p", tls=True, tls_ca="").ca_file is None


@pytest.mark.parametrize(
    ("version", "grants", "bypass"),
    [
        (
            "10.11.6-MariaDB-0+deb12u1",
            ["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"],
            "ALL PRIVILEGES",
        ),
        ("11.8.2-MariaDB", ["GRANT SELECT, SUPER ON *.* TO `ops`@`%`"], "SUPER"),
        ("11.8.2-MariaDB", ["GRANT READ_ONLY ADMIN ON *.* TO `ops`@`%`"], "READ_ONLY ADMIN"),
        (
            "10.11.6-MariaDB",
            ["GRANT USAGE ON *.* TO `app`@`%`", "GRANT ALL PRIVILEGES ON `whm_ha`.* TO `app`@`%`"],
            None,
        ),
        # MySQL 9.7's SHOW GRANTS: ALL is listed as its static privileges and a line of dynamic ones.
        (
            "9.7.4",
            [
                "GRANT SELECT, INSERT, UPDATE, DELETE, PROCESS, SUPER, EVENT ON *.* TO `ops`@`%`",
                "GRANT APPLICATION_PASSWORD_ADMIN,AUDIT_ADMIN,CONNECTION_ADMIN,XA_RECOVER_ADMIN ON *.* TO `ops`@`%`",
            ],
            "SUPER",
        ),
        (
            "9.7.4",
            [
                "GRANT USAGE ON *.* TO `rr`@`%`",
                "GRANT CONNECTION_ADMIN ON *.* TO `rr`@`%`",
                "GRANT `r1`@`%` TO `rr`@`%`",
            ],
            "CONNECTION_ADMIN",
        ),
        ("9.7.4", ["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"], "ALL PRIVILEGES"),
        (
            "9.7.4",
            ["GRANT USAGE ON *.* TO `app`@`%`", "GRANT SELECT, INSERT, UPDATE, DELETE ON `whm_ha`.* TO `app`@`%`"],
            None,
        ),
        ("9.7.4", ["GRANT PROCESS, REPLICATION SLAVE ON *.* TO `monitor`@`%`"], None),
    ],
)
def test_which_accounts_fencing_does_not_bind(version: str, grants: list[str], bypass: str | None) -> None:
    """MariaDB's read_only lets global SUPER, READ ONLY ADMIN and ALL write; MySQL's super_read_only binds every
    account, but offline_mode, which fencing uses to release waiting commits, keeps SUPER, CONNECTION_ADMIN and ALL
    connected (the second MySQL case: the privilege of an active role, as SHOW GRANTS lists it)."""
    found = fencing_bypass(version, grants)
    assert (found and found.split(" (")[0]) == bypass, found


MARIADB_DUMP_HEAD = """-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;
-- A corresponding to the above master-data CHANGE-MASTER settings to the slave gtid state is printed later in the file.
-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=2217;
CREATE DATABASE `demo`;
"""
MARIADB_DUMP_TAIL = """-- The deferred gtid setting for slave corresponding to the master-data CHANGE-MASTER follows
-- Preferably use GTID to start replication from GTID position:
-- SET GLOBAL gtid_slave_pos='0-1-3,1-2-7';
"""
MYSQL_DUMP_HEAD = """SET @@SESSION.SQL_LOG_BIN= 0;
-- GTID state at the beginning of the backup
SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '71e07724-f252-11f1-9ad0-02fc00000001:1-3,
8ae07724-f252-11f1-9ad0-02fc00000002:1-9';
-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='mysql-bin.000004', SOURCE_LOG_POS=1720;
"""


def test_dump_position_as_each_dump_tool_writes_it() -> None:
    """The dump tools' own lines (mariadb-dump 10.11 and 11.8 write the GTID after the data, mysqldump 9.7 a GTID
    set over several lines)."""
    mariadb = dialect_for("mariadb").dump_position(MARIADB_DUMP_HEAD + "\n" + MARIADB_DUMP_TAIL)
    assert mariadb == DumpPosition("0-1-3,1-2-7", "mysql-bin.000001", 2217)
    mysql = dialect_for("mysql").dump_position(MYSQL_DUMP_HEAD)
    assert mysql == DumpPosition(
        "71e07724-f252-11f1-9ad0-02fc00000001:1-3,8ae07724-f252-11f1-9ad0-02fc00000002:1-9", "mysql-bin.000004", 1720
    )


def test_a_dump_without_its_position_gives_none() -> None:
    assert dialect_for("mariadb").dump_position(MARIADB_DUMP_HEAD) is None, "the GTID line is missing"
    assert dialect_for("mysql").dump_position(MARIADB_DUMP_HEAD + MARIADB_DUMP_TAIL) is None
    assert (
        dialect_for("mariadb").dump_position("CREATE TABLE t (id INT);\n-- SET GLOBAL gtid_slave_pos='0-1-3';") is None
    )


def test_client_options_verify_the_ca_and_the_name_when_asked() -> None:
    assert MARIADB.client_options() == ["--skip-ssl"]
    assert MYSQL.client_options() == ["--ssl-mode=DISABLED", "--get-server-public-key"]
    assert MARIADB.client_options("/t/ca.pem") == ["--ssl", "--ssl-ca=/t/ca.pem", "--ssl-verify-server-cert"]
    assert MARIADB.client_options("/t/ca.pem", verify_server_name=False)[-1] == "--disable-ssl-verify-server-cert"
    assert MYSQL.client_options("/t/ca.pem") == ["--ssl-mode=VERIFY_IDENTITY", "--ssl-ca=/t/ca.pem"]
    assert MYSQL.client_options("/t/ca.pem", verify_server_name=False) == ["--ssl-mode=VERIFY_CA", "--ssl-ca=/t/ca.pem"]

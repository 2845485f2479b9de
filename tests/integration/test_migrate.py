"""`whm-ha migrate` on a real server of each flavour (MariaDB 10.11 on the host; MariaDB 11.8 and MySQL 9.7 with
``--databases``): idempotent, complete, and clear when it cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.mariadb import StartFlavourServers
from whm_ha.db.local_server import ADMIN_PASSWORD, LocalServer, free_port

pytestmark = pytest.mark.mariadb

TABLES = {
    "whm_cluster_nodes": {"PRIMARY", "uq_nodes_name", "uq_nodes_node_id", "ix_nodes_status"},
    "ha_failover_events": {
        "PRIMARY",
        "uq_failover_event_uid",
        "ix_failover_cluster_time",
        "ix_failover_time",
    },
    "ha_sessions": {"PRIMARY", "ix_sessions_user", "ix_sessions_expires"},
    "ha_cache": {"PRIMARY", "ix_cache_expires"},
    "ha_health_checks": {"PRIMARY", "ix_health_node_time", "ix_health_time"},
    "ha_settings": {"PRIMARY"},
    "ha_schema_migrations": {"PRIMARY"},
}
EVENTS = {
    "ha_cleanup_health_checks": ("1", "DAY"),
    "ha_cleanup_sessions": ("1", "HOUR"),
    "ha_cleanup_cache": ("1", "HOUR"),
}


@pytest.fixture
def server(database_servers: StartFlavourServers) -> LocalServer:
    """One running server of the test's flavour."""
    return database_servers(1)[0]


def migrate_cli(*args: str, password: str | None = ADMIN_PASSWORD) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WHM_HA_DB_PASSWORD"}
    if password is not None:
        env["WHM_HA_DB_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "whm_ha", "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def dsn(server: LocalServer, user: str = "root", database: str = "whm_ha") -> str:
    return f"mysql://{user}@127.0.0.1:{server.port}/{database}"


def schema_snapshot(server: LocalServer) -> dict[str, object]:
    conn = server.connect(database="whm_ha")
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'whm_ha'")
        indexes: dict[str, set[str]] = {}
        for table, index in cur.fetchall():
            indexes.setdefault(table, set()).add(index)
        cur.execute(
            "SELECT EVENT_NAME, INTERVAL_VALUE, INTERVAL_FIELD, EVENT_DEFINITION, STATUS, CREATED, LAST_ALTERED "
            "FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'whm_ha'"
        )
        events = {row[0]: row[1:] for row in cur.fetchall()}
        cur.execute("SELECT version, name, checksum, applied_at FROM ha_schema_migrations ORDER BY version")
        versions = cur.fetchall()
        cur.execute("SELECT name, value FROM ha_settings")
        settings = dict(cur.fetchall())
        cur.execute("SELECT TABLE_NAME, CREATE_TIME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'whm_ha'")
        created = dict(cur.fetchall())
    conn.close()
    return {
        "indexes": indexes,
        "events": events,
        "versions": versions,
        "settings": settings,
        "created": created,
    }


def test_migrate_twice_creates_everything_then_changes_nothing(server: LocalServer) -> None:
    first = migrate_cli("--dsn", dsn(server))
    assert first.returncode == 0, first.stderr
    assert "applied 001, 002" in first.stdout
    before = schema_snapshot(server)

    second = migrate_cli("--dsn", dsn(server))
    assert second.returncode == 0, second.stderr
    assert "is up to date (2 migrations already applied)" in second.stdout
    assert schema_snapshot(server) == before, "a second run changed the schema"

    assert before["indexes"] == TABLES
    events = before["events"]
    assert isinstance(events, dict)
    assert set(events) == set(EVENTS)
    for name, (value, unit) in EVENTS.items():
        assert (events[name][0], events[name][1]) == (value, unit)
        assert events[name][3] == "ENABLED"
    assert [v[0] for v in before["versions"]] == [1, 2]  # type: ignore[union-attr,index]
    assert before["settings"] == {"health_check_retention_days": "7"}


def test_a_server_that_runs_no_events_gets_a_one_line_warning(server: LocalServer) -> None:
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("SET GLOBAL event_scheduler = OFF")
    off = migrate_cli("--dsn", dsn(server))
    assert off.returncode == 0 and "event_scheduler is OFF" in off.stderr and len(off.stderr.splitlines()) == 1
    with conn.cursor() as cur:
        cur.execute("SET GLOBAL event_scheduler = ON")
    conn.close()
    assert "event_scheduler" not in migrate_cli("--dsn", dsn(server)).stderr


def test_retention_setting_changes_once(server: LocalServer) -> None:
    assert migrate_cli("--dsn", dsn(server)).returncode == 0
    changed = migrate_cli("--dsn", dsn(server), "--health-check-retention-days", "30")
    assert "settings changed: health_check_retention_days" in changed.stdout
    again = migrate_cli("--dsn", dsn(server), "--health-check-retention-days", "30")
    assert "is up to date" in again.stdout
    assert schema_snapshot(server)["settings"] == {"health_check_retention_days": "30"}


def test_events_delete_expired_rows(server: LocalServer) -> None:
    assert migrate_cli("--dsn", dsn(server)).returncode == 0
    conn = server.connect(database="whm_ha")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ha_sessions (session_hash, user_id, data, expires_at) VALUES "
            "(REPEAT('a', 64), 'u1', '{}', NOW(3) - INTERVAL 1 MINUTE), "
            "(REPEAT('b', 64), 'u1', '{}', NOW(3) + INTERVAL 1 HOUR)"
        )
        cur.execute(
            "INSERT INTO ha_cache (cache_key, value, expires_at) VALUES "
            "('old', 'x', NOW(3) - INTERVAL 1 SECOND), ('new', 'y', NOW(3) + INTERVAL 1 HOUR), ('forever', 'z', NULL)"
        )
        cur.execute(
            "INSERT INTO ha_health_checks (cluster_namespace, cluster_name, node_name, healthy, checked_at) VALUES "
            "('default', 'whm', 'n1', 1, NOW(3) - INTERVAL 8 DAY), ('default', 'whm', 'n1', 1, NOW(3))"
        )
        # Run the events' bodies now, as the scheduler would.
        cur.execute(
            "SELECT EVENT_DEFINITION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'whm_ha' ORDER BY EVENT_NAME"
        )
        for (body,) in cur.fetchall():
            cur.execute(body)
        cur.execute("SELECT session_hash FROM ha_sessions")
        assert [r[0] for r in cur.fetchall()] == ["b" * 64]
        cur.execute("SELECT cache_key FROM ha_cache ORDER BY cache_key")
        assert [r[0] for r in cur.fetchall()] == ["forever", "new"]
        cur.execute("SELECT COUNT(*) FROM ha_health_checks")
        assert cur.fetchone() == (1,)
    conn.close()


def test_edited_applied_migration_is_refused(server: LocalServer, tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t1 (id INT PRIMARY KEY);\n")
    assert migrate_cli("--dsn", dsn(server, database="other"), "--sql-dir", str(sql)).returncode == 0
    (sql / "001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t2 (id INT PRIMARY KEY);\n")
    result = migrate_cli("--dsn", dsn(server, database="other"), "--sql-dir", str(sql))
    assert result.returncode == 1
    assert "changed after it was applied" in result.stderr


def _one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unreachable_server() -> None:
    line = _one_clean_line(migrate_cli("--dsn", f"mysql://root@127.0.0.1:{free_port()}/whm_ha"))
    assert "cannot connect" in line and "2003" in line


def test_bad_credentials(server: LocalServer) -> None:
    line = _one_clean_line(migrate_cli("--dsn", dsn(server), password="wrong"))
    assert "Access denied" in line and "1045" in line


def test_missing_privileges(server: LocalServer) -> None:
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE USER 'reader'@'%' IDENTIFIED BY 'pw'")
        cur.execute("CREATE DATABASE whm_ha")
        cur.execute("GRANT SELECT ON whm_ha.* TO 'reader'@'%'")
    conn.close()
    line = _one_clean_line(migrate_cli("--dsn", dsn(server, user="reader"), password="pw"))
    assert "denied" in line


def test_password_in_dsn_is_refused() -> None:
    line = _one_clean_line(migrate_cli("--dsn", "mysql://root:secret@127.0.0.1:3306/whm_ha"))
    assert "no password in the DSN" in line
    assert "secret" not in line


def test_password_file(server: LocalServer, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    result = migrate_cli("--dsn", dsn(server), "--password-file", str(secret), password=None)
    assert result.returncode == 0, result.stderr

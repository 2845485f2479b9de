"""The MariaDB fixture: independent servers with binlog and GTID, which tests may kill and restart."""

from __future__ import annotations

import socket
import time

import pymysql
import pytest

from tests.fixtures.mariadb import StartServers

pytestmark = pytest.mark.mariadb


def query(conn: pymysql.Connection, sql: str) -> tuple:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()  # type: ignore[return-value]


def test_three_independent_servers_start_quickly(mariadb_servers: StartServers) -> None:
    started = time.monotonic()
    servers = mariadb_servers(3)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"three servers took {elapsed:.1f}s"
    assert len({s.port for s in servers}) == 3
    assert len({s.datadir for s in servers}) == 3
    for expected_id, server in enumerate(servers, start=1):
        conn = server.connect()
        server_id, log_bin, strict, binlog_format = query(
            conn, "SELECT @@server_id, @@log_bin, @@gtid_strict_mode, @@binlog_format"
        )
        assert (server_id, log_bin, strict, binlog_format) == (expected_id, 1, 1, "ROW")
        assert query(conn, "SELECT @@gtid_binlog_pos") == ("",), "template must carry no GTIDs"
        conn.close()


def test_kill_and_restart_keeps_committed_data(mariadb_servers: StartServers) -> None:
    (server,) = mariadb_servers(1)
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE d")
        cur.execute("CREATE TABLE d.t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO d.t VALUES (1), (2)")
    conn.close()
    server.kill()
    assert not server.running
    with pytest.raises(pymysql.MySQLError):
        server.connect(connect_timeout=1)
    server.start()
    assert query(server.connect(), "SELECT COUNT(*) FROM d.t") == (2,)


def test_a_port_taken_before_the_first_start_is_traded_for_a_free_one(mariadb_servers: StartServers) -> None:
    """free_port's port can be taken (another process's ephemeral port) before the server binds it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: the server's bind fails, a client is refused
        port = taken.getsockname()[1]
        (server,) = mariadb_servers(1, port=port)
        assert server.port != port
        server.connect().close()

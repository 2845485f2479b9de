"""One member: an administrative session to it, and what the replication manager needs to know about it."""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import pymysql
import pymysql.cursors

from .dialect import SQL, Dialect, ReplicaStatus, SemiSyncStatus
from .gtid import GtidSet

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
"""Seconds to connect and to wait for any one reply."""


@dataclass(frozen=True)
class Credentials:
    """An account on the members; the password never appears in reprs."""

    username: str
    password: str = field(repr=False)


class ServerState(NamedTuple):
    server_id: int
    read_only: bool
    """Not writable: ``read_only`` (or on MySQL ``super_read_only``) is on; applications cannot write."""
    fenced: bool
    """No account can write (bypass privileges aside, see `dialect`): MySQL ``super_read_only``, MariaDB
    ``read_only``."""
    executed: GtidSet
    secure_transport: bool
    """Clients without TLS are refused (``require_secure_transport``)."""


def _on(value: object) -> bool:
    return str(value).upper() not in ("0", "OFF")


class Session:
    """An open administrative connection (autocommit) to one member, with its flavor's SQL."""

    def __init__(
        self,
        name: str,
        conn: pymysql.Connection[Any],
        dialect: Dialect,
        timeout: float,
        reopen: Callable[[], Session],
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.conn = conn
        self.dialect = dialect
        self.timeout = timeout
        self.another = reopen
        """A new session to the same member, as this one was opened."""
        self.tls = tls
        """The TLS context it was opened with (None: plaintext), for other connections to the member."""

    def __repr__(self) -> str:
        return f"Session({self.name!r}, {self.conn.host}:{self.conn.port}, {self.dialect.flavor})"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.conn.open:
            self.conn.close()

    def execute(self, sql: SQL) -> None:
        """Run a statement that changes the server; logged as text, never with its parameters."""
        log.info("%s: %s", self.name, sql.text)
        with self.conn.cursor() as cur:
            cur.execute(sql.text, sql.params or None)

    def row(self, sql: SQL) -> tuple[Any, ...] | None:
        with self.conn.cursor() as cur:
            cur.execute(sql.text, sql.params or None)
            row: tuple[Any, ...] | None = cur.fetchone()
            return row

    def rows(self, sql: SQL) -> tuple[tuple[Any, ...], ...]:
        with self.conn.cursor() as cur:
            cur.execute(sql.text, sql.params or None)
            return tuple(cur.fetchall())

    def replica_status(self) -> ReplicaStatus | None:
        """The neutral replica status, None when no source is configured."""
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(self.dialect.replica_status().text)
            return self.dialect.normalize_replica_status(cur.fetchone())

    def server_state(self) -> ServerState:
        row = self.row(self.dialect.server_state())
        assert row is not None
        server_id, read_only, fenced, executed, secure = row
        return ServerState(int(server_id), _on(read_only), _on(fenced), self.dialect.parse_gtid(executed), _on(secure))

    def executed(self) -> GtidSet:
        row = self.row(self.dialect.executed())
        assert row is not None
        return self.dialect.parse_gtid(row[0])

    def read_only(self) -> bool:
        """Not writable: some read-only variable is on."""
        return self.server_state().read_only

    def fenced(self) -> bool:
        """The read-only the dialect enforces (MySQL: super_read_only) is on."""
        return self.server_state().fenced

    def net_timeout(self) -> int:
        row = self.row(self.dialect.net_timeout())
        assert row is not None
        return int(row[0])

    def semi_sync_status(self) -> SemiSyncStatus:
        values = {str(name): str(value) for name, value in self.rows(self.dialect.semi_sync_status())}
        return self.dialect.normalize_semi_sync_status(values)


def tls_context(ca_bundle: str, *, check_hostname: bool) -> ssl.SSLContext:
    """A client context for sessions to the members: TLS 1.2 or later, the member's certificate verified against
    the CAs of ``ca_bundle`` (PEM, one or more), its host name too when ``check_hostname``. Raises ssl.SSLError
    (a ValueError) when the bundle holds no certificate. One context serves every session (threads included)."""
    context = ssl.create_default_context(cadata=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    return context


def connect(
    name: str,
    host: str,
    port: int,
    credentials: Credentials,
    dialect: Dialect,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    read_timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
) -> Session:
    """Open a session, each step of it (the TCP connect, every reply of the handshake) within ``timeout`` seconds,
    then every reply within ``read_timeout`` (default: the same); raises pymysql errors (2013 when the member
    accepted the connection but did not answer in time). Lock waits (e.g. setting read-only) end before the read
    timeout. With ``tls`` the session is TLS, the member's certificate verified as that context says (a member
    without TLS is refused); without it no TLS is tried: pymysql's default (TLS when the server offers it) builds
    a TLS context for every connection, some 20 ms of CPU, and the operator connects to every member every
    period."""
    replies = read_timeout if read_timeout is not None else timeout
    conn = pymysql.connect(
        ssl_disabled=tls is None,
        ssl=tls,
        host=host,
        port=port,
        user=credentials.username,
        password=credentials.password,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        autocommit=True,
        charset="utf8mb4",
        init_command=f"SET SESSION lock_wait_timeout = {max(1, math.ceil(replies) - 1)}",
    )
    # pymysql bounds only the TCP connect by connect_timeout and reads the handshake with the read timeout: a
    # member behind a slow link (or a hung server) would answer a fence given the longer waiting timeout although
    # no inspection reaches it, and a failover would be abandoned for it again and again. pymysql has no public
    # setter; it applies these to the next read and write.
    conn._read_timeout = conn._write_timeout = replies  # type: ignore[attr-defined]
    again = partial(
        connect, name, host, port, credentials, dialect, timeout=timeout, read_timeout=read_timeout, tls=tls
    )
    return Session(name, conn, dialect, replies, again, tls=tls)


def describe_error(exc: BaseException, secret: str = "") -> str:
    """One readable line for a driver error, with ``secret`` masked should the driver ever echo it."""
    code, message = (*exc.args, None, None)[:2]
    text = f"{message} ({code})" if isinstance(code, int) and message else str(exc) or type(exc).__name__
    return text.replace(secret, "***") if secret else text


@dataclass(frozen=True)
class MemberState:
    """What one inspection found; every field but name/host/port/reachable/error is None when unreachable."""

    name: str
    host: str
    port: int
    reachable: bool
    error: str | None = None
    """Why it could not be inspected."""
    server_id: int | None = None
    read_only: bool | None = None
    """Not writable (`ServerState.read_only`): False only when every read-only variable is off."""
    fenced: bool | None = None
    """No account can write (`ServerState.fenced`): on MySQL ``super_read_only``; a member may be read-only and
    not fenced (MySQL ``read_only=ON`` alone)."""
    is_replica: bool = False
    """A source is configured."""
    source_host: str | None = None
    source_port: int | None = None
    io_running: bool | None = None
    io_connecting: bool = False
    """The IO thread runs but is not connected: it is retrying to reach its source."""
    sql_running: bool | None = None
    seconds_behind: int | None = None
    """Seconds_Behind_Master as the replica reports it, which counts only what it received; the replication
    controller raises it to the lag measured against the primary's history (`lag.truthful_lag`). None also when
    the IO thread is not connected: both flavors report NULL then."""
    last_io_errno: int | None = None
    last_io_error: str | None = None
    last_sql_error: str | None = None
    gtid_executed: GtidSet | None = None
    gtid_retrieved: GtidSet | None = None
    """Received into the relay log; None unless a replica."""
    net_timeout: int | None = None
    """Seconds its IO thread waits for data from the source before it reconnects."""
    secure_transport: bool | None = None
    """Clients without TLS are refused."""
    semi_sync: SemiSyncStatus | None = None

    @classmethod
    def unreachable(cls, name: str, host: str, port: int, error: str) -> MemberState:
        return cls(name=name, host=host, port=port, reachable=False, error=error)


def read_state(session: Session) -> MemberState:
    """Inspect through an open session; raises pymysql errors."""
    server = session.server_state()
    status = session.replica_status()
    state = MemberState(
        name=session.name,
        host=session.conn.host,
        port=session.conn.port,
        reachable=True,
        server_id=server.server_id,
        read_only=server.read_only,
        fenced=server.fenced,
        gtid_executed=server.executed,
        semi_sync=session.semi_sync_status(),
        net_timeout=session.net_timeout(),
        secure_transport=server.secure_transport,
    )
    if status is None:
        return state
    return replace(
        state,
        is_replica=True,
        source_host=status.source_host,
        source_port=status.source_port,
        io_running=status.io_running,
        io_connecting=status.io_state == "connecting",
        sql_running=status.sql_running,
        seconds_behind=status.seconds_behind,
        last_io_errno=status.last_io_errno or None,
        last_io_error=status.last_io_error,
        last_sql_error=status.last_sql_error,
        gtid_retrieved=status.retrieved,
    )


def inspect(
    name: str,
    host: str,
    port: int,
    credentials: Credentials,
    dialect: Dialect,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> MemberState:
    """Connect, inspect and disconnect; an unreachable or failing member is reported, never raised."""
    try:
        with connect(name, host, port, credentials, dialect, timeout=timeout, tls=tls) as session:
            return read_state(session)
    except (pymysql.MySQLError, OSError) as exc:
        return MemberState.unreachable(name, host, port, describe_error(exc, credentials.password))

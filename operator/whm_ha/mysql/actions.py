"""Idempotent steps against live members. Each reads first and writes only what differs, and says whether it
wrote, so reconciling a healthy topology issues no writes. Driver errors (pymysql.MySQLError) propagate."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pymysql

from .dialect import APPLICATION_PRIVILEGES, READ_ONLY_ERRNO, REPLICATION_PRIVILEGE, SemiSyncRole, Source
from .gtid import GtidSet
from .member import Session

AUTH_ERRNOS = frozenset({1045})
"""IO-thread errors that mean the replication password is wrong: reconfigure, the secret may have changed."""

_GLOBAL_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)
_SCHEMA_GRANT = re.compile(r"^GRANT (.+?) ON `([^`]+)`\.\* TO ", re.IGNORECASE)


class PromotionError(RuntimeError):
    """The member cannot be promoted without losing what it received."""


@dataclass(frozen=True)
class GtidResult:
    """Whether the step wrote, and the member's executed GTIDs afterwards."""

    changed: bool
    gtid: GtidSet


def _can_log_in(session: Session, user: str, password: str) -> bool:
    """Whether ``user`` logs in to the member with ``password``: the only portable password check. Over TLS, the
    member verified as the session was, when the session is TLS (a password is sent)."""
    try:
        pymysql.connect(
            ssl=session.tls,
            host=session.conn.host,
            port=session.conn.port,
            user=user,
            password=password,
            connect_timeout=session.timeout,
            read_timeout=session.timeout,
        ).close()
    except pymysql.OperationalError as exc:
        if exc.args and exc.args[0] in AUTH_ERRNOS:
            return False
        raise
    return True


def _has_replication_grant(grants: Iterable[str]) -> bool:
    for grant in grants:
        match = _GLOBAL_GRANT.match(grant)
        privileges = {p.strip().upper() for p in match.group(1).split(",")} if match else set()
        if privileges & {REPLICATION_PRIVILEGE, "ALL PRIVILEGES"}:
            return True
    return False


def _ensure_account(session: Session, user: str, password: str, host: str) -> bool:
    """Create the account, or fix its password; whether it wrote."""
    dialect = session.dialect
    row = session.row(dialect.user_exists(user, host))
    if not row or not row[0]:
        session.execute(dialect.create_user(user, host, password))
        return True
    if not _can_log_in(session, user, password):
        session.execute(dialect.set_password(user, host, password))
        return True
    return False


def ensure_replication_user(session: Session, user: str, password: str, *, host: str = "%") -> bool:
    """Create the replication account on the primary, or fix its password and grant."""
    changed = _ensure_account(session, user, password, host)
    if not _has_replication_grant(str(r[0]) for r in session.rows(session.dialect.show_grants(user, host))):
        session.execute(session.dialect.grant_replication(user, host))
        changed = True
    return changed


def _schema_privileges(grants: Iterable[str]) -> dict[str, set[str]]:
    """The privileges each ``GRANT ... ON `schema`.* ...`` line gives, by schema."""
    found: dict[str, set[str]] = {}
    for grant in grants:
        match = _SCHEMA_GRANT.match(grant)
        if match:
            privileges = {p.strip().upper() for p in match.group(1).split(",")}
            found.setdefault(match.group(2).replace("\\_", "_"), set()).update(privileges)
    return found


def ensure_application_user(
    session: Session, user: str, password: str, schemas: Sequence[str], *, host: str = "%"
) -> bool:
    """Create the application account on the primary, or fix its password and its grants on ``schemas``. It gets
    schema privileges only, so that read-only members refuse its writes."""
    changed = _ensure_account(session, user, password, host)
    held = _schema_privileges(str(r[0]) for r in session.rows(session.dialect.show_grants(user, host)))
    for schema in schemas:
        privileges = held.get(schema, set())
        if "ALL PRIVILEGES" not in privileges and not set(APPLICATION_PRIVILEGES) <= privileges:
            session.execute(session.dialect.grant_schema(user, host, schema))
            changed = True
    return changed


def _set_read_only(session: Session, on: bool) -> bool:
    """Fence (``on``: no account can write) or open (every read-only variable off); whether it wrote."""
    state = session.server_state()
    if state.fenced if on else not state.read_only:
        return False
    for sql in session.dialect.set_read_only(on):
        session.execute(sql)
    return True


def allow_admin_writes(session: Session) -> bool:
    """Let the administrative account write on the fenced member while applications still cannot (`Dialect.
    admin_writes`); whether it wrote."""
    statements = session.dialect.admin_writes()
    if not statements or not session.server_state().fenced:
        return False
    for sql in statements:
        session.execute(sql)
    return True


def ensure_replica(session: Session, source: Source, *, read_only: bool = True) -> bool:
    """Make the member a GTID replica of ``source``: read-only first, then reconfigure only if the settings differ
    (or the IO thread reports a wrong password), then start stopped threads."""
    dialect = session.dialect
    changed = _set_read_only(session, read_only)
    status = session.replica_status()
    if status is None or not status.matches(source) or status.last_io_errno in AUTH_ERRNOS:
        if status is not None:
            session.execute(dialect.stop_replica())
        query = dialect.resume_position()
        resume = None if query is None else session.row(query)
        for sql in dialect.configure_source(source, None if resume is None else (str(resume[0]), str(resume[1]))):
            session.execute(sql)
        session.execute(dialect.start_replica())
        return True
    if status.io_state == "stopped" or not status.sql_running:
        session.execute(dialect.start_replica())
        changed = True
    return changed


def stop_other_source(session: Session, source: Source) -> bool:
    """Stop the member replicating from anything but ``source``, so that its GTID set can be read for good."""
    status = session.replica_status()
    if status is None or status.matches(source) or (status.io_state == "stopped" and not status.sql_running):
        return False
    session.execute(session.dialect.stop_replica())
    return True


def fence(session: Session) -> GtidResult:
    """Make the member read-only and return what it had executed by then."""
    changed = _set_read_only(session, True)
    return GtidResult(changed, session.executed())


def stop_io_threads(sessions: Sequence[Session]) -> dict[str, str]:
    """Stop receiving on every replica, all at once (a STOP waits while an IO thread waits on a vanished source);
    their SQL threads go on applying the relay log. Returns the replicas that could not be stopped (a lost
    connection, a timeout), with why; other errors propagate."""

    def stop(session: Session) -> str | None:
        try:
            status = session.replica_status()
            if status is not None and status.io_state != "stopped":
                session.execute(session.dialect.stop_replica("io"))
        except pymysql.OperationalError as exc:
            return str(exc.args[1] if len(exc.args) > 1 else exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(sessions))) as pool:
        outcomes = list(pool.map(stop, sessions))
    return {s.name: why for s, why in zip(sessions, outcomes, strict=True) if why is not None}


def resume_receiving(session: Session, host: str, port: int) -> bool:
    """Start the replica's IO thread if it is stopped and its source is ``host``:``port`` (the SQL thread is left
    as it is); whether it wrote."""
    status = session.replica_status()
    if status is None or status.io_state != "stopped" or (status.source_host, status.source_port) != (host, port):
        return False
    session.execute(session.dialect.start_replica("io"))
    return True


def require_secure_transport(session: Session, required: bool = True) -> bool:
    """Make the member refuse clients without TLS from now on (``required`` False: accept them again); whether it
    wrote."""
    if session.server_state().secure_transport == required:
        return False
    session.execute(session.dialect.require_secure_transport(required))
    return True


def reload_tls(session: Session) -> None:
    """Make the member serve the certificate, key and CA files it has now to new connections (after they were
    replaced on its file system); those open keep their session."""
    session.execute(session.dialect.reload_tls())


def ensure_net_timeout(session: Session, seconds: int) -> bool:
    """Set the member's replica net timeout; a running IO thread reconnects so that it takes effect."""
    if session.net_timeout() == seconds:
        return False
    session.execute(session.dialect.set_global(session.dialect.net_timeout_variable, seconds))
    _reconnect_io(session)
    return True


def wait_applied(session: Session, gtid: GtidSet, timeout: float) -> bool:
    """Wait until the member has executed ``gtid``; False after ``timeout`` seconds, or at once when the server
    says it got there but its GTIDs differ (a divergent MariaDB history)."""
    deadline = time.monotonic() + timeout
    server_says_reached = False
    while not session.executed().contains(gtid):
        remaining = deadline - time.monotonic()
        if server_says_reached or remaining <= 0:
            return False
        row = session.row(session.dialect.wait_for_gtid(gtid, min(remaining, session.timeout / 2)))
        server_says_reached = row is not None and row[0] == 0
    return True


def detach(session: Session, *, timeout: float = 30) -> bool:
    """Make the member a source of nothing's but its own: stop receiving, apply the relay log (within
    ``timeout``), forget the source. Still read-only. Raises PromotionError rather than discard unapplied
    transactions; whether it wrote."""
    dialect = session.dialect
    status = session.replica_status()
    if status is None:
        return False
    if status.io_state != "stopped":
        session.execute(dialect.stop_replica("io"))
        status = session.replica_status()
        assert status is not None
    if not status.sql_running:
        if status.last_sql_error:
            raise PromotionError(f"{session.name}: its SQL thread failed: {status.last_sql_error}")
        session.execute(dialect.start_replica("sql"))
    if not wait_applied(session, status.retrieved, timeout):
        missing = status.retrieved.difference(session.executed())
        raise PromotionError(f"{session.name}: relay log not applied within {timeout:g}s, missing {missing}")
    session.execute(dialect.stop_replica())
    session.execute(dialect.reset_replica_all())
    return True


def promote(session: Session, *, timeout: float = 30) -> GtidResult:
    """Make the member a writable primary: ``detach`` it, then turn read-only off."""
    changed = detach(session, timeout=timeout)
    changed = _set_read_only(session, False) or changed
    return GtidResult(changed, session.executed())


def _apply_semi_sync(session: Session, role: SemiSyncRole, enabled: bool, timeout_ms: int) -> bool:
    dialect = session.dialect
    wanted = dialect.semi_sync_settings(role, enabled, timeout_ms)
    current = {str(name): str(value) for name, value in session.rows(dialect.semi_sync_variables_query())}
    changed = False
    if not wanted.keys() <= current.keys():
        if not enabled:
            return False
        install = dialect.install_semi_sync(role)
        if install is None:
            raise RuntimeError(f"{session.name}: no semi-sync variables {', '.join(wanted.keys() - current.keys())}")
        try:
            session.execute(install)
        except pymysql.OperationalError as exc:
            if exc.args and exc.args[0] == READ_ONLY_ERRNO:
                needs = dialect.semi_sync_prerequisite(role)
                raise RuntimeError(f"{session.name}: read-only, cannot install semi-sync: it needs {needs}") from exc
            raise
        current = {str(name): str(value) for name, value in session.rows(dialect.semi_sync_variables_query())}
        changed = True
    for variable, value in wanted.items():
        if current.get(variable, "").upper() != str(value).upper():
            session.execute(dialect.set_global(variable, value))
            changed = True
    return changed


def _reconnect_io(session: Session) -> None:
    """A replica announces semi-sync when it connects: restart a running IO thread."""
    status = session.replica_status()
    if status is not None and status.io_state != "stopped":
        session.execute(session.dialect.stop_replica("io"))
        session.execute(session.dialect.start_replica("io"))


def enable_semi_sync(
    primary: Session, replicas: Sequence[Session], timeout_ms: int, announce_timeout: float = 2.0
) -> bool:
    """Semi-sync, AFTER_SYNC: the primary waits up to ``timeout_ms`` for one replica to acknowledge a commit.

    The replicas first, then the primary: a commit made once the primary waits but received over a connection
    that did not announce semi-sync is never acknowledged (a replica that reconnects announcing it resumes after
    that commit), so it would wait for the whole timeout, with no fallback forever, holding its row locks. So the
    replicas reconnect announcing semi-sync, and the primary starts waiting once one of them is back (or after
    ``announce_timeout`` seconds), seen in its count of semi-sync clients."""
    changed = False
    for replica in replicas:
        if _apply_semi_sync(replica, "replica", True, timeout_ms):
            _reconnect_io(replica)
            changed = True
    if changed:  # reconnecting: each counts as a semi-sync client of the primary once back (even with it off)
        deadline = time.monotonic() + announce_timeout
        while primary.semi_sync_status().source_clients == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    return source_semi_sync_on(primary, timeout_ms) or changed


def source_semi_sync_on(session: Session, timeout_ms: int) -> bool:
    """The source side of semi-sync on (AFTER_SYNC, waiting up to ``timeout_ms`` for the acknowledgements it
    needs): set before a primary accepts writes, none of them is acknowledged before a replica has it."""
    return _apply_semi_sync(session, "source", True, timeout_ms)


def replica_semi_sync_on(session: Session) -> bool:
    """The replica side of semi-sync on a member about to replicate (its IO thread not started yet): it then
    announces semi-sync from its first connection, and a MariaDB member in gtid_strict_mode applies the
    transactions under its own server id that it lacks (a former primary whose recovery dropped what a replica
    held) instead of skipping them as its own."""
    return _apply_semi_sync(session, "replica", True, 0)


def disable_semi_sync(sessions: Iterable[Session]) -> bool:
    """Turn semi-sync off on both sides of every member."""
    changed = False
    for session in sessions:
        changed = _apply_semi_sync(session, "source", False, 0) or changed
        if _apply_semi_sync(session, "replica", False, 0):
            _reconnect_io(session)
            changed = True
    return changed

"""The shared session store on ha_sessions: any app node can read what another wrote.

Session ids are random tokens handed to the client; only their SHA-256 is stored. Sessions are read and
written on the primary (a session written on one node must be visible on the next request, wherever it
lands). Payloads are JSON objects of bounded size.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .pool import ReadWritePool

MAX_PAYLOAD_BYTES = 64 * 1024
ID_BYTES = 32


class SessionError(ValueError):
    """Bad input to the session store, with a message saying what to change."""


@dataclass(frozen=True)
class Session:
    """One live session (the id is never stored, so it is not part of what is read back)."""

    user_id: str
    data: dict[str, Any]
    node: str
    ip_address: str
    user_agent: str
    created_at: datetime
    last_activity: datetime
    expires_at: datetime


def session_hash(session_id: str) -> str:
    """The stored form of a session id (the id itself is never stored)."""
    if not isinstance(session_id, str) or not 16 <= len(session_id) <= 256:
        raise SessionError("a session id is a string of 16 to 256 characters")
    return hashlib.sha256(session_id.encode()).hexdigest()


def _payload(data: dict[str, Any]) -> bytes:
    if not isinstance(data, dict):
        raise SessionError("session data must be a JSON object (a dict)")
    try:
        encoded = json.dumps(data, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SessionError(f"session data must be JSON-serialisable: {exc}") from exc
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise SessionError(f"session data is {len(encoded)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return encoded


_COLUMNS = "user_id, data, node, ip_address, user_agent, created_at, last_activity, expires_at"


def _session(row: tuple[Any, ...]) -> Session:
    return Session(row[0], json.loads(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])


class SessionStore:
    """Create, get, touch, delete and list sessions; statistics and cleanup."""

    def __init__(self, pool: ReadWritePool, *, ttl_seconds: int = 86400) -> None:
        if ttl_seconds < 1:
            raise SessionError("ttl_seconds must be positive")
        self._pool = pool
        self._ttl = ttl_seconds

    def create(
        self, user_id: str, data: dict[str, Any], *, node: str = "", ip_address: str = "", user_agent: str = ""
    ) -> str:
        """A new session; returns its id (give it to the client; it is not stored)."""
        if not user_id or len(user_id) > 255:
            raise SessionError("user_id must be 1 to 255 characters")
        payload = _payload(data)
        session_id = secrets.token_urlsafe(ID_BYTES)
        with self._pool.writer() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO ha_sessions (session_hash, user_id, data, node, ip_address, user_agent, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, NOW(3) + INTERVAL %s SECOND)",
                (session_hash(session_id), user_id, payload, node[:253], ip_address[:45], user_agent[:512], self._ttl),
            )
        return session_id

    def get(self, session_id: str) -> Session | None:
        """The session, unless unknown or expired."""
        with self._pool.writer() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM ha_sessions WHERE session_hash = %s AND expires_at >= NOW(3)",
                (session_hash(session_id),),
            )
            row = cur.fetchone()
        return _session(row) if row else None

    def touch(self, session_id: str, *, data: dict[str, Any] | None = None, node: str | None = None) -> bool:
        """Extend a live session (and optionally replace its data); False when it is gone."""
        sets = ["last_activity = NOW(3)", "expires_at = NOW(3) + INTERVAL %s SECOND"]
        params: list[Any] = [self._ttl]
        if data is not None:
            sets.append("data = %s")
            params.append(_payload(data))
        if node is not None:
            sets.append("node = %s")
            params.append(node[:253])
        with self._pool.writer() as conn, conn.cursor() as cur:
            changed = cur.execute(
                f"UPDATE ha_sessions SET {', '.join(sets)} WHERE session_hash = %s AND expires_at >= NOW(3)",
                (*params, session_hash(session_id)),
            )
        return bool(changed)

    def delete(self, session_id: str) -> bool:
        with self._pool.writer() as conn, conn.cursor() as cur:
            return bool(cur.execute("DELETE FROM ha_sessions WHERE session_hash = %s", (session_hash(session_id),)))

    def for_user(self, user_id: str) -> list[Session]:
        """The live sessions of a user, newest activity first."""
        with self._pool.writer() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM ha_sessions WHERE user_id = %s AND expires_at >= NOW(3)"
                " ORDER BY last_activity DESC",
                (user_id,),
            )
            return [_session(row) for row in cur.fetchall()]

    def stats(self) -> dict[str, int]:
        with self._pool.reader() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*), COALESCE(SUM(expires_at >= NOW(3)), 0),"
                " COUNT(DISTINCT CASE WHEN expires_at >= NOW(3) THEN user_id END) FROM ha_sessions"
            )
            total, active, users = cur.fetchone() or (0, 0, 0)
        return {
            "total": int(total),
            "active": int(active),
            "expired": int(total) - int(active),
            "activeUsers": int(users),
        }

    def cleanup(self) -> int:
        """Delete expired sessions; returns how many."""
        with self._pool.writer() as conn, conn.cursor() as cur:
            return int(cur.execute("DELETE FROM ha_sessions WHERE expires_at < NOW(3)"))

"""The shared cache on ha_cache: values by key with an optional time to live, safe for many app nodes."""

from __future__ import annotations

from .pool import ReadWritePool

MAX_VALUE_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 255


class CacheError(ValueError):
    """Bad input to the cache, with a message saying what to change."""


def _key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise CacheError(f"a cache key is a string of 1 to {MAX_KEY_LENGTH} characters")
    return key


class SharedCache:
    """get, set (insert or replace, last writer wins) and delete, with expiry."""

    def __init__(self, pool: ReadWritePool) -> None:
        self._pool = pool

    def get(self, key: str) -> bytes | None:
        """The value, unless absent or expired (read on the primary: a value just set is visible)."""
        with self._pool.writer() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT value FROM ha_cache WHERE cache_key = %s AND (expires_at IS NULL OR expires_at >= NOW(3))",
                (_key(key),),
            )
            row = cur.fetchone()
        return bytes(row[0]) if row else None

    def set(self, key: str, value: bytes | str, *, ttl_seconds: int | None = None) -> None:
        data = value.encode() if isinstance(value, str) else value
        if not isinstance(data, bytes):
            raise CacheError("a cache value is bytes or str")
        if len(data) > MAX_VALUE_BYTES:
            raise CacheError(f"the value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES}")
        if ttl_seconds is not None and ttl_seconds < 1:
            raise CacheError("ttl_seconds must be positive (or None: no expiry)")
        expires = "NOW(3) + INTERVAL %s SECOND" if ttl_seconds is not None else "NULL"
        params = (_key(key), data, *((ttl_seconds,) if ttl_seconds is not None else ()))
        with self._pool.writer() as conn, conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO ha_cache (cache_key, value, expires_at) VALUES (%s, %s, {expires})"
                " ON DUPLICATE KEY UPDATE value = VALUES(value), expires_at = VALUES(expires_at)",
                params,
            )

    def delete(self, key: str) -> bool:
        with self._pool.writer() as conn, conn.cursor() as cur:
            return bool(cur.execute("DELETE FROM ha_cache WHERE cache_key = %s", (_key(key),)))

    def cleanup(self) -> int:
        """Delete expired entries; returns how many."""
        with self._pool.writer() as conn, conn.cursor() as cur:
            return int(cur.execute("DELETE FROM ha_cache WHERE expires_at IS NOT NULL AND expires_at < NOW(3)"))

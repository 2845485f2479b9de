"""Parse ``mysql://user@host:port/db`` DSNs and open pymysql connections from them."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors

DEFAULT_PORT = 3306


class DSNError(ValueError):
    """The DSN or the password source is unusable."""


@dataclass(frozen=True)
class DSN:
    """Where and as whom to connect. The password never comes from the DSN text."""

    host: str
    port: int
    user: str
    database: str | None
    password: str = ""
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """Connect with TLS, the server verified as this context says; None: pymysql's default."""

    def __str__(self) -> str:
        db = self.database or ""
        return f"mysql://{self.user}@{self.host}:{self.port}/{db}"

    def with_password(self, password: str) -> DSN:
        return replace(self, password=password)

    def connect(
        self, *, database: str | None = None, connect_timeout: float = 5, read_timeout: float = 30
    ) -> pymysql.Connection[pymysql.cursors.Cursor]:
        """Open a connection (autocommit on, utf8mb4); database "" means none."""
        return pymysql.connect(
            ssl=self.tls,
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=(database if database is not None else self.database) or None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
            charset="utf8mb4",
        )


def parse(text: str) -> DSN:
    """Parse ``mysql://user@host[:port]/database``; a password in the DSN is refused."""
    parts = urlsplit(text)
    if parts.scheme not in ("mysql", "mariadb"):
        raise DSNError(f"DSN must start with mysql://, got {text!r}")
    if parts.password is not None:
        raise DSNError("put no password in the DSN: use --password-env or --password-file")
    if not parts.hostname:
        raise DSNError(f"DSN has no host: {text!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise DSNError(f"DSN has a bad port: {text!r}") from exc
    database = unquote(parts.path.lstrip("/")) or None
    return DSN(host=parts.hostname, port=port, user=unquote(parts.username or "root"), database=database)


def read_password(env_var: str | None, file: Path | None) -> str:
    """The password from a file (first line) or an environment variable; empty when neither is given."""
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            raise DSNError(f"cannot read password file {file}: {exc.strerror}") from exc
        return lines[0] if lines else ""
    if env_var:
        return os.environ.get(env_var, "")
    return ""

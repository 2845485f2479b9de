"""Apply the SQL files of sql/ idempotently, recording each applied version.

Each file is a version (``NNN_name.sql``). A version is applied once; its checksum is recorded,
and a recorded version whose file has since changed is an error rather than silently skipped.
Statements are written to be re-runnable (IF NOT EXISTS), so a run cut short resumes cleanly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pymysql

from .dsn import DSN

MIGRATIONS_TABLE = "ha_schema_migrations"
SETTING_RETENTION = "health_check_retention_days"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration could not be applied; the message is one readable line."""


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements: comments dropped, split on a ';' that ends a line."""
        body = "\n".join(line for line in self.text.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]


@dataclass(frozen=True)
class MigrationReport:
    """What a run did."""

    applied: list[int]
    already: list[int]
    settings_changed: list[str]
    event_scheduler: bool = True
    """Whether the server runs events: the cleanup events of the schema run only when it does."""


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with the package (the repository's sql/ folder)."""
    folder = resources.files("whm_ha.db") / "sql"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def migrations_from(folder: Path) -> list[Migration]:
    """Migrations from a folder of NNN_name.sql files."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    return found


def _describe(exc: pymysql.MySQLError) -> str:
    code = exc.args[0] if exc.args else None
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    return f"MySQL error {code}: {message}" if code else str(message)


def migrate(
    dsn: DSN,
    migrations: list[Migration] | None = None,
    *,
    health_check_retention_days: int | None = None,
) -> MigrationReport:
    """Bring the database named by dsn up to the newest migration. Raises MigrationError."""
    if not dsn.database:
        raise MigrationError("the DSN names no database: mysql://user@host:port/DATABASE")
    todo = bundled_migrations() if migrations is None else migrations
    try:
        conn = dsn.connect(database="")
    except pymysql.MySQLError as exc:
        raise MigrationError(f"cannot connect to {dsn}: {_describe(exc)}") from exc
    applied: list[int] = []
    already: list[int] = []
    changed: list[str] = []
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{dsn.database}` DEFAULT CHARACTER SET utf8mb4")
            cur.execute(f"USE `{dsn.database}`")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                " version INT UNSIGNED NOT NULL PRIMARY KEY,"
                " name VARCHAR(255) NOT NULL,"
                " checksum CHAR(64) NOT NULL,"
                " applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)"
                ") ENGINE=InnoDB"
            )
            cur.execute(f"SELECT version, checksum FROM {MIGRATIONS_TABLE}")
            recorded = {int(v): c for v, c in cur.fetchall()}
            for migration in todo:
                if migration.version in recorded:
                    if recorded[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:03d}_{migration.name} changed after it was "
                            "applied; add a new migration instead of editing an applied one"
                        )
                    already.append(migration.version)
                    continue
                for statement in migration.statements():
                    cur.execute(statement)
                cur.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied.append(migration.version)
            if health_check_retention_days is not None:
                rows = cur.execute(
                    "UPDATE ha_settings SET value = %s WHERE name = %s AND value <> %s",
                    (str(health_check_retention_days), SETTING_RETENTION, str(health_check_retention_days)),
                )
                if rows:
                    changed.append(SETTING_RETENTION)
            cur.execute("SELECT @@GLOBAL.event_scheduler")
            (scheduler,) = cur.fetchone() or ("OFF",)
    except pymysql.MySQLError as exc:
        raise MigrationError(f"migration failed on {dsn}: {_describe(exc)}") from exc
    finally:
        conn.close()
    return MigrationReport(
        applied=applied, already=already, settings_changed=changed, event_scheduler=str(scheduler).upper() == "ON"
    )

"""The binary log archiver in a process of its own, for a test to kill with SIGKILL: ``archiver_process.py JSON``
with the store's endpoint, the primary's address and flavour, and the spool directory. Logs to stderr."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from tests.fixtures.object_store import ACCESS_KEY, BUCKET, SECRET_KEY
from whm_ha.backup.binlog_stream import ArchiverSettings, BinlogArchiver
from whm_ha.backup.dump import Member
from whm_ha.backup.storage import S3Settings, S3Store
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, FLAVOURS
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials


def primary_of(settings: dict[str, Any]) -> Member:
    """The member the settings name (flavour, host, port), as the admin account."""
    flavour = FLAVOURS[settings["flavour"]]
    return Member(
        "m0",
        settings["host"],
        settings["port"],
        Credentials(ADMIN_USER, ADMIN_PASSWORD),
        dialect_for(flavour.product),
        programs=flavour.client_command,
    )


def store_of(settings: dict[str, Any], **options: Any) -> S3Store:
    """The test object store at the settings' endpoint; ``options``: more S3Settings."""
    return S3Store(
        S3Settings(
            endpoint=settings["endpoint"],
            bucket=BUCKET,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            **options,
        )
    )


def main() -> None:
    settings = json.loads(sys.argv[1])
    primary = primary_of(settings)
    store = store_of(settings, connect_timeout=2, read_timeout=10, attempts=1)
    archiver = BinlogArchiver(store, lambda: primary, ArchiverSettings(spool=Path(settings["spool"]), poll=0.05))
    archiver.serve(threading.Event())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="archiver %(levelname)s %(message)s")
    main()

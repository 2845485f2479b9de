"""Benchmark of a logical backup: `take_backup` (dump, zstd, upload to a real SeaweedFS on loopback, and to a
directory) against the same dump tool with the same options writing to /dev/null, in the same run, on the same
dataset; then the restore rate into an empty server.

    PYTHONPATH=. .venv/bin/python -m bench.backup [--size-mb 1024] [--database mariadb|mariadb-11.8|mysql] [--write]

The dataset is one table of rows with a random half and a repetitive half (it compresses about 3:1, like
typical application data). Needs hack/build-seaweedfs. ``--write`` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.fixtures.object_store import ObjectStore

from bench.report import publish
from whm_ha.backup.dump import Member, client_command, take_backup
from whm_ha.backup.restore import restore_backup
from whm_ha.backup.storage import FilesystemStore
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, FLAVOURS, LocalServer, init_template
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials

DATABASES = {"mariadb": "mariadb-10.11", "mariadb-11.8": "mariadb-11.8", "mysql": "mysql-9.7"}
ROW_BYTES = 4096
GOAL = 0.8
"""The backup's rate against the dump tool writing to /dev/null (issue #30)."""


def fill(server: LocalServer, size_mb: int) -> None:
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    words = (b"whm-ha backup benchmark row " * (ROW_BYTES // 56 + 1))[: ROW_BYTES // 2]
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
        cur.execute("CREATE TABLE app.data (id INT PRIMARY KEY, payload LONGBLOB)")
        batch = 1000
        for first in range(0, rows, batch):
            values = [
                (i, os.urandom(ROW_BYTES // 4).hex().encode() + words) for i in range(first, min(rows, first + batch))
            ]
            cur.executemany("INSERT INTO app.data VALUES (%s, %s)", values)


def dump_to_null(member: Member) -> float:
    with client_command(member, member.dialect.dump_program) as command:
        start = time.monotonic()
        subprocess.run(
            [*command, *member.dialect.dump_options(), "--databases", "app"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--database", choices=sorted(DATABASES), default="mariadb")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    flavour = FLAVOURS[DATABASES[args.database]]
    weed = Path(
        subprocess.run(
            ["bash", "hack/build-seaweedfs", "--print-bin"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="whm-ha-bench-backup-") as tmp:
        work = Path(tmp)
        template = init_template(work / "template", flavour=flavour)
        servers = [LocalServer.from_template(template, work / f"s{i}", i, flavour=flavour) for i in (1, 2)]
        store_server = ObjectStore(weed, work / "seaweedfs")
        try:
            for server in servers:
                server.start()
            members = [
                Member(
                    f"m{i}",
                    s.host,
                    s.port,
                    Credentials(ADMIN_USER, ADMIN_PASSWORD),
                    dialect_for(flavour.product),
                    programs=flavour.client_command,
                )
                for i, s in enumerate(servers)
            ]
            fill(servers[0], args.size_mb)
            store_server.start()
            null = dump_to_null(members[0])
            start = time.monotonic()
            s3 = take_backup(store_server.store(), "bench-s3", members[0])
            s3_seconds = time.monotonic() - start
            start = time.monotonic()
            take_backup(FilesystemStore(work / "fs"), "bench-fs", members[0])
            fs_seconds = time.monotonic() - start
            null_again = dump_to_null(members[0])
            start = time.monotonic()
            restore_backup(store_server.store(), s3, members[1])
            restore_seconds = time.monotonic() - start
        finally:
            store_server.kill()
            for server in servers:
                server.stop()
    reference = min(null, null_again)
    mb = s3.uncompressed_size / 1e6
    s3_rate = mb / s3_seconds
    s3_figure = f"{s3_seconds:.1f} s ({s3_rate:.0f} MB/s), ratio {reference / s3_seconds:.2f}"
    null_figure = f"dump to /dev/null {reference:.1f} s ({null:.1f}, {null_again:.1f})"
    rows = [
        f"| backup to SeaweedFS (S3), {mb:.0f} MB -> {s3.size / 1e6:.0f} MB zstd | {s3_figure} | {null_figure} "
        f"| ratio >= {GOAL} |",
        f"| backup to a directory | {fs_seconds:.1f} s, ratio {reference / fs_seconds:.2f} | the same "
        f"| ratio >= {GOAL} |",
        f"| restore from SeaweedFS into an empty server | {restore_seconds:.1f} s ({mb / restore_seconds:.0f} MB/s) "
        "| - | - |",
    ]
    publish(f"Logical backup, {flavour.name}", rows, write=args.write)


if __name__ == "__main__":
    main()

"""The checkers' writer as a process (``python -m whm_ha.demo.checkers``), as the end-to-end suite's writer pod runs
it: it creates its table, writes to standard output (``kubectl logs``), and names the server that acknowledged."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tests.fixtures.local_cluster import wait_until
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB
from whm_ha.demo.checkers import missing, parse_acks

pytestmark = pytest.mark.mariadb


def test_the_writer_process_creates_its_table_and_prints_each_acknowledgement_with_the_servers_name(
    mariadb: LocalMariaDB,
) -> None:
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@hostname")
        (hostname,) = cur.fetchone()  # type: ignore[misc]
    options = {"host": mariadb.host, "port": mariadb.port, "user": ADMIN_USER, "password": ADMIN_PASSWORD}
    argv = [sys.executable, "-m", "whm_ha.demo.checkers", *(f"--{k}={v}" for k, v in options.items())]
    argv += ["--table=e2e.writes", "--create-table", "--count=3"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        output.extend(process.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until("30 acknowledgements on stdout", lambda: len(parse_acks("".join(output))) >= 30, timeout=30)
    finally:
        process.kill()
        process.wait(10)
        reader.join(10)
    acks = parse_acks("".join(output)).all()
    assert {ack.member for ack in acks} == {f"{hostname}:{mariadb.port}"}
    assert len({ack.id for ack in acks}) == len(acks)
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM e2e.writes")
        present = {int(row[0]) for row in cur.fetchall()}
    assert missing(acks, present) == []

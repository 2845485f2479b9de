"""`whm-ha demo --database mysql`: the demo's stack (sandbox API, three servers, three WHM nodes, operator, proxy,
shim) on MySQL 9.7 from the root hack/build-databases builds (``--databases``; MariaDB 10.11, the default, is
tests/scenarios/test_whole_system.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.fixtures.mariadb import require_flavour
from tests.scenarios.system import running_system
from whm_ha.db.server_checks import source_port
from whm_ha.demo.stack import DATABASES, Stack
from whm_ha.demo.tour import backup, database_failover
from whm_ha.demo.view import Observer

pytestmark = [pytest.mark.mariadb, pytest.mark.databases]


@pytest.fixture
def mysql_system(tmp_path: Path) -> Iterator[tuple[Stack, client.ApiClient, Observer]]:
    require_flavour(DATABASES["mysql"])
    with running_system(tmp_path, flavour=DATABASES["mysql"]) as started:
        yield started


def test_the_demo_on_mysql_comes_up_healthy_loses_no_write_when_the_primary_dies_and_backs_up(
    mysql_system: tuple[Stack, client.ApiClient, Observer],
) -> None:
    stack, api, observer = mysql_system
    replication = observer.replication()
    assert replication["spec"]["flavor"] == "mysql"
    status = replication["status"]
    assert (status["phase"], status["currentPrimary"], status["readyReplicas"]) == ("Healthy", "db-0", 2)
    for server in stack.databases:
        conn = server.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@GLOBAL.gtid_mode")
            version, gtid_mode = cur.fetchone() or ("", "")
        conn.close()
        assert str(version).startswith("9.7.") and "mariadb" not in str(version).lower(), version
        assert gtid_mode == "ON"
    primary_port = stack.databases[0].port
    assert [source_port(s) for s in stack.databases[1:]] == [primary_port, primary_port]

    assert database_failover(stack, api, observer, print), "promotion, writer resumes, nothing lost"
    assert backup(api, print), "a MySQLBackup with the root's mysqldump, put first on the operator's PATH"

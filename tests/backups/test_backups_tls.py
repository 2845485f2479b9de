"""Backups and restores over TLS, on every supported server (MariaDB 10.11, 11.8 and MySQL 9.7 with
``--databases``): members started with certificates of a test CA and ``require_secure_transport=ON``.

* A backup and a restore with the replication's CA succeed; the same member without it (plaintext) is refused, by
  the session that lists the schemas and by the client that loads a dump: the CA is what makes them work.
* A CA that did not sign the member's certificate: the backup fails naming the certificate and lists nothing; the
  dump tool and the client refuse the member too.
* The operator: a MySQLBackup of a replication with TLS on (its members refusing plaintext) completes, its try
  handed the CA of ``spec.tls.caSecret``, and the backup restores over TLS. The CA Secret is read for each try: a
  missing or unusable one fails the backup at once.
* The binlog archive streams over TLS with the CA; with another CA or none it stores nothing and says why.
* The name: the tools refuse a certificate of the right CA naming another host when told to check the name, except
  where the flavour does not check it (`NAME_UNCHECKED`), and accept it when told not to, except where the flavour
  checks it all the same (`NAME_ALWAYS_CHECKED`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes import client

from tests.backups.test_backups import fill, ids, member
from tests.backups.test_binlog_archive import archive_holds, archiving
from tests.backups.test_operator_backups import Backups
from tests.fixtures.database_tls import TestCA
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartFlavourServers
from tests.integration import test_operator_flavours
from tests.integration.test_operator_flavours import World
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.backup.archive import INDEX
from whm_ha.backup.binlog_stream import ArchiveReport
from whm_ha.backup.dump import BackupError, Member, client_command, open_session, take_backup
from whm_ha.backup.manifest import read_manifest, usable_backups
from whm_ha.backup.recovery import make_empty
from whm_ha.backup.restore import RestoreError, restore_backup
from whm_ha.backup.runner import BackupRunner, Misconfigured
from whm_ha.backup.storage import FilesystemStore
from whm_ha.backup.task import TaskMember
from whm_ha.crd.mysqlbackup import MySQLBackupSpec
from whm_ha.kube.client import KubeClient
from whm_ha.mysql.dialect import SQL, dialect_for

pytestmark = pytest.mark.mariadb

world = test_operator_flavours.world  # the fixture: three members of the flavour, the operator running

NAME_UNCHECKED = {"mariadb-11.8"}
"""Flavours whose tools check the CA but not the certificate's name when the member is reached by IP address
(measured on 127.0.0.1, as for their replicas: tests/integration/test_replication_tls.py)."""
NAME_ALWAYS_CHECKED = {"mariadb-11.8"}
"""Flavours whose tools, given a CA, check the certificate's name against a host name even when told not to
(``--disable-ssl-verify-server-cert``)."""


def run_client(m: Member, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``program`` (the member's client or dump tool) connecting to the member, with ``args``."""
    with client_command(m, program) as command:
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, check=False)


def test_a_backup_and_a_restore_use_the_members_tls(database_servers: StartFlavourServers, tmp_path: Path) -> None:
    ca = TestCA()
    servers = database_servers(2, tls=ca.server_tls(), require_secure_transport=True)
    source, target = (replace(member(f"m{i}", s), tls_ca=ca.pem) for i, s in enumerate(servers))
    fill(source, rows=300, row_bytes=256)
    store = FilesystemStore(tmp_path / "backups")

    with pytest.raises(BackupError, match="m0: "):
        take_backup(store, "plaintext", replace(source, tls_ca=None))
    assert store.list() == []

    manifest = take_backup(store, "over-tls", source)
    assert usable_backups(store) == [manifest]
    # Not "tls": MariaDB lists the directory of the servers' TLS files in their data dirs as a schema; it holds
    # nothing, and is left out.
    assert manifest.databases == ["app"]

    with pytest.raises(RestoreError, match=f"{target.dialect.client_program} failed"):
        restore_backup(store, manifest, replace(target, tls_ca=None))
    restore_backup(store, manifest, target)
    assert ids(target, "app.bulk") == set(range(300))
    # The recovery's check and emptying of a member that holds part of the backup: over TLS too, and the data
    # dir's "tls" directory, listed as a schema on MariaDB, is neither refused nor dropped.
    make_empty(target, manifest)
    with open_session(target) as t:
        assert not t.rows(SQL("SHOW DATABASES LIKE 'app'"))
        listed = {str(name) for (name,) in t.rows(SQL("SHOW DATABASES"))}
    assert target.dialect.flavor != "mariadb" or "tls" in listed, "the certificates' directory stays"
    program = target.dialect.client_program
    shown = run_client(target, program, "-N", "-e", "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert shown.returncode == 0 and shown.stdout.split()[1:], f"the client's session is not encrypted: {shown}"
    print(f"{servers[0].flavour.name}: {program} cipher {shown.stdout.split()[1]}")


def test_the_archive_streams_over_tls_and_stores_nothing_from_a_member_it_cannot_verify(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    """The binlog tool reads the primary's binary logs over TLS with the replication's CA (the member refusing
    plaintext): the archive holds every write. With a CA that did not sign the member's certificate, or with none,
    the archiver stores nothing and reports the primary unavailable, saying why."""
    ca = TestCA()
    (server,) = database_servers(1, tls=ca.server_tls(), require_secure_transport=True)
    primary = replace(member("m0", server), tls_ca=ca.pem)
    fill(primary, rows=50, row_bytes=256)
    for name, refused in (
        ("another CA", replace(primary, tls_ca=TestCA().pem)),
        ("plaintext", replace(primary, tls_ca=None)),
    ):
        store = FilesystemStore(tmp_path / name)
        reports: list[ArchiveReport] = []
        with archiving(store, [refused], tmp_path / f"spool-{name}", reports.append):
            wait_for(lambda seen=reports: refusal(seen), 30, f"the archiver to refuse {name}")
        assert store.list(INDEX) == [], f"nothing archived with {name}"
        print(f"{server.flavour.name}, {name}: {refusal(reports)}")
    store = FilesystemStore(tmp_path / "archive")
    with archiving(store, [primary], tmp_path / "spool"):
        wait_for(lambda: archive_holds(store, primary), 30, "the archive over TLS to hold every write")
        with open_session(primary) as session:
            session.execute(SQL("INSERT INTO app.bulk VALUES (1000, 'after')"))
        wait_for(lambda: archive_holds(store, primary), 30, "the archive over TLS to hold the next write")


def refusal(reports: list[ArchiveReport]) -> str | None:
    """The message of the first report of the primary as unavailable."""
    return next((r.message for r in reports if r.state == "PrimaryUnavailable"), None)


def test_a_member_whose_certificate_the_ca_did_not_sign_is_refused(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    (server,) = database_servers(1, tls=TestCA().server_tls(), require_secure_transport=True)
    m = replace(member("m0", server), tls_ca=TestCA().pem)
    store = FilesystemStore(tmp_path / "backups")
    with pytest.raises(BackupError, match=r"m0: .*certificate verify failed") as refused:
        take_backup(store, "other-ca", m)
    print(f"{server.flavour.name}: {refused.value}")
    assert usable_backups(store) == [] and store.list() == []
    for program in (m.dialect.dump_program, m.dialect.client_program):
        ran = run_client(
            m, program, *(["--no-data", "mysql"] if program == m.dialect.dump_program else ["-e", "SELECT 1"])
        )
        assert ran.returncode != 0 and "2026" in ran.stderr, f"{program} accepted the certificate: {ran}"


def test_the_tools_check_the_certificates_name_where_the_flavour_does(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    """A certificate of the right CA naming another host, the member reached by IP address and by host name: the
    tools told to check the name refuse it, except `NAME_UNCHECKED` by IP address; told not to, they accept it,
    except `NAME_ALWAYS_CHECKED` by host name. The backup refuses it on every flavour all the same: its session
    listing the schemas (Python's ssl) checks the name."""
    ca = TestCA()
    (server,) = database_servers(1, tls=ca.server_tls("db.elsewhere.example"), require_secure_transport=True)
    flavour = server.flavour.name
    for host in ("127.0.0.1", "localhost"):
        m = replace(member("m0", server), host=host, tls_ca=ca.pem)
        for program in (m.dialect.dump_program, m.dialect.client_program):
            args = ["--no-data", "mysql"] if program == m.dialect.dump_program else ["-e", "SELECT 1"]
            checked = run_client(m, program, *args)
            print(f"{flavour} {host}: {program} checking the name: {checked.returncode} {checked.stderr[-90:]!r}")
            assert (checked.returncode == 0) == (host == "127.0.0.1" and flavour in NAME_UNCHECKED), checked
            unchecked = run_client(replace(m, verify_server_name=False), program, *args)
            print(f"{flavour} {host}: {program} not checking it: {unchecked.returncode} {unchecked.stderr[-90:]!r}")
            assert (unchecked.returncode == 0) == (host != "localhost" or flavour not in NAME_ALWAYS_CHECKED)
        with pytest.raises(BackupError, match=r"m0: .*certificate verify failed"):
            take_backup(FilesystemStore(tmp_path / "backups"), "named-otherwise", m)


def test_the_operator_backs_up_a_replication_with_tls_on(
    world: Callable[..., World],
    database_servers: StartFlavourServers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's backup tries run the dump tool found on PATH: the flavour's, put first there."""
    flavour = database_servers.flavour
    programs = flavour.client_programs(tmp_path / "bin", [dialect_for(flavour.product).dump_program])
    monkeypatch.setenv("PATH", f"{programs}:{os.environ['PATH']}")
    ca = TestCA()
    db = world(ca=ca)
    db.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    backups = Backups(db)  # type: ignore[arg-type]  # a World has what it uses: custom, namespace
    backups.create(
        "over-tls", target="Primary", attempts=1, storage={"filesystem": {"path": str(tmp_path / "backups")}}
    )
    status = backups.finished("over-tls")
    assert status["phase"] == "Completed", status["message"]
    store = FilesystemStore(tmp_path / "backups")
    manifest = read_manifest(store, "over-tls")
    (server,) = database_servers(1, tls=ca.server_tls(), require_secure_transport=True)
    target = replace(member("empty", server), tls_ca=ca.pem)
    restore_backup(store, manifest, target)
    assert ids(target, "app.t") == {1, 2, 3}


def test_the_runner_hands_each_try_the_ca_of_the_replications_ca_secret(
    kube_api: KubeAPI, kube_client: client.ApiClient, kube_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read for each try: a missing Secret, or one without a certificate, fails the backup at once (Misconfigured);
    TLS off hands over none."""
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_secret(
        kube_namespace, {"metadata": {"name": "db-admin"}, "stringData": {"username": "root", "password": "pw"}}
    )
    tls = {"enabled": True, "caSecret": {"name": "db-ca"}, "caFile": "ca.pem", "verifyServerName": False}
    spec = {
        "flavor": "mariadb",
        "primary": "m0",
        "members": [{"name": "m0", "host": "127.0.0.1", "port": 3306}],
        "credentialsSecret": {"name": "db-admin"},
        "replicationSecret": {"name": "db-admin"},
        "tls": tls,
    }
    custom = client.CustomObjectsApi(kube_client)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MySQLReplication", "metadata": {"name": "db"}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, "mysqlreplications", body)
    backup = MySQLBackupSpec.model_validate(
        {"replication": "db", "member": "m0", "storage": {"filesystem": {"path": "/b"}}}
    )
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))

    async def resolve() -> TaskMember:
        async with KubeClient() as kube:
            task, _ = await BackupRunner(kube, kube_namespace, "one")._resolve(backup)
        return task.member

    with pytest.raises(Misconfigured, match=rf"Secret {kube_namespace}/db-ca \(tls.caSecret\) not found"):
        asyncio.run(resolve())
    core.create_namespaced_secret(kube_namespace, {"metadata": {"name": "db-ca"}, "stringData": {"ca.crt": "none"}})
    with pytest.raises(Misconfigured, match=r"\(tls.caSecret\) key ca.crt holds no PEM certificate"):
        asyncio.run(resolve())
    ca = TestCA()
    core.patch_namespaced_secret("db-ca", kube_namespace, {"stringData": {"ca.crt": ca.pem}})
    handed = asyncio.run(resolve())
    assert (handed.tls_ca, handed.verify_server_name) == (ca.pem, False)
    patch = {"spec": {"tls": {"enabled": False}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, kube_namespace, "mysqlreplications", "db", patch)
    assert asyncio.run(resolve()).tls_ca is None

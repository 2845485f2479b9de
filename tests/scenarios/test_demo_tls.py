"""`whm-ha demo --tls` as users run it: a subprocess that makes its own CA, serves the proxy and the shim over
HTTPS, replicates over TLS and prints the CA and the curl lines; those lines work as printed, and only with that
CA, and every replica replicates over TLS verifying its source."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, free_port
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials, connect, tls_context

pytestmark = [pytest.mark.mariadb, pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]
STARTED = "Press Ctrl-C to stop everything."


@pytest.fixture(scope="module")
def demo_output() -> Iterator[list[str]]:
    """The lines `whm-ha demo --tls` printed until it was up; it is stopped (and waited for) after the test."""
    ports = [f"--{name}-port={free_port()}" for name in ("proxy", "shim", "proxy-tls", "shim-tls")]
    demo = subprocess.Popen(
        [sys.executable, "-m", "whm_ha", "demo", "--tls", *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert demo.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while STARTED not in (line := demo.stdout.readline().decode()):
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line.rstrip("\n"))
        yield lines
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


def _curl(line: str, *extra: str) -> tuple[str, str]:
    """Run a curl line as the demo printed it; its body and status code ("000": no answer)."""
    result = subprocess.run(
        [*shlex.split(line), "-sS", "-w", "\n%{http_code}", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, code = result.stdout.rpartition("\n")
    return body, code


def test_the_printed_curl_lines_reach_the_proxy_and_the_shim_over_https(demo_output: list[str]) -> None:
    text = "\n".join(demo_output)
    (ca,) = re.findall(r"^\s+CA\s+(\S+)", text, re.M)
    proxy_line, shim_line = (m.strip() for m in re.findall(r"(curl --cacert .*)$", text, re.M))
    assert proxy_line == f"curl --cacert {ca} {proxy_line.rsplit(' ', 1)[1]}"
    assert Path(ca).read_text().startswith("-----BEGIN CERTIFICATE-----")

    body, code = _curl(proxy_line)
    assert code == "200", body
    assert json.loads(body)["node"].startswith("whm-node-"), body
    body, code = _curl(shim_line)
    assert code == "200", body
    assert json.loads(body)["success"] is True, body

    # The same calls without the demo's CA fail the verification: the certificates are really checked.
    for line in (proxy_line, shim_line):
        _, code = _curl(line.replace(f" --cacert {ca}", ""))
        assert code == "000", line


def test_the_replicas_replicate_over_tls_verifying_their_source(demo_output: list[str]) -> None:
    """Read from the API the demo printed (its kubeconfig); each replica, reached over TLS verified with the
    demo's CA, replicates from the primary with TLS and verifies its certificate."""
    text = "\n".join(demo_output)
    (kubeconfig,) = re.findall(r"export KUBECONFIG=(\S+)", text)
    (ca,) = re.findall(r"^\s+CA\s+(\S+)", text, re.M)
    assert "replication over TLS" in text
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    replication = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "ha.whm.io", "v1alpha1", "default", "mysqlreplications", "whm-db"
    )
    assert replication["spec"]["tls"]["enabled"] is True
    primary = replication["status"]["currentPrimary"]
    members = {m["name"]: m for m in replication["spec"]["members"]}
    source_port = members[primary]["port"]
    verified = tls_context(Path(ca).read_text(), check_hostname=True)
    dialect = dialect_for(replication["spec"]["flavor"])
    replicas = [m for name, m in members.items() if name != primary]
    assert len(replicas) == 2
    for member in replicas:
        session = connect(
            member["name"], member["host"], member["port"], Credentials(ADMIN_USER, ADMIN_PASSWORD), dialect,
            tls=verified,
        )  # fmt: skip
        try:
            status = session.replica_status()
        finally:
            session.close()
        assert status is not None and status.source_port == source_port, member
        assert (status.tls, status.tls_verify, status.io_running, status.sql_running) == (True, True, True, True)

"""``whm-ha demo`` stopped every way a terminal, a supervisor or a pipe stops it leaves no process behind: the
API server, the database servers, the nodes, the operator, the proxy and its workers, the shim."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whm_ha.db.local_server import free_port

STARTED = "Press Ctrl-C to stop everything."


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries the mark (the demo's children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if f"WHM_HA_HYGIENE_MARK={mark}".encode() in (proc / "environ").read_bytes():
                    state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.mariadb
@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "Ctrl-C with the pipe closed", "SIGKILL"])
def test_a_stopped_demo_leaves_no_process(how: str) -> None:
    mark = secrets.token_hex(8)
    env = {**os.environ, "WHM_HA_HYGIENE_MARK": mark}
    ports = (f"--proxy-port={free_port()}", f"--shim-port={free_port()}")
    demo = subprocess.Popen(
        [sys.executable, "-m", "whm_ha", "demo", *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert demo.stdout is not None
    try:
        deadline = time.monotonic() + 180
        lines = []
        while STARTED not in (line := demo.stdout.readline().decode()):
            lines.append(line)
            assert line and time.monotonic() < deadline, "".join(lines)
        assert not any("] nodes:" in line for line in lines), "the status block comes once, after the hint"
        children = _marked(mark)
        assert len(children) >= 9, children  # API, 3 databases, 3 nodes, operator, proxy (+ workers), shim
        if how == "Ctrl-C with the pipe closed":  # `whm-ha demo | tee log`, then Ctrl-C: tee goes first
            demo.stdout.close()
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(getattr(signal, how))
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGABRT)  # with PYTHONFAULTHANDLER (the Makefile's): every thread's stack
            output = "" if demo.stdout.closed else demo.communicate(timeout=30)[0].decode(errors="replace")
            pytest.fail(f"the demo still ran 60 s after {how}; its last output:\n{output[-6000:]}")
        deadline = time.monotonic() + 30
        while left := _marked(mark):
            assert time.monotonic() < deadline, f"left running after {how}: {left}"
            time.sleep(0.2)
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in _marked(mark):
            os.kill(pid, signal.SIGKILL)

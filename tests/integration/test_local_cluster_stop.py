"""How ``hack/local-cluster down`` stops a component (`whm_ha.local_cluster.stop_component`), against real stand-in
processes: a process group whose leader and child ignore SIGTERM, the child held in uninterruptible sleep by a
cgroup v1 freezer (as a kubelet or containerd stuck in the kernel is: SIGKILL waits until it wakes). ``down``
must return only once what it stopped is gone, and say so loudly when something is not.

The whole ``down`` is not run here: it also removes the host's kubelet chains, pod cgroups and the cluster's
bridge, which would take down a local cluster running beside the tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kube_helpers import wait_for
from whm_ha import local_cluster

FREEZER = Path("/sys/fs/cgroup/freezer")

STAND_IN = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
print(child, flush=True)
while True:
    time.sleep(1)
"""
"""A group leader that ignores SIGTERM, with a child in its group that ignores it too; prints the child's pid."""


@dataclass
class StandIn:
    """A component's stand-in, started as ``up`` starts one (own session, pid in ``pids/<name>``)."""

    process: subprocess.Popen[str]
    child: int

    @property
    def pgid(self) -> int:
        return self.process.pid


@dataclass
class Freezer:
    """A cgroup v1 freezer of the test's own."""

    path: Path

    def hold(self, pid: int) -> None:
        """Move ``pid`` in and freeze it: it sleeps uninterruptibly (state D) until thawed."""
        (self.path / "cgroup.procs").write_text(str(pid))
        (self.path / "freezer.state").write_text("FROZEN")
        wait_for(lambda: (self.path / "freezer.state").read_text().strip() == "FROZEN", 5, "the freezer frozen")

    def thaw(self) -> None:
        (self.path / "freezer.state").write_text("THAWED")


@pytest.fixture
def paths(tmp_path: Path) -> local_cluster.Paths:
    return local_cluster.Paths(tmp_path / "cluster")


@pytest.fixture
def stand_in(paths: local_cluster.Paths) -> Iterator[Callable[[str], StandIn]]:
    """``stand_in(name)``: a stand-in recorded as component ``name``; whatever is left of it is killed after."""
    started: list[StandIn] = []

    def start(name: str) -> StandIn:
        process = subprocess.Popen(
            [sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert process.stdout is not None
        one = StandIn(process, int(process.stdout.readline()))
        started.append(one)
        paths.pids.mkdir(parents=True, exist_ok=True)
        (paths.pids / name).write_text(str(process.pid))
        return one

    yield start
    for one in started:
        with suppress(ProcessLookupError):
            os.killpg(one.pgid, signal.SIGKILL)
        one.process.wait(10)


@pytest.fixture
def freezer() -> Iterator[Freezer]:
    if os.geteuid() != 0 or not (FREEZER / "cgroup.procs").exists():
        pytest.skip("needs root and the cgroup v1 freezer (under cgroup v2, SIGKILL ends a frozen process)")
    held = Freezer(FREEZER / f"whmt-{secrets.token_hex(4)}")
    held.path.mkdir()
    yield held
    held.thaw()
    for pid in (held.path / "cgroup.procs").read_text().split():  # only stand-ins were moved in
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not (held.path / "cgroup.procs").read_text().strip(), 10, "the freezer's processes gone")
    held.path.rmdir()


@pytest.fixture
def stuck(stand_in: Callable[[str], StandIn], freezer: Freezer) -> StandIn:
    """A stand-in recorded as the kubelet, its child frozen (state D)."""
    one = stand_in("kubelet")
    freezer.hold(one.child)
    return one


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_and_waited_for(
    paths: local_cluster.Paths, stand_in: Callable[[str], StandIn]
) -> None:
    one = stand_in("containerd")
    started = time.monotonic()
    assert local_cluster.stop_component(paths, "containerd", grace=1.0) is None
    took = time.monotonic() - started
    assert took >= 1.0, "SIGKILL only after the grace"
    assert local_cluster.group_members(one.pgid) == [], "returned before the group was gone"
    assert not local_cluster.alive(one.child)
    assert local_cluster.pid_of(paths, "containerd") is None


def test_stop_returns_only_once_a_child_stuck_in_the_kernel_is_gone(
    paths: local_cluster.Paths, stuck: StandIn, freezer: Freezer
) -> None:
    """The leader dies at once; its child, frozen, outlives the SIGKILL until it is thawed 2 s later."""
    thawing = threading.Timer(2.0, freezer.thaw)
    thawing.start()
    started = time.monotonic()
    try:
        problem = local_cluster.stop_component(paths, "kubelet")
        took, child_left = time.monotonic() - started, local_cluster.alive(stuck.child)
    finally:
        thawing.join()
    assert problem is None
    assert not child_left and took >= 2.0, f"returned after {took:.2f}s, the child still there: {child_left}"
    assert local_cluster.pid_of(paths, "kubelet") is None


def test_a_process_that_outlives_the_deadline_is_reported_and_its_pid_kept(
    paths: local_cluster.Paths, stuck: StandIn, freezer: Freezer
) -> None:
    problem = local_cluster.stop_component(paths, "kubelet", timeout=1.0)
    assert problem is not None and f"{stuck.child} (python" in problem and "state D" in problem, problem
    assert local_cluster.pid_of(paths, "kubelet") == stuck.pgid, "kept, so that down can be run again"
    freezer.thaw()
    assert local_cluster.stop_component(paths, "kubelet") is None
    assert local_cluster.pid_of(paths, "kubelet") is None

"""A signal that asks a command to stop stops it, even when its KeyboardInterrupt is raised inside a finaliser,
where Python prints it and goes on (how a demo once ignored SIGHUP in CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    from whm_ha.lifecycle import pause, stop_on_signals

    stop_on_signals()

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)  # the handler runs here, inside the finaliser

    try:
        Finalised()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            pause(0.05)
        print("went on")
    except KeyboardInterrupt as exc:
        print(f"stopped by {exc}")
    """
)


def test_a_signal_lost_in_a_finaliser_still_stops_the_waiting_loop() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True, timeout=30)
    assert "Exception ignored" in done.stderr, done.stderr  # the interrupt was lost where it was raised
    assert done.stdout.strip() == "stopped by SIGHUP", (done.stdout, done.stderr)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_child_of_a_process_that_is_pid_1_runs() -> None:
    """A process that is PID 1 (the main process of a container: the archiver's pod) starts children that run:
    their parent's pid being 1 is no sign that the parent died."""
    script = textwrap.dedent(
        """
        import os, subprocess
        from whm_ha.lifecycle import die_with_parent
        assert os.getpid() == 1
        child = subprocess.run(["echo", "alive"], preexec_fn=die_with_parent, capture_output=True, text=True)
        print(child.returncode, child.stdout.strip())
        """
    )
    ran = subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.stdout.split() == ["0", "alive"], (ran.stdout, ran.stderr)

"""A signal that asks a command to stop stops it, even when its KeyboardInterrupt is raised inside a finaliser,
where Python prints it and goes on (how a demo once ignored SIGHUP in CI)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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

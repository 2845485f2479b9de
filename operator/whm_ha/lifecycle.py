"""Commands that start children stop them however they are stopped: SIGTERM and SIGHUP are handled as Ctrl-C,
a closed output stops nothing half-way, and a child dies with the parent even when the parent is killed."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1


_forking_pid = 0
"""The pid of the process that forked last, set in it just before the fork, so the child knows its parent's pid."""


def _before_fork() -> None:
    global _forking_pid  # noqa: PLW0603 (read by the child, which inherits it)
    _forking_pid = os.getpid()


os.register_at_fork(before=_before_fork)  # Popen runs it too when given a preexec_fn


def die_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the kernel sends the child SIGKILL when its parent dies. (It is
    the parent *thread* that counts: spawn from the main thread.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent died before the prctl: the child has another parent now. (Not "the parent is 1": a container's
    # main process is PID 1.)
    if os.getppid() != _forking_pid:
        os._exit(1)


_stop_requested: list[str] = []
"""The names of the signals that asked to stop."""


def _interrupt(signum: int, _: FrameType | None) -> None:
    _stop_requested.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_stop_requested[-1])


def pause(seconds: float) -> None:
    """``time.sleep`` for the waiting loops of the main thread, which stop there once a signal asked to stop even if
    its KeyboardInterrupt was lost: raised while a finaliser (``__del__``) ran, Python only prints it and goes on."""
    if not _stop_requested:
        time.sleep(seconds)
    if _stop_requested:
        raise KeyboardInterrupt(_stop_requested[-1])


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so the cleanup that Ctrl-C runs runs for them too; so does
    SIGINT even when it was ignored at start (a non-interactive shell's ``&`` starts jobs so, and Python then
    leaves it ignored)."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _interrupt)


def say(text: str) -> None:
    """Print a line; when the reader has gone (``| tee`` stopped), go on without output instead of failing."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

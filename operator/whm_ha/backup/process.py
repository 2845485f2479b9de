"""Task processes: the operator runs each backup try and each restore as ``whm-ha <task>`` in a process group of its
own, the task as one line of JSON on its standard input, the result as the last line of its standard output.

The task process stops as soon as the operator does, however it ends (kill -9 too): its standard input stays open
for as long as the operator runs, and a thread of the task waits for its end, then stops the task's process group
(SIGTERM: an upload in progress is aborted in the store, the dump or client tool stops). So no task outlives the
operator that started it and races the try a restarted operator starts next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

STOP_GRACE = 10.0
"""Seconds a cancelled task has to abort its upload before it is killed."""
INVALID_TASK = 2

Task = TypeVar("Task", bound=BaseModel)


class TaskFailed(RuntimeError):
    """A task's process failed; the message is its last line, ``code`` its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def run_task(subcommand: str, task: BaseModel) -> str:
    """Run ``whm-ha SUBCOMMAND`` on ``task``; the last line it printed. Cancelled, it stops the task's process group:
    SIGTERM, then SIGKILL after STOP_GRACE."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "whm_ha",
        subcommand,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(task.model_dump_json().encode() + b"\n")
        await process.stdin.drain()
        out, err = await asyncio.gather(_read(process.stdout), _read(process.stderr))
        await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        process.stdin.close()
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        code = process.returncode or 1
        raise TaskFailed(lines[-1] if lines else f"whm-ha {subcommand} exited with {code}", code)
    lines = out.decode().strip().splitlines()
    if not lines:
        raise TaskFailed(f"whm-ha {subcommand} printed nothing", 1)
    return lines[-1]


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    return await stream.read() if stream is not None else b""


def _stop(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def _first_line() -> bytes:
    """Standard input up to its first newline, read from the descriptor itself: a daemon thread blocked in the
    buffered ``sys.stdin`` would abort the interpreter's shutdown (it holds the buffer's lock)."""
    line = b""
    while not line.endswith(b"\n") and (chunk := os.read(0, 1)):
        line += chunk
    return line


def _stop_when_the_operator_is_gone() -> None:
    while os.read(0, 65536):  # returns b"" at the end of input: the operator closed it, or is gone
        pass
    os.killpg(os.getpgrp(), signal.SIGTERM)


def read_task(model: type[Task], path: Path | None = None) -> Task | None:
    """In the task process: the task from the first line of standard input, or from the file ``path`` (a Job's
    mounted Secret), None (said on standard error) when it is not valid; from then on SIGTERM stops this process
    and its group, and so does the operator going away when the task came on standard input."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        text = _first_line() if path is None else path.read_bytes()
        task = model.model_validate_json(text)
    except OSError as exc:
        print(f"cannot read the task: {exc}", file=sys.stderr)
        return None
    except ValidationError as exc:
        print(f"the task is not valid: {exc.errors()[0]['msg']}", file=sys.stderr)
        return None
    if path is None:
        threading.Thread(target=_stop_when_the_operator_is_gone, name="operator-watch", daemon=True).start()
    return task

"""Worker threads with a budget per owner: every MySQLReplication and every cluster's legacy tables run their
blocking database calls in a pool of their own, so that members that do not answer (each call waiting its full
timeout) delay only their own replication, never another's detection nor kopf's handlers (which use the loop's
default executor)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkerBudget:
    """At most ``size`` threads for one owner, started on demand. Resizing replaces the pool; calls already
    running finish in the old one."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    def resize(self, size: int) -> None:
        if size != self.size:
            old, self.size = self._pool, size
            self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=self.name)
            old.shutdown(wait=False)

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)`` in one of the threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def close(self) -> None:
        """No new calls; queued ones are dropped, running ones finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

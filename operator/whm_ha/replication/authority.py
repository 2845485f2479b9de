"""Whether this process still decides the roles of one MySQLReplication, asked from the worker threads right
before each write that changes a member's role.

A worker thread outlives the coroutine that started it: when kopf stops a daemon (a peering hand-over, the
object deleted, shutdown) the thread goes on. Before it fences, reconfigures or opens a member it confirms that
the daemon still runs and that the object's status still says what the decision was made on: the same
resourceVersion, or at least the same current primary and the same promotion record. Otherwise another process
(or a later pass) has decided since, and the thread writes nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Confirm = Callable[[str], None]
"""``confirm(what)``: returns when ``what`` may be written, raises Superseded otherwise."""

CONFIRM_TIMEOUT = 5.0
"""Seconds to read the object back; no answer means no write."""


class Superseded(Exception):
    """This process no longer decides: the write named in the message was not made."""


@dataclass(frozen=True)
class Basis:
    """What a decision was made on."""

    resource_version: str
    primary: str | None
    promotion: tuple[str, str, str] | None
    """from, to and detectedAt of the recorded promotion."""

    @classmethod
    def of(cls, obj: Obj) -> Basis:
        status = obj.get("status") or {}
        record = status.get("promotion")
        promotion = (record.get("from", ""), record.get("to", ""), record.get("detectedAt", "")) if record else None
        return cls(obj["metadata"]["resourceVersion"], status.get("currentPrimary"), promotion)

    def still(self, obj: Obj) -> str:
        """Empty when ``obj`` still says what this basis said, else what changed."""
        now = Basis.of(obj)
        if now.resource_version == self.resource_version:
            return ""
        if now.primary != self.primary:
            return f"the primary is now {now.primary or 'none'} (was {self.primary or 'none'})"
        if now.promotion != self.promotion:
            return f"the promotion recorded is now {_describe(now.promotion)} (was {_describe(self.promotion)})"
        return ""


def _describe(promotion: tuple[str, str, str] | None) -> str:
    return f"{promotion[0] or 'none'} -> {promotion[1]}" if promotion else "none"


def confirmer(
    loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[Obj]], stopped: Callable[[], bool], basis: Basis
) -> Confirm:
    """A ``confirm`` for worker threads: the daemon still runs (``stopped``) and the object read back through
    ``loop`` (``read``) still says what ``basis`` says; any doubt raises Superseded."""

    def confirm(what: str) -> None:
        if stopped():
            raise Superseded(f"not done ({what}): the operator stopped deciding for this replication")

        async def fetch() -> Obj:
            return await read()

        try:
            obj = asyncio.run_coroutine_threadsafe(fetch(), loop).result(CONFIRM_TIMEOUT)
        except Exception as exc:  # any failure to read back means no write
            raise Superseded(f"not done ({what}): cannot read the replication back: {exc!r}") from exc
        changed = basis.still(obj)
        if changed:
            raise Superseded(f"not done ({what}): decided on an older state, {changed}")

    return confirm

"""When a worker thread may still change roles: `whm_ha.replication.authority`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from whm_ha.replication.authority import Basis, Superseded, confirmer


def obj(version: str, primary: str | None = "m0", promotion: tuple[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"currentPrimary": primary}
    if promotion:
        status["promotion"] = {"from": promotion[0], "to": promotion[1], "detectedAt": "2026-01-01T00:00:00Z"}
    return {"metadata": {"resourceVersion": version}, "status": status}


def test_the_same_version_or_the_same_roles_still_hold() -> None:
    basis = Basis.of(obj("1"))
    assert basis.still(obj("1")) == ""
    assert basis.still(obj("2")) == "", "an annotation or a summary changed nothing that matters"


def test_a_new_primary_or_promotion_supersedes() -> None:
    basis = Basis.of(obj("1"))
    assert basis.still(obj("2", primary="m1")) == "the primary is now m1 (was m0)"
    assert "now m0 -> m1 (was none)" in basis.still(obj("2", promotion=("m0", "m1")))
    recorded = Basis.of(obj("3", promotion=("m0", "m1")))
    assert "now none" in recorded.still(obj("4"))


def confirm_from_a_thread(current: Any, *, stopped: bool = False) -> tuple[str, list[str]]:
    """``confirm("open m0")`` called from a worker thread while the loop runs, as the procedures call it: the
    refusal (empty if none) and the threads the object was read on."""
    reads: list[str] = []

    async def read() -> dict[str, Any]:
        reads.append(threading.current_thread().name)
        if isinstance(current, Exception):
            raise current
        return dict(current)

    async def main() -> str:
        confirm = confirmer(asyncio.get_running_loop(), read, lambda: stopped, Basis.of(obj("1")))
        try:
            await asyncio.to_thread(confirm, "open m0")
        except Superseded as exc:
            return str(exc)
        return ""

    return asyncio.run(main()), reads


def test_confirm_reads_the_object_back_on_the_loop() -> None:
    assert confirm_from_a_thread(obj("2")) == ("", ["MainThread"])


@pytest.mark.parametrize(
    ("current", "stopped", "refused"),
    [
        (obj("1"), True, "stopped deciding"),
        (obj("2", primary="m1"), False, "the primary is now m1"),
        (ConnectionError("API down"), False, "cannot read the replication back"),
    ],
)
def test_confirm_refuses_when_stopped_superseded_or_unsure(current: Any, stopped: bool, refused: str) -> None:
    error, _ = confirm_from_a_thread(current, stopped=stopped)
    assert refused in error and "not done (open m0)" in error

"""Worker budgets: `whm_ha.workers`."""

from __future__ import annotations

import asyncio
import threading
import time

from whm_ha.workers import WorkerBudget


def test_calls_beyond_the_budget_wait_and_other_budgets_do_not() -> None:
    """Two slow calls in a budget of one run one after the other; a call in another budget runs meanwhile."""

    async def main() -> tuple[float, float, set[str]]:
        slow, other = WorkerBudget("slow", 1), WorkerBudget("other", 1)
        names: set[str] = set()

        def work(seconds: float) -> None:
            names.add(threading.current_thread().name.rsplit("_", 1)[0])
            time.sleep(seconds)

        started = time.monotonic()
        both = asyncio.gather(slow.run(work, 0.2), slow.run(work, 0.2))
        await other.run(work, 0.01)
        quick = time.monotonic() - started
        await both
        slow.close()
        other.close()
        return quick, time.monotonic() - started, names

    quick, total, names = asyncio.run(main())
    assert quick < 0.15, "the other budget's call did not wait for the slow ones"
    assert total >= 0.4, "the budget of one ran its calls one at a time"
    assert names == {"slow", "other"}


def test_resize_keeps_running_calls() -> None:
    async def main() -> int:
        budget = WorkerBudget("resized", 1)
        running = budget.run(time.sleep, 0.1)
        task = asyncio.ensure_future(running)
        await asyncio.sleep(0.01)
        budget.resize(3)
        await task
        results = await asyncio.gather(*(budget.run(lambda: 1) for _ in range(3)))
        budget.close()
        return sum(results)

    assert asyncio.run(main()) == 3

"""Checks that a cancel landing as an awaited operation completes still cancels.

On Python 3.11 ``asyncio.wait_for`` returns the result instead when the operation
finishes in the same loop iteration as the cancel of the task awaiting it (fixed in
3.12), and ``t.cancel(); with suppress(CancelledError): await t`` swallows a cancel of
the caller landing while ``t`` winds down. ``assert_cancel_never_lost`` finishes the
operation and cancels the waiting task 0, 1, 2... loop iterations apart,
deterministically, and requires every cancel that reached a running task to end it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

# (task, finish): the task is blocked in the awaited operation; finish() completes it
Scenario = Callable[[], Awaitable[tuple["asyncio.Task[Any]", Callable[[], None]]]]


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


async def assert_cancel_never_lost(scenario: Scenario, spread: int = 6,
                                   within: float = 5.0) -> None:
    """For k in 0..spread-1: finish the operation, let k loop iterations pass, cancel.
    A cancel that reached a task still running must end it, as cancelled."""
    for k in range(spread):
        task, finish = await scenario()
        assert not task.done(), "the scenario's task must be waiting when finish() runs"
        finish()
        await settle(k)
        requested = task.cancel()
        assert requested or k > 0, "k=0: the task cannot have finished yet"
        done, _ = await asyncio.wait([task], timeout=within)
        if not done:
            task.cancel()  # once more, so the test does not leave it behind
            await asyncio.wait([task], timeout=within)
        assert done, (f"a cancel delivered {k} loop iteration(s) after the awaited operation "
                      f"completed was swallowed: the task still runs")
        if task.cancelled():
            continue
        task.result()  # a failure surfaces as itself
        assert not requested, (f"a cancel delivered {k} loop iteration(s) after the awaited "
                               f"operation completed was swallowed")

"""Time, as every weft daemon sees it: one ``Clock`` seam.

``now()`` is wall-clock seconds (persisted deadlines, such as the embedded
store's leases), ``monotonic()`` measures intervals (lease expiry in memory,
watch lag, how long a check took) and ``sleep()`` waits. Production code takes a
``Clock`` and defaults to ``SystemClock``; tests pass ``tests.fakeclock.FakeClock``,
whose time moves only when the test says so, so nothing in a unit test sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time, monotonic time and sleeping, from one source."""

    def now(self) -> float:
        """Seconds since the epoch (wall clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The process's clocks and the event loop's sleep."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_: Clock = SystemClock()

"""Time for the store layer: the ``Clock`` seam and its real and fake implementations.

Lease expiry is the only time-dependent behaviour in the store; injecting a
``Clock`` lets tests expire leases by ``FakeClock.advance`` instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic source of seconds."""

    def monotonic(self) -> float: ...


class SystemClock:
    """The process's monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to (``advance``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: negative step {seconds}")
        self._now += seconds


_: Clock = SystemClock()
__: Clock = FakeClock()

"""overlay.clock's seam and the tests' FakeClock: wall and monotonic time move together, and
only when told to; advance() wakes exactly the sleepers that are due."""

from __future__ import annotations

import asyncio

import pytest

from overlay.clock import SystemClock
from tests.fakeclock import FakeClock, settle


async def test_advance_wakes_due_sleepers_only() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def nap(s: float) -> None:
        await clock.sleep(s)
        woke.append(s)

    tasks = [asyncio.create_task(nap(s)) for s in (3, 1, 2)]
    await settle()
    assert clock.sleepers == 3 and woke == []
    wall, mono = clock.now(), clock.monotonic()
    clock.advance(2)
    await settle()
    assert woke == [1, 2] and clock.sleepers == 1
    assert (clock.now() - wall, clock.monotonic() - mono) == (2, 2)
    clock.advance(1)
    await asyncio.gather(*tasks)
    assert woke == [1, 2, 3]
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_tick_lets_woken_tasks_sleep_again() -> None:
    clock = FakeClock()
    beats: list[float] = []

    async def loop() -> None:
        while True:
            await clock.sleep(1)
            beats.append(clock.monotonic())

    task = asyncio.create_task(loop())
    await settle()
    await clock.tick(3.5)
    task.cancel()
    start = clock.monotonic() - 3.5
    assert beats == [start + 1, start + 2, start + 3]


async def test_system_clock() -> None:
    c = SystemClock()
    t = c.monotonic()
    await c.sleep(0)
    assert c.monotonic() >= t and c.now() > 1_600_000_000

"""FakeClock: the ``overlay.clock.Clock`` for tests; its time moves only when told to.

``sleep(s)`` parks the caller until the clock reaches its deadline;
``advance(s)`` moves time forward at once and wakes every sleeper whose deadline
has passed; ``await tick(s)`` moves forward one due deadline at a time, letting
the woken tasks run (and sleep again) in between, as real time would. A sleep of
zero or less also waits for the next ``advance``/``tick`` (it never returns on
its own), so a loop in the code under test cannot spin.
"""

from __future__ import annotations

import asyncio
import heapq

from overlay.clock import Clock


class FakeClock:
    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._start = start
        self._mono = start
        self._wall = wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self._wall + (self._mono - self._start)

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self._mono + seconds, self._seq, fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead; wake (in deadline order) every sleeper now due."""
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: negative step {seconds}")
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone (NTP correcting it, an operator's ``date -s``);
        the monotonic clock and the sleepers do not move."""
        self._wall += seconds

    async def tick(self, seconds: float) -> None:
        """Move ``seconds`` ahead one due deadline at a time, letting woken tasks run."""
        if seconds < 0:
            raise ValueError(f"FakeClock.tick: negative step {seconds}")
        target = self._mono + seconds
        while True:
            await settle()
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            when, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, when)
            fut.set_result(None)
        self._mono = max(self._mono, target)
        await settle()


async def settle() -> None:
    """Let every ready task run until it blocks again (a few loop iterations)."""
    for _ in range(30):
        await asyncio.sleep(0)


_: Clock = FakeClock()

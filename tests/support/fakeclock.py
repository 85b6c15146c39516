"""A clock the test moves (the interface of strata_broker.cluster.clock.Clock).

`sleep(s)` waits until the test has advanced the clock by s; nothing else moves it, so a lease
period passes in one `advance()` call instead of seconds of real time. Time is kept in whole
nanoseconds, so many small steps add up to exactly the deadlines sleepers wait for."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._ns = round(start * 1e9)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._ns / 1e9

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._ns + max(0, round(seconds * 1e9)), next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move the clock on; every sleeper whose time has come wakes (when the loop runs next)."""
        self._ns += round(seconds * 1e9)
        while self._sleepers and self._sleepers[0][0] <= self._ns:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

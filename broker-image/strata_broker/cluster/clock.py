"""The time the cluster code goes by: `now()` for deadlines, `sleep()` for waits.

Leases, hand-over waits and the placement poll all read this one clock, so a test can hand in
a fake one and drive a lease period in microseconds (tests/support/fakeclock.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real one: time.monotonic and asyncio.sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

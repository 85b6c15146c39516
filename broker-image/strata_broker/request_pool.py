"""The broker-wide bound on request bytes in flight (Kafka's `queued.max.request.bytes`).

A connection reserves a large frame's announced size here before receiving it, and gives it back
once the request has been handled (or the connection is gone). When the pool is exhausted the
connection stops reading until memory is released; one frame larger than the whole pool is let in
alone, when nothing else is reserved. The frame's buffer itself is an anonymous memory map, so pages
are taken as bytes arrive (from MAPPED_FRAME_BYTES on): a peer that announces 100 MiB and sends 8 bytes
costs a page, not 100 MiB.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Callable

# Frames from this size on are received into an anonymous memory map (pages taken as bytes arrive);
# smaller ones into a bytearray (allocated whole; the pool bounds them). A map per frame costs page
# faults on every byte: below 1 MiB, i.e. for a typical producer batch, that measured slower.
MAPPED_FRAME_BYTES = 1024 * 1024


def frame_buffer(size: int) -> bytearray | mmap.mmap:
    """A writable buffer of `size` bytes whose memory is committed as it is written."""
    if size >= MAPPED_FRAME_BYTES:
        return mmap.mmap(-1, size)
    return bytearray(size)


class RequestMemoryPool:
    """Reservations of request bytes against `capacity` (None: unbounded, only counted)."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[Callable[[], None]] = deque()

    def try_reserve(self, size: int) -> bool:
        if self.capacity is not None and self.in_use + size > self.capacity and self.in_use > 0:
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        if size <= 0:
            return
        self.in_use -= size
        # Wake the waiters in arrival order; each retries its reservation (and waits again if it fails).
        waiters, self._waiters = self._waiters, deque()
        for wake in waiters:
            wake()

    def wait(self, wake: Callable[[], None]) -> None:
        """Call `wake` once memory has been released."""
        self._waiters.append(wake)

    def forget(self, wake: Callable[[], None]) -> None:
        try:
            self._waiters.remove(wake)
        except ValueError:
            pass

"""A bounded set of segments whose files are open: descriptors do not grow with the partition count.

A segment opens its log file (one descriptor, read and written) when it is used and keeps it while the
segment is among the `capacity` most recently used segments; the least recently used one gives its
descriptor back (`Segment.release_files`) and opens it again on its next use. Every use and every
eviction happens on the event loop's thread. A segment a worker thread is using (an fsync round of
the group commit) is pinned and never evicted meanwhile; other worker-thread reads open the file
by path and never touch these descriptors.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .segment import AppendBuffers

# Descriptors a segment holds while open: its log (read and written through one descriptor); its
# index files are opened only while their buffered entries are written out.
FILES_PER_SEGMENT = 1
# With an automatic capacity, at most this many segments are open ...
_AUTO_MAX = 4096
# ... and they hold at most this share of the process's descriptor limit (the rest is for
# client connections, the S3 client's sockets and everything else).
_AUTO_SHARE = 2


class HasFiles(Protocol):
    def release_files(self) -> None: ...


class HandleCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._open: OrderedDict[HasFiles, None] = OrderedDict()
        self._pinned: dict[HasFiles, int] = {}
        self.evictions = 0
        # The broker's write-behind for the segments' appends (None: appends are written through).
        self.buffers: AppendBuffers | None = None

    def __len__(self) -> int:
        return len(self._open)

    def touch(self, segment: HasFiles) -> None:
        """`segment` has its files open and is being used: the most recently used now."""
        if segment in self._open:
            self._open.move_to_end(segment)
            return
        self._open[segment] = None
        self._evict(segment)

    def _evict(self, keep: HasFiles | None = None) -> None:
        """Close least recently used segments down to capacity; never a pinned one, nor `keep` (the
        segment being used right now). With many pinned, the cache stays over capacity meanwhile.
        Looks at the oldest entries only (skipped ones move to the recent end): O(1) per eviction."""
        skipped = 0
        while len(self._open) > self.capacity and skipped < len(self._open):
            candidate = next(iter(self._open))
            if candidate in self._pinned or candidate is keep:
                self._open.move_to_end(candidate)
                skipped += 1
                continue
            del self._open[candidate]
            self.evictions += 1
            candidate.release_files()

    def forget(self, segment: HasFiles) -> None:
        """The segment closed its files for good (closed or deleted)."""
        self._open.pop(segment, None)
        self._pinned.pop(segment, None)

    def pin(self, segment: HasFiles) -> None:
        self._pinned[segment] = self._pinned.get(segment, 0) + 1

    def unpin(self, segment: HasFiles) -> None:
        left = self._pinned.get(segment, 0) - 1
        if left > 0:
            self._pinned[segment] = left
        else:
            self._pinned.pop(segment, None)
            self._evict()


def automatic_capacity() -> int:
    """Segments kept open when `log.segment.handles.max` is 0: bounded by the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _AUTO_MAX
    return max(8, min(_AUTO_MAX, soft // (FILES_PER_SEGMENT * _AUTO_SHARE)))

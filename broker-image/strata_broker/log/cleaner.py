"""The local log cleaner: compacts closed segments of cleanup.policy=compact topics.

For tiered partitions it compacts only local copies of segments already in S3 (so it never races
an upload); the S3 copies are compacted by the tier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from .compaction import AbortedRanges, Markers, aborted_ranges, clean, latest_offsets
from .partition import PartitionLog
from .segment import Segment, segment_name

log = logging.getLogger(__name__)


@dataclass
class CleanerStats:
    passes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records_removed: int = 0
    seconds: float = 0.0

    def add_pass(self, read: int, written: int, removed: int, seconds: float) -> None:
        self.passes += 1
        self.bytes_read += read
        self.bytes_written += written
        self.records_removed += removed
        self.seconds += seconds


class IoBudget:
    """Sleeps the calling thread so that read + written bytes stay under a rate."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = bytes_per_second
        self.started = time.monotonic()
        self.spent = 0

    def spend(self, n: int) -> None:
        self.spent += n
        ahead = self.spent / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def cleanable_segments(plog: PartitionLog, now_ms: int) -> list[Segment]:
    """The closed segments old enough to compact (a prefix of the log; never the active one, nor
    one that reaches past the last stable offset: an open transaction is not cleaned)."""
    lag = plog.config.values["min.compaction.lag.ms"]
    stable = plog.last_stable_offset
    out = []
    for segment in plog.segments[:-1]:
        if segment.next_offset > stable:
            break
        if segment.max_timestamp >= 0 and now_ms - segment.max_timestamp < lag:
            break
        if plog.remote is not None and segment.next_offset > plog.remote_end_offset:
            break
        out.append(segment)
    return out


def due(sizes_and_ends: list[tuple[int, int, int]], cleaned_offset: int, min_ratio: float, max_lag_ms: int,
        now_ms: int) -> bool:
    """(size, next offset, max timestamp) of each cleanable segment -> is a pass due?"""
    dirty = [(size, ts) for size, end, ts in sizes_and_ends if end > cleaned_offset]
    if not dirty:
        return False
    total = sum(size for size, _, _ in sizes_and_ends)
    ratio = sum(size for size, _ in dirty) / total if total else 0.0
    overdue = any(ts >= 0 and now_ms - ts > max_lag_ms for _, ts in dirty)
    return ratio >= min_ratio or overdue


def group_for_merge(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive indexes grouped so each group's total stays within limit (one at least)."""
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if groups and total + size <= limit:
            groups[-1].append(i)
            total += size
        else:
            groups.append([i])
            total = size
    return groups


class Cleaner:
    def __init__(self, io_bytes_per_second: int) -> None:
        self.io_bytes_per_second = io_bytes_per_second
        self.stats = CleanerStats()
        self._busy: set[int] = set()

    async def maybe_clean(self, plog: PartitionLog) -> bool:
        if id(plog) in self._busy or not plog.config.compacted:
            return False
        now_ms = int(time.time() * 1000)
        segments = cleanable_segments(plog, now_ms)
        if not segments:
            return False
        markers_due = plog.marker_due_ms is not None and plog.marker_due_ms <= now_ms
        if not markers_due and not due([(s.size, s.next_offset, s.max_timestamp) for s in segments],
                                       plog.cleaned_offset, plog.config.values["min.cleanable.dirty.ratio"],
                                       plog.config.values["max.compaction.lag.ms"], now_ms):
            return False
        self._busy.add(id(plog))
        try:
            return await self._clean(plog, segments, now_ms)
        finally:
            self._busy.discard(id(plog))

    async def _clean(self, plog: PartitionLog, segments: list[Segment], now_ms: int) -> bool:
        started = time.monotonic()
        cutoff = now_ms - plog.config.values["delete.retention.ms"]
        dirty_from = max(plog.cleaned_offset, plog.log_start_offset)
        budget = IoBudget(self.io_bytes_per_second)
        # Markers go only when the pass sees the whole log (records of a transaction may lie in
        # segments only in S3 otherwise: the S3 compactor removes those partitions' markers).
        markers = Markers(now_ms, plog.config.values["delete.retention.ms"],
                          enabled=plog.remote is None and segments[0] is plog.segments[0])
        try:
            bases, removed, read, written = await asyncio.to_thread(
                _clean_files, plog.directory, segments, dirty_from, cutoff, plog.config.segment_bytes, budget,
                aborted_ranges(plog.aborted), markers)
        except OSError as exc:
            log.warning("compaction of %s-%d failed: %s", plog.topic, plog.partition, exc)
            return False
        through = segments[-1].next_offset
        if not plog.install_cleaned(segments, bases, through, markers.kept_aborts, markers.next_due_ms):
            log.info("compaction of %s-%d abandoned: the log changed meanwhile", plog.topic, plog.partition)
            return False
        elapsed = time.monotonic() - started
        self.stats.add_pass(read, written, removed, elapsed)
        log.info("compacted %s-%d: %d segment(s) -> %d, %d -> %d bytes, %d record(s) and %d transaction "
                 "marker(s) removed in %.2fs", plog.topic, plog.partition, len(segments), len(bases), read,
                 written, removed, markers.removed, elapsed)
        return True


def _clean_files(directory: str, segments: list[Segment], dirty_from: int, tombstone_cutoff_ms: int,
                 segment_bytes: int, budget: IoBudget,
                 aborted: AbortedRanges | None = None,
                 markers: Markers | None = None) -> tuple[list[int], int, int, int]:
    """In a worker thread: write the cleaned segments as `<base>.log.cleaned`; return their bases."""
    datas = []
    for segment in segments:
        data = segment.read_file(0, segment.size)
        budget.spend(len(data))
        datas.append(data)
    latest = latest_offsets((d for s, d in zip(segments, datas, strict=True) if s.next_offset > dirty_from),
                            dirty_from, aborted=aborted)
    cleaned = []
    removed = 0
    for data in datas:
        out, gone = clean(data, latest, tombstone_cutoff_ms, aborted, markers)
        cleaned.append(out)
        removed += gone
    bases = []
    written = 0
    for group in group_for_merge([len(c) for c in cleaned], segment_bytes):
        base = segments[group[0]].base_offset
        blob = b"".join(cleaned[i] for i in group)
        with open(os.path.join(directory, f"{segment_name(base)}.log.cleaned"), "wb") as f:
            f.write(blob)
        budget.spend(len(blob))
        written += len(blob)
        bases.append(base)
    return bases, removed, sum(len(d) for d in datas), written

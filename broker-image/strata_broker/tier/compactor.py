"""Compaction of segments already in S3: read, clean, write new objects, swap the manifest.

Transactions as the local cleaner treats them (log/compaction.py): the segments' `.txnindex`
objects give the aborted ranges, whose records are dropped; transaction markers are removed by
Kafka's rule (kept while records of their transaction remain, then for delete.retention.ms);
each rewritten segment gets a `.txnindex` with the entries of the abort markers it still holds.

The manifest PUT is the atomic switch. Objects it no longer lists are kept for
tiered.compaction.delete.delay.ms (recorded in the manifest's garbage list, so a restart
still deletes them) because a fetch that started on the old manifest may still read them.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from strata_contract.layout import SEGMENT_SUFFIXES
from strata_contract.manifest import RemoteManifest, RemoteSegment

from ..log import txn_index
from ..log.cleaner import CleanerStats, IoBudget, due, group_for_merge
from ..log.compaction import AbortedRanges, Markers, aborted_ranges, clean, latest_offsets
from ..log.segment import Segment
from .publish import publish_manifest
from .store import ObjectStore
from .uploader import segment_files

if TYPE_CHECKING:
    from ..log.partition import PartitionLog

log = logging.getLogger(__name__)


class RemoteCompactor:
    def __init__(self, store: ObjectStore, delete_delay_ms: int, io_bytes_per_second: int) -> None:
        self.store = store
        self.delete_delay_ms = delete_delay_ms
        self.io_bytes_per_second = io_bytes_per_second
        self.stats = CleanerStats()
        self._busy: set[int] = set()

    async def maybe_compact(self, plog: PartitionLog, prefix: str) -> bool:
        manifest = plog.remote
        if manifest is None or id(plog) in self._busy or not plog.config.compacted:
            return False
        now_ms = int(time.time() * 1000)
        lag = plog.config.values["min.compaction.lag.ms"]
        candidates = []
        stable = plog.last_stable_offset
        for segment in manifest.segments:
            # Nor past the last stable offset, as the local cleaner: an open transaction's records
            # must neither supersede a value nor be judged before their marker.
            if now_ms - segment.max_timestamp < lag or segment.last_offset >= stable:
                break
            candidates.append(segment)
        if not candidates:
            return False
        markers_due = plog.remote_marker_due_ms is not None and plog.remote_marker_due_ms <= now_ms
        if not markers_due and not due([(s.size, s.last_offset + 1, s.max_timestamp) for s in candidates],
                                       manifest.cleaned_offset, plog.config.values["min.cleanable.dirty.ratio"],
                                       plog.config.values["max.compaction.lag.ms"], now_ms):
            return False
        self._busy.add(id(plog))
        try:
            return await self._compact(plog, prefix, manifest, candidates, now_ms)
        finally:
            self._busy.discard(id(plog))

    async def _compact(self, plog: PartitionLog, prefix: str, manifest: RemoteManifest,
                       candidates: list[RemoteSegment], now_ms: int) -> bool:
        started = time.monotonic()
        budget = IoBudget(self.io_bytes_per_second)
        datas = []
        entries: list[txn_index.AbortedTxn] = []
        for segment in candidates:
            data = await self.store.get(segment.key(prefix, "log"), deadline=120)
            await asyncio.to_thread(budget.spend, len(data))
            datas.append(data)
            entries += txn_index.decode(await self.store.get_or_none(segment.key(prefix, "txnindex")) or b"")
        # A transaction is indexed with the segment of its abort marker, which may come after the
        # candidates: in a later object or still only on the local disk (as Kafka's cleaner, every
        # abort of a transaction begun in the cleaned range counts).
        end = candidates[-1].last_offset + 1
        for segment in manifest.segments[len(candidates):]:
            entries += [e for e in txn_index.decode(await self.store.get_or_none(segment.key(prefix, "txnindex"))
                                                    or b"") if e.first_offset < end]
        entries += [e for e in plog.aborted_between(candidates[0].base_offset, end)
                    if e.last_offset > candidates[-1].last_offset]
        dirty_from = max(manifest.cleaned_offset, manifest.log_start_offset)
        retention_ms = plog.config.values["delete.retention.ms"]
        cutoff = now_ms - retention_ms
        markers = Markers(now_ms, retention_ms)  # the candidates start at the log start
        cleaned, removed = await asyncio.to_thread(_clean_all, candidates, datas, dirty_from, cutoff,
                                                   aborted_ranges(entries), markers)
        groups = group_for_merge([len(c) for c in cleaned], plog.config.segment_bytes)
        generation = max(s.generation for s in manifest.segments) + 1
        replacements: list[RemoteSegment] = []
        for group in groups:
            blob = b"".join(cleaned[i] for i in group)
            first, last = candidates[group[0]], candidates[group[-1]]
            files, max_ts = await asyncio.to_thread(_segment_files_for, blob, first.base_offset,
                                                    plog.config.index_interval_bytes)
            new = RemoteSegment(first.base_offset, last.last_offset, len(blob), max_ts if blob else first.max_timestamp,
                                len(files["index"]), len(files["timeindex"]), generation)
            for suffix, body in files.items():
                await self.store.put(new.key(prefix, suffix), body, deadline=300 if suffix == "log" else 120)
            kept = [e for e in entries if first.base_offset <= e.last_offset <= last.last_offset
                    and e.last_offset in markers.kept_aborts]
            if kept:  # only segments with an aborted transaction have the object (as uploads do)
                await self.store.put(new.key(prefix, "txnindex"), b"".join(e.encode() for e in kept), deadline=120)
            replacements.append(new)
        async with plog.manifest_lock:
            current = plog.remote
            if current is None or current.segments[:len(candidates)] != candidates:
                log.info("S3 compaction of %s-%d abandoned: the manifest changed meanwhile", plog.topic, plog.partition)
                return False
            not_before = now_ms + self.delete_delay_ms
            garbage = [*current.garbage, *([s.key(prefix, suffix), not_before] for s in candidates
                                           for suffix in SEGMENT_SUFFIXES)]
            updated = replace(current, segments=[*replacements, *current.segments[len(candidates):]],
                              cleaned_offset=candidates[-1].last_offset + 1, garbage=garbage,
                              version=current.version + 1)
            await publish_manifest(self.store, plog, prefix, updated, deadline=120)
            plog.remote_marker_due_ms = markers.next_due_ms
        before = sum(len(d) for d in datas)
        after = sum(s.size for s in replacements)
        elapsed = time.monotonic() - started
        self.stats.add_pass(before, after, removed, elapsed)
        log.info("compacted %s-%d in S3: %d segment(s) -> %d, %d -> %d bytes, %d record(s) and %d transaction "
                 "marker(s) removed in %.2fs", plog.topic, plog.partition, len(candidates), len(replacements),
                 before, after, removed, markers.removed, elapsed)
        return True

    async def collect_garbage(self, plog: PartitionLog, prefix: str) -> int:
        manifest = plog.remote
        if manifest is None or not manifest.garbage:
            return 0
        now_ms = int(time.time() * 1000)
        due_keys = [key for key, not_before in manifest.garbage if not_before <= now_ms]
        if not due_keys:
            return 0
        await self.store.delete_many(due_keys)
        async with plog.manifest_lock:
            current = plog.remote
            assert current is not None
            remaining = [[k, t] for k, t in current.garbage if k not in set(due_keys)]
            updated = replace(current, garbage=remaining, version=current.version + 1)
            await publish_manifest(self.store, plog, prefix, updated, deadline=60)
        return len(due_keys)


def _clean_all(candidates: list[RemoteSegment], datas: list[bytes], dirty_from: int, cutoff_ms: int,
               aborted: AbortedRanges, markers: Markers) -> tuple[list[bytes], int]:
    latest = latest_offsets((d for s, d in zip(candidates, datas, strict=True) if s.last_offset >= dirty_from),
                            dirty_from, aborted=aborted)
    out, removed = [], 0
    for data in datas:
        cleaned, gone = clean(data, latest, cutoff_ms, aborted, markers)
        out.append(cleaned)
        removed += gone
    return out, removed


def _segment_files_for(blob: bytes, base_offset: int, index_interval_bytes: int) -> tuple[dict[str, bytes], int]:
    """Every object of a cleaned segment (uploader.segment_files: its indexes, built by the same
    code as local ones, and the log), and its max timestamp."""
    with tempfile.TemporaryDirectory(prefix="strata-compact-") as tmp:
        segment = Segment(tmp, base_offset, index_interval_bytes)
        with open(segment.log_path, "wb") as f:
            f.write(blob)
        segment.size = len(blob)
        segment.rebuild()
        segment.seal()
        max_ts = segment.max_timestamp
        segment.close()
        files = {}
        for suffix, path in segment_files(segment).items():
            if suffix == "log":
                files[suffix] = blob
            else:
                with open(path, "rb") as f:
                    files[suffix] = f.read()
    return files, max_ts

"""Reads below the local log start, served from S3: ranged GETs in chunks, a cache, prefetch."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kafka.record.default_records import DefaultRecordBatch
from strata_contract.manifest import RemoteManifest, RemoteSegment

from ..log import txn_index
from ..log.batch import HEADER_SIZE, parse_header
from ..log.index import read_offset_entries, read_time_entries
from .cache import ChunkCache
from .downloader import ChunkDownloader, Part
from .store import ObjectStore

log = logging.getLogger(__name__)

# Reads at least this long are returned as views of their chunk, not copies (the Fetch encoder
# sends long records fields as pieces of their own; short ones it copies anyway).
_VIEW_MIN = 64 * 1024
# Where the last reads ended, so the next fetch of a sequential reader needs no index.
_HINTS = 4096
# A partition read within this long counts as a sequential reader's (see RemoteReader._budget).
_READER_SECONDS = 2.0


class RemoteReader:
    def __init__(self, store: ObjectStore, cache: ChunkCache, chunk_bytes: int, prefetch_chunks: int,
                 downloader: ChunkDownloader | None = None) -> None:
        self.store = store
        self.cache = cache
        self.downloader = downloader
        self.chunk_bytes = chunk_bytes
        self.prefetch_chunks = prefetch_chunks
        self._inflight: dict[tuple[str, int], asyncio.Task[bytes | memoryview]] = {}
        self._indexes: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()
        self._timeindexes: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()
        self._txnindexes: OrderedDict[str, list[txn_index.AbortedTxn]] = OrderedDict()
        self._index_loads: dict[str, asyncio.Task[tuple[list[int], list[int]]]] = {}
        # (segment log key, offset) -> byte position of the batch that starts at that offset: where a
        # read ended. Objects never change (a rewritten segment has a new key), so a hint stays true.
        self._hints: OrderedDict[tuple[str, int], int] = OrderedDict()
        # Chunks a prefetch asked for that are still on their way.
        self._ahead: set[tuple[str, int]] = set()
        # Partition prefix -> when a read last took bytes of its remote log: the partitions being
        # read at the moment (a sequential reader each, as far as the read-ahead budget knows).
        self._reading: OrderedDict[str, float] = OrderedDict()

    # ---- chunks ---------------------------------------------------------------------------

    async def _chunk(self, key: str, size: int, n: int) -> bytes | memoryview:
        cached = await self.cache.get(key, n)
        if cached is not None:
            return cached
        if (key, n) not in self._inflight:
            self._start(key, size, [n])
        data = await asyncio.shield(self._inflight[(key, n)])
        self.cache.taken(key, n)
        return data

    def _start(self, key: str, size: int, run: list[int], ahead: bool = False) -> None:
        """Downloads of consecutive chunks of key (none cached or on their way): one GET by the
        downloader process for as many as it takes, each of the rest in-process. ahead: a
        prefetch's (the chunks are kept as unread read-ahead until a reader takes them)."""
        parts: list[Part] = []
        for n in run:
            start = n * self.chunk_bytes
            end = min(size, start + self.chunk_bytes)
            parts.append((start, end, self.cache.reserve_file(key, n, end - start),
                          functools.partial(self.cache.stored, key, n, end - start)))
        futures = self.downloader.download_run(key, parts, size) if self.downloader is not None else []
        loop = asyncio.get_running_loop()
        for i, (n, (start, end, path, stored)) in enumerate(zip(run, parts, strict=True)):
            if i < len(futures):
                task = loop.create_task(self._received(key, n, futures[i], ahead))
            else:
                task = loop.create_task(self._download(key, n, start, end, path, stored, ahead))
            self._inflight[(key, n)] = task
            if ahead:
                self._ahead.add((key, n))
            task.add_done_callback(lambda t, k=key, c=n: self._chunk_done(k, c, t))

    async def _received(self, key: str, n: int, future: asyncio.Future[memoryview], ahead: bool) -> memoryview:
        view = await future
        self.cache.remember(key, n, view, unread=ahead)
        return view

    async def _download(self, key: str, n: int, start: int, end: int, path: str | None,
                        stored: Callable[[bool], None], ahead: bool = False) -> bytes:
        """In-process; path is the chunk's cache file as reserved for this download, stored its
        reservation's report (given up here when the download fails)."""
        try:
            data = await self.store.get(key, start, end)
        except BaseException:
            if path is not None:
                stored(False)
            raise
        self.cache.remember(key, n, data, unread=ahead)
        self.cache.write(key, n, data, path)
        return data

    def _chunk_done(self, key: str, n: int, task: asyncio.Task[Any]) -> None:
        self._inflight.pop((key, n), None)
        self._ahead.discard((key, n))
        if not task.cancelled() and task.exception() is not None:  # a prefetch nobody waited for
            log.debug("chunk %d of %s: %s", n, key, task.exception())

    async def _bytes(self, key: str, size: int, start: int, end: int) -> bytes | memoryview:
        end = min(end, size)
        if start >= end:
            return b""
        first, last = start // self.chunk_bytes, (end - 1) // self.chunk_bytes
        offset = first * self.chunk_bytes
        if first == last:  # the common case: a view of one chunk, no copy
            return memoryview(await self._chunk(key, size, first))[start - offset:end - offset]
        chunks = await asyncio.gather(*(self._chunk(key, size, n) for n in range(first, last + 1)))
        # One copy: the join reads the wanted ranges of the chunks through memoryviews.
        views = [memoryview(c) for c in chunks]
        views[-1] = views[-1][:end - last * self.chunk_bytes]
        views[0] = views[0][start - offset:]
        return b"".join(views)

    def _prefetch(self, manifest: RemoteManifest, prefix: str, index: int, position: int) -> None:
        """Sequential readers find the next chunks already on their way or in the cache.

        Missing chunks of one segment are fetched as a run, one GET: a run starts once it reaches
        its segment's end or a chunk that is present, once it is half the window long, or at once
        when it holds the very next chunk. Only a short run at the window's far end waits for the
        window to move on, so that a sliding window asks for two or more chunks at a time rather
        than one (fewer requests; with some stores, such as moto, each ranged GET reads the whole
        object).

        Every reader's read-ahead comes out of one budget (_budget): chunks read ahead that no
        reader has taken yet, in memory or on their way, stay within what the memory cache holds
        beside the chunks the readers are in, so that one reader's read-ahead never pushes out
        another's before it is used."""
        window = self.prefetch_chunks
        room = self._budget() - len(self._ahead) - self.cache.unread_chunks
        segment = manifest.segments[index]
        n = position // self.chunk_bytes
        run: list[int] = []
        urgent = False
        for ahead in range(1, window + 1):
            n += 1
            if n * self.chunk_bytes >= segment.size:
                index += 1
                if index >= len(manifest.segments):
                    break
                segment = manifest.segments[index]
                n = 0
            key = segment.key(prefix, "log")
            if self.cache.contains(key, n) or (key, n) in self._inflight:
                if run:
                    self._start(key, segment.size, run, ahead=True)
                    run = []
                continue
            if room <= 0:
                break
            if not run:
                urgent = ahead == 1
            run.append(n)
            room -= 1
            if (n + 1) * self.chunk_bytes >= segment.size:  # the run reaches the end of its segment
                self._start(key, segment.size, run, ahead=True)
                run = []
        if run and (urgent or 2 * len(run) >= window):
            self._start(segment.key(prefix, "log"), segment.size, run, ahead=True)

    def _budget(self) -> int:
        """Chunks that may be read ahead at once: the memory cache less one chunk for each partition
        read in the last _READER_SECONDS (the chunk its reader is in), at most half of it (readers
        that have not read yet are not counted), at least one."""
        now = time.monotonic()
        while self._reading:
            key, at = next(iter(self._reading.items()))
            if now - at <= _READER_SECONDS:
                break
            del self._reading[key]
        return max(1, min(self.cache.memory_chunks // 2, self.cache.memory_chunks - len(self._reading)))

    # ---- indexes --------------------------------------------------------------------------

    async def _offset_index(self, prefix: str, segment: RemoteSegment) -> tuple[list[int], list[int]]:
        key = segment.key(prefix, "index")
        found = self._indexes.get(key)
        if found is not None:
            return found
        task = self._index_loads.get(key)
        if task is None:  # one GET however many readers (and the prefetch) want it at once
            task = asyncio.get_running_loop().create_task(self._load_offset_index(key, segment))
            self._index_loads[key] = task
            task.add_done_callback(lambda t, k=key: self._index_loads.pop(k, None))
        return await asyncio.shield(task)

    async def _load_offset_index(self, key: str, segment: RemoteSegment) -> tuple[list[int], list[int]]:
        found = self._indexes.get(key)
        if found is None:
            found = read_offset_entries(await self.store.get(key) if segment.index_size else b"")
            self._indexes[key] = found
            while len(self._indexes) > 256:
                self._indexes.popitem(last=False)
        return found

    async def _time_index(self, prefix: str, segment: RemoteSegment) -> tuple[list[int], list[int]]:
        key = segment.key(prefix, "timeindex")
        found = self._timeindexes.get(key)
        if found is None:
            found = read_time_entries(await self.store.get(key) if segment.timeindex_size else b"")
            self._timeindexes[key] = found
            while len(self._timeindexes) > 256:
                self._timeindexes.popitem(last=False)
        return found

    async def aborted_transactions(self, manifest: RemoteManifest, prefix: str, fetch_offset: int,
                                   upper_offset: int, max_span_ms: int) -> list[txn_index.AbortedTxn]:
        """Entries of the remote segments' `.txnindex` objects that overlap [fetch_offset,
        upper_offset). A transaction begun before upper_offset may be aborted by a marker in a later
        segment, so the search goes on, as Kafka's does, until an entry's last stable offset shows
        every such transaction decided, or the segments are newer than the read by more than
        `max_span_ms` (the longest a transaction may stay open). A segment without aborted
        transactions has no object: a missing key is an empty index."""
        found: list[txn_index.AbortedTxn] = []
        upper_time: int | None = None
        previous_max_ts = -1
        for segment in manifest.segments:
            if segment.last_offset < fetch_offset:
                continue
            if segment.base_offset >= upper_offset:
                if upper_time is None:
                    upper_time = previous_max_ts
                if upper_time >= 0 and previous_max_ts > upper_time + max_span_ms:
                    break
            previous_max_ts = max(previous_max_ts, segment.max_timestamp)
            key = segment.key(prefix, "txnindex")
            entries = self._txnindexes.get(key)
            if entries is None:
                entries = txn_index.decode(await self.store.get_or_none(key) or b"")
                self._txnindexes[key] = entries
                while len(self._txnindexes) > 256:
                    self._txnindexes.popitem(last=False)
            found += txn_index.overlapping(entries, fetch_offset, upper_offset)
            if any(e.last_stable_offset >= upper_offset for e in entries):
                break
        return found

    async def _position_of(self, prefix: str, segment: RemoteSegment, offset: int) -> int:
        if offset <= segment.base_offset:
            # A sequential reader enters each segment at its start, and goes on where its last read
            # ended: no index GET on its path (each costs the event loop a request's worth of CPU).
            return 0
        hint = self._hints.get((segment.key(prefix, "log"), offset))
        if hint is not None:
            return hint
        rels, positions = await self._offset_index(prefix, segment)
        i = bisect_right(rels, offset - segment.base_offset)
        return positions[i - 1] if i else 0

    # ---- reads ----------------------------------------------------------------------------

    async def read(self, manifest: RemoteManifest, prefix: str, offset: int, max_bytes: int,
                   always_one: bool) -> bytes | memoryview:
        """Whole batches from the remote segment holding offset, like a local read."""
        index = manifest.find(offset)
        if index is None:
            return b""
        segment = manifest.segments[index]
        key = segment.key(prefix, "log")
        pos = await self._position_of(prefix, segment, offset)
        start = -1
        while pos + HEADER_SIZE <= segment.size:
            header = parse_header(await self._bytes(key, segment.size, pos, pos + HEADER_SIZE))
            if header.last_offset >= offset:
                start = pos
                break
            pos += header.length
        if start < 0:
            return b""
        end = start
        pos = start
        next_offset = -1
        while pos + HEADER_SIZE <= segment.size:
            header = parse_header(await self._bytes(key, segment.size, pos, pos + HEADER_SIZE))
            if pos + header.length - start > max_bytes and not (always_one and pos == start):
                break
            end = pos + header.length
            next_offset = header.last_offset + 1
            pos = end
        if next_offset >= 0 and end < segment.size:
            self._hints[(key, next_offset)] = end
            while len(self._hints) > _HINTS:
                self._hints.popitem(last=False)
        data = await self._bytes(key, segment.size, start, end)
        # The chunks this read went past the end of are done with (a sequential reader's).
        for n in range(start // self.chunk_bytes, (end if end == segment.size else end - end % self.chunk_bytes
                                                    ) // self.chunk_bytes + (end == segment.size)):
            self.cache.finished(key, n)
        self._reading[prefix] = time.monotonic()
        self._reading.move_to_end(prefix)
        self._prefetch(manifest, prefix, index, max(end - 1, start))
        return data if len(data) >= _VIEW_MIN else bytes(data)

    async def offset_for_timestamp(self, manifest: RemoteManifest, prefix: str, timestamp: int,
                                   below: int) -> tuple[int, int] | None:
        """First record with timestamp >= timestamp among remote segments that start below `below`."""
        for segment in manifest.segments:
            if segment.base_offset >= below:
                return None
            if segment.max_timestamp < timestamp or segment.last_offset < manifest.log_start_offset:
                continue
            stamps, rels = await self._time_index(prefix, segment)
            i = bisect_right(stamps, timestamp - 1)
            relative = rels[i - 1] if i else 0
            pos = await self._position_of(prefix, segment, segment.base_offset + relative)
            key = segment.key(prefix, "log")
            while pos + HEADER_SIZE <= segment.size:
                header = parse_header(await self._bytes(key, segment.size, pos, pos + HEADER_SIZE))
                if header.max_timestamp >= timestamp and header.last_offset >= manifest.log_start_offset:
                    batch = DefaultRecordBatch(bytes(await self._bytes(key, segment.size, pos, pos + header.length)))
                    for record in batch:
                        if record.timestamp >= timestamp and record.offset >= manifest.log_start_offset:
                            return record.offset, record.timestamp
                pos += header.length
        return None

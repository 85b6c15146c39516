"""Cold reads of several partitions at once: every chunk is downloaded once (the read-ahead of one
partition's reader never pushes another's out of memory before it is read)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from kafka.record.default_records import DefaultRecordBatchBuilder
from strata_broker.tier.cache import ChunkCache
from strata_broker.tier.reader import RemoteReader
from strata_contract.manifest import RemoteManifest, RemoteSegment

CHUNK = 16 << 10
BATCHES = 96  # about 4 KiB each: 24 chunks per partition


def _segment_bytes() -> tuple[bytes, int]:
    out = bytearray()
    for i in range(BATCHES):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        builder.append(0, timestamp=1_000 + i, key=None, value=bytes([i % 256]) * 4000, headers=[])
        batch = bytearray(builder.build())
        struct.pack_into(">q", batch, 0, i)  # base offset (outside the CRC)
        out += batch
    return bytes(out), BATCHES - 1


class CountingStore:
    """Objects in memory; every ranged GET is counted per chunk it covers."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.chunk_gets: dict[tuple[str, int], int] = {}

    async def get(self, key: str, start: int | None = None, end: int | None = None,
                  deadline: float | None = None) -> bytes:
        await asyncio.sleep(0.001)  # a download takes a while: reads go on meanwhile
        data = self.objects[key]
        start = start or 0
        end = len(data) if end is None else end
        for n in range(start // CHUNK, (end - 1) // CHUNK + 1):
            self.chunk_gets[(key, n)] = self.chunk_gets.get((key, n), 0) + 1
        return data[start:end]


def test_four_sequential_readers_download_each_chunk_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = CountingStore()
        cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=64 << 20, memory_chunks=10, admit_after=2)
        reader = RemoteReader(store, cache, CHUNK, prefetch_chunks=6)  # type: ignore[arg-type]
        data, last = _segment_bytes()
        manifests = {}
        for p in range(4):
            segment = RemoteSegment(base_offset=0, last_offset=last, size=len(data), max_timestamp=1_000 + last,
                                    index_size=0, timeindex_size=0)
            manifests[p] = RemoteManifest(topic="t", topic_id="id", partition=p, segments=[segment])
            store.objects[segment.key(f"t-{p}", "log")] = data
        positions = dict.fromkeys(range(4), 0)
        got = {p: bytearray() for p in range(4)}
        try:
            while any(o <= last for o in positions.values()):
                for p in range(4):  # a Fetch over four partitions, 6 KiB each, as a consumer's loop
                    if positions[p] > last:
                        continue
                    read = await reader.read(manifests[p], f"t-{p}", positions[p], 6 << 10, True)
                    got[p] += read
                    positions[p] = struct.unpack_from(">q", got[p], len(got[p]) - len(read))[0]
                    pos = len(got[p]) - len(read)
                    while pos < len(got[p]):  # the offset after the last batch read
                        (base,) = struct.unpack_from(">q", got[p], pos)
                        (length,) = struct.unpack_from(">i", got[p], pos + 8)
                        positions[p] = base + 1
                        pos += 12 + length
                    await asyncio.sleep(0)
        finally:
            cache.close()
        assert all(bytes(g) == data for g in got.values())
        assert len(store.chunk_gets) == 4 * (-(-len(data) // CHUNK))
        twice = sorted((k[0][:3], k[1]) for k, v in store.chunk_gets.items() if v > 1)
        assert not twice, twice

    asyncio.run(scenario())


def test_read_ahead_chunks_leave_memory_last(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=0, memory_chunks=3)
    try:
        cache.remember("k", 0, b"ahead-0", unread=True)
        cache.remember("k", 1, b"ahead-1", unread=True)
        for n in range(2, 6):  # chunks readers have taken: the oldest of them go first
            cache.remember("k", n, b"taken")
        assert cache.contains("k", 0) and cache.contains("k", 1) and cache.contains("k", 5)
        assert not cache.contains("k", 2)
        assert cache.unread_chunks == 2
        assert asyncio.run(cache.get("k", 0)) == b"ahead-0"  # taken: an ordinary chunk from now on
        assert cache.unread_chunks == 1
        cache.remember("k", 6, b"taken")
        cache.remember("k", 7, b"taken")
        assert not cache.contains("k", 0) and cache.contains("k", 1)
    finally:
        cache.close()

"""The chunk cache's files: written whole (O_DIRECT where the file system has it), read back exact."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from strata_broker.tier.cache import ChunkCache, DirectWriter, write_chunk_file

# Around the 4 KiB alignment O_DIRECT needs, and one chunk-sized buffer that is not a multiple of it.
SIZES = [1, 4095, 4096, 4097, 3 * 4096 + 17, (8 << 20) + 123]


def _direct_or_skip(tmp_path: Path) -> DirectWriter:
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("this platform has no O_DIRECT")
    writer = DirectWriter()
    try:
        writer.write(str(tmp_path / "probe"), b"x")
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip(f"the file system under {tmp_path} has no O_DIRECT")
        raise
    return writer


def test_direct_writes_are_exact_for_unaligned_sizes(tmp_path: Path) -> None:
    writer = _direct_or_skip(tmp_path)
    for size in SIZES + list(reversed(SIZES)):  # the buffer grows, then is reused for smaller chunks
        data = os.urandom(size)
        path = tmp_path / f"chunk-{size}"
        write_chunk_file(str(path), data, writer)
        assert writer.working
        assert path.stat().st_size == size
        assert path.read_bytes() == data
        assert not (tmp_path / f"chunk-{size}.tmp").exists()


def test_buffered_writes_are_exact(tmp_path: Path) -> None:
    for size in SIZES:
        data = os.urandom(size)
        path = tmp_path / f"chunk-{size}"
        write_chunk_file(str(path), data, None)
        assert path.read_bytes() == data


def test_cache_serves_chunks_from_disk_after_they_leave_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=64 << 20, memory_chunks=2)
        chunks = {n: os.urandom(SIZES[n % len(SIZES)]) for n in range(8)}
        try:
            for n, data in chunks.items():
                cache.put("topic/0/segment.log", n, data)
            for _ in range(200):  # the writer thread reports back on the loop
                if cache.size_bytes == sum(len(d) for d in chunks.values()):
                    break
                await asyncio.sleep(0.01)
            assert cache.size_bytes == sum(len(d) for d in chunks.values())
            for n, data in chunks.items():  # only the last two are still in memory
                assert await cache.get("topic/0/segment.log", n) == data
        finally:
            cache.close()

    asyncio.run(scenario())


def test_cache_stays_within_its_disk_budget(tmp_path: Path) -> None:
    async def scenario() -> None:
        chunk = 1 << 20
        cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=3 * chunk, memory_chunks=1)
        try:
            for n in range(10):
                cache.put("k", n, os.urandom(chunk))
                await asyncio.sleep(0)
            for _ in range(200):
                if not cache._pending:
                    break
                await asyncio.sleep(0.01)
            on_disk = [p for p in os.listdir(cache.directory) if not p.endswith(".tmp")]
            assert cache.size_bytes <= 3 * chunk
            assert len(on_disk) * chunk == cache.size_bytes
            assert await cache.get("k", 0) is None  # evicted first
            assert await cache.get("k", 9) is not None
        finally:
            cache.close()

    asyncio.run(scenario())


def test_a_chunk_is_written_to_disk_on_its_second_download_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=64 << 20, memory_chunks=1, admit_after=2)
        chunks = {n: os.urandom(4097 * (n + 1)) for n in range(4)}
        try:
            for n, data in chunks.items():  # one pass, as a replay makes: nothing reaches the disk
                cache.put("topic/0/segment.log", n, data)
            await asyncio.sleep(0.05)
            assert cache.size_bytes == 0 and os.listdir(cache.directory) == []
            assert await cache.get("topic/0/segment.log", 0) is None  # not in memory either (1 chunk kept)
            for n, data in chunks.items():  # the second download of each is kept
                cache.put("topic/0/segment.log", n, data)
            for _ in range(200):
                if cache.size_bytes == sum(len(d) for d in chunks.values()):
                    break
                await asyncio.sleep(0.01)
            assert cache.size_bytes == sum(len(d) for d in chunks.values())
            for n, data in chunks.items():
                assert await cache.get("topic/0/segment.log", n) == data
        finally:
            cache.close()

    asyncio.run(scenario())


def test_admission_remembers_a_bounded_number_of_chunks(tmp_path: Path) -> None:
    from strata_broker.tier.cache import _SEEN_NAMES

    cache = ChunkCache(str(tmp_path / "cache"), capacity_bytes=64 << 20, memory_chunks=1, admit_after=2)
    try:
        for n in range(_SEEN_NAMES + 10):
            assert cache.reserve_file("k", n, 4096) is None
        assert len(cache._seen) == _SEEN_NAMES
        assert cache.reserve_file("k", 0, 4096) is None  # forgotten: this counts as its first download
        assert cache.reserve_file("k", _SEEN_NAMES + 9, 4096) is not None  # remembered: second download
    finally:
        cache.close()

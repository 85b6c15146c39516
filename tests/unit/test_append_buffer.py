"""Write-behind of appends (log/segment.py AppendBuffers): what is buffered is read back from memory,
written out by size, timer, fsync, roll, eviction and close, and all of it is on disk afterwards."""

from __future__ import annotations

import asyncio
import os

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from strata_broker.config import BrokerConfig
from strata_broker.log.handles import HandleCache
from strata_broker.log.partition import PartitionLog
from strata_broker.log.segment import AppendBuffers


def batch(value: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=1_000, key=None, value=value, headers=[])
    return bytes(builder.build())


def open_log(path, handles: HandleCache, partition: int = 0, **overrides: str) -> PartitionLog:
    config = BrokerConfig.from_overrides({"index.interval.bytes": "256", **overrides})
    return PartitionLog.open(os.path.join(str(path), f"t-{partition}"), "t", partition, config.resolve_topic({}),
                             clean=True, handles=handles)


def values(plog: PartitionLog) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while offset < plog.log_end_offset:
        data = plog.read(offset, 1 << 20)
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos + 8:pos + 12], "big") + 12
            out += [r.value for r in DefaultRecordBatch(data[pos:pos + length]) if r.offset >= offset]
            pos += length
        offset = plog.log_start_offset + len(out)
    return out


def on_disk(plog: PartitionLog) -> int:
    return sum(os.path.getsize(s.log_path) for s in plog.segments)


def cache(max_ms: int, capacity: int = 64, segment_bytes: int = 128 * 1024) -> HandleCache:
    handles = HandleCache(capacity)
    handles.buffers = AppendBuffers(max_ms, segment_bytes=segment_bytes)
    return handles


def test_buffered_appends_are_read_from_memory_and_written_at_fsync_and_close(tmp_path) -> None:
    async def scenario() -> None:
        handles = cache(max_ms=60_000)
        plog = open_log(tmp_path, handles)
        expected = [f"v{i:04d}".encode() * 10 for i in range(50)]
        for value in expected[:30]:
            plog.append(batch(value))
        assert on_disk(plog) == 0 and handles.buffers.buffered == plog.active.size > 0
        assert values(plog) == expected[:30]
        plog.active.fsync()  # written out, then synced
        assert on_disk(plog) == plog.active.size and handles.buffers.buffered == 0
        for value in expected[30:]:
            plog.append(batch(value))
        # Reads across the written part and the buffer, and from inside the buffer.
        assert values(plog) == expected
        assert plog.read(40, 1 << 20)[:8] == (40).to_bytes(8, "big")
        plog.close()
        assert handles.buffers.buffered == 0

    asyncio.run(scenario())
    handles = cache(max_ms=0)
    assert values(open_log(tmp_path, handles)) == [f"v{i:04d}".encode() * 10 for i in range(50)]


def test_write_out_by_timer_size_roll_and_eviction(tmp_path) -> None:
    async def scenario() -> None:
        handles = cache(max_ms=20, capacity=1, segment_bytes=4096)
        a, b = open_log(tmp_path, handles, 0, **{"segment.bytes": "8192"}), open_log(tmp_path, handles, 1)
        a.append(batch(b"x" * 100))
        assert on_disk(a) == 0
        for _ in range(200):  # the timer writes it out
            await asyncio.sleep(0.01)
            if on_disk(a) == a.size_bytes:
                break
        assert on_disk(a) == a.size_bytes
        # Appending to b evicts a (capacity 1): a's buffer is written before its descriptor goes.
        a.append(batch(b"y" * 100))
        b.append(batch(b"z" * 100))
        assert on_disk(a) == a.size_bytes and on_disk(b) == 0
        # 4 KiB buffered in one segment: written at once; a roll writes the sealed segment out.
        for i in range(60):
            a.append(batch(bytes([i]) * 300))
        assert len(a.segments) > 1
        assert all(os.path.getsize(s.log_path) == s.size for s in a.segments[:-1])
        assert a.active.size - os.path.getsize(a.active.log_path) < 4096
        assert values(a)[:2] == [b"x" * 100, b"y" * 100] and len(values(a)) == 62
        a.close()
        b.close()

    asyncio.run(scenario())
    handles = cache(max_ms=0)
    assert len(values(open_log(tmp_path, handles, 0))) == 62
    assert values(open_log(tmp_path, handles, 1)) == [b"z" * 100]


def test_without_an_event_loop_appends_are_written_through(tmp_path) -> None:
    handles = cache(max_ms=60_000)
    plog = open_log(tmp_path, handles)
    plog.append(batch(b"now"))
    assert on_disk(plog) == plog.active.size and handles.buffers.buffered == 0
    plog.close()


def test_a_group_commit_round_writes_the_buffer_before_it_syncs(tmp_path) -> None:
    """acks=all: the wait (LogManager.group_commit) covers what is still buffered."""
    from strata_broker.log.manager import LogManager

    async def scenario() -> None:
        logs = LogManager(str(tmp_path / "data"), BrokerConfig.from_overrides({"log.append.buffer.ms": "600000"}))
        logs.open()
        try:
            logs.create_topic("t", 2, {})
            plog = logs.get_partition("t", 1)
            result = plog.append(batch(b"durable"))
            assert on_disk(plog) == 0
            await logs.group_commit.sync_many([result.segment])
            assert on_disk(plog) == plog.active.size > 0
        finally:
            logs.close()

    asyncio.run(scenario())


def test_a_round_of_many_segments_is_one_filesystem_sync(tmp_path) -> None:
    """Above SYNCFS_MIN_SEGMENTS a group-commit round syncs the filesystem once, and so does the
    clean close; both complete and everything appended reads back after the clean restart."""
    from strata_broker.log.manager import LogManager
    from strata_broker.log.segment import SYNCFS_MIN_SEGMENTS

    topics = SYNCFS_MIN_SEGMENTS // 10 + 1

    async def scenario() -> None:
        logs = LogManager(str(tmp_path / "data"), BrokerConfig.from_overrides({}))
        logs.open()
        try:
            for i in range(topics):
                logs.create_topic(f"t{i}", 10, {})
            segments = {p.append(batch(f"{p.topic}/{p.partition}".encode())).segment for p in logs.all_partitions()}
            assert len(segments) >= SYNCFS_MIN_SEGMENTS
            rounds = logs.group_commit.rounds
            await logs.group_commit.sync_many(segments)
            assert logs.group_commit.rounds == rounds + 1
        finally:
            logs.close()

    asyncio.run(scenario())
    # That many written partitions closed with one filesystem sync: still a clean shutdown.
    assert (tmp_path / "data" / ".clean-shutdown").exists()
    logs = LogManager(str(tmp_path / "data"), BrokerConfig.from_overrides({}))
    logs.open()
    assert logs.unloaded_partitions() == len(logs.all_partitions())  # clean: nothing recovered
    assert all(values(p) == [f"{p.topic}/{p.partition}".encode()] for p in logs.all_partitions())
    logs.close()

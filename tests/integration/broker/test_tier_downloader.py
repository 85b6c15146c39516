"""The cold chunk downloader: a child process receiving ranged GETs into memory shared with the broker.

Against moto's server: the bytes a run of parts resolves to are the object's, byte for byte; the
cache files the child writes are exact; a slot is reused only once nothing holds a view of it; a
child killed mid-download fails its downloads (they are retried in-process by the reader) and is
replaced; a missing key is an error for its parts, not a stuck slot. And a broker replays cold
data through its downloader, byte-identical, also right after the downloader was killed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from brokerproc import free_port
from kafkaclients import consume_confluent, create_topic
from metrics import samples, scrape
from s3server import CREDENTIALS, S3Bucket
from strata_broker.tier.downloader import ChunkDownloader, Part
from strata_broker.tier.store import ObjectStore, S3Unavailable
from waiting import wait_until

CHUNK = 1 << 20


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def run(s3: S3Bucket, scenario: Callable[[ChunkDownloader, ObjectStore], Awaitable[None]], slots: int = 4) -> None:
    async def main() -> None:
        store = ObjectStore(s3.name, s3.server.endpoint)
        await store.open()
        downloader = ChunkDownloader(store, slots, CHUNK)
        try:
            await downloader.start()
            await wait_for(lambda: downloader.ready, "the child to be ready")
            await scenario(downloader, store)
        finally:
            await downloader.close()
            await store.close()

    asyncio.run(main())


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def parts_of(size: int, first: int, count: int, paths: list[str | None], stored: list[Any]) -> list[Part]:
    out: list[Part] = []
    for i, n in enumerate(range(first, first + count)):
        start, end = n * CHUNK, min(size, (n + 1) * CHUNK)
        out.append((start, end, paths[i], lambda ok, i=i: stored.append((i, ok))))
    return out


def test_a_run_arrives_exact_and_its_cache_files_are_written(s3: S3Bucket, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 12345)  # the last part is short
    s3.server.client().put_object(Bucket=s3.name, Key="seg.log", Body=data)

    async def scenario(downloader: ChunkDownloader, store: ObjectStore) -> None:
        for first, count in ((0, 4), (1, 2)):  # the whole object (no Range header), then a ranged run
            stored: list[tuple[int, bool]] = []
            paths = [str(tmp_path / f"{first}-{i}") for i in range(count)]
            futures = downloader.download_run("seg.log", parts_of(len(data), first, count, paths, stored), len(data))
            assert len(futures) == count
            views = await asyncio.gather(*futures)
            for i, view in enumerate(views):
                n = first + i
                assert bytes(view) == data[n * CHUNK:(n + 1) * CHUNK]
                assert view.readonly
            await wait_for(lambda: len(stored) == count, "the child to be done with the slots")  # noqa: B023
            assert sorted(stored) == [(i, True) for i in range(count)]
            for i in range(count):
                n = first + i
                assert Path(paths[i]).read_bytes() == data[n * CHUNK:(n + 1) * CHUNK]
                assert not Path(paths[i] + ".tmp").exists()
            del views, futures  # a future holds its view, and a view its slot
        assert downloader.downloads == 6 and downloader.fallbacks == 0
        assert store.requests["get_object"] == 2  # one GET per run
        assert store.bytes["get"] == len(data) + 2 * CHUNK

    run(s3, scenario)


def test_a_slot_is_reused_only_when_no_view_of_it_is_left(s3: S3Bucket) -> None:
    data = os.urandom(4 * CHUNK)
    s3.server.client().put_object(Bucket=s3.name, Key="seg.log", Body=data)

    async def scenario(downloader: ChunkDownloader, store: ObjectStore) -> None:
        stored: list[tuple[int, bool]] = []
        held = await asyncio.gather(*downloader.download_run(
            "seg.log", parts_of(len(data), 0, 2, [None, None], stored), len(data)))
        await wait_for(lambda: len(stored) == 2, "the child to be done with the slots")
        # Two slots are held by the views: a run of three gets the two others, the reader the rest.
        futures = downloader.download_run("seg.log", parts_of(len(data), 1, 3, [None] * 3, stored), len(data))
        assert len(futures) == 2
        assert downloader.fallbacks == 1
        second = await asyncio.gather(*futures)
        assert [bytes(v) for v in second] == [data[CHUNK:2 * CHUNK], data[2 * CHUNK:3 * CHUNK]]
        await wait_for(lambda: len(stored) == 4, "the child to be done with the slots")
        assert downloader.download_run("seg.log", parts_of(len(data), 3, 1, [None], stored), len(data)) == []
        # The bytes a held view shows never change while it is held.
        assert bytes(held[0]) == data[:CHUNK] and bytes(held[1]) == data[CHUNK:2 * CHUNK]
        del held, second, futures
        gc.collect()
        again = await asyncio.gather(*downloader.download_run(
            "seg.log", parts_of(len(data), 3, 1, [None], stored), len(data)))
        assert bytes(again[0]) == data[3 * CHUNK:]

    run(s3, scenario)


def test_a_missing_key_fails_its_parts_and_frees_their_slots(s3: S3Bucket) -> None:
    async def scenario(downloader: ChunkDownloader, store: ObjectStore) -> None:
        stored: list[tuple[int, bool]] = []
        futures = downloader.download_run("no-such.log", parts_of(2 * CHUNK, 0, 2, [None, None], stored), 2 * CHUNK)
        for future in futures:
            with pytest.raises(S3Unavailable, match="NoSuchKey"):
                await future
        await wait_for(lambda: len(stored) == 2, "the child to give the slots back")
        assert sorted(stored) == [(0, False), (1, False)]
        assert downloader.slots is not None
        assert all(downloader.slots.free(slot) for slot in range(downloader.slots.count))

    run(s3, scenario)


def test_a_killed_child_fails_its_downloads_and_is_replaced(s3: S3Bucket) -> None:
    data = os.urandom(2 * CHUNK)
    s3.server.client().put_object(Bucket=s3.name, Key="seg.log", Body=data)

    async def scenario(downloader: ChunkDownloader, store: ObjectStore) -> None:
        proc = downloader._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)  # it cannot answer before it dies
        stored: list[tuple[int, bool]] = []
        futures = downloader.download_run("seg.log", parts_of(len(data), 0, 2, [None, None], stored), len(data))
        assert len(futures) == 2
        os.kill(proc.pid, signal.SIGKILL)
        for future in futures:
            with pytest.raises(S3Unavailable, match="exited"):
                await future
        assert sorted(stored) == [(0, False), (1, False)]
        # The next run starts a new child; until it is ready, the reader downloads itself.
        assert downloader.download_run("seg.log", parts_of(len(data), 0, 1, [None], stored), len(data)) == []
        await wait_for(lambda: downloader.ready, "a new child")
        assert downloader._proc is not None and downloader._proc.pid != proc.pid
        views = await asyncio.gather(*downloader.download_run(
            "seg.log", parts_of(len(data), 0, 2, [None, None], stored), len(data)))
        assert b"".join(bytes(v) for v in views) == data

    run(s3, scenario)


# ---- through a broker -------------------------------------------------------------------------


READY = "strata_tier_downloader_ready"


def metric(port: int, name: str) -> float:
    """One sample of the broker's /metrics; NaN while the broker does not export it."""
    return samples(scrape(port)).get(name, float("nan"))


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def cold_topic(broker_factory, topic_name: str, s3: Any, n: int,
               **settings: str) -> tuple[Any, int, Callable[[], None]]:
    """A broker with small chunks (256 KiB; with 4 of read-ahead the memory cache keeps 8) and a topic of n 1 kB
    records that are all in S3 and no longer on disk: (broker, metrics port, replay), where replay()
    reads the topic from offset 0 and checks every record."""
    metrics_port = free_port()
    broker = broker_factory(s3.broker_settings(**{
        "segment.bytes": str(1 << 20), "tiered.upload.interval.ms": "1000", "log.retention.check.interval.ms": "500",
        "tiered.chunk.bytes": str(256 << 10), "tiered.prefetch.chunks": "4",
        "metrics.listen": f"127.0.0.1:{metrics_port}", **settings}),
        env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1,
                 {"retention.ms": "-1", "local.retention.bytes": "0", "local.retention.ms": "-1"})
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(n):
        producer.produce(topic_name, value=f"{i:09d}".encode().ljust(1000, b"#"), partition=0)
        if i % 1000 == 999:
            producer.flush(30)
    assert producer.flush(30) == 0

    def uploaded() -> bool:
        keys = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/topics/{topic_name}-" in k]
        segments = json.loads(s3.read(keys[0]))["segments"] if keys else []
        local = sum(p.stat().st_size for p in (broker.data_dir / f"{topic_name}-0").glob("*.log"))
        return bool(segments) and segments[-1]["last_offset"] == n - 1 and local == 0

    wait_until(uploaded, 60, "every record to be in S3 only")

    def replay() -> None:
        records = consume_confluent(broker.bootstrap, topic_name, 1, expected=n, timeout=120)
        assert [r.offset for r in records] == list(range(n))
        assert all(r.value == f"{r.offset:09d}".encode().ljust(1000, b"#") for r in records)

    return broker, metrics_port, replay


def test_a_broker_replays_cold_data_through_its_downloader_and_after_its_death(broker_factory, topic_name, s3):
    # No disk cache: every replay downloads.
    broker, metrics_port, replay = cold_topic(broker_factory, topic_name, s3, 6000, **{"tiered.cache.bytes": "0"})
    by_downloader = 'strata_tier_cold_chunks_total{by="downloader"}'
    assert metric(metrics_port, READY) == 0  # started by the first cold read only
    replay()
    wait_until(lambda: metric(metrics_port, READY) == 1, 60, "the downloader")
    (child,) = children(broker.pid)
    before = metric(metrics_port, by_downloader)
    replay()
    assert metric(metrics_port, by_downloader) >= before + 16  # 24 chunks, 8 of them still in memory

    os.kill(child, signal.SIGKILL)
    wait_until(lambda: metric(metrics_port, READY) == 0, 60, "the broker to see the child gone")
    replay()  # the broker downloads itself until a new child is ready
    wait_until(lambda: metric(metrics_port, READY) == 1, 60, "a new downloader")
    assert children(broker.pid) != [child]
    assert "cold chunk downloader" in broker.log_tail(200)


def test_a_replay_read_once_leaves_the_disk_cache_alone_and_a_second_fills_it(broker_factory, topic_name, s3):
    broker, metrics_port, replay = cold_topic(broker_factory, topic_name, s3, 4000)  # 16 chunks
    gets = 'strata_s3_requests_total{operation="get_object"}'
    replay()
    assert metric(metrics_port, "strata_tier_cache_bytes") == 0
    assert not list((broker.data_dir / "__remote-cache").iterdir())
    replay()  # the first 8 chunks left memory: downloaded again, and now kept on disk
    wait_until(lambda: metric(metrics_port, "strata_tier_cache_bytes") >= 8 * (256 << 10), 30,
               "the chunks downloaded twice to be in the disk cache")
    before = metric(metrics_port, gets)
    replay()  # from memory and the disk cache
    assert metric(metrics_port, gets) == before

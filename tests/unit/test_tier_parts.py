"""Remote storage's parts in process, over an in-memory bucket (tests/memstore.py): the uploader
puts every file of a closed segment and then the manifest, DeleteRecords' log start reaches the
manifest and retention then removes the segments below it, and a restore seeds an empty data dir
from the manifests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from memstore import MemStore
from rawclient import record_batch
from strata_broker.config import BrokerConfig
from strata_broker.log.index import read_offset_entries
from strata_broker.log.manager import LogManager, Topic
from strata_broker.tier.manager import TierManager
from strata_contract.layout import (
    OPTIONAL_SEGMENT_SUFFIXES,
    SEGMENT_SUFFIXES,
    manifest_key,
    parse_segment_name,
    partition_root,
)
from strata_contract.manifest import RemoteManifest

CLUSTER = "c1"


def tiered(tmp_path: Path, name: str) -> tuple[LogManager, TierManager, MemStore]:
    config = BrokerConfig.from_overrides({"tiered.s3.bucket": "mem", "cluster.id": CLUSTER,
                                          "tiered.download.process": "false"})
    data_dir = str(tmp_path / name)
    logs = LogManager(data_dir, config, RemoteManifest.from_json)
    store = MemStore()
    tier = TierManager(config, data_dir, 0, store=store)
    logs.open()
    tier.attach(logs)
    logs.listener = tier  # topic events reach the bucket, as broker.py wires them
    return logs, tier, store


def topic_with_segments(logs: LogManager, tier: TierManager, segments: int) -> Topic:
    topic = logs.create_topic("events", 1, {"remote.storage.enable": "true"})
    assert topic is not None
    plog = topic.partitions[0]
    for _ in range(segments):
        plog.append(record_batch(5))
        plog.roll()
    return topic


def objects_of(store: MemStore, topic: Topic) -> dict[str, bytes]:
    prefix = partition_root("", CLUSTER, topic.name, topic.topic_id, 0)
    return {k[len(prefix):]: o.body for k, o in store.objects.items() if k.startswith(prefix)}


def test_upload_puts_every_segment_file_then_the_manifest(tmp_path: Path) -> None:
    logs, tier, store = tiered(tmp_path, "a")

    async def run() -> None:
        try:
            topic = topic_with_segments(logs, tier, 3)
            await tier.tick()
            objects = objects_of(store, topic)
            manifest = RemoteManifest.from_json(objects.pop("manifest.json"))
            assert [(s.base_offset, s.last_offset) for s in manifest.segments] == [(0, 4), (5, 9), (10, 14)]
            names = {parse_segment_name(name) for name in objects}
            assert names == {(s.base_offset, s.last_offset, 0, suffix)
                             for s in manifest.segments for suffix in SEGMENT_SUFFIXES
                             if suffix not in OPTIONAL_SEGMENT_SUFFIXES}
            plog = topic.partitions[0]
            for local, remote in zip(plog.segments[:-1], manifest.segments, strict=True):
                stem = f"{remote.base_offset:020d}-{remote.last_offset:020d}"
                with open(local.log_path, "rb") as f:
                    assert objects[f"{stem}.log"] == f.read()
                assert len(objects[f"{stem}.index"]) == remote.index_size
                assert read_offset_entries(objects[f"{stem}.index"]) == (list(local.offset_index.relative_offsets),
                                                                         list(local.offset_index.positions))
                with open(local.time_index.path, "rb") as f:
                    assert objects[f"{stem}.timeindex"] == f.read()
                assert remote.timeindex_size == len(objects[f"{stem}.timeindex"]) > 0
            assert tier.uploaded_segments == 3 and tier.upload_failures == 0
            assert plog.remote_end_offset == 15
            await tier.tick()  # nothing new: nothing uploaded twice
            assert tier.uploaded_segments == 3
        finally:
            logs.close()
            await tier.close()

    asyncio.run(run())


def test_log_start_reaches_the_manifest_and_retention_removes_what_is_below(tmp_path: Path) -> None:
    logs, tier, store = tiered(tmp_path, "b")

    async def run() -> None:
        try:
            topic = topic_with_segments(logs, tier, 3)
            await tier.tick()
            plog = topic.partitions[0]
            plog.advance_log_start(10)  # DeleteRecords up to offset 10
            await tier.publish_log_start(plog)
            prefix = partition_root("", CLUSTER, topic.name, topic.topic_id, 0)
            assert RemoteManifest.from_json(store.objects[manifest_key(prefix)].body).log_start_offset == 10
            await tier.tick()
            manifest = RemoteManifest.from_json(store.objects[manifest_key(prefix)].body)
            assert [(s.base_offset, s.last_offset) for s in manifest.segments] == [(10, 14)]
            left = {parse_segment_name(name)[:2] for name in objects_of(store, topic) if name != "manifest.json"}
            assert left == {(10, 14)}
        finally:
            logs.close()
            await tier.close()

    asyncio.run(run())


def test_restore_seeds_an_empty_data_dir_from_the_manifests(tmp_path: Path) -> None:
    logs, tier, store = tiered(tmp_path, "c")

    async def run() -> None:
        try:
            topic = topic_with_segments(logs, tier, 2)
            await asyncio.wait_for(asyncio.gather(*tier._background), 5)  # topic.json written
            await tier.tick()
        finally:
            logs.close()
            await tier.close()
        config = BrokerConfig.from_overrides({"tiered.s3.bucket": "mem", "cluster.id": CLUSTER,
                                              "tiered.download.process": "false"})
        fresh = str(tmp_path / "fresh")
        restored_tier = TierManager(config, fresh, 0, store=store)
        restored_logs = LogManager(fresh, config, RemoteManifest.from_json)
        (Path(restored_logs.meta_dir) / "topics").mkdir(parents=True, exist_ok=True)
        assert await restored_tier.restore(restored_logs.data_dir, restored_logs.meta_dir) == 1
        assert await restored_tier.restore(restored_logs.data_dir, restored_logs.meta_dir) == 0  # has it now
        restored_logs.open()
        try:
            again = restored_logs.topics["events"]
            assert again.topic_id == topic.topic_id
            plog = again.partitions[0]
            assert plog.log_end_offset == 10 and plog.remote_end_offset == 10 and plog.log_start_offset == 0
        finally:
            restored_logs.close()
            await restored_tier.close()

    asyncio.run(run())

"""Restore: an empty data dir gets back, from the bucket, every topic it does not have.

Only manifests are read: each partition directory is seeded with its manifest, the producer
state and a checkpoint whose log starts where the bucket ends (`seed_partition_dir`); the data
stays in S3 until someone fetches it, so start-up time does not grow with it. The cluster's
hand-over seeds a partition that moves to this broker the same way.
"""

from __future__ import annotations

import json
import logging
import os

from strata_contract.layout import manifest_key, parse_topic_dir, partition_root, topic_meta_key, topics_root
from strata_contract.manifest import RemoteManifest, TopicMeta

from ..log.files import write_json_atomic
from ..log.partition import CHECKPOINT, PRODUCER_SNAPSHOT, REMOTE_MANIFEST
from .store import ObjectStore

log = logging.getLogger(__name__)


async def restore_topics(store: ObjectStore, prefix: str, cluster: str, data_dir: str, meta_dir: str) -> int:
    """Recreate every topic of the bucket that `meta_dir` does not have; returns how many."""
    _, topic_dirs = await store.list(topics_root(prefix, cluster), delimiter="/")
    restored = 0
    for topic_dir in topic_dirs:
        parsed = parse_topic_dir(topic_dir.rstrip("/").rsplit("/", 1)[-1])
        if parsed is None:
            continue
        name, topic_id = parsed
        local_meta = os.path.join(meta_dir, "topics", f"{name}.json")
        if os.path.exists(local_meta):
            continue
        raw = await store.get_or_none(topic_meta_key(prefix, cluster, name, topic_id))
        if raw is None:
            continue  # deleted, or never finished being created
        meta = TopicMeta.from_json(raw)
        for p in range(meta.partitions):
            manifest_raw = await store.get_or_none(manifest_key(partition_root(prefix, cluster, name, topic_id, p)))
            manifest = (RemoteManifest.from_json(manifest_raw) if manifest_raw
                        else RemoteManifest(name, str(topic_id), p))
            seed_partition_dir(os.path.join(data_dir, f"{name}-{p}"), manifest)
        write_json_atomic(local_meta, json.loads(raw))  # the local topic file has the same fields
        restored += 1
        log.info("restored topic %s (%s partitions) from the bucket", name, meta.partitions)
    return restored


def seed_partition_dir(directory: str, manifest: RemoteManifest) -> None:
    """Lay out a partition directory whose log starts where the bucket ends: only the manifest,
    the producer state and a checkpoint; data stays in S3 until someone fetches it."""
    os.makedirs(directory, exist_ok=True)
    end = manifest.end_offset
    write_json_atomic(os.path.join(directory, REMOTE_MANIFEST), json.loads(manifest.to_json()))
    write_json_atomic(os.path.join(directory, PRODUCER_SNAPSHOT), {"offset": end, "producers": manifest.producer_state})
    write_json_atomic(os.path.join(directory, CHECKPOINT), {
        "log_start_offset": manifest.log_start_offset, "log_end_offset": end,
        "recovery_point": end, "high_watermark": end, "remote_offset": end - 1})

"""Where things live in the bucket (DESIGN.md, "S3 layout"). Pure functions of names and offsets."""

from __future__ import annotations

import uuid


def cluster_root(prefix: str, cluster: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/clusters/{cluster}/" if prefix else f"clusters/{cluster}/"


def topics_root(prefix: str, cluster: str) -> str:
    return cluster_root(prefix, cluster) + "topics/"


def topic_root(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID) -> str:
    """The topic id keeps a re-created topic from inheriting the old one's objects."""
    return f"{topics_root(prefix, cluster)}{topic}-{topic_id}/"


def topic_meta_key(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID) -> str:
    return topic_root(prefix, cluster, topic, topic_id) + "topic.json"


def partition_root(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID, partition: int) -> str:
    return f"{topic_root(prefix, cluster, topic, topic_id)}{partition}/"


def manifest_key(partition_prefix: str) -> str:
    return partition_prefix + "manifest.json"


def segment_key(partition_prefix: str, base_offset: int, last_offset: int, suffix: str, generation: int = 0) -> str:
    """A segment's objects; a compacted rewrite gets a new generation, hence new keys, so a reader
    holding the previous manifest still finds the objects it was sent to."""
    cleaned = f"-c{generation}" if generation else ""
    return f"{partition_prefix}{base_offset:020d}-{last_offset:020d}{cleaned}.{suffix}"


def producer_ids_key(prefix: str, cluster: str) -> str:
    """The cluster's producer id counter: the next unreserved id."""
    return cluster_root(prefix, cluster) + "producer-ids.json"


def wal_root(prefix: str, cluster: str, broker_id: int) -> str:
    return f"{cluster_root(prefix, cluster)}wal/{broker_id}/"


def parse_topic_dir(name: str) -> tuple[str, uuid.UUID] | None:
    """'<topic>-<uuid>' -> (topic, id); a topic name may itself contain dashes."""
    if len(name) < 38 or name[-37] != "-":
        return None
    try:
        return name[:-37], uuid.UUID(name[-36:])
    except ValueError:
        return None

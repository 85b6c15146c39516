"""Where things live in the bucket: pure functions of names and offsets (DESIGN.md, "S3 layout").

    [<prefix>/]clusters/<cluster>/
        topics/<topic>-<topic-id>/topic.json                 the topic (manifest.TopicMeta)
        topics/<topic>-<topic-id>/<partition>/manifest.json  the partition (manifest.RemoteManifest)
        topics/<topic>-<topic-id>/<partition>/<base:020d>-<last:020d>[-c<generation>].<suffix>
                                                             a segment's objects, one per SEGMENT_SUFFIXES
        members/<broker-id>.json                             a broker's lease (lease.MemberLease)
        reassignments/<topic>/<partition>.json               a requested move ({"target": <broker-id>}),
                                                             written by AlterPartitionReassignments, acted
                                                             on and deleted by the cluster controller
        producer-ids.json                                    the cluster's producer id counter
        security/<name>.json                                 ACLs, SCRAM credentials, quotas (cluster mode)
        wal/<broker-id>/...                                  a broker's S3 commit log
        usage/<yyyy>/<mm>/<dd>/<broker>-<epoch>.jsonl        usage records (usage.py)

The broker writes these keys; the operator's cluster controller, `strata tier` and the cost
report read them.
"""

from __future__ import annotations

import re
import uuid

TOPIC_META = "topic.json"
MANIFEST = "manifest.json"
# The objects of one segment, by suffix: the log and its indexes, each uploaded from the local
# file of the same extension. Retention deletes these, `strata tier scrub` keeps what a manifest
# references of them; a new per-segment index is one more suffix here.
SEGMENT_SUFFIXES = ("log", "index", "timeindex", "txnindex")
# Uploaded only for a segment that has entries in it (an aborted transaction).
OPTIONAL_SEGMENT_SUFFIXES = ("txnindex",)
_SEGMENT_NAME = re.compile(r"^(\d{20})-(\d{20})(?:-c(\d+))?\.([a-z]+)$")


def cluster_root(prefix: str, cluster: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/clusters/{cluster}/" if prefix else f"clusters/{cluster}/"


def topics_root(prefix: str, cluster: str) -> str:
    return cluster_root(prefix, cluster) + "topics/"


def topic_root(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID) -> str:
    """The topic id keeps a re-created topic from inheriting the old one's objects."""
    return f"{topics_root(prefix, cluster)}{topic}-{topic_id}/"


def topic_meta_key(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID) -> str:
    return topic_root(prefix, cluster, topic, topic_id) + TOPIC_META


def partition_root(prefix: str, cluster: str, topic: str, topic_id: uuid.UUID, partition: int) -> str:
    return f"{topic_root(prefix, cluster, topic, topic_id)}{partition}/"


def manifest_key(partition_prefix: str) -> str:
    return partition_prefix + MANIFEST


def segment_key(partition_prefix: str, base_offset: int, last_offset: int, suffix: str, generation: int = 0) -> str:
    """A segment's objects; a compacted rewrite gets a new generation, hence new keys, so a reader
    holding the previous manifest still finds the objects it was sent to."""
    cleaned = f"-c{generation}" if generation else ""
    return f"{partition_prefix}{base_offset:020d}-{last_offset:020d}{cleaned}.{suffix}"


def parse_segment_name(name: str) -> tuple[int, int, int, str] | None:
    """A segment object's name (the last part of its key) -> (base offset, last offset, generation,
    suffix); None for anything else."""
    m = _SEGMENT_NAME.match(name)
    if m is None or m.group(4) not in SEGMENT_SUFFIXES:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4)


def producer_ids_key(prefix: str, cluster: str) -> str:
    """The cluster's producer id counter: the next unreserved id."""
    return cluster_root(prefix, cluster) + "producer-ids.json"


def members_root(prefix: str, cluster: str) -> str:
    return cluster_root(prefix, cluster) + "members/"


def member_key(prefix: str, cluster: str, node_id: int) -> str:
    return f"{members_root(prefix, cluster)}{node_id}.json"


def reassignments_root(prefix: str, cluster: str) -> str:
    return cluster_root(prefix, cluster) + "reassignments/"


def reassignment_key(prefix: str, cluster: str, topic: str, partition: int) -> str:
    return f"{reassignments_root(prefix, cluster)}{topic}/{partition}.json"


def parse_reassignment_key(root: str, key: str) -> tuple[str, int] | None:
    """(topic, partition) of a key under `reassignments_root`, or None for anything else."""
    if not key.startswith(root) or not key.endswith(".json"):
        return None
    topic, _, partition = key[len(root):-len(".json")].rpartition("/")
    if not topic or "/" in topic or not partition.isdigit():
        return None
    return topic, int(partition)


def security_key(prefix: str, cluster: str, name: str) -> str:
    return f"{cluster_root(prefix, cluster)}security/{name}.json"


def wal_root(prefix: str, cluster: str, broker_id: int) -> str:
    return f"{cluster_root(prefix, cluster)}wal/{broker_id}/"


def usage_root(prefix: str, cluster: str) -> str:
    """The key prefix of a cluster's usage files."""
    return cluster_root(prefix, cluster) + "usage/"


def parse_topic_dir(name: str) -> tuple[str, uuid.UUID] | None:
    """'<topic>-<uuid>' -> (topic, id); a topic name may itself contain dashes."""
    if len(name) < 38 or name[-37] != "-":
        return None
    try:
        return name[:-37], uuid.UUID(name[-36:])
    except ValueError:
        return None

"""The JSON documents that describe a topic in the bucket (keys: layout.py).

- `TopicMeta` (`topic.json`): the topic's name, id, partition count and config overrides. The
  broker writes it when a tiered topic is created or changed and deletes it first when the topic
  is deleted; a restore and the operator's cluster controller read it.
- `RemoteManifest` (`<partition>/manifest.json`): which segments of a partition are in S3, where
  its log starts, the producer state at its end, and (cluster mode) the leader epoch that owns
  it. The broker rewrites it after every upload, retention pass and compaction; `strata tier`
  reads it to tell referenced objects from orphans.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from typing import Any

from .layout import segment_key


@dataclass(frozen=True)
class TopicMeta:
    """`topic.json`: what a restore or the cluster controller needs to know of a topic."""

    name: str
    id: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    internal: bool = False

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "id": self.id, "partitions": self.partitions,
                           "configs": self.configs, "internal": self.internal}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> TopicMeta:
        """Raises ValueError, KeyError or TypeError on a document that is not one."""
        raw = json.loads(data)
        return cls(str(raw.get("name", "")), str(raw["id"]), int(raw["partitions"]),
                   {str(k): str(v) for k, v in (raw.get("configs") or {}).items()}, bool(raw.get("internal", False)))


@dataclass(frozen=True)
class RemoteSegment:
    base_offset: int
    last_offset: int
    size: int
    max_timestamp: int
    index_size: int
    timeindex_size: int
    generation: int = 0  # > 0 once compaction has rewritten the segment

    def key(self, partition_prefix: str, suffix: str) -> str:
        return segment_key(partition_prefix, self.base_offset, self.last_offset, suffix, self.generation)


@dataclass
class RemoteManifest:
    topic: str
    topic_id: str
    partition: int
    log_start_offset: int = 0
    segments: list[RemoteSegment] = field(default_factory=list)
    # Idempotent producers' state as of end_offset, so a restored broker still recognises retries.
    producer_state: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    # Compaction: offsets below this are clean (every key at most once, tombstones aside).
    cleaned_offset: int = 0
    # Objects replaced by compaction, deleted once no reader can still hold them: [key, not-before ms].
    garbage: list[list[Any]] = field(default_factory=list)
    # Cluster mode: the leader epoch that owns this partition's writes beyond end_offset, and
    # whether that leader sealed it (uploaded its whole log and let go) for the next one.
    leader_epoch: int = 0
    leader_id: int = -1
    sealed: bool = False
    # The partition's leader-epoch history, [epoch, start offset] pairs (Kafka's
    # leader-epoch-checkpoint): a leader laying the partition out from the bucket starts from it.
    leader_epochs: list[list[int]] = field(default_factory=list)

    @property
    def end_offset(self) -> int:
        """One past the last offset in S3 (0 when nothing is)."""
        return self.segments[-1].last_offset + 1 if self.segments else 0

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def find(self, offset: int) -> int | None:
        """Index of the first segment whose last offset is >= offset, if any."""
        i = bisect_right([s.base_offset for s in self.segments], offset) - 1
        for j in range(max(i, 0), len(self.segments)):
            if self.segments[j].last_offset >= offset:
                return j
        return None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RemoteManifest:
        raw = json.loads(data)
        raw["segments"] = [RemoteSegment(**s) for s in raw.get("segments", [])]
        return cls(**raw)

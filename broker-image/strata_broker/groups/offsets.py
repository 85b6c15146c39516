"""Committed offsets, kept in memory and written through the log to `__consumer_offsets`.

Records use Kafka's own key/value layout for that topic (so Kafka tooling that reads it,
e.g. an offsets formatter, understands it):

- key   v1: int16 version=1, string group, string topic, int32 partition
- value v3: int16 version=3, int64 offset, int32 leader epoch, string metadata, int64 commit time
- a null value is a tombstone (offset deleted)

Consumer-group (KIP-848) records, keys 3 to 8, share the topic and the group's partition: their
layout is consumer_group_records.py's, and the store hands them to `record_sink` as it replays.
Classic-group metadata records (key 2) are not written: classic members rejoin after a restart.
On startup every partition of the topic is replayed; the last record for a key wins.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kafka.record.default_records import DefaultRecordBatchBuilder

from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import LogManager
from ..log.partition import PartitionLog
from ..replica import Appended, ReplicaManager

log = logging.getLogger(__name__)
# Offset records per batch of the offsets topic stop at about this size (far below max.message.bytes).
_BATCH_BYTES = 256 * 1024

OFFSETS_TOPIC = "__consumer_offsets"

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")

# Like Kafka's offsets.topic.* settings: never expire by time or size (the key space is bounded
# by groups x partitions; compaction, when present, keeps the newest record per key).
OFFSETS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "segment.bytes": str(100 * 1024 * 1024),
}


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str | None
    commit_timestamp: int


def java_string_hash(value: str) -> int:
    """Java's String.hashCode (over UTF-16 code units), as Kafka uses to place a group."""
    h = 0
    data = value.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h


def partition_for(group_id: str, partitions: int) -> int:
    return (java_string_hash(group_id) & 0x7FFFFFFF) % partitions


def _put_string(out: bytearray, value: str | None) -> None:
    if value is None:
        out += _I16.pack(-1)
        return
    raw = value.encode("utf-8")
    out += _I16.pack(len(raw))
    out += raw


def _get_string(buf: bytes, pos: int) -> tuple[str | None, int]:
    (length,) = _I16.unpack_from(buf, pos)
    pos += 2
    if length < 0:
        return None, pos
    return bytes(buf[pos:pos + length]).decode("utf-8"), pos + length


def encode_key(group_id: str, topic: str, partition: int) -> bytes:
    out = bytearray(_I16.pack(1))
    _put_string(out, group_id)
    _put_string(out, topic)
    out += _I32.pack(partition)
    return bytes(out)


def encode_value(entry: CommittedOffset) -> bytes:
    out = bytearray(_I16.pack(3))
    out += _I64.pack(entry.offset)
    out += _I32.pack(entry.leader_epoch)
    _put_string(out, entry.metadata)
    out += _I64.pack(entry.commit_timestamp)
    return bytes(out)


def decode_key(buf: bytes) -> tuple[str, str, int] | None:
    """(group, topic, partition) of an offset-commit key; None for other key kinds."""
    (version,) = _I16.unpack_from(buf, 0)
    if version not in (0, 1):
        return None
    group, pos = _get_string(buf, 2)
    topic, pos = _get_string(buf, pos)
    (partition,) = _I32.unpack_from(buf, pos)
    if group is None or topic is None:
        return None
    return group, topic, partition


def decode_value(buf: bytes) -> CommittedOffset:
    (version,) = _I16.unpack_from(buf, 0)
    (offset,) = _I64.unpack_from(buf, 2)
    pos = 10
    epoch = -1
    if version >= 3:
        (epoch,) = _I32.unpack_from(buf, pos)
        pos += 4
    metadata, pos = _get_string(buf, pos)
    (timestamp,) = _I64.unpack_from(buf, pos)
    return CommittedOffset(offset, epoch, metadata, timestamp)


class OffsetStore:
    """group -> {(topic, partition): CommittedOffset}, durable in `__consumer_offsets`.

    `wall` (seconds since the epoch) stamps the records written."""

    def __init__(self, logs: LogManager, replicas: ReplicaManager, num_partitions: int, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.logs = logs
        self.replicas = replicas
        self.wall = wall
        self.num_partitions = num_partitions
        self.offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        # Transactional offsets not committed yet: producer id -> group -> {(topic, p): offset}.
        # They become the group's offsets when the commit marker reaches their partition.
        self.pending: dict[int, dict[str, dict[tuple[str, int], CommittedOffset]]] = {}
        # Replayed records that are not offset commits (the consumer groups' keys 3 to 8) go here.
        self.record_sink: Callable[[bytes, bytes | None], None] | None = None

    # ---- startup -----------------------------------------------------------------------

    async def load(self) -> int:
        """Replay the topic if it exists (S3 included); returns the number of records read."""
        topic = self.logs.topics.get(OFFSETS_TOPIC)
        if topic is None:
            return 0
        self.num_partitions = len(topic.partitions)
        started = time.monotonic()
        count = 0
        for plog in topic.partitions:
            count += await self.load_partition(plog)
        log.info("loaded %d committed offsets of %d group(s) from %d record(s) of %s in %.3fs",
                 sum(len(v) for v in self.offsets.values()), len(self.offsets), count, OFFSETS_TOPIC,
                 time.monotonic() - started)
        return count

    async def load_partition(self, plog: PartitionLog) -> int:
        """Replay one partition of the offsets topic (cluster mode: the one just taken over)."""
        count = 0
        async for batch, records in self.replicas.replay(plog):
            if batch.is_control_batch:
                for record in records:
                    key = bytes(record.key or b"")
                    if len(key) >= 4:
                        commit = _I16.unpack_from(key, 2)[0] == 1
                        self.complete_txn(batch.producer_id, commit, plog.partition)
            elif batch.is_transactional:
                for record in records:
                    count += 1
                    self._apply_pending(batch.producer_id, record.key, record.value)
            else:
                for record in records:
                    count += 1
                    self._apply(record.key, record.value)
        return count

    def unload_partition(self, partition: int) -> list[str]:
        """Forget the groups stored in one partition (cluster mode: it moved to another broker)."""
        gone = [g for g in self.offsets if partition_for(g, self.num_partitions) == partition]
        for group in gone:
            del self.offsets[group]
        return gone

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if not key:
            return
        try:
            parsed = decode_key(bytes(key))
            if parsed is None:
                if self.record_sink is not None:
                    self.record_sink(bytes(key), None if value is None else bytes(value))
                return
            group, topic, partition = parsed
            if value is None:
                self._forget(group, topic, partition)
            else:
                self.offsets.setdefault(group, {})[(topic, partition)] = decode_value(bytes(value))
        except (struct.error, UnicodeDecodeError, IndexError):
            log.warning("skipping an unreadable record in %s", OFFSETS_TOPIC)

    def _apply_pending(self, producer_id: int, key: bytes | None, value: bytes | None) -> None:
        if not key or value is None:
            return
        try:
            parsed = decode_key(bytes(key))
            if parsed is None:
                return
            group, topic, partition = parsed
            self.pending.setdefault(producer_id, {}).setdefault(group, {})[(topic, partition)] = \
                decode_value(bytes(value))
        except (struct.error, UnicodeDecodeError, IndexError):
            log.warning("skipping an unreadable transactional record in %s", OFFSETS_TOPIC)

    def complete_txn(self, producer_id: int, commit: bool, partition: int) -> None:
        """A marker reached an offsets partition: the producer's pending offsets of the groups
        stored there become committed (commit) or are dropped (abort)."""
        groups = self.pending.get(producer_id)
        if not groups:
            return
        for group in [g for g in groups if partition_for(g, self.num_partitions) == partition]:
            entries = groups.pop(group)
            if commit:
                self.offsets.setdefault(group, {}).update(entries)
        if not groups:
            del self.pending[producer_id]

    def has_pending(self, group_id: str, partitions: list[tuple[str, int]] | None) -> bool:
        """Whether a transaction has offsets of these partitions (all when None) not decided yet."""
        for groups in self.pending.values():
            entries = groups.get(group_id)
            if entries and (partitions is None or any(tp in entries for tp in partitions)):
                return True
        return False

    async def write_txn(self, group_id: str, producer_id: int, producer_epoch: int,
                        offsets: dict[tuple[str, int], CommittedOffset]) -> None:
        """TxnOffsetCommit: the offsets go to the group's partition in a transactional batch of the
        producer; they stay pending until the transaction's marker decides them."""
        if not offsets:
            return
        await self._append(group_id, dict(offsets), producer_id, producer_epoch)
        self.pending.setdefault(producer_id, {}).setdefault(group_id, {}).update(offsets)

    async def _append(self, group_id: str, entries: dict[tuple[str, int], CommittedOffset | None],
                      producer_id: int = -1, producer_epoch: int = -1) -> None:
        """One batch of the group's offset records (tombstones for None) in its partition of the
        offsets topic, durable before this returns; transactional when a producer id is given."""
        records = [(encode_key(group_id, topic_name, partition), None if entry is None else encode_value(entry))
                   for (topic_name, partition), entry in entries.items()]
        await self.append_records(group_id, records, producer_id, producer_epoch)

    def append_records(self, group_id: str, records: list[tuple[bytes, bytes | None]], producer_id: int = -1,
                       producer_epoch: int = -1) -> Awaitable[None]:
        """Append these (key, value) records to the group's partition of the offsets topic now (the
        log order is the call order) and return what waits until they are durable (raising
        NOT_COORDINATOR when the partition moved to another broker meanwhile)."""
        self.ensure_topic()
        topic = self.logs.topics[OFFSETS_TOPIC]
        plog = topic.partitions[partition_for(group_id, len(topic.partitions))]
        now = int(self.wall() * 1000)
        # A commit of many partitions is several batches (each within the topic's max.message.bytes),
        # still one append: one write and one durable wait.
        batches: list[bytes] = []
        batch_bytes = min(_BATCH_BYTES, plog.config.max_message_bytes // 2)
        builder = None
        for key, value in records:
            if builder is None:
                builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=producer_id >= 0,
                                                    producer_id=producer_id, producer_epoch=producer_epoch,
                                                    base_sequence=-1, batch_size=1 << 30)
                count = 0
            builder.append(count, timestamp=now, key=key, value=value, headers=[])
            count += 1
            if builder.size() >= batch_bytes:
                batches.append(bytes(builder.build()))
                builder = None
        if builder is not None:
            batches.append(bytes(builder.build()))
        return self._durable(self.replicas.append(plog, b"".join(batches)))

    @staticmethod
    async def _durable(appended: Appended) -> None:
        try:
            await appended.durable()
        except KafkaProtocolError as exc:
            if exc.code == ErrorCode.NOT_LEADER_OR_FOLLOWER:
                raise KafkaProtocolError(ErrorCode.NOT_COORDINATOR, "the offsets partition moved to another broker") \
                    from exc
            raise

    def _forget(self, group: str, topic: str, partition: int) -> None:
        entries = self.offsets.get(group)
        if entries is not None:
            entries.pop((topic, partition), None)
            if not entries:
                del self.offsets[group]

    # ---- reads -------------------------------------------------------------------------

    def group_offsets(self, group_id: str) -> dict[tuple[str, int], CommittedOffset]:
        return self.offsets.get(group_id, {})

    def groups(self) -> list[str]:
        return list(self.offsets)

    # ---- writes ------------------------------------------------------------------------

    def ensure_topic(self) -> None:
        """Create `__consumer_offsets` (internal, compacted) if it does not exist yet."""
        if OFFSETS_TOPIC not in self.logs.topics:
            # The same id on every broker of a cluster, whichever creates it first.
            topic_id = uuid.uuid5(uuid.NAMESPACE_URL, f"strata:{self.logs.config['cluster.id']}:{OFFSETS_TOPIC}")
            self.logs.create_topic(OFFSETS_TOPIC, self.num_partitions, dict(OFFSETS_TOPIC_CONFIG), internal=True,
                                   topic_id=topic_id)

    async def write(self, group_id: str, updates: dict[tuple[str, int], CommittedOffset | None]) -> None:
        """Append (tombstones for None), make durable (fsync, or S3 with a bucket), then apply:
        acknowledged commits survive a crash."""
        if not updates:
            return
        await self._append(group_id, updates)
        for (topic_name, partition), entry in updates.items():
            if entry is None:
                self._forget(group_id, topic_name, partition)
            else:
                self.offsets.setdefault(group_id, {})[(topic_name, partition)] = entry

    async def delete_group(self, group_id: str) -> None:
        entries = self.offsets.get(group_id)
        if entries:
            await self.write(group_id, {tp: None for tp in list(entries)})

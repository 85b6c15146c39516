"""Transaction metadata, kept in memory and written through the log to `__transaction_state`.

Records use Kafka's layout for that topic (so tooling that reads it understands it):

- key   v0: int16 version=0, string transactional id
- value v0: int16 version=0, int64 producer id, int16 producer epoch, int32 timeout ms,
  int8 state, array of (string topic, array of int32 partition), int64 last update ms,
  int64 start ms
- a null value is a tombstone (transactional id expired)

On startup every partition of the topic is replayed; the last record for a key wins.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field

from kafka.record.default_records import DefaultRecordBatchBuilder

from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import LogManager
from ..log.partition import PartitionLog
from ..replica import ReplicaManager
from .offsets import partition_for

log = logging.getLogger(__name__)

TRANSACTION_TOPIC = "__transaction_state"

TRANSACTION_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "segment.bytes": str(100 * 1024 * 1024),
}

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class TxnState(enum.IntEnum):
    """Kafka's TransactionState codes."""

    EMPTY = 0
    ONGOING = 1
    PREPARE_COMMIT = 2
    PREPARE_ABORT = 3
    COMPLETE_COMMIT = 4
    COMPLETE_ABORT = 5
    DEAD = 6
    PREPARE_EPOCH_FENCE = 7

    @property
    def kafka_name(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))


@dataclass
class TxnMetadata:
    """One transactional id: its producer, epoch, timeout, state and the partitions in its transaction."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    partitions: set[tuple[str, int]] = field(default_factory=set)
    last_update_ms: int = -1
    start_ms: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)


def _put_string(out: bytearray, value: str) -> None:
    raw = value.encode("utf-8")
    out += _I16.pack(len(raw))
    out += raw


def _get_string(buf: bytes, pos: int) -> tuple[str, int]:
    (length,) = _I16.unpack_from(buf, pos)
    pos += 2
    return buf[pos:pos + length].decode("utf-8"), pos + length


def encode_key(transactional_id: str) -> bytes:
    out = bytearray(_I16.pack(0))
    _put_string(out, transactional_id)
    return bytes(out)


def decode_key(buf: bytes) -> str | None:
    (version,) = _I16.unpack_from(buf, 0)
    if version != 0:
        return None
    return _get_string(buf, 2)[0]


def encode_value(meta: TxnMetadata) -> bytes:
    out = bytearray(_I16.pack(0))
    out += _I64.pack(meta.producer_id)
    out += _I16.pack(meta.producer_epoch)
    out += _I32.pack(meta.timeout_ms)
    out += _I8.pack(int(meta.state))
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(meta.partitions):
        by_topic.setdefault(topic, []).append(partition)
    out += _I32.pack(len(by_topic))
    for topic, partitions in by_topic.items():
        _put_string(out, topic)
        out += _I32.pack(len(partitions))
        for p in partitions:
            out += _I32.pack(p)
    out += _I64.pack(meta.last_update_ms)
    out += _I64.pack(meta.start_ms)
    return bytes(out)


def decode_value(transactional_id: str, buf: bytes) -> TxnMetadata:
    pos = 2
    (pid,) = _I64.unpack_from(buf, pos)
    (epoch,) = _I16.unpack_from(buf, pos + 8)
    (timeout,) = _I32.unpack_from(buf, pos + 10)
    (state,) = _I8.unpack_from(buf, pos + 14)
    pos += 15
    (topics,) = _I32.unpack_from(buf, pos)
    pos += 4
    partitions: set[tuple[str, int]] = set()
    for _ in range(max(0, topics)):
        topic, pos = _get_string(buf, pos)
        (count,) = _I32.unpack_from(buf, pos)
        pos += 4
        for _ in range(count):
            partitions.add((topic, _I32.unpack_from(buf, pos)[0]))
            pos += 4
    (last_update,) = _I64.unpack_from(buf, pos)
    (start,) = _I64.unpack_from(buf, pos + 8)
    return TxnMetadata(transactional_id, pid, epoch, timeout, TxnState(state), partitions, last_update, start)


class TransactionStateStore:
    """transactional id -> TxnMetadata, durable in `__transaction_state` (fsync, or S3 with a bucket)."""

    def __init__(self, logs: LogManager, replicas: ReplicaManager, num_partitions: int) -> None:
        self.logs = logs
        self.replicas = replicas
        self.num_partitions = num_partitions
        self.transactions: dict[str, TxnMetadata] = {}

    def partition_of(self, transactional_id: str) -> int:
        return partition_for(transactional_id, self.num_partitions)

    def ensure_topic(self) -> None:
        """Create `__transaction_state` (internal, compacted) if it does not exist yet."""
        if TRANSACTION_TOPIC not in self.logs.topics:
            topic_id = uuid.uuid5(uuid.NAMESPACE_URL,
                                  f"strata:{self.logs.config['cluster.id']}:{TRANSACTION_TOPIC}")
            self.logs.create_topic(TRANSACTION_TOPIC, self.num_partitions, dict(TRANSACTION_TOPIC_CONFIG),
                                   internal=True, topic_id=topic_id)

    async def load(self) -> int:
        """Replay the topic if it exists (S3 included); returns the number of records read."""
        topic = self.logs.topics.get(TRANSACTION_TOPIC)
        if topic is None:
            return 0
        self.num_partitions = len(topic.partitions)
        started = time.monotonic()
        count = 0
        for plog in topic.partitions:
            count += await self.load_partition(plog)
        log.info("loaded %d transactional id(s) from %d record(s) of %s in %.3fs", len(self.transactions), count,
                 TRANSACTION_TOPIC, time.monotonic() - started)
        return count

    async def load_partition(self, plog: PartitionLog) -> int:
        count = 0
        async for batch, records in self.replicas.replay(plog):
            if batch.is_control_batch:
                continue
            for record in records:
                if record.key:
                    count += 1
                    self._apply(bytes(record.key), None if record.value is None else bytes(record.value))
        return count

    def _apply(self, key: bytes, value: bytes | None) -> None:
        try:
            txn_id = decode_key(key)
            if txn_id is None:
                return
            if value is None:
                self.transactions.pop(txn_id, None)
            else:
                self.transactions[txn_id] = decode_value(txn_id, value)
        except (struct.error, UnicodeDecodeError, ValueError):
            log.warning("skipping an unreadable record in %s", TRANSACTION_TOPIC)

    async def write(self, meta: TxnMetadata) -> None:
        """Append the transactional id's new metadata and wait until it is durable; the caller
        changes its in-memory copy only after this returns (an unacknowledged change is lost)."""
        self.ensure_topic()
        topic = self.logs.topics[TRANSACTION_TOPIC]
        plog = topic.partitions[partition_for(meta.transactional_id, len(topic.partitions))]
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
        builder.append(0, timestamp=int(time.time() * 1000), key=encode_key(meta.transactional_id),
                       value=encode_value(meta), headers=[])
        appended = self.replicas.append(plog, bytes(builder.build()))
        try:
            await appended.durable()
        except KafkaProtocolError as exc:
            if exc.code == ErrorCode.NOT_LEADER_OR_FOLLOWER:
                raise KafkaProtocolError(ErrorCode.NOT_COORDINATOR,
                                         "the transaction state partition moved to another broker") from exc
            raise

"""Idempotent-producer sequence tracking for one partition (what makes retries exactly-once), and the
transactions open in it (the first offset of each producer's ongoing transaction, which bounds the
last stable offset)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, KafkaProtocolError
from .batch import BatchHeader

# Kafka keeps the metadata of the last five batches per producer: a client has at most
# five requests in flight per connection, so a retry is always one of these.
_CACHED_BATCHES = 5
_SEQ_MODULO = 1 << 31
# A producer that never had a marker here has coordinator epoch -1, as Kafka reports it.
NO_COORDINATOR_EPOCH = -1


@dataclass
class _CachedBatch:
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int


@dataclass
class _Producer:
    epoch: int
    batches: deque[_CachedBatch] = field(default_factory=lambda: deque(maxlen=_CACHED_BATCHES))
    txn_first_offset: int = -1  # first offset of the producer's ongoing transaction here, else -1
    last_timestamp: int = -1  # max timestamp of its last batch (DescribeProducers)
    # of the last marker that ended one of its transactions here: a marker from an older coordinator
    # (of the transactional id's `__transaction_state` partition) is refused (check_marker)
    coordinator_epoch: int = NO_COORDINATOR_EPOCH

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1


class ProducerState:
    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}
        # producer id -> first offset of its ongoing transaction in this partition
        self.ongoing: dict[int, int] = {}

    def first_unstable_offset(self) -> int | None:
        """The first offset of the oldest ongoing transaction (the last stable offset), or None."""
        return min(self.ongoing.values()) if self.ongoing else None

    def epoch_of(self, producer_id: int) -> int | None:
        producer = self._producers.get(producer_id)
        return None if producer is None else producer.epoch

    def active(self) -> list[tuple[int, int, int, int, int, int]]:
        """Every producer this partition knows, as DescribeProducers reports it: (producer id,
        epoch, last sequence, last timestamp, coordinator epoch, current transaction's first offset)."""
        return [(pid, p.epoch, p.last_seq, p.last_timestamp, p.coordinator_epoch, p.txn_first_offset)
                for pid, p in sorted(self._producers.items())]

    def check_marker(self, producer_id: int, producer_epoch: int, coordinator_epoch: int) -> None:
        """Raise unless a transaction marker may end the producer's transaction here, as Kafka's
        ProducerAppendInfo checks one from WriteTxnMarkers: an older producer epoch than the last
        batch's is INVALID_PRODUCER_EPOCH; an older coordinator epoch than the last marker's is
        TRANSACTION_COORDINATOR_FENCED (a coordinator that lost its `__transaction_state` partition
        to another broker, which has written markers since)."""
        producer = self._producers.get(producer_id)
        if producer is None:
            return
        if producer_epoch < producer.epoch:
            raise KafkaProtocolError(ErrorCode.INVALID_PRODUCER_EPOCH,
                                     f"marker epoch {producer_epoch} < producer epoch {producer.epoch}")
        if coordinator_epoch < producer.coordinator_epoch:
            raise KafkaProtocolError(ErrorCode.TRANSACTION_COORDINATOR_FENCED,
                                     f"marker from coordinator epoch {coordinator_epoch} < "
                                     f"{producer.coordinator_epoch}, the last marker's of producer {producer_id}")

    def check(self, header: BatchHeader) -> int | None:
        """Base offset of an earlier identical batch (a retry), None if new; raise if out of order."""
        if header.producer_id < 0 or header.base_sequence < 0:
            return None  # not idempotent, or written by a coordinator (transactional offsets)
        producer = self._producers.get(header.producer_id)
        if producer is None:
            if header.base_sequence != 0:
                raise KafkaProtocolError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                         f"producer {header.producer_id} unknown; first sequence must be 0")
            return None
        if header.producer_epoch < producer.epoch:
            raise KafkaProtocolError(ErrorCode.INVALID_PRODUCER_EPOCH, "stale producer epoch")
        if header.producer_epoch > producer.epoch:
            if header.base_sequence != 0:
                raise KafkaProtocolError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                         "a new producer epoch must start at sequence 0")
            return None
        for cached in producer.batches:
            if cached.first_seq == header.base_sequence and cached.last_seq == header.last_sequence:
                return cached.base_offset
        expected = (producer.last_seq + 1) % _SEQ_MODULO
        if header.base_sequence != expected:
            raise KafkaProtocolError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"producer {header.producer_id}: expected sequence {expected}, got {header.base_sequence}",
            )
        return None

    def check_all(self, headers: list[BatchHeader]) -> int | None:
        """check() of a request's batches for one partition, in order: a producer's later batch
        follows its earlier one in the same request (as Kafka validates them), not the state before
        the request. Base offset of the first batch that is a retry (the request is then a retry
        and nothing of it is appended), None if all are new; raise if out of order."""
        pending: dict[int, tuple[int, int]] = {}  # producer id -> (epoch, last sequence) in this request
        for header in headers:
            if header.producer_id < 0 or header.base_sequence < 0:
                continue
            seen = pending.get(header.producer_id)
            if seen is None:
                duplicate_of = self.check(header)
                if duplicate_of is not None:
                    return duplicate_of
            else:
                epoch, last_seq = seen
                if header.producer_epoch < epoch:
                    raise KafkaProtocolError(ErrorCode.INVALID_PRODUCER_EPOCH, "stale producer epoch")
                expected = 0 if header.producer_epoch > epoch else (last_seq + 1) % _SEQ_MODULO
                if header.base_sequence != expected:
                    raise KafkaProtocolError(
                        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                        f"producer {header.producer_id}: expected sequence {expected}, got {header.base_sequence}")
            pending[header.producer_id] = (header.producer_epoch, header.last_sequence)
        return None

    def record(self, header: BatchHeader, coordinator_epoch: int | None = None) -> None:
        """Remember an appended batch (its header carries the assigned offsets); a marker's
        `coordinator_epoch` (its record's value, None if unread) becomes the producer's, as in Kafka."""
        pid = header.producer_id
        if pid < 0:
            return
        producer = self._producers.get(pid)
        if producer is None or header.producer_epoch > producer.epoch or (
                header.producer_epoch != producer.epoch and not header.is_control):
            first = producer.txn_first_offset if producer is not None else -1
            producer = _Producer(epoch=header.producer_epoch, txn_first_offset=first,
                                 coordinator_epoch=producer.coordinator_epoch if producer is not None
                                 else NO_COORDINATOR_EPOCH)
            self._producers[pid] = producer
        producer.last_timestamp = header.max_timestamp  # a marker's too, as Kafka
        if header.is_control:  # a transaction marker ends the producer's transaction here
            producer.txn_first_offset = -1
            if coordinator_epoch is not None:
                producer.coordinator_epoch = coordinator_epoch
            self.ongoing.pop(pid, None)
            return
        if header.is_transactional and producer.txn_first_offset < 0:
            producer.txn_first_offset = header.base_offset
            self.ongoing[pid] = header.base_offset
        if header.base_sequence < 0:
            return
        producer.batches.append(
            _CachedBatch(header.base_sequence, header.last_sequence, header.base_offset, header.last_offset)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            str(pid): {"epoch": p.epoch, "batches": [[b.first_seq, b.last_seq, b.base_offset, b.last_offset]
                                                      for b in p.batches], "txn": p.txn_first_offset,
                        "ts": p.last_timestamp, "ce": p.coordinator_epoch}
            for pid, p in self._producers.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProducerState:
        state = cls()
        for pid, entry in data.items():
            producer = _Producer(epoch=int(entry["epoch"]), txn_first_offset=int(entry.get("txn", -1)),
                                 last_timestamp=int(entry.get("ts", -1)), coordinator_epoch=int(entry.get("ce", -1)))
            for first_seq, last_seq, base, last in entry["batches"]:
                producer.batches.append(_CachedBatch(first_seq, last_seq, base, last))
            state._producers[int(pid)] = producer
            if producer.txn_first_offset >= 0:
                state.ongoing[int(pid)] = producer.txn_first_offset
        return state

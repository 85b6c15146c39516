"""Expiry of idle transactional ids (Kafka's `transactional.id.expiration.ms`, default 7 days).

Every `transaction.remove.expired.transaction.cleanup.interval.ms` (default 1 hour) the
coordinator's ids are scanned: one whose transaction is not open (Empty, CompleteCommit,
CompleteAbort) and whose metadata has not changed for longer than the expiration is removed, as
Kafka's TransactionStateManager does it: a tombstone (the id's key, a null value) is appended to
its `__transaction_state` partition and, once durable, the id leaves the coordinator's state. A
restart replays the tombstone (txn_log.py), compaction eventually drops the id's records. A
producer that comes back with the id later starts afresh: a new producer id at epoch 0; one
still using the old producer id gets INVALID_PRODUCER_ID_MAPPING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kafka.record.default_records import DefaultRecordBatchBuilder

from ..errors import KafkaProtocolError
from .offsets import partition_for
from .txn_log import TRANSACTION_TOPIC, TxnState, encode_key

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from .transactions import TransactionCoordinator

log = logging.getLogger(__name__)

_IDLE_STATES = (TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)


class TransactionalIdExpiry:
    """The periodic sweep; `run()` is scheduled every `interval_ms`."""

    def __init__(self, config: BrokerConfig, coordinator: TransactionCoordinator, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.coordinator = coordinator
        self.expiration_ms = int(config["transactional.id.expiration.ms"])
        self.interval_ms = int(config["transaction.remove.expired.transaction.cleanup.interval.ms"])
        self.wall = wall

    def _expired(self, txn_id: str, now_ms: int) -> bool:
        meta = self.coordinator.transactions.get(txn_id)
        return (meta is not None and meta.state in _IDLE_STATES and meta.last_update_ms >= 0
                and now_ms - meta.last_update_ms > self.expiration_ms)

    async def run(self) -> list[str]:
        """Remove every expired id; the ids removed."""
        if not self.coordinator.loaded:
            return []
        removed = []
        now_ms = int(self.wall() * 1000)
        for txn_id, meta in list(self.coordinator.transactions.items()):
            if meta.lock.locked() or not self._expired(txn_id, now_ms):
                continue
            async with meta.lock:
                if self.coordinator.transactions.get(txn_id) is not meta or not self._expired(txn_id, now_ms):
                    continue  # used again (or removed) meanwhile
                try:
                    await self._tombstone(txn_id)
                except KafkaProtocolError as exc:
                    log.warning("transactional id %s not expired yet: %s", txn_id, exc)
                    continue
                del self.coordinator.transactions[txn_id]
                removed.append(txn_id)
        if removed:
            log.info("expired %d transactional id(s) idle for longer than %d ms", len(removed), self.expiration_ms)
        return removed

    async def _tombstone(self, txn_id: str) -> None:
        """Append the id's tombstone to its `__transaction_state` partition and wait until durable."""
        logs, replicas = self.coordinator.logs, self.coordinator.replicas
        topic = logs.topics[TRANSACTION_TOPIC]
        plog = topic.partitions[partition_for(txn_id, len(topic.partitions))]
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
        builder.append(0, timestamp=int(self.wall() * 1000), key=encode_key(txn_id), value=None, headers=[])
        await replicas.append(plog, bytes(builder.build())).durable()

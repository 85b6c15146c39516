"""The transaction coordinator in cluster mode: coordinators spread by `__transaction_state` partition.

As Kafka does, the coordinator of a transactional id is the broker that leads partition
hash(transactional id) % partitions of `__transaction_state` (FindCoordinator key type 1 answers
that broker, from the placement). When this broker takes the lead of such a partition
(cluster/handover.py, after the claim: the partition's log is laid out from the bucket and the S3
commit log, where every state change went before it was acknowledged) `partition_acquired`
replays it into memory, then finishes the transactions the previous coordinator left prepared
(their outcome was decided: the markers are written again). When the partition is handed on,
`partition_released` forgets its ids. Until the replay is done requests for those ids are answered
COORDINATOR_LOAD_IN_PROGRESS (the client retries); for ids of partitions led elsewhere,
NOT_COORDINATOR (the client looks the coordinator up again).

Markers go through `ClusterMarkers` (cluster/txn_markers.py): the transaction's partitions may be
led by any broker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import ErrorCode
from .offsets import partition_for
from .transactions import TransactionCoordinator
from .txn_log import TRANSACTION_TOPIC, TxnState

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager
    from ..log.partition import PartitionLog
    from ..replica import ReplicaManager
    from ..replica.leadership import Leadership
    from .offsets import OffsetStore

log = logging.getLogger(__name__)

E = ErrorCode


class ClusterTransactionCoordinator(TransactionCoordinator):
    """Coordinates the transactional ids whose `__transaction_state` partition this broker leads."""

    def __init__(self, config: BrokerConfig, logs: LogManager, replicas: ReplicaManager, offsets: OffsetStore,
                 leadership: Leadership) -> None:
        super().__init__(config, logs, replicas, offsets)
        self.leadership = leadership
        self.loaded = True  # per partition: see availability()
        self.loaded_partitions: set[int] = set()
        self.coordinator_epochs: dict[int, int] = {}  # __transaction_state partition -> its epoch when loaded
        self._completing: set[asyncio.Task[None]] = set()

    def partition_of(self, transactional_id: str) -> int | None:
        topic = self.logs.topics.get(TRANSACTION_TOPIC)
        if topic is None:
            return None
        return partition_for(transactional_id, len(topic.partitions))

    def availability(self, transactional_id: str) -> ErrorCode:
        partition = self.partition_of(transactional_id)
        if partition is None:
            return E.COORDINATOR_NOT_AVAILABLE  # the topic is being created: FindCoordinator again
        if not self.leadership.leads(TRANSACTION_TOPIC, partition):
            return E.NOT_COORDINATOR
        if partition not in self.loaded_partitions:
            return E.COORDINATOR_LOAD_IN_PROGRESS
        return E.NONE

    def coordinator_epoch(self, transactional_id: str) -> int:
        """The epoch this broker's markers for the id carry: the leader epoch at which it took the
        id's `__transaction_state` partition over (as Kafka's coordinator epoch is the partition's
        leader epoch when it loaded it). It grows with each move of the partition, so a partition
        leader that has a marker from the new coordinator refuses a late one from this broker
        (TRANSACTION_COORDINATOR_FENCED); it stays the old value after a hand-over for the same reason."""
        partition = self.partition_of(transactional_id)
        return 0 if partition is None else self.coordinator_epochs.get(partition, 0)

    # ---- requests: answered only for the ids coordinated here (the handlers checked authorization)

    async def init_producer_id(self, transactional_id: str, timeout_ms: int, producer_id: int,
                               producer_epoch: int) -> tuple[ErrorCode, int, int]:
        error = self.availability(transactional_id)
        if error != E.NONE:
            return error, -1, -1
        return await super().init_producer_id(transactional_id, timeout_ms, producer_id, producer_epoch)

    async def add_partitions(self, transactional_id: str, producer_id: int, producer_epoch: int,
                             partitions: list[tuple[str, int]], verify_only: bool = False) -> ErrorCode:
        error = self.availability(transactional_id)
        if error != E.NONE:
            return error
        return await super().add_partitions(transactional_id, producer_id, producer_epoch, partitions, verify_only)

    async def add_offsets(self, transactional_id: str, producer_id: int, producer_epoch: int,
                          group_id: str) -> ErrorCode:
        error = self.availability(transactional_id)
        if error != E.NONE:
            return error
        return await super().add_offsets(transactional_id, producer_id, producer_epoch, group_id)

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                      commit: bool) -> ErrorCode:
        error = self.availability(transactional_id)
        if error != E.NONE:
            return error
        return await super().end_txn(transactional_id, producer_id, producer_epoch, commit)

    # ---- partitions taken over and handed on ----------------------------------------------

    async def load(self) -> None:
        """Nothing at start-up: each partition is loaded when this broker takes it over."""

    def _forget(self, partition: int) -> None:
        gone = [t for t in self.store.transactions if self.partition_of(t) == partition]
        for txn_id in gone:
            del self.store.transactions[txn_id]
        if gone:
            log.info("forgot %d transactional id(s) of %s-%d", len(gone), TRANSACTION_TOPIC, partition)

    async def partition_acquired(self, plog: PartitionLog) -> None:
        """This broker now leads a `__transaction_state` partition: load its ids, then finish the
        transactions left prepared (in the background: markers may wait for other brokers)."""
        partition = plog.partition
        self.loaded_partitions.discard(partition)
        self._forget(partition)
        self.coordinator_epochs[partition] = max(0, plog.leader_epoch)
        count = await self.store.load_partition(plog)
        self.loaded_partitions.add(partition)
        ids = [t for t in self.store.transactions if self.partition_of(t) == partition]
        log.info("coordinating %d transactional id(s) of %s-%d at coordinator epoch %d (%d record(s) replayed)",
                 len(ids), TRANSACTION_TOPIC, partition, self.coordinator_epochs[partition], count)
        prepared = [t for t in ids if self.store.transactions[t].state in (TxnState.PREPARE_COMMIT,
                                                                           TxnState.PREPARE_ABORT)]
        if prepared:
            task = asyncio.get_running_loop().create_task(self._finish_prepared(prepared))
            self._completing.add(task)
            task.add_done_callback(self._completing.discard)

    async def _finish_prepared(self, ids: list[str]) -> None:
        for txn_id in ids:
            meta = self.store.transactions.get(txn_id)
            if meta is None:
                continue
            async with meta.lock:
                if meta.state not in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                    continue
                commit = meta.state == TxnState.PREPARE_COMMIT
                try:
                    await self._complete(meta, commit)
                    log.info("completed the %s of %s left prepared by the previous coordinator",
                             "commit" if commit else "abort", txn_id)
                except Exception as exc:  # tick() tries again
                    log.warning("transaction %s left prepared not completed yet: %r", txn_id, exc)

    def partition_released(self, partition: int) -> None:
        """The partition is coordinated elsewhere now: its clients find the new coordinator."""
        self.loaded_partitions.discard(partition)
        self._forget(partition)

"""The transaction coordinator (after Kafka's TransactionCoordinator and TransactionStateManager).

It owns every transactional id's metadata (txn_log.py, durable in `__transaction_state`) and
drives a transaction through its states: InitProducerId gives a transactional id its producer
id and a new epoch (fencing older producers of the same id and aborting a transaction they left
open); AddPartitionsToTxn / AddOffsetsToTxn make it Ongoing; EndTxn prepares the commit or
abort (persisted), writes a marker to every partition of the transaction through the replica
layer, waits until the markers are durable, then completes it (persisted). A transaction open
longer than its timeout is aborted by `tick()`, with an epoch bump that fences its producer.
After a restart `load()` replays the topic and finishes every transaction left prepared.

On a single broker it coordinates every transactional id and writes markers to its own
partitions. In cluster mode groups/txn_cluster.py's subclass coordinates the ids whose
`__transaction_state` partition this broker leads, and `send_markers` (cluster/txn_markers.py)
writes markers wherever the partitions are led (WriteTxnMarkers to the other brokers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ErrorCode, KafkaProtocolError
from .offsets import OFFSETS_TOPIC, partition_for
from .txn_log import TRANSACTION_TOPIC, TransactionStateStore, TxnMetadata, TxnState

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager
    from ..replica import ReplicaManager
    from .offsets import OffsetStore

log = logging.getLogger(__name__)

_MAX_EPOCH = 32767
E = ErrorCode


class TransactionCoordinator:
    def __init__(self, config: BrokerConfig, logs: LogManager, replicas: ReplicaManager,
                 offsets: OffsetStore, *, wall: Callable[[], float] = time.time) -> None:
        self.logs = logs
        self.replicas = replicas
        self.offsets = offsets
        self.wall = wall
        self.store = TransactionStateStore(logs, replicas, int(config["transaction.state.log.num.partitions"]))
        self.max_timeout_ms = int(config["transaction.max.timeout.ms"])
        self.offsets_partitions = int(config["offsets.topic.num.partitions"])
        self.tick_ms = int(config["transaction.abort.timed.out.transaction.cleanup.interval.ms"])
        self.loaded = False
        # Cluster mode: writes the markers wherever the partitions are led (cluster/txn_markers.py).
        self.send_markers: Callable[[int, int, bool, Iterable[tuple[str, int]], int], Awaitable[None]] | None = None
        # Cluster mode: AddPartitionsToTxn to the coordinator on another broker (cluster/txn_add.py).
        self.remote_add: Callable[[str, int, int, list[tuple[str, int]], bool],
                                  Awaitable[dict[tuple[str, int], ErrorCode]]] | None = None

    @property
    def transactions(self) -> dict[str, TxnMetadata]:
        return self.store.transactions

    def _now_ms(self) -> int:
        return int(self.wall() * 1000)

    # ---- lifecycle -----------------------------------------------------------------------

    def ensure_topic(self) -> None:
        try:
            self.store.ensure_topic()
        except KafkaProtocolError as exc:
            log.warning("cannot create %s: %s", TRANSACTION_TOPIC, exc)

    async def load(self) -> None:
        """Replay `__transaction_state`, then finish the transactions a crash left prepared (their
        outcome was decided and persisted: the markers are written again)."""
        await self.store.load()
        self.loaded = True
        for meta in list(self.transactions.values()):
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                async with meta.lock:
                    try:
                        await self._complete(meta, meta.state == TxnState.PREPARE_COMMIT)
                    except KafkaProtocolError as exc:
                        log.warning("cannot complete transaction %s yet: %s", meta.transactional_id, exc)

    async def tick(self) -> None:
        """Abort every transaction open for longer than its timeout (with an epoch bump, so the
        producer that left it is fenced)."""
        now = self._now_ms()
        for meta in list(self.transactions.values()):
            if meta.lock.locked():
                continue
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                async with meta.lock:  # decided, but its markers failed to become durable: again
                    if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                        try:
                            await self._complete(meta, meta.state == TxnState.PREPARE_COMMIT)
                        except KafkaProtocolError as exc:
                            log.warning("transaction %s not completed yet: %s", meta.transactional_id, exc)
                continue
            if meta.state != TxnState.ONGOING:
                continue
            if now - meta.start_ms <= meta.timeout_ms:
                continue
            async with meta.lock:
                if meta.state != TxnState.ONGOING:
                    continue
                log.info("aborting transaction %s (producer %d epoch %d): open longer than %d ms",
                         meta.transactional_id, meta.producer_id, meta.producer_epoch, meta.timeout_ms)
                try:
                    await self._abort_with_bump(meta)
                except KafkaProtocolError as exc:
                    log.warning("timed-out transaction %s not aborted yet: %s", meta.transactional_id, exc)

    # ---- state changes -------------------------------------------------------------------

    async def _persist(self, meta: TxnMetadata, **changes: object) -> None:
        """Write the metadata with `changes` applied; apply them in memory once durable."""
        new = TxnMetadata(meta.transactional_id, meta.producer_id, meta.producer_epoch, meta.timeout_ms, meta.state,
                          set(meta.partitions), self._now_ms(), meta.start_ms)
        for name, value in changes.items():
            setattr(new, name, value)
        await self.store.write(new)
        for name in ("producer_id", "producer_epoch", "timeout_ms", "state", "partitions", "last_update_ms",
                     "start_ms"):
            setattr(meta, name, getattr(new, name))

    async def _complete(self, meta: TxnMetadata, commit: bool) -> None:
        """Markers to every partition of the prepared transaction, then Complete(Commit|Abort)."""
        await self._write_markers(meta, commit)
        await self._persist(meta, state=TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT,
                            partitions=set())

    async def _abort_with_bump(self, meta: TxnMetadata) -> None:
        """Abort the ongoing transaction at a new epoch: markers at that epoch fence the old producer
        in every partition it wrote to."""
        await self._persist(meta, producer_epoch=meta.producer_epoch + 1, state=TxnState.PREPARE_ABORT)
        await self._complete(meta, commit=False)

    def coordinator_epoch(self, transactional_id: str) -> int:
        """The epoch markers carry (Kafka: of the coordinator's `__transaction_state` partition)."""
        return 0

    def availability(self, transactional_id: str) -> ErrorCode:
        """Whether this coordinator answers for the id now: NONE, or the error that sends the client
        to look for the coordinator again (or wait for it)."""
        return E.NONE if self.loaded else E.COORDINATOR_NOT_AVAILABLE

    async def _write_markers(self, meta: TxnMetadata, commit: bool) -> None:
        if self.send_markers is not None:
            await self.send_markers(meta.producer_id, meta.producer_epoch, commit, sorted(meta.partitions),
                                    self.coordinator_epoch(meta.transactional_id))
            return
        waits = []
        offsets_partitions = []
        for topic, partition in sorted(meta.partitions):
            try:
                plog = self.logs.get_partition(topic, partition)
            except KafkaProtocolError:
                continue  # deleted meanwhile: nothing left to mark
            appended = self.replicas.append_marker(plog, meta.producer_id, meta.producer_epoch, commit)
            waits.append(appended.durable())
            if topic == OFFSETS_TOPIC:
                offsets_partitions.append(partition)
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, KafkaProtocolError):
                raise outcome
            if isinstance(outcome, BaseException):
                raise KafkaProtocolError(E.COORDINATOR_NOT_AVAILABLE, f"marker not durable: {outcome!r}")
        for partition in offsets_partitions:
            self.offsets.complete_txn(meta.producer_id, commit, partition)

    # ---- requests --------------------------------------------------------------------------

    async def init_producer_id(self, transactional_id: str, timeout_ms: int, producer_id: int,
                               producer_epoch: int) -> tuple[ErrorCode, int, int]:
        """(error, producer id, epoch) for a transactional producer starting (or restarting)."""
        if not transactional_id:
            return E.INVALID_REQUEST, -1, -1
        if timeout_ms <= 0 or timeout_ms > self.max_timeout_ms:
            return E.INVALID_TRANSACTION_TIMEOUT, -1, -1
        meta = self.transactions.get(transactional_id)
        if meta is None:
            pid = await self.logs.allocate_producer_id()
            meta = self.transactions.setdefault(transactional_id,
                                                TxnMetadata(transactional_id, pid, -1, timeout_ms))
        async with meta.lock:
            if producer_id >= 0:
                # KIP-360: a producer that knows its id and epoch asks for a bump; only the current
                # one (or the one fenced by a timeout abort) may.
                if producer_id != meta.producer_id:
                    return E.PRODUCER_FENCED, -1, -1
                if producer_epoch != meta.producer_epoch and not (
                        producer_epoch == meta.producer_epoch - 1 and meta.state == TxnState.COMPLETE_ABORT):
                    return E.PRODUCER_FENCED, -1, -1
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                await self._complete(meta, meta.state == TxnState.PREPARE_COMMIT)
            if meta.state == TxnState.ONGOING:
                # The previous producer's transaction is aborted at a bumped epoch that fences it;
                # the new producer continues at that epoch.
                await self._abort_with_bump(meta)
                await self._persist(meta, state=TxnState.EMPTY, timeout_ms=timeout_ms, start_ms=-1)
                return E.NONE, meta.producer_id, meta.producer_epoch
            pid, epoch = meta.producer_id, meta.producer_epoch + 1
            if epoch >= _MAX_EPOCH:  # epochs exhausted: a new producer id, epoch 0
                pid, epoch = await self.logs.allocate_producer_id(), 0
            await self._persist(meta, producer_id=pid, producer_epoch=epoch, state=TxnState.EMPTY,
                                timeout_ms=timeout_ms, partitions=set(), start_ms=-1)
            return E.NONE, pid, epoch

    def _check(self, transactional_id: str, producer_id: int, producer_epoch: int
               ) -> tuple[ErrorCode, TxnMetadata | None]:
        meta = self.transactions.get(transactional_id)
        if meta is None or meta.producer_epoch < 0:
            return E.INVALID_PRODUCER_ID_MAPPING, None
        if meta.producer_id != producer_id:
            return E.INVALID_PRODUCER_ID_MAPPING, None
        if meta.producer_epoch != producer_epoch:
            return E.PRODUCER_FENCED, None
        return E.NONE, meta

    async def add_partitions(self, transactional_id: str, producer_id: int, producer_epoch: int,
                             partitions: list[tuple[str, int]], verify_only: bool = False) -> ErrorCode:
        """AddPartitionsToTxn (the caller has checked authorization and that the partitions exist)."""
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return error
        async with meta.lock:
            error, _ = self._check(transactional_id, producer_id, producer_epoch)
            if error != E.NONE:
                return error
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                return E.CONCURRENT_TRANSACTIONS
            if verify_only:
                ok = meta.state == TxnState.ONGOING and set(partitions) <= meta.partitions
                return E.NONE if ok else E.INVALID_TXN_STATE
            new = set(partitions) - meta.partitions
            if not new and meta.state == TxnState.ONGOING:
                return E.NONE
            start = meta.start_ms if meta.state == TxnState.ONGOING else self._now_ms()
            partitions_now = (meta.partitions if meta.state == TxnState.ONGOING else set()) | set(partitions)
            await self._persist(meta, state=TxnState.ONGOING, partitions=partitions_now, start_ms=start)
            return E.NONE

    async def add_offsets(self, transactional_id: str, producer_id: int, producer_epoch: int,
                          group_id: str) -> ErrorCode:
        """AddOffsetsToTxn: the group's offsets partition joins the transaction."""
        self.offsets.ensure_topic()
        partition = partition_for(group_id, self.offsets.num_partitions)
        return await self.add_partitions(transactional_id, producer_id, producer_epoch, [(OFFSETS_TOPIC, partition)])

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                      commit: bool) -> ErrorCode:
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return error
        async with meta.lock:
            error, _ = self._check(transactional_id, producer_id, producer_epoch)
            if error != E.NONE:
                return error
            if meta.state == TxnState.ONGOING:
                await self._persist(meta, state=TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT)
                await self._complete(meta, commit)
                return E.NONE
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                if (meta.state == TxnState.PREPARE_COMMIT) != commit:
                    return E.INVALID_TXN_STATE
                await self._complete(meta, commit)  # a retry after markers failed to become durable
                return E.NONE
            if meta.state == (TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT):
                return E.NONE  # a retry of the EndTxn that completed it
            if meta.state == TxnState.EMPTY or not commit:
                # Nothing was added (or every AddPartitionsToTxn was refused, after which librdkafka
                # still sends an abort): there is nothing to end.
                return E.NONE
            return E.INVALID_TXN_STATE  # commit after the transaction was aborted

    async def add_anywhere(self, transactional_id: str, producer_id: int, producer_epoch: int,
                           partitions: list[tuple[str, int]], verify_only: bool) -> dict[tuple[str, int], ErrorCode]:
        """Add the partitions to the producer's transaction (or verify they are in it) wherever the
        id is coordinated: here, or through `remote_add` at the broker that coordinates it (cluster
        mode). One error per partition; COORDINATOR_NOT_AVAILABLE (or NOT_COORDINATOR, loading) when
        the coordinator cannot answer now."""
        available = self.availability(transactional_id)
        if available == E.NONE:
            error = await self.add_partitions(transactional_id, producer_id, producer_epoch, partitions, verify_only)
            return {tp: error for tp in partitions}
        if self.remote_add is not None and available == E.NOT_COORDINATOR:
            return await self.remote_add(transactional_id, producer_id, producer_epoch, partitions, verify_only)
        return {tp: available for tp in partitions}

    def verify_produce(self, transactional_id: str, producer_id: int, producer_epoch: int, topic: str,
                       partition: int) -> ErrorCode:
        """A transactional batch may go to a partition only if the producer's current transaction
        added it (KIP-890's verification, as Kafka 3.6+ does)."""
        meta = self.transactions.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return E.INVALID_PRODUCER_ID_MAPPING
        if producer_epoch < meta.producer_epoch:
            return E.INVALID_PRODUCER_EPOCH
        if meta.state != TxnState.ONGOING or producer_epoch != meta.producer_epoch \
                or (topic, partition) not in meta.partitions:
            return E.INVALID_TXN_STATE
        return E.NONE

    def verify_offsets(self, transactional_id: str, producer_id: int, producer_epoch: int,
                       group_id: str) -> ErrorCode:
        """TxnOffsetCommit: the producer's current transaction must have added the group's offsets."""
        error, meta = self._check(transactional_id, producer_id, producer_epoch)
        if meta is None:
            return error
        partition = partition_for(group_id, self.offsets.num_partitions)
        if meta.state != TxnState.ONGOING or (OFFSETS_TOPIC, partition) not in meta.partitions:
            return E.INVALID_TXN_STATE
        return E.NONE

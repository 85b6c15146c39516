"""EndTxn v5: transaction version 2's end of a transaction (KIP-890 part 2).

From EndTxn v5 on, every transaction ends with an epoch bump: the coordinator prepares the
commit or abort at the producer's epoch + 1, writes the markers at that epoch (so a produce of the
finished transaction that arrives late carries an older epoch and is refused by the partition,
instead of opening a "hanging" transaction), completes it, and returns the new producer id and
epoch in the response; the producer's next transaction runs at that epoch (its sequences start
again at 0). When the epoch would reach its maximum the transaction ends at the last epoch and a
new producer id, at epoch 0, is returned instead.

A retried EndTxn v5 (the response was lost, the client sends the old epoch again) answers NONE
with the new producer id and epoch, as long as this broker has not restarted since: the last
bump of each transactional id is kept in memory only (Kafka keeps it in `__transaction_state`'s
v1 value). An abort with nothing in the transaction bumps the epoch as well; a commit with nothing
in it is INVALID_TXN_STATE, as Kafka's transaction version 2.

The broker finalizes the `transaction.version` feature at level 2 (KIP-584: ApiVersions v3+
carries it, `FEATURES` below), as a new Kafka 4.x cluster does, so Kafka's Java client 4.x runs
version 2: EndTxn v5, and neither AddPartitionsToTxn nor AddOffsetsToTxn; the broker adds the
partitions itself when the transactional Produce v12+ or TxnOffsetCommit v5 arrives
(protocol/txn_implicit.py). Clients that do not read the features (librdkafka, kafka-python) keep
version 1, which stays supported beside it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ErrorCode
from .txn_log import TxnState

if TYPE_CHECKING:
    from .transactions import TransactionCoordinator

E = ErrorCode
_MAX_EPOCH = 32767

TRANSACTION_VERSION = "transaction.version"
# (name, supported min, supported max, finalized level) as ApiVersions advertises them; Kafka 4.x
# supports transaction.version 0-2 and a cluster formatted by 4.x finalizes 2.
FEATURES: list[tuple[str, int, int, int]] = [(TRANSACTION_VERSION, 0, 2, 2)]
# The epoch of the finalized features (Kafka: the metadata offset they were last changed at). It
# only has to be the same on every broker and not to go down: these levels never change at run time.
FEATURES_EPOCH = 1


@dataclass(frozen=True)
class _Bump:
    """One EndTxn v5 that completed: what it was sent with and what it returned."""

    producer_id: int
    producer_epoch: int
    commit: bool
    new_producer_id: int
    new_producer_epoch: int


class EndTxnV2:
    """EndTxn v5 over the coordinator's state and its persist/complete steps."""

    def __init__(self, coordinator: TransactionCoordinator) -> None:
        self.coordinator = coordinator
        self.last: dict[str, _Bump] = {}

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                      commit: bool) -> tuple[ErrorCode, int, int]:
        """(error, producer id, producer epoch) for EndTxn v5."""
        coord = self.coordinator
        meta = coord.transactions.get(transactional_id)
        if meta is None or meta.producer_epoch < 0:
            return E.INVALID_PRODUCER_ID_MAPPING, -1, -1
        async with meta.lock:
            done = self.last.get(transactional_id)
            if done is not None and (done.producer_id, done.producer_epoch, done.commit) == (
                    producer_id, producer_epoch, commit) and (meta.producer_id, meta.producer_epoch) == (
                    done.new_producer_id, done.new_producer_epoch):
                # A retry of the EndTxn that bumped: done, or its markers are still being written.
                if meta.state in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT):
                    return E.NONE, meta.producer_id, meta.producer_epoch
                if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                    return E.CONCURRENT_TRANSACTIONS, -1, -1
            if meta.producer_id != producer_id:
                return E.INVALID_PRODUCER_ID_MAPPING, -1, -1
            if meta.producer_epoch != producer_epoch:
                return E.PRODUCER_FENCED, -1, -1
            if meta.state in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                return E.CONCURRENT_TRANSACTIONS, -1, -1  # its markers are being written again (tick)
            if meta.state != TxnState.ONGOING and commit:
                return E.INVALID_TXN_STATE, -1, -1  # nothing to commit
            bumped = producer_epoch + 1
            if meta.state == TxnState.ONGOING:
                await coord._persist(meta, producer_epoch=bumped,
                                     state=TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT)
                self.last[transactional_id] = _Bump(producer_id, producer_epoch, commit, producer_id, bumped)
                await coord._complete(meta, commit)
            else:  # an abort of an empty transaction still bumps
                await coord._persist(meta, producer_epoch=bumped, state=TxnState.COMPLETE_ABORT, partitions=set())
            if meta.producer_epoch >= _MAX_EPOCH - 1:  # epochs exhausted: a new producer id, epoch 0
                await coord._persist(meta, producer_id=await coord.logs.allocate_producer_id(), producer_epoch=0)
            self.last[transactional_id] = _Bump(producer_id, producer_epoch, commit, meta.producer_id,
                                                meta.producer_epoch)
            if len(self.last) > 2 * len(coord.transactions) + 100:  # ids expired meanwhile (txn_expiry.py)
                self.last = {t: b for t, b in self.last.items() if t in coord.transactions}
            return E.NONE, meta.producer_id, meta.producer_epoch


_BY_COORDINATOR: weakref.WeakKeyDictionary[TransactionCoordinator, EndTxnV2] = weakref.WeakKeyDictionary()


def end_txn_v2_for(coordinator: TransactionCoordinator) -> EndTxnV2:
    """The coordinator's EndTxn v5 state (made on first use)."""
    found = _BY_COORDINATOR.get(coordinator)
    if found is None:
        found = _BY_COORDINATOR[coordinator] = EndTxnV2(coordinator)
    return found

"""Transactional produce and offsets: the partition joins the transaction at the coordinator (KIP-890).

Transaction version 2 (groups/txn_v2.py): a client that sees `transaction.version` 2 finalized sends
no AddPartitionsToTxn for the partitions it produces to and no AddOffsetsToTxn. The broker does it:

- a transactional Produce v12+ whose batch goes to a partition not yet in the producer's current
  transaction adds it there first (the first batch of a transaction starts it), then appends;
- a TxnOffsetCommit v5 adds the group's `__consumer_offsets` partition the same way.

Older versions (transaction version 1) only verify: the partition must be in the transaction
already (KIP-890 part 1), else TRANSACTION_ABORTABLE (Produce v11, TxnOffsetCommit v4) or
INVALID_TXN_STATE (older versions), as Kafka answers.

The coordinator may be this broker (the coordinator's state answers) or, in cluster mode, another
one (AddPartitionsToTxn v5 through cluster/txn_add.py). There, a producer with an open transaction
in the partition at the batch's epoch needs no round trip: only its first batch there was checked
(as Kafka's verification guard). While a produce waits for the coordinator, the requests pipelined
behind it on the same connection wait too, so batches are still appended in the order they came
(`Connection.produce_gate`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.offsets import OFFSETS_TOPIC, partition_for
from ..log.batch import ATTR_TRANSACTIONAL, HEADER_SIZE, parse_header
from ..security.acl import OP_WRITE
from .context import RequestContext

E = ErrorCode
IMPLICIT_ADD_PRODUCE_VERSION = 12  # Produce v12+: the broker adds the partition (transaction version 2)
IMPLICIT_ADD_OFFSETS_VERSION = 5  # TxnOffsetCommit v5+
# The coordinator cannot answer now: a produce answers NOT_ENOUGH_REPLICAS (retriable), as Kafka does.
_UNAVAILABLE = {E.NOT_COORDINATOR, E.COORDINATOR_NOT_AVAILABLE, E.COORDINATOR_LOAD_IN_PROGRESS}


# From Produce v11 and TxnOffsetCommit v4 on, a batch or commit whose partition is not in the
# transaction is TRANSACTION_ABORTABLE (the client aborts and goes on), INVALID_TXN_STATE before.
ABORTABLE_PRODUCE_VERSION = 11
ABORTABLE_OFFSETS_VERSION = 4


def produce_error(error: ErrorCode, api_version: int) -> ErrorCode:
    """The coordinator's (or the verification's) answer as the Produce error of this version, as
    Kafka's AddPartitionsToTxnManager maps it."""
    if error in _UNAVAILABLE:
        return E.NOT_ENOUGH_REPLICAS
    if error == E.PRODUCER_FENCED:
        return E.INVALID_PRODUCER_EPOCH
    if error == E.CONCURRENT_TRANSACTIONS and api_version < IMPLICIT_ADD_PRODUCE_VERSION:
        return E.NOT_ENOUGH_REPLICAS
    if error == E.INVALID_TXN_STATE and api_version >= ABORTABLE_PRODUCE_VERSION:
        return E.TRANSACTION_ABORTABLE
    return error


def _needed(ctx: RequestContext, request: Any) -> dict[tuple[int, int], list[tuple[str, int]]]:
    """(producer id, epoch) -> the partitions of this request whose transactional batch needs the
    coordinator (an add, or a verification) before it is appended."""
    services = ctx.services
    txns = services.transactions
    txn_id = request.transactional_id
    assert txns is not None
    local = txns.availability(txn_id) == E.NONE
    if local and ctx.api_version < IMPLICIT_ADD_PRODUCE_VERSION:
        return {}  # version 1, coordinated here: the append's own check verifies
    if not local and txns.remote_add is None:
        return {}  # single broker still loading: the append's own check answers
    out: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for topic_data in request.topic_data:
        try:
            topic = services.replicas.topic(ctx, topic_data.name, OP_WRITE)
        except KafkaProtocolError:
            continue  # refused when appended
        for pdata in topic_data.partition_data:
            records = pdata.records
            if records is None or len(records) < HEADER_SIZE or not records[22] & ATTR_TRANSACTIONAL:
                continue
            try:
                plog = services.replicas.partition_of(topic, pdata.index)
            except KafkaProtocolError:
                continue
            header = parse_header(records)
            pid, epoch = header.producer_id, header.producer_epoch
            if local:
                if txns.verify_produce(txn_id, pid, epoch, topic_data.name, pdata.index) != E.INVALID_TXN_STATE:
                    continue  # in the transaction, or refused for another reason when appended
            elif pid in plog.producers.ongoing and plog.producers.epoch_of(pid) == epoch:
                continue  # its transaction is open here: verified with its first batch
            out.setdefault((pid, epoch), []).append((topic_data.name, pdata.index))
    return out


async def prepare_produce(ctx: RequestContext, request: Any) -> dict[tuple[str, int], ErrorCode]:
    """Before a transactional produce is appended: add (v12+) or verify the partitions at the
    coordinator where needed. The refusals, per partition (the others go on to the append).

    Returns without suspending when nothing is needed and nothing waits ahead on the connection,
    so the append still happens before the handler's first real await."""
    conn = ctx.conn
    ahead = conn.produce_gate if conn is not None else None
    if ahead is not None and ahead.done():
        ahead = None
    if ahead is None:
        needed = _needed(ctx, request)
        if not needed:
            return {}
    loop = asyncio.get_running_loop()
    mine: asyncio.Future[None] = loop.create_future()
    if conn is not None:
        conn.produce_gate = mine
    try:
        if ahead is not None:
            await asyncio.shield(ahead)  # the request before this one appends first
            needed = _needed(ctx, request)
        txns = ctx.services.transactions
        assert txns is not None
        verify_only = ctx.api_version < IMPLICIT_ADD_PRODUCE_VERSION
        refused: dict[tuple[str, int], ErrorCode] = {}
        for (pid, epoch), partitions in needed.items():
            try:
                found = await txns.add_anywhere(request.transactional_id, pid, epoch, partitions, verify_only)
            except KafkaProtocolError as exc:  # not durable: the client retries
                found = {tp: exc.code for tp in partitions}
            for tp, error in found.items():
                if error != E.NONE:
                    refused[tp] = produce_error(error, ctx.api_version)
        return refused
    finally:
        # Released once this request's appends are done: they run, without awaiting, right after
        # this returns; the callback runs at the handler's next suspension (or its end).
        loop.call_soon(_release, mine)


def _release(gate: asyncio.Future[None]) -> None:
    if not gate.done():
        gate.set_result(None)


async def add_offsets_partition(ctx: RequestContext, transactional_id: str, producer_id: int, producer_epoch: int,
                                group_id: str) -> ErrorCode:
    """TxnOffsetCommit: the group's offsets partition must be in the producer's transaction. v5+
    adds it (transaction version 2); older versions verify it (KIP-890 part 1), wherever the
    transaction is coordinated. A coordinator that cannot answer now is COORDINATOR_LOAD_IN_PROGRESS
    (the client retries the commit); the error is that of the request's version (offsets_error)."""
    txns = ctx.services.transactions
    assert txns is not None
    tp = (OFFSETS_TOPIC, partition_for(group_id, txns.offsets.num_partitions))
    verify_only = ctx.api_version < IMPLICIT_ADD_OFFSETS_VERSION
    if verify_only and txns.availability(transactional_id) == E.NONE:
        return offsets_error(txns.verify_offsets(transactional_id, producer_id, producer_epoch, group_id),
                             ctx.api_version)
    try:
        found = await txns.add_anywhere(transactional_id, producer_id, producer_epoch, [tp], verify_only)
    except KafkaProtocolError as exc:
        found = {tp: exc.code}
    error = found.get(tp, E.COORDINATOR_NOT_AVAILABLE)
    return E.COORDINATOR_LOAD_IN_PROGRESS if error in _UNAVAILABLE else offsets_error(error, ctx.api_version)


def offsets_error(error: ErrorCode, api_version: int) -> ErrorCode:
    """A TxnOffsetCommit's verification failure as the error of its version."""
    if error == E.INVALID_TXN_STATE and api_version >= ABORTABLE_OFFSETS_VERSION:
        return E.TRANSACTION_ABORTABLE
    return error

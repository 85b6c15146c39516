"""Transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, and the admin
side, DescribeTransactions and ListTransactions.

The handlers check authorization (WRITE on the transactional id; WRITE on each topic added;
READ on the group and its topics for offsets) and hand the rest to the `TransactionCoordinator`
(groups/transactions.py). InitProducerId with a transactional id is in producer_ids.py. A fencing
error is PRODUCER_FENCED where the API version knows it, INVALID_PRODUCER_EPOCH before.
"""

from __future__ import annotations

import time

from kafka.protocol.admin.transactions import (
    DescribeTransactionsRequest,
    DescribeTransactionsResponse,
    ListTransactionsRequest,
    ListTransactionsResponse,
)
from kafka.protocol.producer.transaction import (
    AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    EndTxnRequest,
    EndTxnResponse,
    TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
)

from ..errors import ErrorCode
from ..groups.group import E as GE
from ..groups.offsets import CommittedOffset
from ..groups.txn_log import TxnState
from ..groups.txn_v2 import end_txn_v2_for
from ..log.manager import is_internal_name
from ..security.acl import (
    CLUSTER_NAME,
    OP_CLUSTER_ACTION,
    OP_DESCRIBE,
    OP_READ,
    OP_WRITE,
    RES_CLUSTER,
    RES_GROUP,
    RES_TOPIC,
    RES_TRANSACTIONAL_ID,
)
from .context import RequestContext
from .registry import api
from .txn_implicit import add_offsets_partition
from .txn_markers import from_broker

E = ErrorCode


def fenced_code(error: ErrorCode, api_version: int, since: int) -> int:
    """PRODUCER_FENCED for versions that know it (KIP-588), INVALID_PRODUCER_EPOCH before."""
    if error == E.PRODUCER_FENCED and api_version < since:
        return int(E.INVALID_PRODUCER_EPOCH)
    return int(error)


def _unavailable(ctx: RequestContext) -> bool:
    return ctx.services.transactions is None or not ctx.services.transactions.loaded


def _availability(ctx: RequestContext, transactional_id: str) -> ErrorCode:
    """NONE if this broker coordinates the id now; else the error that sends the client to look
    the coordinator up again (NOT_COORDINATOR) or wait (loading)."""
    txns = ctx.services.transactions
    return E.COORDINATOR_NOT_AVAILABLE if txns is None else txns.availability(transactional_id)


# ---- AddPartitionsToTxn -------------------------------------------------------------------


async def _add_partitions(ctx: RequestContext, txn_id: str, producer_id: int, producer_epoch: int,
                          topics: list[tuple[str, list[int]]], verify_only: bool) -> dict[tuple[str, int], int]:
    """One error code per partition, as Kafka: if any partition is refused (authorization,
    unknown), the others are OPERATION_NOT_ATTEMPTED."""
    wanted = [(name, p) for name, parts in topics for p in parts]
    if _unavailable(ctx):
        return {tp: int(E.COORDINATOR_NOT_AVAILABLE) for tp in wanted}
    if not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID, txn_id):
        return {tp: int(E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED) for tp in wanted}
    refused: dict[tuple[str, int], int] = {}
    logs = ctx.services.logs
    for topic, partition in wanted:
        if not ctx.authorize(OP_WRITE, RES_TOPIC, topic) or is_internal_name(topic):
            refused[(topic, partition)] = int(E.TOPIC_AUTHORIZATION_FAILED)
            continue
        found = logs.topics.get(topic)
        if found is None or not 0 <= partition < len(found.partitions):
            refused[(topic, partition)] = int(E.UNKNOWN_TOPIC_OR_PARTITION)
    if refused:
        return {tp: refused.get(tp, int(E.OPERATION_NOT_ATTEMPTED)) for tp in wanted}
    assert ctx.services.transactions is not None
    error = await ctx.services.transactions.add_partitions(txn_id, producer_id, producer_epoch, wanted, verify_only)
    return {tp: fenced_code(error, ctx.api_version, 2) for tp in wanted}


@api(AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, 0, 5)
async def handle_add_partitions_to_txn(ctx: RequestContext,
                                       request: AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse:
    v = ctx.api_version
    R = AddPartitionsToTxnResponse
    if v <= 3:
        topics = [(t.name, list(t.partitions)) for t in request.v3_and_below_topics]
        results = await _add_partitions(ctx, request.v3_and_below_transactional_id, request.v3_and_below_producer_id,
                                        request.v3_and_below_producer_epoch, topics, False)
        TR = R.AddPartitionsToTxnTopicResult
        return R(version=v, throttle_time_ms=0, results_by_topic_v3_and_below=[
            TR(name=name, results_by_partition=[
                TR.AddPartitionsToTxnPartitionResult(partition_index=p, partition_error_code=results[(name, p)])
                for p in parts])
            for name, parts in topics])
    # v4+: batched, sent by brokers (KIP-890): a partition leader or group coordinator adds the
    # partitions a transactional produce or offset commit goes to (or verifies them). Kafka asks for
    # CLUSTER_ACTION; the brokers of a Strata cluster prove who they are with their client id.
    RT = R.AddPartitionsToTxnResult
    TR2 = RT.AddPartitionsToTxnTopicResult
    if not (from_broker(ctx) or ctx.authorize(OP_CLUSTER_ACTION, RES_CLUSTER, CLUSTER_NAME)):
        return R(version=v, throttle_time_ms=0, error_code=int(E.CLUSTER_AUTHORIZATION_FAILED),
                 results_by_transaction=[])
    out = []
    for txn in request.transactions:
        topics = [(t.name, list(t.partitions)) for t in txn.topics]
        results = await _add_partitions_for_broker(ctx, txn.transactional_id, txn.producer_id, txn.producer_epoch,
                                                   topics, bool(txn.verify_only))
        out.append(RT(transactional_id=txn.transactional_id, topic_results=[
            TR2(name=name, results_by_partition=[
                TR2.AddPartitionsToTxnPartitionResult(partition_index=p, partition_error_code=results[(name, p)])
                for p in parts])
            for name, parts in topics]))
    return R(version=v, throttle_time_ms=0, error_code=0, results_by_transaction=out)


async def _add_partitions_for_broker(ctx: RequestContext, txn_id: str, producer_id: int, producer_epoch: int,
                                     topics: list[tuple[str, list[int]]], verify_only: bool
                                     ) -> dict[tuple[str, int], int]:
    """AddPartitionsToTxn v4+: the asking broker checked the client's authorization; the
    partitions must exist (`__consumer_offsets` too: a group coordinator adds a group's)."""
    wanted = [(name, p) for name, parts in topics for p in parts]
    txns = ctx.services.transactions
    if txns is None:
        return {tp: int(E.COORDINATOR_NOT_AVAILABLE) for tp in wanted}
    unavailable = txns.availability(txn_id)
    if unavailable != E.NONE:
        return {tp: int(unavailable) for tp in wanted}
    refused: dict[tuple[str, int], int] = {}
    for topic, partition in wanted:
        found = ctx.services.logs.topics.get(topic)
        if found is None or not 0 <= partition < len(found.partitions):
            refused[(topic, partition)] = int(E.UNKNOWN_TOPIC_OR_PARTITION)
    if refused:
        return {tp: refused.get(tp, int(E.OPERATION_NOT_ATTEMPTED)) for tp in wanted}
    try:
        error = await txns.add_partitions(txn_id, producer_id, producer_epoch, wanted, verify_only)
    except Exception:  # not durable: the asking broker's client retries
        error = E.COORDINATOR_NOT_AVAILABLE
    return {tp: int(error) for tp in wanted}


# ---- AddOffsetsToTxn ----------------------------------------------------------------------


@api(AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, 0, 4)
async def handle_add_offsets_to_txn(ctx: RequestContext, request: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse:
    R = AddOffsetsToTxnResponse
    if _unavailable(ctx):
        error = int(E.COORDINATOR_NOT_AVAILABLE)
    elif not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID, request.transactional_id):
        error = int(E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    elif not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = int(E.GROUP_AUTHORIZATION_FAILED)
    else:
        assert ctx.services.transactions is not None
        found = await ctx.services.transactions.add_offsets(request.transactional_id, request.producer_id,
                                                            request.producer_epoch, request.group_id)
        error = fenced_code(found, ctx.api_version, 2)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=error)


# ---- TxnOffsetCommit ----------------------------------------------------------------------


@api(TxnOffsetCommitRequest, TxnOffsetCommitResponse, 0, 5)
async def handle_txn_offset_commit(ctx: RequestContext, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse:
    v = ctx.api_version
    R = TxnOffsetCommitResponse
    T = R.TxnOffsetCommitResponseTopic
    P = T.TxnOffsetCommitResponsePartition
    now = int(time.time() * 1000)
    offsets: dict[tuple[str, int], CommittedOffset] = {}
    for topic in request.topics:
        for p in topic.partitions:
            epoch = p.committed_leader_epoch if v >= 2 else -1
            offsets[(topic.name, p.partition_index)] = CommittedOffset(p.committed_offset, epoch,
                                                                       p.committed_metadata, now)
    results: dict[tuple[str, int], int] = {}
    error = E.NONE
    txns = ctx.services.transactions
    groups = ctx.services.groups
    if txns is None or not txns.loaded:
        error = E.COORDINATOR_NOT_AVAILABLE
    elif not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID, request.transactional_id):
        error = E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    elif not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = E.GROUP_AUTHORIZATION_FAILED
    elif not ctx.services.leadership.coordinates(request.group_id):
        error = E.NOT_COORDINATOR  # cluster mode: the group's coordinator is another broker
    else:
        for tp in offsets:
            if not ctx.authorize(OP_READ, RES_TOPIC, tp[0]):
                results[tp] = int(E.TOPIC_AUTHORIZATION_FAILED)
        # v5+ (transaction version 2) adds the group's offsets partition to the transaction; older
        # versions verify that AddOffsetsToTxn did (txn_implicit.py), wherever it is coordinated.
        error = await add_offsets_partition(ctx, request.transactional_id, request.producer_id,
                                            request.producer_epoch, request.group_id)
        if error == E.NONE and v >= 3 and request.generation_id >= 0:
            # KIP-447: a member of the group commits for the generation it belongs to.
            member_error = groups.check_txn_member(request.group_id, request.generation_id, request.member_id,
                                                   request.group_instance_id)
            if member_error != GE.NONE:
                error = ErrorCode(member_error)
        if error == E.NONE:
            allowed = {tp: o for tp, o in offsets.items() if tp not in results}
            max_bytes = groups.offsets.max_metadata_bytes
            for tp, o in list(allowed.items()):
                if o.metadata is not None and len(o.metadata.encode("utf-8")) > max_bytes:
                    results[tp] = GE.OFFSET_METADATA_TOO_LARGE
                    del allowed[tp]
            try:
                await groups.offsets.store.write_txn(request.group_id, request.producer_id, request.producer_epoch,
                                                     allowed)
                code = int(E.NONE)
            except Exception:  # not durable: the producer retries
                code = int(E.COORDINATOR_NOT_AVAILABLE)
            results.update({tp: code for tp in allowed})
    if error != E.NONE:
        results = {tp: fenced_code(error, v, 3) for tp in offsets}
    by_topic: dict[str, list[int]] = {}
    for name, p in offsets:
        by_topic.setdefault(name, []).append(p)
    return R(version=v, throttle_time_ms=0, topics=[
        T(name=name, partitions=[P(partition_index=p, error_code=results[(name, p)]) for p in parts])
        for name, parts in by_topic.items()])


# ---- EndTxn -------------------------------------------------------------------------------


@api(EndTxnRequest, EndTxnResponse, 0, 5)
async def handle_end_txn(ctx: RequestContext, request: EndTxnRequest) -> EndTxnResponse:
    """EndTxn; v5 ends the transaction with an epoch bump and returns the new producer id and
    epoch (transaction version 2, groups/txn_v2.py)."""
    pid = epoch = -1
    R = EndTxnResponse
    txns = ctx.services.transactions
    if txns is None or not txns.loaded:
        error = int(E.COORDINATOR_NOT_AVAILABLE)
    elif not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID, request.transactional_id):
        error = int(E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    elif ctx.api_version >= 5 and (unavailable := txns.availability(request.transactional_id)) != E.NONE:
        error = int(unavailable)  # another broker coordinates the id (cluster mode), or it is loading
    elif ctx.api_version >= 5:
        try:
            found, pid, epoch = await end_txn_v2_for(txns).end_txn(request.transactional_id, request.producer_id,
                                                 request.producer_epoch, bool(request.committed))
        except Exception:
            found = E.COORDINATOR_NOT_AVAILABLE  # not durable yet: the client retries, we finish on load
        error = int(found)
    else:
        try:
            found = await txns.end_txn(request.transactional_id, request.producer_id, request.producer_epoch,
                                       bool(request.committed))
        except Exception:
            found = E.COORDINATOR_NOT_AVAILABLE  # markers not durable yet: the client retries, we finish on load
        error = fenced_code(found, ctx.api_version, 2)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=error, producer_id=pid, producer_epoch=epoch)


# ---- DescribeTransactions, ListTransactions ---------------------------------------------------------


@api(DescribeTransactionsRequest, DescribeTransactionsResponse, 0, 0)
async def handle_describe_transactions(ctx: RequestContext,
                                       request: DescribeTransactionsRequest) -> DescribeTransactionsResponse:
    """The coordinator's view of each transactional id (DESCRIBE on it; topics the caller may not
    describe are left out, as Kafka)."""
    R = DescribeTransactionsResponse
    S = R.TransactionState
    txns = ctx.services.transactions
    out = []
    for txn_id in request.transactional_ids:
        state = S(error_code=0, transactional_id=txn_id, transaction_state="", transaction_timeout_ms=0,
                  transaction_start_time_ms=-1, producer_id=-1, producer_epoch=-1, topics=[])
        meta = txns.transactions.get(txn_id) if txns is not None else None
        unavailable = _availability(ctx, txn_id)
        if unavailable != E.NONE:
            state.error_code = int(unavailable)
        elif not ctx.authorize(OP_DESCRIBE, RES_TRANSACTIONAL_ID, txn_id):
            state.error_code = int(E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        elif meta is None or meta.producer_epoch < 0:
            state.error_code = int(E.TRANSACTIONAL_ID_NOT_FOUND)
        else:
            state.transaction_state = meta.state.kafka_name
            state.transaction_timeout_ms = meta.timeout_ms
            state.transaction_start_time_ms = meta.start_ms
            state.producer_id, state.producer_epoch = meta.producer_id, meta.producer_epoch
            by_topic: dict[str, list[int]] = {}
            for topic, partition in sorted(meta.partitions):
                if ctx.authorize(OP_DESCRIBE, RES_TOPIC, topic):
                    by_topic.setdefault(topic, []).append(partition)
            state.topics = [S.TopicData(topic=t, partitions=ps) for t, ps in by_topic.items()]
        out.append(state)
    return R(version=ctx.api_version, throttle_time_ms=0, transaction_states=out)


@api(ListTransactionsRequest, ListTransactionsResponse, 0, 1)
async def handle_list_transactions(ctx: RequestContext,
                                   request: ListTransactionsRequest) -> ListTransactionsResponse:
    """Transactional ids the caller may describe, filtered by state, producer id and (v1) how long
    the transaction has been open."""
    R = ListTransactionsResponse
    txns = ctx.services.transactions
    if txns is None or not txns.loaded:
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(E.COORDINATOR_NOT_AVAILABLE),
                 unknown_state_filters=[], transaction_states=[])
    known = {s.kafka_name for s in TxnState}
    states = set(request.state_filters or [])
    pids = set(request.producer_id_filters or [])
    min_duration = request.duration_filter if ctx.api_version >= 1 else -1
    now = int(time.time() * 1000)
    listed = []
    for txn_id, meta in sorted(txns.transactions.items()):
        if meta.producer_epoch < 0 or not ctx.authorize(OP_DESCRIBE, RES_TRANSACTIONAL_ID, txn_id):
            continue
        if states and meta.state.kafka_name not in states:
            continue
        if pids and meta.producer_id not in pids:
            continue
        if min_duration >= 0 and (meta.state != TxnState.ONGOING or now - meta.start_ms < min_duration):
            continue
        listed.append(R.TransactionState(transactional_id=txn_id, producer_id=meta.producer_id,
                                         transaction_state=meta.state.kafka_name))
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0,
             unknown_state_filters=sorted(states - known), transaction_states=listed)

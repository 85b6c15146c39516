"""Produce: validate batches, assign offsets, and answer per acks (0, 1, or all after fsync)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from kafka.protocol.producer import ProduceRequest, ProduceResponse

from ..errors import ErrorCode, KafkaProtocolError
from ..log.partition import AppendResult, OffsetInRemoteStorage, PartitionLog
from ..log.segment import Segment
from ..schemas import gate as schema_gate
from ..security.acl import OP_WRITE, RES_TOPIC
from .context import RequestContext
from .registry import api

if TYPE_CHECKING:
    from ..tier.manager import TierManager

log = logging.getLogger(__name__)

_TopicResponse = ProduceResponse.TopicProduceResponse
_PartitionResponse = _TopicResponse.PartitionProduceResponse


# v0-2 (magic 0/1 message sets) are advertised but their batches are refused, as Kafka 4 does
# (KIP-896): librdkafka only enables gzip/snappy/lz4 when the advertised range includes v0.
def _commit_to_s3(tier: TierManager, topic: str, plog: PartitionLog, result: AppendResult) -> Awaitable[None]:
    log_ = tier.commit_log
    if not result.duplicate:
        return log_.commit(topic, plog.partition, result.base_offset, result.last_offset, result.data,
                           plog.leader_epoch)
    if log_.durable_offset((topic, plog.partition)) >= result.last_offset:
        return log_.wait_durable(topic, plog.partition, result.last_offset)
    try:
        stored = plog.read(result.base_offset, 1)  # exactly the batch the producer retried
    except OffsetInRemoteStorage:
        return log_.wait_durable(topic, plog.partition, result.last_offset)  # uploaded: durable already
    return log_.commit(topic, plog.partition, result.base_offset, result.last_offset, stored, plog.leader_epoch)


@api(ProduceRequest, ProduceResponse, 0, 11)
async def handle_produce(ctx: RequestContext, request: ProduceRequest) -> ProduceResponse | None:
    logs = ctx.broker.logs
    acks = request.acks
    request_error: KafkaProtocolError | None = None
    if acks not in (0, 1, -1):
        request_error = KafkaProtocolError(ErrorCode.INVALID_REQUIRED_ACKS, f"acks={acks}")
    elif request.transactional_id is not None:
        request_error = KafkaProtocolError(ErrorCode.INVALID_REQUEST, "transactions are not supported")

    # Appends happen here, before the first await, so requests pipelined on one connection
    # are applied in the order they arrived.
    results: list[tuple[str, list[_PartitionResponse]]] = []
    to_sync: set[Segment] = set()
    to_s3: list[tuple[_PartitionResponse, Any]] = []
    tier = ctx.broker.tier
    cluster = ctx.broker.cluster
    # Cluster mode: (response, topic, partition, epoch) of writes acknowledged only after a wait,
    # which must still be led by this broker when the wait ends.
    held: list[tuple[_PartitionResponse, str, int, int]] = []
    for topic_data in request.topic_data:
        partitions = []
        for pdata in topic_data.partition_data:
            response = _PartitionResponse(index=pdata.index, error_code=0, base_offset=-1, log_append_time_ms=-1,
                                          log_start_offset=-1)
            try:
                if request_error is not None:
                    raise request_error
                if not ctx.authorize(OP_WRITE, RES_TOPIC, topic_data.name):
                    raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not write")
                internal_ok = schema_gate(ctx, topic_data.name, pdata.records)  # _schemas writer; checked topics
                plog = logs.get_partition(topic_data.name, pdata.index)
                if logs.topics[topic_data.name].internal and not internal_ok:
                    raise KafkaProtocolError(ErrorCode.INVALID_TOPIC_EXCEPTION,
                                             f"{topic_data.name} is internal: only the broker writes it")
                if pdata.records is None:
                    raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "null records")
                if cluster is not None:
                    cluster.check_leader(topic_data.name, pdata.index)
                    if acks == -1:
                        held.append((response, topic_data.name, pdata.index, plog.leader_epoch))
                result = plog.append(pdata.records)
                if not result.duplicate:
                    ctx.broker.meter.produced(ctx.principal, ctx.client_id, topic_data.name, len(pdata.records),
                                              result.last_offset - result.base_offset + 1)
                response.base_offset = result.base_offset
                response.log_start_offset = plog.log_start_offset
                if acks == -1 and tier is not None and plog.remote is not None and plog.config.durability == "s3":
                    # strata.durability=s3: answered once the batch is in S3; a retried duplicate
                    # waits too, and re-sends the stored batch in case its first commit failed.
                    to_s3.append((response, _commit_to_s3(tier, topic_data.name, plog, result)))
                elif result.segment is not None and acks == -1:
                    to_sync.add(result.segment)
            except KafkaProtocolError as exc:
                response.error_code = int(exc.code)
                if ctx.api_version >= 8:
                    response.error_message = exc.message
                log.debug("produce to %s-%d refused: %s", topic_data.name, pdata.index, exc.message)
            partitions.append(response)
        results.append((topic_data.name, partitions))

    if to_sync:
        try:
            await asyncio.gather(*(logs.group_commit.sync(segment) for segment in to_sync))
        except KafkaProtocolError as exc:
            for _, partitions in results:
                for response in partitions:
                    if response.error_code == 0:
                        response.error_code = int(exc.code)
    if to_s3:
        outcomes = await asyncio.gather(*(commit for _, commit in to_s3), return_exceptions=True)
        for (response, _), outcome in zip(to_s3, outcomes, strict=True):
            if isinstance(outcome, KafkaProtocolError):
                response.error_code = int(outcome.code)
            elif isinstance(outcome, BaseException):
                log.error("S3 commit failed: %r", outcome)
                response.error_code = int(ErrorCode.KAFKA_STORAGE_ERROR)
    for response, topic, partition, epoch in held:
        if response.error_code == 0 and cluster is not None and not cluster.may_ack(topic, partition, epoch):
            response.error_code = int(ErrorCode.NOT_LEADER_OR_FOLLOWER)
    if acks == 0:
        return None
    return ProduceResponse(
        version=ctx.api_version,
        responses=[_TopicResponse(name=name, partition_responses=partitions) for name, partitions in results],
        throttle_time_ms=0,
    )

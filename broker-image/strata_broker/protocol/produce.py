"""Produce: validate batches, assign offsets, and answer per acks (0, 1, or all after fsync)."""

from __future__ import annotations

import logging
import time

from kafka.protocol.producer import ProduceRequest, ProduceResponse

from ..errors import ErrorCode, KafkaProtocolError
from ..log.batch import ATTR_TRANSACTIONAL, HEADER_SIZE, parse_header
from ..log.manager import Topic
from ..log.produce_checks import apply_topic_policies
from ..replica.manager import Appended
from ..schemas import gate as schema_gate
from ..security.acl import OP_WRITE, RES_TRANSACTIONAL_ID
from .context import RequestContext
from .registry import api
from .txn_implicit import prepare_produce, produce_error

log = logging.getLogger(__name__)

_TopicResponse = ProduceResponse.TopicProduceResponse
_PartitionResponse = _TopicResponse.PartitionProduceResponse


def verify_transactional(ctx: RequestContext, txn_id: str, producer_id: int, producer_epoch: int, topic: str,
                         partition: int) -> ErrorCode:
    """A transactional batch goes to a partition its transaction added (KIP-890 verification),
    checked against the coordinator's state when this broker coordinates the transactional id. In
    a cluster where another broker does, prepare_produce (txn_implicit.py) asked it before the
    append; the partition's producer state still refuses an epoch older than the one the last
    marker carried."""
    txns = ctx.services.transactions
    assert txns is not None
    if txns.availability(txn_id) != ErrorCode.NONE and ctx.services.inter_broker is not None:
        return ErrorCode.NONE
    return txns.verify_produce(txn_id, producer_id, producer_epoch, topic, partition)


# v0-2 (magic 0/1 message sets) are advertised but their batches are refused, as Kafka 4 does
# (KIP-896): librdkafka only enables gzip/snappy/lz4 when the advertised range includes v0.
# v12 is v11's format; a transactional v12 batch adds its partition to the transaction (transaction
# version 2, protocol/txn_implicit.py).
@api(ProduceRequest, ProduceResponse, 0, 12)
async def handle_produce(ctx: RequestContext, request: ProduceRequest) -> ProduceResponse | None:
    services = ctx.services
    replicas = services.replicas
    acks = request.acks
    request_error: KafkaProtocolError | None = None
    if acks not in (0, 1, -1):
        request_error = KafkaProtocolError(ErrorCode.INVALID_REQUIRED_ACKS, f"acks={acks}")
    txn_id = request.transactional_id
    txns = services.transactions
    if request_error is None and txn_id is not None:
        if not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID, txn_id):
            request_error = KafkaProtocolError(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                                               f"not authorized for transactional id {txn_id}")

    # The partitions a transactional batch goes to join its transaction first (or are verified):
    # this returns at once unless the coordinator has to be asked (see txn_implicit.py's gate).
    txn_refused = await prepare_produce(ctx, request) if request_error is None and txn_id is not None \
        and txns is not None else {}
    # Appends happen here, before the first await, so requests pipelined on one connection
    # are applied in the order they arrived.
    results: list[tuple[str, list[_PartitionResponse]]] = []
    waits: list[tuple[_PartitionResponse, Appended]] = []  # acks=all: answered once durable
    for topic_data in request.topic_data:
        partitions = []
        # Authorization and the topic's lookup once per topic, not per partition.
        topic: Topic | KafkaProtocolError
        try:
            topic = request_error if request_error is not None else replicas.topic(ctx, topic_data.name, OP_WRITE)
        except KafkaProtocolError as exc:
            topic = exc
        for pdata in topic_data.partition_data:
            response = _PartitionResponse(index=pdata.index, error_code=0, base_offset=-1, log_append_time_ms=-1,
                                          log_start_offset=-1)
            try:
                if isinstance(topic, KafkaProtocolError):
                    raise topic
                plog = replicas.partition_of(topic, pdata.index)
                internal_ok = schema_gate(ctx, topic_data.name, pdata.records)  # _schemas writer; checked topics
                if topic.internal and not internal_ok:
                    raise KafkaProtocolError(ErrorCode.INVALID_TOPIC_EXCEPTION,
                                             f"{topic_data.name} is internal: only the broker writes it")
                records = pdata.records
                if records is None:
                    raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "null records")
                # Attributes (int16 at byte 21): their low byte holds the transactional bit.
                if len(records) >= HEADER_SIZE and records[22] & ATTR_TRANSACTIONAL:
                    if txn_id is None or txns is None:
                        raise KafkaProtocolError(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                                                 "transactional records need a transactional id")
                    header = parse_header(records)
                    refused = txn_refused.get((topic_data.name, pdata.index)) or produce_error(verify_transactional(
                        ctx, txn_id, header.producer_id, header.producer_epoch, topic_data.name, pdata.index),
                        ctx.api_version)
                    if refused != ErrorCode.NONE:
                        raise KafkaProtocolError(refused, f"{topic_data.name}-{pdata.index} is not in the "
                                                 f"transaction of {txn_id} (or the producer is fenced)")
                # Topic policies (timestamp bounds, compression.type recompression): a step of its
                # own before the append, which returns the records as they are when nothing applies.
                records = apply_topic_policies(plog.config.values, records, int(time.time() * 1000))
                appended = replicas.append(plog, records)
                result = appended.result
                if not result.duplicate:
                    services.meter.produced(ctx.principal, ctx.client_id, topic_data.name, len(pdata.records),
                                            result.last_offset - result.base_offset + 1)
                response.base_offset = result.base_offset
                response.log_append_time_ms = result.log_append_time
                response.log_start_offset = plog.log_start_offset
                if acks == -1:
                    waits.append((response, appended))
            except KafkaProtocolError as exc:
                response.error_code = int(exc.code)
                if ctx.api_version >= 8:
                    response.error_message = exc.message
                log.debug("produce to %s-%d refused: %s", topic_data.name, pdata.index, exc.message)
            partitions.append(response)
        results.append((topic_data.name, partitions))

    if waits:
        outcomes = await replicas.durable_all([appended for _, appended in waits])  # one wait per request
        for (response, _), outcome in zip(waits, outcomes, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, KafkaProtocolError):
                response.error_code = int(outcome.code)
            elif isinstance(outcome, BaseException):
                log.error("durable append failed: %r", outcome)
                response.error_code = int(ErrorCode.KAFKA_STORAGE_ERROR)
    if acks == 0:
        return None
    return ProduceResponse(
        version=ctx.api_version,
        responses=[_TopicResponse(name=name, partition_responses=partitions) for name, partitions in results],
        throttle_time_ms=0,
    )

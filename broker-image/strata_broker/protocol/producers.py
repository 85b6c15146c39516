"""DescribeProducers (KIP-664): the producers a partition knows, as its leader answers.

Each partition named gets the producers of its producer state (idempotent and transactional):
id, epoch, last sequence, last timestamp, the coordinator epoch of the last marker that ended one
of its transactions, and the first offset of its transaction still open there (-1 if none), which
is what `kafka-transactions.sh find-hanging` and `abort` look at. READ on the topic is needed
(TOPIC_AUTHORIZATION_FAILED otherwise); an unknown partition is UNKNOWN_TOPIC_OR_PARTITION, one
this broker does not lead NOT_LEADER_OR_FOLLOWER, as Kafka.
"""

from __future__ import annotations

from kafka.protocol.admin.transactions import DescribeProducersRequest, DescribeProducersResponse

from ..errors import KafkaProtocolError
from ..security.acl import OP_READ
from .context import RequestContext
from .registry import api

_Topic = DescribeProducersResponse.TopicResponse
_Partition = _Topic.PartitionResponse
_Producer = _Partition.ProducerState


@api(DescribeProducersRequest, DescribeProducersResponse, 0, 0)
async def handle_describe_producers(ctx: RequestContext,
                                    request: DescribeProducersRequest) -> DescribeProducersResponse:
    replicas = ctx.services.replicas
    topics = []
    for topic in request.topics:
        partitions = []
        for index in topic.partition_indexes:
            answer = _Partition(partition_index=index, error_code=0, error_message=None, active_producers=[])
            try:
                plog = replicas.partition(ctx, topic.name, index, OP_READ)
                answer.active_producers = [
                    _Producer(producer_id=pid, producer_epoch=epoch, last_sequence=last_seq, last_timestamp=last_ts,
                              coordinator_epoch=coordinator_epoch, current_txn_start_offset=txn_start)
                    for pid, epoch, last_seq, last_ts, coordinator_epoch, txn_start in plog.producers.active()]
            except KafkaProtocolError as exc:
                answer.error_code = int(exc.code)
                answer.error_message = exc.message or None
            partitions.append(answer)
        topics.append(_Topic(name=topic.name, partitions=partitions))
    return DescribeProducersResponse(version=ctx.api_version, throttle_time_ms=0, topics=topics)

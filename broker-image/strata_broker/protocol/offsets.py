"""ListOffsets: earliest, latest, max timestamp, and the first offset at or after a timestamp."""

from __future__ import annotations

from kafka.protocol.consumer import ListOffsetsRequest, ListOffsetsResponse

from ..errors import KafkaProtocolError
from ..security.acl import OP_DESCRIBE
from .context import RequestContext
from .registry import api

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4

_TopicResponse = ListOffsetsResponse.ListOffsetsTopicResponse
_PartitionResponse = _TopicResponse.ListOffsetsPartitionResponse


@api(ListOffsetsRequest, ListOffsetsResponse, 1, 8)
async def handle_list_offsets(ctx: RequestContext, request: ListOffsetsRequest) -> ListOffsetsResponse:
    replicas = ctx.services.replicas
    topics = []
    committed = ctx.api_version >= 2 and request.isolation_level == 1
    for topic in request.topics:
        partitions = []
        for part in topic.partitions:
            response = _PartitionResponse(partition_index=part.partition_index, error_code=0, timestamp=-1,
                                          offset=-1, leader_epoch=0)
            try:
                plog = replicas.partition(ctx, topic.name, part.partition_index, OP_DESCRIBE)
                ts = part.timestamp
                if ts == LATEST:
                    # read_committed readers see up to the last stable offset (Kafka's ListOffsets v2+)
                    response.offset = plog.last_stable_offset if committed else plog.high_watermark
                elif ts == EARLIEST:
                    response.offset = plog.log_start_offset
                elif ts == EARLIEST_LOCAL:
                    response.offset = max(plog.log_start_offset, plog.local_start_offset)
                elif ts == MAX_TIMESTAMP:
                    found = plog.max_timestamp_offset()
                    if found is not None:
                        response.offset, response.timestamp = found
                    else:  # as Kafka: no such record, so no offset, timestamp or leader epoch
                        response.leader_epoch = -1
                elif ts >= 0:
                    found = await replicas.offset_for_timestamp(plog, ts)
                    if found is not None:
                        response.offset, response.timestamp = found
                    else:  # no record at or after ts: Kafka answers -1 for the epoch too
                        response.leader_epoch = -1
                else:
                    response.error_code = 42  # INVALID_REQUEST: unknown special timestamp
            except KafkaProtocolError as exc:
                response.error_code = int(exc.code)
            partitions.append(response)
        topics.append(_TopicResponse(name=topic.name, partitions=partitions))
    return ListOffsetsResponse(version=ctx.api_version, throttle_time_ms=0, topics=topics)

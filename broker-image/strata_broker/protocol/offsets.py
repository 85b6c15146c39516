"""ListOffsets: earliest, latest, max timestamp, and the first offset at or after a timestamp."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from kafka.protocol.consumer import ListOffsetsRequest, ListOffsetsResponse

from ..errors import KafkaProtocolError
from ..log.manager import Topic
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
    """One pass over the partitions: authorization and the topic looked up once per topic, every
    answer the local log gives at once; only lookups by timestamp that may need remote storage are
    awaited, all together."""
    replicas = ctx.services.replicas
    topics = []
    committed = ctx.api_version >= 2 and request.isolation_level == 1
    remote: list[tuple[_PartitionResponse, Awaitable[tuple[int, int] | None]]] = []
    for topic in request.topics:
        partitions = []
        try:
            known: Topic | KafkaProtocolError = replicas.topic(ctx, topic.name, OP_DESCRIBE)
        except KafkaProtocolError as exc:
            known = exc
        for part in topic.partitions:
            response = _PartitionResponse(partition_index=part.partition_index, error_code=0, timestamp=-1,
                                          offset=-1, leader_epoch=0)
            partitions.append(response)
            try:
                if isinstance(known, KafkaProtocolError):
                    raise known
                plog = replicas.partition_of(known, part.partition_index)
                ts = part.timestamp
                if ts == LATEST:
                    # read_committed readers see up to the last stable offset (Kafka's ListOffsets v2+)
                    response.offset = plog.last_stable_offset if committed else plog.high_watermark
                elif ts == EARLIEST:
                    response.offset = plog.log_start_offset
                elif ts == EARLIEST_LOCAL:
                    response.offset = max(plog.log_start_offset, plog.local_start_offset)
                elif ts == MAX_TIMESTAMP:
                    _answer(response, plog.max_timestamp_offset())
                elif ts >= 0:
                    if replicas.remote is not None and plog.remote is not None:
                        remote.append((response, replicas.offset_for_timestamp(plog, ts)))
                    else:
                        _answer(response, plog.offset_for_timestamp(ts))
                else:
                    response.error_code = 42  # INVALID_REQUEST: unknown special timestamp
            except KafkaProtocolError as exc:
                response.error_code = int(exc.code)
        topics.append(_TopicResponse(name=topic.name, partitions=partitions))
    if remote:
        found = await asyncio.gather(*(lookup for _, lookup in remote), return_exceptions=True)
        for (response, _), outcome in zip(remote, found, strict=True):
            if isinstance(outcome, KafkaProtocolError):
                response.error_code = int(outcome.code)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                _answer(response, outcome)
    return ListOffsetsResponse(version=ctx.api_version, throttle_time_ms=0, topics=topics)


def _answer(response: _PartitionResponse, found: tuple[int, int] | None) -> None:
    if found is not None:
        response.offset, response.timestamp = found
    else:  # as Kafka: no such record, so no offset, timestamp or leader epoch
        response.leader_epoch = -1

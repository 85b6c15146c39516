"""CreateTopics, DeleteTopics and CreatePartitions."""

from __future__ import annotations

import uuid

from kafka.protocol.admin import (
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
)

from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import refuse_internal
from ..security.acl import CLUSTER_NAME, OP_ALTER, OP_CREATE, OP_DELETE, RES_CLUSTER, RES_TOPIC
from .configs import describe_topic_values
from .context import RequestContext
from .registry import api

_ZERO_UUID = uuid.UUID(int=0)


def _check_placement(ctx: RequestContext, replication_factor: int, broker_lists: list[list[int]]) -> None:
    node = ctx.services.node_id
    if replication_factor not in (-1, 1):
        raise KafkaProtocolError(ErrorCode.INVALID_REPLICATION_FACTOR,
                                 f"replication factor {replication_factor} > 1 broker")
    for brokers in broker_lists:
        if list(brokers) != [node]:
            raise KafkaProtocolError(ErrorCode.INVALID_REPLICA_ASSIGNMENT, f"only broker {node} exists")


@api(CreateTopicsRequest, CreateTopicsResponse, 2, 7)
async def handle_create_topics(ctx: RequestContext, request: CreateTopicsRequest) -> CreateTopicsResponse:
    R = CreateTopicsResponse
    logs = ctx.services.logs
    results = []
    seen: set[str] = set()
    for topic in request.topics:
        result = R.CreatableTopicResult(name=topic.name, topic_id=_ZERO_UUID, error_code=0, error_message=None,
                                        num_partitions=-1, replication_factor=-1, configs=None)
        try:
            if topic.name in seen:
                raise KafkaProtocolError(ErrorCode.INVALID_REQUEST, "topic named twice in one request")
            seen.add(topic.name)
            if not (ctx.authorize(OP_CREATE, RES_CLUSTER, CLUSTER_NAME)
                    or ctx.authorize(OP_CREATE, RES_TOPIC, topic.name)):
                raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not create it")
            _check_placement(ctx, topic.replication_factor, [a.broker_ids for a in topic.assignments])
            partitions = topic.num_partitions
            if partitions == -1:
                partitions = len(topic.assignments) or ctx.services.config["num.partitions"]
            overrides = {c.name: c.value for c in topic.configs if c.value is not None}
            leadership = ctx.services.leadership
            if topic.name not in logs.topics and await leadership.exists_elsewhere(topic.name):
                raise KafkaProtocolError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {topic.name!r} already exists")
            created = logs.create_topic(topic.name, partitions, overrides, validate_only=request.validate_only)
            await leadership.published(topic.name)
            result.num_partitions = partitions
            result.replication_factor = 1
            if ctx.api_version >= 5:
                values = describe_topic_values(ctx.services.config, overrides)
                result.configs = [
                    R.CreatableTopicResult.CreatableTopicConfigs(
                        name=name, value=value, read_only=False, config_source=source, is_sensitive=False)
                    for name, value, source in values
                ]
            if created is not None:
                result.topic_id = created.topic_id
        except KafkaProtocolError as exc:
            result.error_code = int(exc.code)
            result.error_message = exc.message
        results.append(result)
    return R(version=ctx.api_version, throttle_time_ms=0, topics=results)


@api(DeleteTopicsRequest, DeleteTopicsResponse, 1, 6)
async def handle_delete_topics(ctx: RequestContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse:
    R = DeleteTopicsResponse
    logs = ctx.services.logs
    if ctx.api_version >= 6:
        wanted = [(t.name, t.topic_id) for t in request.topics]
    else:
        wanted = [(name, None) for name in request.topic_names]
    results = []
    for name, topic_id in wanted:
        result = R.DeletableTopicResult(name=name, topic_id=topic_id or _ZERO_UUID, error_code=0,
                                        error_message=None)
        try:
            if name is None:
                topic = logs.topic_by_id(topic_id) if topic_id else None
                if topic is None:
                    raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_ID, f"unknown topic id {topic_id}")
                name = topic.name
                result.name = name
            if not ctx.authorize(OP_DELETE, RES_TOPIC, name):
                raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not delete it")
            refuse_internal(name, "deleted")
            deleted = logs.delete_topic(name)
            result.topic_id = deleted.topic_id
        except KafkaProtocolError as exc:
            result.error_code = int(exc.code)
            result.error_message = exc.message
        results.append(result)
    return R(version=ctx.api_version, throttle_time_ms=0, responses=results)


@api(CreatePartitionsRequest, CreatePartitionsResponse, 0, 3)
async def handle_create_partitions(ctx: RequestContext,
                                   request: CreatePartitionsRequest) -> CreatePartitionsResponse:
    R = CreatePartitionsResponse
    results = []
    for topic in request.topics:
        result = R.CreatePartitionsTopicResult(name=topic.name, error_code=0, error_message=None)
        try:
            if not ctx.authorize(OP_ALTER, RES_TOPIC, topic.name):
                raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not alter it")
            refuse_internal(topic.name, "given partitions")
            _check_placement(ctx, -1, [a.broker_ids for a in topic.assignments or []])
            ctx.services.logs.create_partitions(topic.name, topic.count, validate_only=request.validate_only)
            await ctx.services.leadership.published(topic.name)
        except KafkaProtocolError as exc:
            result.error_code = int(exc.code)
            result.error_message = exc.message
        results.append(result)
    return R(version=ctx.api_version, throttle_time_ms=0, results=results)

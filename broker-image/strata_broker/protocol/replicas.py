"""The partition-level admin APIs: DeleteRecords, OffsetForLeaderEpoch, DescribeLogDirs,
AlterReplicaLogDirs, ElectLeaders and Alter/ListPartitionReassignments.

Strata keeps one copy of each partition (on the local disk of its leader, and in S3 when tiered), in
one log directory per broker; in a cluster the controller's placement decides which broker leads a
partition. So elections are never needed, no reassignment is ever in progress, and a replica cannot
move to another directory: each answer below is the one Kafka gives in that situation
(docs/kafka-compatibility.md, "Admin API").
"""

from __future__ import annotations

import shutil

from kafka.protocol.admin import (
    AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse,
    AlterReplicaLogDirsRequest,
    AlterReplicaLogDirsResponse,
    DeleteRecordsRequest,
    DeleteRecordsResponse,
    DescribeLogDirsRequest,
    DescribeLogDirsResponse,
    ElectLeadersRequest,
    ElectLeadersResponse,
    ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse,
)
from kafka.protocol.consumer import OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse

from ..cluster.reassign import cancel_move, cluster_of, pending_moves, request_move
from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import refuse_internal
from ..security.acl import CLUSTER_NAME, OP_ALTER, OP_DELETE, OP_DESCRIBE, RES_CLUSTER
from .context import RequestContext
from .registry import api

# Kafka error codes only these APIs answer with.
LOG_DIR_NOT_FOUND = int(ErrorCode.LOG_DIR_NOT_FOUND)
FENCED_LEADER_EPOCH = int(ErrorCode.FENCED_LEADER_EPOCH)
UNKNOWN_LEADER_EPOCH = int(ErrorCode.UNKNOWN_LEADER_EPOCH)
ELECTION_NOT_NEEDED = int(ErrorCode.ELECTION_NOT_NEEDED)
NO_REASSIGNMENT_IN_PROGRESS = int(ErrorCode.NO_REASSIGNMENT_IN_PROGRESS)

HIGH_WATERMARK = -1  # DeleteRecords: "delete everything up to the high watermark"


# ---- DeleteRecords ---------------------------------------------------------------------------

@api(DeleteRecordsRequest, DeleteRecordsResponse, 0, 2)
async def handle_delete_records(ctx: RequestContext, request: DeleteRecordsRequest) -> DeleteRecordsResponse:
    """Move each partition's log start offset up to the offset asked (-1: the high watermark)."""
    R = DeleteRecordsResponse
    replicas = ctx.services.replicas
    topics = []
    for topic in request.topics:
        partitions = []
        for part in topic.partitions:
            result = R.DeleteRecordsTopicResult.DeleteRecordsPartitionResult(
                partition_index=part.partition_index, low_watermark=-1, error_code=0)
            try:
                plog = replicas.partition(ctx, topic.name, part.partition_index, OP_DELETE)
                refuse_internal(topic.name, "trimmed")
                if not plog.config.deletes:
                    raise KafkaProtocolError(ErrorCode.POLICY_VIOLATION,
                                             "records of a topic with cleanup.policy=compact cannot be deleted")
                offset = plog.high_watermark if part.offset == HIGH_WATERMARK else part.offset
                if offset < 0 or offset > plog.high_watermark:
                    raise KafkaProtocolError(ErrorCode.OFFSET_OUT_OF_RANGE,
                                             f"offset {part.offset} is beyond the high watermark {plog.high_watermark}")
                result.low_watermark = await replicas.delete_records(plog, offset)
            except KafkaProtocolError as exc:
                result.error_code = int(exc.code)
            partitions.append(result)
        topics.append(R.DeleteRecordsTopicResult(name=topic.name, partitions=partitions))
    return R(version=ctx.api_version, throttle_time_ms=0, topics=topics)


# ---- OffsetForLeaderEpoch --------------------------------------------------------------------

@api(OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, 2, 4)
async def handle_offset_for_leader_epoch(ctx: RequestContext,
                                         request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse:
    """The end offset of a leader epoch, which a consumer compares with its position to detect a
    truncated log after a leader change (KIP-320).

    A single broker leads everything at epoch 0; a cluster broker holds a partition at the epoch of
    its claim. Older epochs are answered from the partition's leader-epoch history
    (log/leader_epochs.py) as Kafka answers them: the epoch's end is where the next one began."""
    R = OffsetForLeaderEpochResponse
    Result = R.OffsetForLeaderTopicResult
    replicas = ctx.services.replicas
    topics = []
    for topic in request.topics:
        partitions = []
        for part in topic.partitions:
            result = Result.EpochEndOffset(error_code=0, partition=part.partition, leader_epoch=-1, end_offset=-1)
            try:
                plog = replicas.partition(ctx, topic.topic, part.partition, OP_DESCRIBE)
                current = plog.leader_epoch
                asked_current = getattr(part, "current_leader_epoch", -1)
                if asked_current >= 0 and asked_current < current:
                    result.error_code = FENCED_LEADER_EPOCH
                elif asked_current > current:
                    result.error_code = UNKNOWN_LEADER_EPOCH
                else:  # an epoch above the current one (or -1): undefined, -1 / -1, as Kafka answers
                    result.leader_epoch, result.end_offset = plog.epochs.end_offset_for(
                        part.leader_epoch, current, plog.log_start_offset, plog.log_end_offset)
            except KafkaProtocolError as exc:
                result.error_code = int(exc.code)
            partitions.append(result)
        topics.append(Result(topic=topic.topic, partitions=partitions))
    return R(version=ctx.api_version, throttle_time_ms=0, topics=topics)


# ---- log directories -------------------------------------------------------------------------

@api(DescribeLogDirsRequest, DescribeLogDirsResponse, 1, 4)
async def handle_describe_log_dirs(ctx: RequestContext, request: DescribeLogDirsRequest) -> DescribeLogDirsResponse:
    """The broker's one log directory with the size on its disk of each partition it leads (remote
    segments are not counted, as in Kafka). Needs DESCRIBE on the cluster."""
    R = DescribeLogDirsResponse
    Result = R.DescribeLogDirsResult
    TopicResult = Result.DescribeLogDirsTopic
    if not ctx.authorize(OP_DESCRIBE, RES_CLUSTER, CLUSTER_NAME):
        return R(version=ctx.api_version, throttle_time_ms=0,
                 error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED), results=[])
    logs = ctx.services.logs
    leadership = ctx.services.leadership
    if request.topics is None:
        wanted = {name: None for name in logs.topics}
    else:
        wanted = {t.topic: set(t.partitions) for t in request.topics}
    topics = []
    for name, partitions in wanted.items():
        topic = logs.topics.get(name)
        if topic is None:
            continue  # Kafka lists only the partitions the directory holds
        described = [
            TopicResult.DescribeLogDirsPartition(partition_index=plog.partition, partition_size=plog.size_bytes,
                                                 offset_lag=0, is_future_key=False)
            for plog in topic.partitions
            if (partitions is None or plog.partition in partitions) and leadership.leads(name, plog.partition)
        ]
        if described:
            topics.append(TopicResult(name=name, partitions=described))
    usage = shutil.disk_usage(logs.data_dir)
    result = Result(error_code=0, log_dir=logs.data_dir, topics=topics, total_bytes=usage.total,
                    usable_bytes=usage.free, is_cordoned=False)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, results=[result])


@api(AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, 1, 2)
async def handle_alter_replica_log_dirs(ctx: RequestContext,
                                        request: AlterReplicaLogDirsRequest) -> AlterReplicaLogDirsResponse:
    """A broker has one log directory: moving a replica to it is already done (NONE), any other
    path is LOG_DIR_NOT_FOUND, per partition. Needs ALTER on the cluster."""
    R = AlterReplicaLogDirsResponse
    Result = R.AlterReplicaLogDirTopicResult
    logs = ctx.services.logs
    allowed = ctx.authorize(OP_ALTER, RES_CLUSTER, CLUSTER_NAME)
    results = []
    for directory in request.dirs:
        for topic in directory.topics:
            partitions = []
            for index in topic.partitions:
                code = 0
                try:
                    if not allowed:
                        raise KafkaProtocolError(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)
                    logs.get_partition(topic.name, index)
                    if directory.path.rstrip("/") != logs.data_dir.rstrip("/"):
                        code = LOG_DIR_NOT_FOUND
                except KafkaProtocolError as exc:
                    code = int(exc.code)
                partitions.append(Result.AlterReplicaLogDirPartitionResult(partition_index=index, error_code=code))
            results.append(Result(topic_name=topic.name, partitions=partitions))
    return R(version=ctx.api_version, throttle_time_ms=0, results=results)


# ---- leaders and reassignments ---------------------------------------------------------------

def _current_leaders(ctx: RequestContext, name: str) -> list[int]:
    """The broker leading each partition of a topic (UNKNOWN_TOPIC_OR_PARTITION when none such)."""
    topic = ctx.services.logs.get_topic(name)
    placed = ctx.services.leadership.partition_leaders(name, str(topic.topic_id), len(topic.partitions))
    if placed is None:
        raise KafkaProtocolError(ErrorCode.LEADER_NOT_AVAILABLE, f"{name} is not placed yet")
    return [p.leader for p in placed]


@api(ElectLeadersRequest, ElectLeadersResponse, 0, 2)
async def handle_elect_leaders(ctx: RequestContext, request: ElectLeadersRequest) -> ElectLeadersResponse:
    """Every partition is led by the broker that should lead it (the only broker, or the one the
    controller's placement names), so each named partition answers ELECTION_NOT_NEEDED, as Kafka
    does when the preferred replica already leads; "all partitions" (null) answers none."""
    R = ElectLeadersResponse
    Result = R.ReplicaElectionResult
    if not ctx.authorize(OP_ALTER, RES_CLUSTER, CLUSTER_NAME):
        return R(version=ctx.api_version, throttle_time_ms=0,
                 error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED), replica_election_results=[])
    results = []
    for topic in request.topic_partitions or []:
        partitions = []
        for index in topic.partitions:
            code, message = ELECTION_NOT_NEEDED, "the partition is led by the broker the placement names"
            try:
                leaders = _current_leaders(ctx, topic.topic)
                if not 0 <= index < len(leaders):
                    raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                             f"{topic.topic} has no partition {index}")
            except KafkaProtocolError as exc:
                code, message = int(exc.code), exc.message
            partitions.append(Result.PartitionResult(partition_id=index, error_code=code, error_message=message))
        results.append(Result(topic=topic.topic, partition_result=partitions))
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, replica_election_results=results)


@api(AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, 0, 1)
async def handle_alter_partition_reassignments(
    ctx: RequestContext, request: AlterPartitionReassignmentsRequest
) -> AlterPartitionReassignmentsResponse:
    """Per partition: replicas equal to the current ones ([leader]) are a no-op (NONE, as Kafka
    answers a reassignment to the current replicas); more than one replica is
    INVALID_REPLICATION_FACTOR (one copy, kept durable by fsync or S3); an unknown broker is
    INVALID_REPLICA_ASSIGNMENT. In a cluster, [b] with another broker b is a move: a request the
    controller acts on (cluster/reassign.py), and cancelling (null) deletes a pending one; a single
    broker has no other broker (INVALID_REPLICA_ASSIGNMENT) and nothing to cancel
    (NO_REASSIGNMENT_IN_PROGRESS)."""
    R = AlterPartitionReassignmentsResponse
    Topic = R.ReassignableTopicResponse
    if not ctx.authorize(OP_ALTER, RES_CLUSTER, CLUSTER_NAME):
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
                 error_message="not authorized to ALTER the cluster", responses=[])
    leadership = ctx.services.leadership
    cluster = cluster_of(ctx.services.leadership)
    brokers = {leadership.node_id} | {b.id for b in leadership.other_brokers()}
    responses = []
    for topic in request.topics:
        partitions = []
        for part in topic.partitions:
            code, message = 0, None
            try:
                leaders = _current_leaders(ctx, topic.name)
                if not 0 <= part.partition_index < len(leaders):
                    raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                             f"{topic.name} has no partition {part.partition_index}")
                current = leaders[part.partition_index]
                if part.replicas is None:
                    if cluster is None or not await cancel_move(cluster, topic.name, part.partition_index):
                        code, message = NO_REASSIGNMENT_IN_PROGRESS, "no reassignment is in progress"
                elif len(part.replicas) != 1:
                    code, message = (int(ErrorCode.INVALID_REPLICATION_FACTOR),
                                     "Strata keeps one copy of each partition (durable by fsync or in S3)")
                elif part.replicas[0] not in brokers:
                    code, message = (int(ErrorCode.INVALID_REPLICA_ASSIGNMENT),
                                     f"broker {part.replicas[0]} does not exist")
                elif cluster is not None:
                    if part.replicas[0] != current:
                        await request_move(cluster, topic.name, part.partition_index, part.replicas[0])
                    else:  # already there: a pending move elsewhere is called off
                        await cancel_move(cluster, topic.name, part.partition_index)
                elif part.replicas[0] != current:
                    code, message = (int(ErrorCode.INVALID_REPLICA_ASSIGNMENT),
                                     "a single broker has no other broker to move a partition to")
            except KafkaProtocolError as exc:
                code, message = int(exc.code), exc.message
            partitions.append(Topic.ReassignablePartitionResponse(partition_index=part.partition_index,
                                                                  error_code=code, error_message=message))
        responses.append(Topic(name=topic.name, partitions=partitions))
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, error_message=None, responses=responses)


@api(ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, 0, 0)
async def handle_list_partition_reassignments(
    ctx: RequestContext, request: ListPartitionReassignmentsRequest
) -> ListPartitionReassignmentsResponse:
    """The reassignments not done yet (in a cluster: the requests still in the bucket, each shown
    as replicas [target], adding [target], removing [current leader]); a single broker has none.
    Needs DESCRIBE on the cluster."""
    R = ListPartitionReassignmentsResponse
    T = R.OngoingTopicReassignment
    if not ctx.authorize(OP_DESCRIBE, RES_CLUSTER, CLUSTER_NAME):
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
                 error_message="not authorized to DESCRIBE the cluster", topics=[])
    cluster = cluster_of(ctx.services.leadership)
    pending = await pending_moves(cluster) if cluster is not None else {}
    wanted = None if request.topics is None else {(t.name, p) for t in request.topics for p in t.partition_indexes}
    by_topic: dict[str, list[object]] = {}
    for (name, index), target in sorted(pending.items()):
        if wanted is not None and (name, index) not in wanted:
            continue
        try:
            leaders = _current_leaders(ctx, name)
        except KafkaProtocolError:
            continue
        if not 0 <= index < len(leaders):
            continue
        current = leaders[index]
        by_topic.setdefault(name, []).append(T.OngoingPartitionReassignment(
            partition_index=index, replicas=[target], adding_replicas=[target] if target != current else [],
            removing_replicas=[current] if target != current else []))
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, error_message=None,
             topics=[T(name=name, partitions=parts) for name, parts in by_topic.items()])

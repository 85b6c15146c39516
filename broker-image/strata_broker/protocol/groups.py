"""Consumer group APIs: FindCoordinator, Join/Sync/Heartbeat/LeaveGroup, the KIP-848
ConsumerGroupHeartbeat/ConsumerGroupDescribe, offsets, group admin.

The handlers translate requests for the `GroupCoordinator` (strata_broker.groups), which
holds the state machine and the committed offsets.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

from kafka.protocol.admin import (
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    ListGroupsRequest,
    ListGroupsResponse,
)
from kafka.protocol.consumer import (
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetDeleteRequest,
    OffsetDeleteResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.metadata import FindCoordinatorRequest, FindCoordinatorResponse

from ..groups.consumer_group import ConsumerGroup, MemberHeartbeat, Partitions
from ..groups.coordinator import E
from ..groups.group import GroupState
from ..groups.offsets import CommittedOffset
from ..security.acl import (
    CLUSTER_NAME,
    OP_DELETE,
    OP_DESCRIBE,
    OP_READ,
    RES_CLUSTER,
    RES_GROUP,
    RES_TOPIC,
    RES_TRANSACTIONAL_ID,
)
from .context import RequestContext
from .messages import (
    ConsumerGroupDescribeRequest,
    ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
)
from .registry import api

if TYPE_CHECKING:
    from ..groups import GroupCoordinator

_GROUP_KEY = 0
_TXN_KEY = 1
GROUP_AUTHORIZATION_FAILED = 30
TOPIC_AUTHORIZATION_FAILED = 29
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53


def _coordinator(ctx: RequestContext, group_id: str | None = None) -> GroupCoordinator | None:
    """The coordinator, if it runs here and (in a cluster) coordinates `group_id`, its state loaded:
    clients told it is not available look the coordinator up again."""
    groups = ctx.services.groups
    if group_id is not None and (not ctx.services.leadership.coordinates(group_id) or
                                 (groups is not None and groups.loading(group_id))):
        return None
    return groups


def _client_host(ctx: RequestContext) -> str:
    host = ctx.peer.rsplit(":", 1)[0] if ":" in ctx.peer else ctx.peer
    return "/" + host.strip("[]")


# ---- FindCoordinator --------------------------------------------------------------------


@api(FindCoordinatorRequest, FindCoordinatorResponse, 0, 4)
async def handle_find_coordinator(ctx: RequestContext, request: FindCoordinatorRequest) -> FindCoordinatorResponse:
    broker = ctx.services
    R = FindCoordinatorResponse
    key_type = request.key_type if ctx.api_version >= 1 else _GROUP_KEY
    groups = _coordinator(ctx)

    def answer(key: str) -> tuple[int, str | None]:
        if key_type == _GROUP_KEY and not ctx.authorize(OP_DESCRIBE, RES_GROUP, key):
            return GROUP_AUTHORIZATION_FAILED, f"{ctx.principal} may not describe group {key}"
        if key_type != _GROUP_KEY and not ctx.authorize(OP_DESCRIBE, RES_TRANSACTIONAL_ID, key):
            return TRANSACTIONAL_ID_AUTHORIZATION_FAILED, f"{ctx.principal} may not describe {key}"
        if key_type == _TXN_KEY:
            txns = broker.transactions
            if txns is None or not txns.loaded:
                return E.COORDINATOR_NOT_AVAILABLE, "the transaction coordinator is loading"
            txns.ensure_topic()
            # The leader of the id's __transaction_state partition (hash of the id), as Kafka does.
            if broker.leadership.txn_coordinator_of(key) is None:
                return E.COORDINATOR_NOT_AVAILABLE, "the transaction state topic is not placed yet"
            return E.NONE, None
        if key_type != _GROUP_KEY:
            return E.INVALID_REQUEST, f"unknown coordinator key type {key_type}"
        if groups is None:
            return E.COORDINATOR_NOT_AVAILABLE, "the group coordinator is not running"
        groups.ensure_offsets_topic()
        if broker.leadership.coordinator_of(key) is None:
            return E.COORDINATOR_NOT_AVAILABLE, "the offsets topic is not placed yet"
        return E.NONE, None

    def where(error: int, key: str) -> tuple[int, str, int]:
        if error != 0:
            return -1, "", -1
        # The leader of the key's offsets or transaction state partition (hash of the key), as Kafka does.
        if key_type == _TXN_KEY:
            address = broker.leadership.txn_coordinator_of(key)
        else:
            address = broker.leadership.coordinator_of(key)
        if address is None or address.id == broker.node_id:
            return broker.node_id, ctx.advertised_host, ctx.advertised_port
        return (address.id, *address.on(ctx.listener_name))

    if ctx.api_version >= 4:
        coordinators = []
        for key in request.coordinator_keys:
            error, message = answer(key)
            node, host, port = where(error, key)
            coordinators.append(R.Coordinator(key=key, node_id=node, host=host, port=port, error_code=error,
                                              error_message=message))
        return R(version=ctx.api_version, throttle_time_ms=0, coordinators=coordinators)
    error, message = answer(request.key)
    node, host, port = where(error, request.key)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=error, error_message=message, node_id=node,
             host=host, port=port)


# ---- membership -------------------------------------------------------------------------


@api(JoinGroupRequest, JoinGroupResponse, 0, 9)
async def handle_join_group(ctx: RequestContext, request: JoinGroupRequest) -> JoinGroupResponse:
    v = ctx.api_version
    R = JoinGroupResponse
    groups = _coordinator(ctx, request.group_id)
    if groups is None or not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = E.COORDINATOR_NOT_AVAILABLE if groups is None else GROUP_AUTHORIZATION_FAILED
        return R(version=v, throttle_time_ms=0, error_code=error, generation_id=-1,
                 protocol_name=None if v >= 7 else "", leader="", member_id=request.member_id, members=[])
    protocols = [(p.name, bytes(p.metadata or b"")) for p in request.protocols]
    result = await groups.join_group(
        request.group_id, request.member_id, request.group_instance_id if v >= 5 else None, request.protocol_type,
        protocols, request.session_timeout_ms, request.rebalance_timeout_ms if v >= 1 else request.session_timeout_ms,
        ctx.client_id or "", _client_host(ctx), require_known_member=v >= 4)
    protocol_name = result.protocol_name
    if protocol_name is None and v < 7:
        protocol_name = ""
    return R(
        version=v, throttle_time_ms=0, error_code=result.error, generation_id=result.generation_id,
        protocol_type=result.protocol_type, protocol_name=protocol_name, leader=result.leader,
        skip_assignment=result.skip_assignment, member_id=result.member_id,
        members=[R.JoinGroupResponseMember(member_id=mid, group_instance_id=iid, metadata=meta)
                 for mid, iid, meta in result.members])


@api(SyncGroupRequest, SyncGroupResponse, 0, 5)
async def handle_sync_group(ctx: RequestContext, request: SyncGroupRequest) -> SyncGroupResponse:
    v = ctx.api_version
    groups = _coordinator(ctx, request.group_id)
    if groups is None or not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = E.COORDINATOR_NOT_AVAILABLE if groups is None else GROUP_AUTHORIZATION_FAILED
        return SyncGroupResponse(version=v, throttle_time_ms=0, error_code=error, assignment=b"")
    result = await groups.sync_group(
        request.group_id, request.generation_id, request.member_id, request.group_instance_id if v >= 3 else None,
        request.protocol_type if v >= 5 else None, request.protocol_name if v >= 5 else None,
        [(a.member_id, a.assignment) for a in request.assignments])
    return SyncGroupResponse(version=v, throttle_time_ms=0, error_code=result.error,
                             protocol_type=result.protocol_type, protocol_name=result.protocol_name,
                             assignment=result.assignment)


@api(HeartbeatRequest, HeartbeatResponse, 0, 4)
async def handle_heartbeat(ctx: RequestContext, request: HeartbeatRequest) -> HeartbeatResponse:
    groups = _coordinator(ctx, request.group_id)
    if groups is None:
        error = E.COORDINATOR_NOT_AVAILABLE
    elif not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = GROUP_AUTHORIZATION_FAILED
    else:
        error = groups.heartbeat(request.group_id, request.generation_id, request.member_id,
                                 request.group_instance_id if ctx.api_version >= 3 else None)
    return HeartbeatResponse(version=ctx.api_version, throttle_time_ms=0, error_code=error)


@api(LeaveGroupRequest, LeaveGroupResponse, 0, 5)
async def handle_leave_group(ctx: RequestContext, request: LeaveGroupRequest) -> LeaveGroupResponse:
    v = ctx.api_version
    R = LeaveGroupResponse
    if v >= 3:
        leaving = [(m.member_id, m.group_instance_id) for m in request.members]
    else:
        leaving = [(request.member_id, None)]
    groups = _coordinator(ctx, request.group_id)
    if groups is None or not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        error = E.COORDINATOR_NOT_AVAILABLE if groups is None else GROUP_AUTHORIZATION_FAILED
        return R(version=v, throttle_time_ms=0, error_code=error, members=[])
    error, member_errors = groups.leave_group(request.group_id, leaving)
    if v < 3:
        return R(version=v, throttle_time_ms=0, error_code=error or member_errors[0])
    return R(version=v, throttle_time_ms=0, error_code=error, members=[
        R.MemberResponse(member_id=mid, group_instance_id=iid, error_code=code)
        for (mid, iid), code in zip(leaving, member_errors, strict=True)])


# ---- the consumer group protocol (KIP-848) ------------------------------------------------


@api(ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, 0, 1)
async def handle_consumer_group_heartbeat(ctx: RequestContext, request: ConsumerGroupHeartbeatRequest
                                          ) -> ConsumerGroupHeartbeatResponse:
    v = ctx.api_version
    R = ConsumerGroupHeartbeatResponse

    def refuse(error: int, message: str | None) -> ConsumerGroupHeartbeatResponse:
        return R(version=v, throttle_time_ms=0, error_code=error, error_message=message,
                 member_id=request.member_id or None, member_epoch=request.member_epoch, heartbeat_interval_ms=0,
                 assignment=None)

    groups = _coordinator(ctx, request.group_id or None)
    if groups is None:
        return refuse(E.COORDINATOR_NOT_AVAILABLE, "the group coordinator is not available here")
    if request.group_id and not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        return refuse(GROUP_AUTHORIZATION_FAILED, f"{ctx.principal} may not read group {request.group_id}")
    denied = [t for t in request.subscribed_topic_names or [] if not ctx.authorize(OP_DESCRIBE, RES_TOPIC, t)]
    if denied:
        return refuse(TOPIC_AUTHORIZATION_FAILED, f"{ctx.principal} may not describe topics {', '.join(denied)}")
    owned: Partitions | None = None
    if request.topic_partitions is not None:
        owned = {}
        for tp in request.topic_partitions:
            topic = ctx.services.logs.topic_by_id(tp.topic_id)
            if topic is not None and tp.partitions:
                owned.setdefault(topic.name, set()).update(tp.partitions)
    result = await groups.consumer_heartbeat(MemberHeartbeat(
        group_id=request.group_id, member_id=request.member_id, member_epoch=request.member_epoch,
        instance_id=request.instance_id, rack_id=request.rack_id, rebalance_timeout_ms=request.rebalance_timeout_ms,
        subscribed_topics=request.subscribed_topic_names,
        subscribed_regex=request.subscribed_topic_regex if v >= 1 else None,
        server_assignor=request.server_assignor, owned=owned, client_id=ctx.client_id or "",
        client_host=_client_host(ctx)), v)
    assignment = None
    if result.error == E.NONE and result.assignment is not None:
        topics = []
        for name, parts in sorted(result.assignment.items()):
            topic_id = groups.consumer.topic_id(name)
            if topic_id is not None:
                topics.append(R.Assignment.TopicPartitions(topic_id=topic_id, partitions=sorted(parts)))
        assignment = R.Assignment(topic_partitions=topics)
    return R(version=v, throttle_time_ms=0, error_code=result.error, error_message=result.message,
             member_id=result.member_id, member_epoch=result.member_epoch,
             heartbeat_interval_ms=result.heartbeat_interval_ms, assignment=assignment)


@api(ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, 0, 1)
async def handle_consumer_group_describe(ctx: RequestContext, request: ConsumerGroupDescribeRequest
                                         ) -> ConsumerGroupDescribeResponse:
    v = ctx.api_version
    R = ConsumerGroupDescribeResponse
    D = R.DescribedGroup
    M = D.Member

    def failed(group_id: str, error: int, message: str | None) -> object:
        return D(error_code=error, error_message=message, group_id=group_id, group_state="", group_epoch=-1,
                 assignment_epoch=-1, assignor_name="", members=[])

    def assignment(groups: GroupCoordinator, parts: Partitions) -> object:
        A = M.Assignment
        return A(topic_partitions=[
            A.TopicPartitions(topic_id=topic_id, topic_name=name, partitions=sorted(ps))
            for name, ps in sorted(parts.items())
            if ps and (topic_id := groups.consumer.topic_id(name)) is not None])

    def describe(groups: GroupCoordinator, group: ConsumerGroup) -> object:
        return D(error_code=E.NONE, error_message=None, group_id=group.group_id, group_state=group.state.value,
                 group_epoch=group.group_epoch, assignment_epoch=group.assignment_epoch,
                 assignor_name=group.assignor or groups.consumer.assignors[0], members=[
                     M(member_id=m.member_id, instance_id=m.instance_id, rack_id=m.rack_id, member_epoch=m.epoch,
                       client_id=m.client_id, client_host=m.client_host,
                       subscribed_topic_names=list(m.subscribed_topics), subscribed_topic_regex=m.subscribed_regex,
                       assignment=assignment(groups, m.assigned),
                       target_assignment=assignment(groups, group.target.get(m.member_id, {})), member_type=1)
                     for m in group.members.values()])

    described = []
    for group_id in request.group_ids:
        groups = _coordinator(ctx, group_id)
        if groups is None:
            described.append(failed(group_id, E.COORDINATOR_NOT_AVAILABLE, None))
        elif not group_id:
            described.append(failed(group_id, E.INVALID_GROUP_ID, "Group id can't be empty."))
        elif not ctx.authorize(OP_DESCRIBE, RES_GROUP, group_id):
            described.append(failed(group_id, GROUP_AUTHORIZATION_FAILED, None))
        elif (group := groups.consumer_group(group_id)) is not None:
            described.append(describe(groups, group))
        elif groups.membership.live(group_id) is not None:
            described.append(failed(group_id, E.GROUP_ID_NOT_FOUND, f"Group {group_id} is not a consumer group."))
        else:
            described.append(failed(group_id, E.GROUP_ID_NOT_FOUND, f"Group {group_id} not found."))
    return R(version=v, throttle_time_ms=0, groups=described)


# ---- offsets ----------------------------------------------------------------------------


@api(OffsetCommitRequest, OffsetCommitResponse, 2, 9)
async def handle_offset_commit(ctx: RequestContext, request: OffsetCommitRequest) -> OffsetCommitResponse:
    v = ctx.api_version
    R = OffsetCommitResponse
    groups = _coordinator(ctx, request.group_id)
    offsets: dict[tuple[str, int], CommittedOffset] = {}
    order: list[tuple[str, list[int]]] = []
    now = int(time.time() * 1000)
    for topic in request.topics:
        indexes = []
        for p in topic.partitions:
            epoch = p.committed_leader_epoch if v >= 6 else -1
            offsets[(topic.name, p.partition_index)] = CommittedOffset(p.committed_offset, epoch,
                                                                       p.committed_metadata, now)
            indexes.append(p.partition_index)
        order.append((topic.name, indexes))
    denied_topics = {name for name, _ in order if not ctx.authorize(OP_READ, RES_TOPIC, name)}  # once a topic
    denied = {tp for tp in offsets if tp[0] in denied_topics} if denied_topics else set()
    if groups is None:
        results = {tp: E.COORDINATOR_NOT_AVAILABLE for tp in offsets}
    elif not ctx.authorize(OP_READ, RES_GROUP, request.group_id):
        results = {tp: GROUP_AUTHORIZATION_FAILED for tp in offsets}
    elif denied:
        allowed = {tp: o for tp, o in offsets.items() if tp not in denied}
        results = await groups.commit_offsets(request.group_id, request.generation_id_or_member_epoch,
                                              request.member_id, request.group_instance_id if v >= 7 else None,
                                              allowed, v) if allowed else {}
        results.update({tp: TOPIC_AUTHORIZATION_FAILED for tp in denied})
    elif not request.group_id and request.generation_id_or_member_epoch >= 0:
        results = {tp: E.INVALID_GROUP_ID for tp in offsets}
    else:
        results = await groups.commit_offsets(request.group_id, request.generation_id_or_member_epoch,
                                              request.member_id, request.group_instance_id if v >= 7 else None,
                                              offsets, v)
    return R(version=v, throttle_time_ms=0, topics=[
        R.OffsetCommitResponseTopic(name=name, partitions=[
            R.OffsetCommitResponseTopic.OffsetCommitResponsePartition(partition_index=i,
                                                                      error_code=results[(name, i)])
            for i in indexes])
        for name, indexes in order])


def _fetch_group(ctx: RequestContext, group_id: str, topics: list[tuple[str, list[int]]] | None
                 ) -> list[tuple[str, list[tuple[int, CommittedOffset | None]]]]:
    """[(topic, [(partition, committed or None)])] for the requested (or all committed) partitions."""
    groups = _coordinator(ctx, group_id)
    if groups is None:
        return []
    wanted = None if topics is None else [(name, p) for name, parts in topics for p in parts]
    found = groups.fetch_offsets(group_id, wanted)
    # Offsets of topics the principal may not describe are not shown (asked for by name: an error).
    found = {tp: e for tp, e in found.items() if ctx.authorize(OP_DESCRIBE, RES_TOPIC, tp[0])}
    by_topic: dict[str, list[tuple[int, CommittedOffset | None]]] = defaultdict(list)
    if topics is not None:
        for name, parts in topics:
            by_topic.setdefault(name, [])
            for p in parts:
                by_topic[name].append((p, found.get((name, p))))
    else:
        for (name, p), entry in sorted(found.items()):
            by_topic[name].append((p, entry))
    return list(by_topic.items())


@api(OffsetFetchRequest, OffsetFetchResponse, 1, 9)
async def handle_offset_fetch(ctx: RequestContext, request: OffsetFetchRequest) -> OffsetFetchResponse:
    v = ctx.api_version
    R = OffsetFetchResponse
    def group_error(group_id: str, member_id: str | None = None, member_epoch: int = -1) -> int:
        groups = _coordinator(ctx, group_id)
        if groups is None:
            return E.COORDINATOR_NOT_AVAILABLE
        if not ctx.authorize(OP_DESCRIBE, RES_GROUP, group_id):
            return GROUP_AUTHORIZATION_FAILED
        # v9+: a consumer-group member's epoch must be current (KIP-848).
        return groups.check_fetch(group_id, member_id, member_epoch)

    def part_error(topic: str) -> int:
        return E.NONE if ctx.authorize(OP_DESCRIBE, RES_TOPIC, topic) else TOPIC_AUTHORIZATION_FAILED

    if v >= 8:
        G = R.OffsetFetchResponseGroup
        T = G.OffsetFetchResponseTopics
        P = T.OffsetFetchResponsePartitions
        out = []
        for group in request.groups:
            topics = None if group.topics is None else [(t.name, list(t.partition_indexes)) for t in group.topics]
            g_error = group_error(group.group_id, group.member_id if v >= 9 else None,
                                  group.member_epoch if v >= 9 else -1)
            out.append(G(group_id=group.group_id, error_code=g_error, topics=[] if g_error else [
                T(name=name, partitions=[
                    P(partition_index=p, committed_offset=e.offset if e else -1,
                      committed_leader_epoch=e.leader_epoch if e else -1,
                      metadata=e.metadata if e else "", error_code=part_error(name))
                    for p, e in parts])
                for name, parts in _fetch_group(ctx, group.group_id, topics)]))
        return R(version=v, throttle_time_ms=0, groups=out)
    T1 = R.OffsetFetchResponseTopic
    P1 = T1.OffsetFetchResponsePartition
    topics = None if request.topics is None else [(t.name, list(t.partition_indexes)) for t in request.topics]
    g_error = group_error(request.group_id)
    if g_error and v < 2:  # no top-level error code before v2
        return R(version=v, throttle_time_ms=0, error_code=g_error, topics=[
            T1(name=name, partitions=[P1(partition_index=p, committed_offset=-1, committed_leader_epoch=-1,
                                         metadata="", error_code=g_error) for p in parts])
            for name, parts in (topics or [])])
    return R(version=v, throttle_time_ms=0, error_code=g_error, topics=[] if g_error else [
        T1(name=name, partitions=[
            P1(partition_index=p, committed_offset=e.offset if e else -1,
               committed_leader_epoch=e.leader_epoch if e else -1, metadata=e.metadata if e else "",
               error_code=part_error(name))
            for p, e in parts])
        for name, parts in _fetch_group(ctx, request.group_id, topics)])


@api(OffsetDeleteRequest, OffsetDeleteResponse, 0, 0)
async def handle_offset_delete(ctx: RequestContext, request: OffsetDeleteRequest) -> OffsetDeleteResponse:
    R = OffsetDeleteResponse
    T = R.OffsetDeleteResponseTopic
    P = T.OffsetDeleteResponsePartition
    groups = _coordinator(ctx, request.group_id)
    wanted = [(t.name, p.partition_index) for t in request.topics for p in t.partitions]
    if groups is None:
        error, results = E.COORDINATOR_NOT_AVAILABLE, {}
    elif not ctx.authorize(OP_DELETE, RES_GROUP, request.group_id):
        error, results = GROUP_AUTHORIZATION_FAILED, {}
    else:
        denied = {tp for tp in wanted if not ctx.authorize(OP_READ, RES_TOPIC, tp[0])}
        error, results = await groups.delete_offsets(request.group_id, [tp for tp in wanted if tp not in denied])
        results = {**results, **{tp: TOPIC_AUTHORIZATION_FAILED for tp in denied}}
    if error:
        return R(version=0, error_code=error, throttle_time_ms=0, topics=[])
    return R(version=0, error_code=E.NONE, throttle_time_ms=0, topics=[
        T(name=t.name, partitions=[P(partition_index=p.partition_index,
                                     error_code=results.get((t.name, p.partition_index), E.NONE))
                                   for p in t.partitions])
        for t in request.topics])


# ---- group admin ------------------------------------------------------------------------


@api(ListGroupsRequest, ListGroupsResponse, 0, 5)
async def handle_list_groups(ctx: RequestContext, request: ListGroupsRequest) -> ListGroupsResponse:
    v = ctx.api_version
    R = ListGroupsResponse
    groups = _coordinator(ctx)
    if groups is None:
        return R(version=v, throttle_time_ms=0, error_code=E.COORDINATOR_NOT_AVAILABLE, groups=[])
    states = {s.lower() for s in request.states_filter} if v >= 4 and request.states_filter else None
    types = {t.lower() for t in request.types_filter} if v >= 5 and request.types_filter else None
    listed = []
    everything = ctx.authorize(OP_DESCRIBE, RES_CLUSTER, CLUSTER_NAME)
    entries = [(g.group_id, g.protocol_type or "", g.state.value, "classic") for g in groups.list_groups()]
    entries += [(g.group_id, "consumer", g.state.value, "consumer") for g in groups.list_consumer_groups()]
    for group_id, protocol_type, state, group_type in entries:
        if not everything and not ctx.authorize(OP_DESCRIBE, RES_GROUP, group_id):
            continue
        if states is not None and state.lower() not in states:
            continue
        if types is not None and group_type not in types:
            continue
        listed.append(R.ListedGroup(group_id=group_id, protocol_type=protocol_type, group_state=state,
                                    group_type=group_type))
    return R(version=v, throttle_time_ms=0, error_code=E.NONE, groups=listed)


@api(DescribeGroupsRequest, DescribeGroupsResponse, 0, 5)
async def handle_describe_groups(ctx: RequestContext, request: DescribeGroupsRequest) -> DescribeGroupsResponse:
    v = ctx.api_version
    R = DescribeGroupsResponse
    D = R.DescribedGroup
    M = D.DescribedGroupMember
    groups = _coordinator(ctx)
    described = []
    for group_id in request.groups:
        if groups is None or _coordinator(ctx, group_id) is None:
            described.append(D(error_code=E.COORDINATOR_NOT_AVAILABLE, group_id=group_id, group_state="",
                               protocol_type="", protocol_data="", members=[]))
            continue
        if not ctx.authorize(OP_DESCRIBE, RES_GROUP, group_id):
            described.append(D(error_code=GROUP_AUTHORIZATION_FAILED, group_id=group_id, group_state="",
                               protocol_type="", protocol_data="", members=[]))
            continue
        group = groups.describe_group(group_id)
        if group is None:
            described.append(D(error_code=E.NONE, group_id=group_id, group_state=GroupState.DEAD.value,
                               protocol_type="", protocol_data="", members=[]))
            continue
        stable = group.is_(GroupState.STABLE)
        members = []
        for m in group.members.values():
            metadata = b""
            if stable and group.protocol_name is not None:
                metadata = m.metadata_for(group.protocol_name)
            members.append(M(member_id=m.member_id, group_instance_id=m.group_instance_id, client_id=m.client_id,
                             client_host=m.client_host, member_metadata=metadata,
                             member_assignment=m.assignment if stable else b""))
        described.append(D(error_code=E.NONE, group_id=group_id, group_state=group.state.value,
                           protocol_type=group.protocol_type or "",
                           protocol_data=(group.protocol_name or "") if stable else "", members=members))
    return R(version=v, throttle_time_ms=0, groups=described)


@api(DeleteGroupsRequest, DeleteGroupsResponse, 0, 2)
async def handle_delete_groups(ctx: RequestContext, request: DeleteGroupsRequest) -> DeleteGroupsResponse:
    R = DeleteGroupsResponse
    groups = _coordinator(ctx)
    results = []
    for group_id in request.groups_names:
        if groups is None or _coordinator(ctx, group_id) is None:
            error = E.COORDINATOR_NOT_AVAILABLE
        elif not ctx.authorize(OP_DELETE, RES_GROUP, group_id):
            error = GROUP_AUTHORIZATION_FAILED
        else:
            error = await groups.delete_group(group_id)
        results.append(R.DeletableGroupResult(group_id=group_id, error_code=error))
    return R(version=ctx.api_version, throttle_time_ms=0, results=results)

"""The group coordinator at the wire level: exact requests, exact error codes."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.protocol.admin import DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest
from kafka.protocol.consumer import (
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    OffsetCommitRequest,
    OffsetDeleteRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription
from kafka.protocol.metadata import FindCoordinatorRequest, MetadataRequest
from kafkaclients import create_topic
from rawclient import RawConnection

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_METADATA_TOO_LARGE = 12
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86


def subscription(*topics: str) -> bytes:
    return bytes(ConsumerProtocolSubscription(version=0, topics=list(topics), user_data=None).encode())


def join(conn: RawConnection, group: str, member_id: str = "", instance: str | None = None, version: int = 5,
         session_ms: int = 6000, rebalance_ms: int = 5000, protocols: list[tuple[str, bytes]] | None = None,
         protocol_type: str = "consumer"):  # type: ignore[no-untyped-def]
    protocols = protocols or [("range", subscription("t"))]
    return conn.request(JoinGroupRequest(
        version=version, group_id=group, session_timeout_ms=session_ms, rebalance_timeout_ms=rebalance_ms,
        member_id=member_id, group_instance_id=instance, protocol_type=protocol_type,
        protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name=n, metadata=m) for n, m in protocols]))


def join_fully(conn: RawConnection, group: str, **kwargs):  # type: ignore[no-untyped-def]
    first = join(conn, group, **kwargs)
    if first.error_code != MEMBER_ID_REQUIRED:
        return first
    kwargs.pop("member_id", None)
    return join(conn, group, member_id=first.member_id, **kwargs)


def sync(conn: RawConnection, group: str, generation: int, member_id: str,
         assignments: dict[str, bytes] | None = None, instance: str | None = None, version: int = 5):  # type: ignore[no-untyped-def]
    return conn.request(SyncGroupRequest(
        version=version, group_id=group, generation_id=generation, member_id=member_id, group_instance_id=instance,
        protocol_type="consumer", protocol_name="range",
        assignments=[SyncGroupRequest.SyncGroupRequestAssignment(member_id=m, assignment=a)
                     for m, a in (assignments or {}).items()]))


def heartbeat(conn: RawConnection, group: str, generation: int, member_id: str, instance: str | None = None) -> int:
    return conn.request(HeartbeatRequest(version=4, group_id=group, generation_id=generation, member_id=member_id,
                                         group_instance_id=instance)).error_code


def commit(conn: RawConnection, group: str, generation: int, member_id: str,
           offsets: dict[tuple[str, int], int], metadata: str = "", version: int = 8) -> dict[tuple[str, int], int]:
    T = OffsetCommitRequest.OffsetCommitRequestTopic
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for (topic, p), o in offsets.items():
        by_topic.setdefault(topic, []).append((p, o))
    response = conn.request(OffsetCommitRequest(
        version=version, group_id=group, generation_id_or_member_epoch=generation, member_id=member_id,
        group_instance_id=None, retention_time_ms=-1,
        topics=[T(name=t, partitions=[T.OffsetCommitRequestPartition(partition_index=p, committed_offset=o,
                                                                       committed_leader_epoch=-1,
                                                                       committed_metadata=metadata)
                                      for p, o in parts]) for t, parts in by_topic.items()]))
    return {(t.name, p.partition_index): p.error_code for t in response.topics for p in t.partitions}


def fetch(conn: RawConnection, group: str, topic: str, partitions: list[int], version: int = 7) -> dict[int, int]:
    response = conn.request(OffsetFetchRequest(
        version=version, group_id=group,
        topics=[OffsetFetchRequest.OffsetFetchRequestTopic(name=topic, partition_indexes=partitions)]))
    assert response.error_code == NONE
    return {p.partition_index: p.committed_offset for t in response.topics for p in t.partitions}


def describe(conn: RawConnection, group: str):  # type: ignore[no-untyped-def]
    return conn.request(DescribeGroupsRequest(version=5, groups=[group])).groups[0]


@pytest.fixture
def conn(broker):  # type: ignore[no-untyped-def]
    c = RawConnection(broker.bootstrap)
    yield c
    c.close()


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_find_coordinator(broker, conn: RawConnection, version: int) -> None:
    host, port = broker.bootstrap.rsplit(":", 1)
    request = FindCoordinatorRequest(version=version, key="some-group", key_type=0, coordinator_keys=["a", "b"])
    response = conn.request(request)
    if version >= 4:
        assert [(c.key, c.error_code, c.host, c.port) for c in response.coordinators] == \
            [("a", 0, host, int(port)), ("b", 0, host, int(port))]
    else:
        assert (response.error_code, response.host, response.port) == (0, host, int(port))


def test_join_sync_heartbeat_and_errors(conn: RawConnection, topic_name: str) -> None:
    group = f"g-{topic_name}"
    first = join(conn, group)
    assert first.error_code == MEMBER_ID_REQUIRED and first.member_id
    joined = join(conn, group, member_id=first.member_id)
    assert joined.error_code == NONE
    assert joined.generation_id == 1 and joined.leader == first.member_id
    assert joined.protocol_name == "range" and [m.member_id for m in joined.members] == [first.member_id]
    me, gen = first.member_id, joined.generation_id
    assignment = bytes(ConsumerProtocolAssignment(
        version=0, assigned_partitions=[ConsumerProtocolAssignment.TopicPartition(topic="t", partitions=[0])],
        user_data=None).encode())
    synced = sync(conn, group, gen, me, {me: assignment})
    assert synced.error_code == NONE and bytes(synced.assignment) == assignment
    assert heartbeat(conn, group, gen, me) == NONE
    assert heartbeat(conn, group, gen - 1, me) == ILLEGAL_GENERATION
    assert heartbeat(conn, group, gen, "nobody") == UNKNOWN_MEMBER_ID
    assert heartbeat(conn, "no-such-group", 1, me) == UNKNOWN_MEMBER_ID
    assert sync(conn, group, gen + 5, me).error_code == ILLEGAL_GENERATION
    # An old client without KIP-394 (JoinGroup v3) gets a member id at once.
    other = RawConnection(_bootstrap(conn))
    try:
        assert join(other, group, version=3, session_ms=100).error_code == INVALID_SESSION_TIMEOUT
        assert join(other, "", version=3).error_code == INVALID_GROUP_ID
        assert join(other, group, version=3, protocol_type="connect").error_code == INCONSISTENT_GROUP_PROTOCOL
        assert join(other, group, version=3,
                    protocols=[("sticky", subscription("t"))]).error_code == INCONSISTENT_GROUP_PROTOCOL
    finally:
        other.close()
    d = describe(conn, group)
    assert d.group_state == "Stable" and d.protocol_data == "range" and len(d.members) == 1
    left = conn.request(LeaveGroupRequest(version=3, group_id=group, members=[
        LeaveGroupRequest.MemberIdentity(member_id=me, group_instance_id=None)]))
    assert left.error_code == NONE and [m.error_code for m in left.members] == [NONE]
    assert describe(conn, group).group_state in ("Empty", "Dead")


def test_offset_commit_errors(broker, conn: RawConnection, topic_name: str) -> None:
    create_topic(broker.bootstrap, topic_name, 2)
    group = f"g-{topic_name}"
    joined = join_fully(conn, group)
    me, gen = joined.member_id, joined.generation_id
    assert sync(conn, group, gen, me, {me: b""}).error_code == NONE
    results = commit(conn, group, gen, me, {(topic_name, 0): 5, (topic_name, 7): 1, ("no-such-topic", 0): 1})
    assert results == {(topic_name, 0): NONE, (topic_name, 7): UNKNOWN_TOPIC_OR_PARTITION,
                       ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION}
    assert commit(conn, group, gen - 1, me, {(topic_name, 0): 9}) == {(topic_name, 0): ILLEGAL_GENERATION}
    assert commit(conn, group, gen, "stranger", {(topic_name, 0): 9}) == {(topic_name, 0): UNKNOWN_MEMBER_ID}
    assert commit(conn, group, gen, me, {(topic_name, 1): 3}, metadata="x" * 5000) == \
        {(topic_name, 1): OFFSET_METADATA_TOO_LARGE}
    # Not a member, group managed: a "simple" commit (generation -1) is refused while members exist.
    assert commit(conn, group, -1, "", {(topic_name, 0): 9}) == {(topic_name, 0): UNKNOWN_MEMBER_ID}
    for version in (1, 5, 7):
        assert fetch(conn, group, topic_name, [0, 1], version=version) == {0: 5, 1: -1}
    for version in (2, 3, 9):
        assert commit(conn, group, gen, me, {(topic_name, 1): 2 + version}, version=version) == {(topic_name, 1): 0}
    assert fetch(conn, group, topic_name, [1], version=8 - 1) == {1: 11}
    # OffsetFetch v8 (several groups per request) and "all topics" (null).
    response = conn.request(OffsetFetchRequest(version=8, groups=[
        OffsetFetchRequest.OffsetFetchRequestGroup(group_id=group, topics=None),
        OffsetFetchRequest.OffsetFetchRequestGroup(group_id="unknown-group", topics=None)]))
    got = {g.group_id: {(t.name, p.partition_index): p.committed_offset for t in g.topics for p in t.partitions}
           for g in response.groups}
    assert got == {group: {(topic_name, 0): 5, (topic_name, 1): 11}, "unknown-group": {}}
    # A group nobody coordinates takes "simple" commits (consumers that assign partitions themselves).
    assert commit(conn, f"simple-{topic_name}", -1, "", {(topic_name, 0): 4}) == {(topic_name, 0): NONE}
    assert commit(conn, f"gone-{topic_name}", 3, "m", {(topic_name, 0): 4}) == {(topic_name, 0): ILLEGAL_GENERATION}
    # OffsetDelete refuses subscribed topics while the group is active, DeleteGroups non-empty groups.
    sub = conn.request(OffsetDeleteRequest(version=0, group_id=group, topics=[
        OffsetDeleteRequest.OffsetDeleteRequestTopic(name="t", partitions=[
            OffsetDeleteRequest.OffsetDeleteRequestTopic.OffsetDeleteRequestPartition(partition_index=0)])]))
    assert sub.error_code == NONE
    assert [p.error_code for t in sub.topics for p in t.partitions] == [UNKNOWN_TOPIC_OR_PARTITION]
    deleted = conn.request(DeleteGroupsRequest(version=2, groups_names=[group, f"never-{topic_name}"]))
    assert [(r.group_id, r.error_code) for r in deleted.results] == \
        [(group, NON_EMPTY_GROUP), (f"never-{topic_name}", GROUP_ID_NOT_FOUND)]


def _bootstrap(conn: RawConnection) -> str:
    host, port = conn.sock.getpeername()[:2]
    return f"{host}:{port}"


def test_static_member_restart_keeps_assignment(broker, topic_name: str) -> None:
    group = f"g-{topic_name}"
    a, b = RawConnection(broker.bootstrap), RawConnection(broker.bootstrap)
    try:
        result: dict[str, object] = {}

        def join_b() -> None:
            result["b"] = join(b, group, instance="pod-1")

        first = join(a, group, instance="pod-0")
        assert first.error_code == NONE
        a_id = first.member_id
        assert sync(a, group, first.generation_id, a_id, {a_id: b"A"}, instance="pod-0").error_code == NONE
        t = threading.Thread(target=join_b)
        t.start()
        time.sleep(0.3)
        again = join(a, group, member_id=a_id, instance="pod-0")  # pod-0 rejoins the rebalance pod-1 started
        t.join(10)
        b_join = result["b"]
        assert again.error_code == NONE and b_join.error_code == NONE  # type: ignore[attr-defined]
        gen = again.generation_id
        b_id = b_join.member_id  # type: ignore[attr-defined]
        leader = again.leader
        assert leader == a_id
        sb = threading.Thread(target=lambda: result.__setitem__("sb", sync(b, group, gen, b_id, instance="pod-1")))
        sb.start()
        assert sync(a, group, gen, a_id, {a_id: b"A2", b_id: b"B2"}, instance="pod-0").error_code == NONE
        sb.join(10)
        assert bytes(result["sb"].assignment) == b"B2"  # type: ignore[attr-defined]

        # pod-1 restarts (no LeaveGroup) and comes back with an empty member id within the session timeout.
        c = RawConnection(broker.bootstrap)
        back = join(c, group, instance="pod-1")
        assert back.error_code == NONE and back.member_id != b_id
        assert back.generation_id == gen, "a static member's restart must not cause a rebalance"
        assert bytes(sync(c, group, gen, back.member_id, instance="pod-1").assignment) == b"B2"
        # The old incarnation is fenced.
        assert heartbeat(b, group, gen, b_id, "pod-1") == FENCED_INSTANCE_ID
        assert heartbeat(a, group, gen, a_id, "pod-0") == NONE
        assert describe(a, group).group_state == "Stable"
        c.close()
    finally:
        a.close()
        b.close()


def test_storm_of_short_lived_members(broker, topic_name: str) -> None:
    """50 members join and leave at once; the group ends healthy and the broker stays responsive."""
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 3)
    group = f"storm-{topic_name}"
    errors: list[BaseException] = []

    def member(i: int) -> None:
        c = RawConnection(bootstrap)
        try:
            r = join_fully(c, group, rebalance_ms=3000, protocols=[("range", subscription(topic_name))])
            if r.error_code == NONE:
                s = sync(c, group, r.generation_id, r.member_id,
                         {m.member_id: b"" for m in r.members} if r.leader == r.member_id else {})
                assert s.error_code in (NONE, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID)
            else:
                assert r.error_code in (UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS)
            c.request(LeaveGroupRequest(version=3, group_id=group, members=[
                LeaveGroupRequest.MemberIdentity(member_id=r.member_id, group_instance_id=None)]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    probe = RawConnection(bootstrap)
    worst = 0.0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        probe.request(MetadataRequest(version=8, topics=None, allow_auto_topic_creation=False))
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert worst < 1.0, f"metadata took {worst:.2f}s during the storm"
    d = describe(probe, group)
    assert d.group_state in ("Empty", "Dead") and not d.members
    # The group still works for a real consumer.
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(30):
        producer.send(topic_name, str(i).encode(), partition=i % 3)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic_name, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=500)
    got: list[int] = []
    deadline = time.monotonic() + 20
    while len(got) < 30 and time.monotonic() < deadline:
        for records in consumer.poll(500).values():
            got.extend(int(r.value) for r in records)
    consumer.close()
    probe.close()
    assert sorted(got) == list(range(30))


def test_list_describe_and_delete_with_kafka_python_admin(broker, topic_name: str) -> None:
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 3)
    group = f"adm-{topic_name}"
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(30):
        producer.send(topic_name, str(i).encode(), partition=i % 3)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic_name, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=500)
    got = 0
    deadline = time.monotonic() + 20
    while got < 30 and time.monotonic() < deadline:
        got += sum(len(r) for r in consumer.poll(500).values())
    consumer.commit()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["protocol_type"] == "consumer" and listed[group]["group_state"] == "Stable"
        described = admin.describe_groups([group])[group]
        assert described["group_state"] == "Stable" and len(described["members"]) == 1
        assigned = described["members"][0]["member_assignment"]["assigned_partitions"]
        assert sorted(p for tp in assigned for p in tp["partitions"]) == [0, 1, 2]
        offsets = admin.list_group_offsets({group: None})[group]
        assert {tp.partition: o.offset for tp, o in offsets.items()} == {0: 10, 1: 10, 2: 10}
        consumer.close()
        assert admin.describe_groups([group])[group]["group_state"] == "Empty"
        # OffsetDelete on an empty group, then DeleteGroups.
        admin.delete_group_offsets(group, [TopicPartition(topic_name, 0)])
        offsets = admin.list_group_offsets({group: None})[group]
        assert sorted(tp.partition for tp in offsets) == [1, 2]
        admin.delete_groups([group])
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets({group: None})[group] == {}
    finally:
        admin.close()


def test_list_groups_filters(conn: RawConnection, topic_name: str) -> None:
    group = f"f-{topic_name}"
    joined = join_fully(conn, group)
    assert sync(conn, group, joined.generation_id, joined.member_id, {joined.member_id: b""}).error_code == NONE
    stable = conn.request(ListGroupsRequest(version=5, states_filter=["stable"], types_filter=[]))
    assert group in {g.group_id for g in stable.groups}
    empty = conn.request(ListGroupsRequest(version=5, states_filter=["Empty"], types_filter=[]))
    assert group not in {g.group_id for g in empty.groups}
    consumer_type = conn.request(ListGroupsRequest(version=5, states_filter=[], types_filter=["consumer"]))
    assert group not in {g.group_id for g in consumer_type.groups}
    classic = conn.request(ListGroupsRequest(version=5, states_filter=[], types_filter=["classic"]))
    assert group in {g.group_id for g in classic.groups}

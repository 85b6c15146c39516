"""The KIP-848 consumer group protocol (ConsumerGroupHeartbeat / ConsumerGroupDescribe) on a real broker.

librdkafka consumers with `group.protocol=consumer` join, get partitions and rebalance when a second
member joins and when one leaves, with no partition owned by two members at once and every record
consumed exactly once across them; exact raw frames check the reconciliation steps (revoke first,
then assign) and the error codes Kafka answers with.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaException, Producer
from kafka.protocol.admin import DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest
from kafka.protocol.consumer import JoinGroupRequest, OffsetCommitRequest, OffsetFetchRequest
from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafkaclients import create_topic
from rawclient import RawConnection, connect, outcome, raw_frame
from strata_broker.protocol.messages import (
    ConsumerGroupDescribeRequest,
    ConsumerGroupHeartbeatRequest,
)
from waiting import wait_until

NONE = 0
UNSUPPORTED_VERSION = 35
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_REQUEST = 42
GROUP_ID_NOT_FOUND = 69
FENCED_INSTANCE_ID = 82
FENCED_MEMBER_EPOCH = 110
UNRELEASED_INSTANCE_ID = 111
UNSUPPORTED_ASSIGNOR = 112
STALE_MEMBER_EPOCH = 113
INVALID_REGULAR_EXPRESSION = 128

SESSION_MS = 4000
SETTINGS = {
    "group.consumer.heartbeat.interval.ms": "300",
    "group.consumer.session.timeout.ms": str(SESSION_MS),
    "auto.create.topics.enable": "false",
}


@pytest.fixture(scope="module")
def cbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker with a short consumer-protocol heartbeat interval and session timeout."""
    proc = BrokerProcess(tmp_path_factory.mktemp("kip848") / "broker", settings=SETTINGS).start()
    yield proc
    proc.stop()


@pytest.fixture
def conn(cbroker: BrokerProcess) -> Iterator[RawConnection]:
    c = RawConnection(cbroker.bootstrap)
    yield c
    c.close()


def new_topic(broker: BrokerProcess, partitions: int) -> str:
    name = f"kip848-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, name, partitions)
    return name


def topic_id(conn: RawConnection, name: str) -> uuid.UUID:
    response = conn.request(MetadataRequest(version=12, topics=[MetadataRequest.MetadataRequestTopic(
        topic_id=uuid.UUID(int=0), name=name)], allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False, include_topic_authorized_operations=False))
    return response.topics[0].topic_id


def hb(conn: RawConnection, group: str, member: str, epoch: int, *, topics: list[str] | None = None,
       owned: dict[uuid.UUID, list[int]] | None = None, instance: str | None = None, rebalance_ms: int = -1,
       assignor: str | None = None, regex: str | None = None, version: int = 1):  # type: ignore[no-untyped-def]
    """One ConsumerGroupHeartbeat; `owned` None sends a null TopicPartitions."""
    T = ConsumerGroupHeartbeatRequest.TopicPartitions
    return conn.request(ConsumerGroupHeartbeatRequest(
        version=version, group_id=group, member_id=member, member_epoch=epoch, instance_id=instance, rack_id=None,
        rebalance_timeout_ms=rebalance_ms, subscribed_topic_names=topics, subscribed_topic_regex=regex,
        server_assignor=assignor,
        topic_partitions=None if owned is None else [T(topic_id=t, partitions=p) for t, p in owned.items()]))


def join(conn: RawConnection, group: str, member: str, topics: list[str], **kwargs):  # type: ignore[no-untyped-def]
    return hb(conn, group, member, 0, topics=topics, owned={}, rebalance_ms=30000, **kwargs)


def parts(response) -> set[int]:  # type: ignore[no-untyped-def]
    assert response.assignment is not None
    return {p for t in response.assignment.topic_partitions for p in t.partitions}


def describe(conn: RawConnection, *groups: str):  # type: ignore[no-untyped-def]
    return conn.request(ConsumerGroupDescribeRequest(version=1, group_ids=list(groups),
                                                     include_authorized_operations=False)).groups


def commit(conn: RawConnection, group: str, member: str, epoch: int, topic: str, offset: int,
           version: int = 9) -> int:
    T = OffsetCommitRequest.OffsetCommitRequestTopic
    response = conn.request(OffsetCommitRequest(
        version=version, group_id=group, generation_id_or_member_epoch=epoch, member_id=member,
        group_instance_id=None, retention_time_ms=-1, topics=[T(name=topic, partitions=[
            T.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset, committed_leader_epoch=-1,
                                           committed_metadata="")])]))
    return response.topics[0].partitions[0].error_code


def fetch_error(conn: RawConnection, group: str, member: str | None, epoch: int) -> int:
    G = OffsetFetchRequest.OffsetFetchRequestGroup
    response = conn.request(OffsetFetchRequest(version=9, require_stable=False, groups=[
        G(group_id=group, member_id=member, member_epoch=epoch, topics=None)]))
    return response.groups[0].error_code


# ---- librdkafka ------------------------------------------------------------------------------


class Owners:
    """Partition ownership as two consumers' rebalance callbacks report it: a partition assigned
    while another consumer still owns it is recorded as a violation."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.violations: list[str] = []
        self.lock = threading.Lock()

    def callbacks(self, name: str) -> dict[str, object]:
        def assigned(consumer, partitions) -> None:  # type: ignore[no-untyped-def]
            with self.lock:
                for tp in partitions:
                    holder = self.owner.get(tp.partition)
                    if holder is not None and holder != name:
                        self.violations.append(f"{name} got {tp.partition} still owned by {holder}")
                    self.owner[tp.partition] = name

        def revoked(consumer, partitions) -> None:  # type: ignore[no-untyped-def]
            with self.lock:
                for tp in partitions:
                    if self.owner.get(tp.partition) == name:
                        del self.owner[tp.partition]

        return {"on_assign": assigned, "on_revoke": revoked, "on_lost": revoked}

    def of(self, name: str) -> set[int]:
        with self.lock:
            return {p for p, n in self.owner.items() if n == name}


def make_consumer(broker: BrokerProcess, group: str, name: str) -> Consumer:
    return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "group.protocol": "consumer",
                     "client.id": name, "auto.offset.reset": "earliest", "enable.auto.commit": False})


def consume_one(consumer: Consumer, seen: list[bytes], timeout: float = 0.1) -> None:
    """Poll once; a record is counted, then its offset committed before the next poll (retried if
    the member epoch moved meanwhile)."""
    msg = consumer.poll(timeout)
    if msg is None or msg.error():
        return
    seen.append(msg.value())
    for attempt in range(50):
        try:
            consumer.commit(message=msg, asynchronous=False)
            return
        except KafkaException as exc:
            if attempt == 49:
                raise
            if exc.args[0].code() not in (STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID) and not exc.args[0].retriable():
                raise
            consumer.poll(0.05)


def test_librdkafka_members_join_rebalance_and_leave(cbroker: BrokerProcess) -> None:
    topic = new_topic(cbroker, 6)
    group = f"g-{topic}"
    producer = Producer({"bootstrap.servers": cbroker.bootstrap})
    sent: list[bytes] = []

    def produce(n: int) -> None:
        for _ in range(n):
            value = str(len(sent)).encode()
            producer.produce(topic, value=value, partition=len(sent) % 6)
            sent.append(value)
        producer.flush(30)

    produce(120)
    owners = Owners()
    seen: list[bytes] = []
    c1 = make_consumer(cbroker, group, "c1")
    c1.subscribe([topic], **owners.callbacks("c1"))
    c2 = make_consumer(cbroker, group, "c2")
    conn = RawConnection(cbroker.bootstrap)
    try:
        # One member: every partition.
        wait_until(lambda: (consume_one(c1, seen), owners.of("c1") == set(range(6)))[1], timeout=60,
                   what="the first member owns every partition", every=0.01)
        while len(seen) < 60:
            consume_one(c1, seen)
        # A second member joins: partitions move, never owned by both.
        c2.subscribe([topic], **owners.callbacks("c2"))
        produce(120)

        def balanced() -> bool:
            consume_one(c1, seen, 0.05)
            consume_one(c2, seen, 0.05)
            described = describe(conn, group)[0]
            owned = [p for m in described.members for t in m.assignment.topic_partitions for p in t.partitions]
            assert len(owned) == len(set(owned)), f"a partition owned by two members: {described}"
            return len(owners.of("c1")) == 3 and len(owners.of("c2")) == 3 and described.group_state == "Stable"

        wait_until(balanced, timeout=60, what="three partitions each, group Stable", every=0.01)
        assert owners.of("c1") | owners.of("c2") == set(range(6))
        described = describe(conn, group)[0]
        assert described.error_code == NONE and len(described.members) == 2
        assert described.assignor_name == "uniform" and described.group_epoch == described.assignment_epoch
        assert {m.member_epoch for m in described.members} == {described.group_epoch}
        listed = conn.request(ListGroupsRequest(version=5, states_filter=[], types_filter=["consumer"])).groups
        assert [(g.group_id, g.group_type, g.protocol_type, g.group_state) for g in listed
                if g.group_id == group] == [(group, "consumer", "consumer", "Stable")]
        while len(seen) < len(sent) - 30:
            consume_one(c1, seen, 0.05)
            consume_one(c2, seen, 0.05)
        # The second member leaves: the first one owns everything again and drains the rest.
        c2.close()
        produce(60)
        wait_until(lambda: (consume_one(c1, seen), owners.of("c1") == set(range(6)))[1], timeout=60,
                   what="the remaining member owns every partition again", every=0.01)
        wait_until(lambda: (consume_one(c1, seen), len(seen) >= len(sent))[1], timeout=60,
                   what="every record consumed", every=0.01)
        assert owners.violations == []
        assert sorted(seen, key=int) == sent, "a record consumed twice or never"
        members = describe(conn, group)[0].members
        assert len(members) == 1 and members[0].client_id == "c1"
    finally:
        c1.close()
        conn.close()
    # Both left: the group is Empty, its committed offsets stay (the end of every partition).
    with RawConnection(cbroker.bootstrap) as conn:
        wait_until(lambda: describe(conn, group)[0].group_state == "Empty", timeout=30, what="group Empty")
        G = OffsetFetchRequest.OffsetFetchRequestGroup
        committed = conn.request(OffsetFetchRequest(version=9, require_stable=False, groups=[
            G(group_id=group, member_id=None, member_epoch=-1, topics=None)])).groups[0]
        assert sorted((p.partition_index, p.committed_offset) for t in committed.topics for p in t.partitions) == \
            [(p, len(sent) // 6) for p in range(6)]


# ---- raw frames: reconciliation -------------------------------------------------------------------


def test_partition_moves_only_after_its_owner_revoked_it(cbroker: BrokerProcess, conn: RawConnection) -> None:
    topic = new_topic(cbroker, 4)
    tid = topic_id(conn, topic)
    group = f"g-{topic}"
    a = join(conn, group, "member-a", [topic])
    assert (a.error_code, a.member_id, a.member_epoch, parts(a)) == (NONE, "member-a", 1, {0, 1, 2, 3})
    assert a.heartbeat_interval_ms == 300
    # A second member joins: the group epoch is 2, but its partitions are still a's.
    b = join(conn, group, "member-b", [topic])
    assert (b.error_code, b.member_epoch, parts(b)) == (NONE, 2, set())
    assert describe(conn, group)[0].group_state == "Reconciling"
    # a is asked to revoke two partitions and keeps epoch 1 until it has.
    a = hb(conn, group, "member-a", 1, owned={tid: [0, 1, 2, 3]})
    kept = parts(a)
    assert (a.error_code, a.member_epoch, len(kept)) == (NONE, 1, 2)
    revoked = sorted({0, 1, 2, 3} - kept)
    b = hb(conn, group, "member-b", 2, owned={})
    assert (b.error_code, b.member_epoch, b.assignment) == (NONE, 2, None)  # not released yet: still nothing
    a = hb(conn, group, "member-a", 1, owned={tid: [0, 1, 2, 3]})  # still owns them: nothing moves
    assert (a.error_code, a.member_epoch, a.assignment) == (NONE, 1, None)  # unchanged: not sent
    # a acknowledges the revocation: it moves to epoch 2, b gets the partitions.
    a = hb(conn, group, "member-a", 1, owned={tid: sorted(kept)})
    assert (a.error_code, a.member_epoch) == (NONE, 2)
    # The previous epoch is accepted only with a subset of the assignment (a lost answer); else fenced.
    assert hb(conn, group, "member-a", 1, owned={tid: sorted(kept)}).error_code == NONE
    assert hb(conn, group, "member-a", 1, owned={tid: [0, 1, 2, 3]}).error_code == FENCED_MEMBER_EPOCH
    assert hb(conn, group, "member-a", 0, topics=[topic], owned={}, rebalance_ms=1).error_code == FENCED_MEMBER_EPOCH
    b = hb(conn, group, "member-b", 2, owned={})
    assert (b.error_code, b.member_epoch, sorted(parts(b))) == (NONE, 2, revoked)
    state = describe(conn, group)[0]
    assert (state.group_state, state.group_epoch, state.assignment_epoch) == ("Stable", 2, 2)
    # A heartbeat with nothing changed carries no assignment; a full one (as after an error) does.
    assert hb(conn, group, "member-b", 2).assignment is None
    assert hb(conn, group, "member-b", 2, owned={tid: revoked}).assignment is None
    assert sorted(parts(hb(conn, group, "member-b", 2, owned={tid: revoked}, topics=[topic],
                           rebalance_ms=30000))) == revoked
    # Offsets: the member epoch is checked (STALE_MEMBER_EPOCH), members must use OffsetCommit v9+.
    assert commit(conn, group, "member-b", 2, topic, 5) == NONE
    assert commit(conn, group, "member-b", 1, topic, 5) == STALE_MEMBER_EPOCH
    assert commit(conn, group, "nobody", 2, topic, 5) == UNKNOWN_MEMBER_ID
    assert commit(conn, group, "member-b", 2, topic, 5, version=8) == UNSUPPORTED_VERSION
    assert commit(conn, group, "", -1, topic, 5) == UNKNOWN_MEMBER_ID  # not an Empty group
    assert fetch_error(conn, group, "member-b", 2) == NONE
    assert fetch_error(conn, group, "member-b", 3) == STALE_MEMBER_EPOCH
    assert fetch_error(conn, group, "nobody", 2) == UNKNOWN_MEMBER_ID
    assert fetch_error(conn, group, None, -1) == NONE
    # b leaves (epoch -1): a gets everything back at once (nothing to revoke elsewhere).
    left = hb(conn, group, "member-b", -1)
    assert (left.error_code, left.member_epoch) == (NONE, -1)
    a = hb(conn, group, "member-a", 2, owned={tid: sorted(kept)})
    assert (a.error_code, a.member_epoch, parts(a)) == (NONE, 3, {0, 1, 2, 3})
    # a stops heartbeating: its session expires and the group is Empty (its offsets kept).
    wait_until(lambda: describe(conn, group)[0].group_state == "Empty", timeout=SESSION_MS / 1000 + 20,
               what="session expiry")
    assert hb(conn, group, "member-a", 3).error_code == UNKNOWN_MEMBER_ID
    assert commit(conn, group, "", -1, topic, 7) == NONE  # an Empty group takes admin commits


def test_range_assignor_and_static_members(cbroker: BrokerProcess, conn: RawConnection) -> None:
    topic = new_topic(cbroker, 5)
    tid = topic_id(conn, topic)
    group = f"g-{topic}"
    a = join(conn, group, "a", [topic], instance="inst-a", assignor="range")
    b = join(conn, group, "b", [topic], instance="inst-b", assignor="range")
    a = hb(conn, group, "a", a.member_epoch, owned={tid: sorted(parts(a))}, instance="inst-a")
    kept = sorted(parts(a))
    a = hb(conn, group, "a", a.member_epoch, owned={tid: kept}, instance="inst-a")
    b = hb(conn, group, "b", b.member_epoch, owned={}, instance="inst-b")
    assert a.member_epoch == b.member_epoch == 2
    assert (kept, sorted(parts(b))) == ([0, 1, 2], [3, 4])  # ranges, the first member one more
    assert describe(conn, group)[0].assignor_name == "range"
    # The instance id is taken: another member may not join with it, nor heartbeat as it.
    assert join(conn, group, "a2", [topic], instance="inst-a").error_code == UNRELEASED_INSTANCE_ID
    assert hb(conn, group, "a2", 1, instance="inst-a").error_code == FENCED_INSTANCE_ID
    # a leaves temporarily (epoch -2); a2 takes its place with the same partitions, no rebalance.
    epoch = describe(conn, group)[0].group_epoch
    assert hb(conn, group, "a", -2, instance="inst-a").member_epoch == -2
    a2 = join(conn, group, "a2", [topic], instance="inst-a", assignor="range")
    assert (a2.error_code, sorted(parts(a2))) == (NONE, [0, 1, 2])
    state = describe(conn, group)[0]
    assert state.group_epoch == epoch
    assert sorted(m.member_id for m in state.members) == ["a2", "b"]
    assert {m.member_id: m.instance_id for m in state.members} == {"a2": "inst-a", "b": "inst-b"}
    # The same member id coming back while it holds the instance: unreleased too (as Kafka).
    assert join(conn, group, "b", [topic], instance="inst-b").error_code == UNRELEASED_INSTANCE_ID
    # b leaves temporarily and comes back under its own id: same partitions, same group epoch.
    assert hb(conn, group, "b", -2, instance="inst-b").error_code == NONE
    back = join(conn, group, "b", [topic], instance="inst-b", assignor="range")
    assert (back.error_code, sorted(parts(back))) == (NONE, [3, 4])
    assert describe(conn, group)[0].group_epoch == epoch
    for member in ("a2", "b"):
        assert hb(conn, group, member, -1, instance="inst-a" if member == "a2" else "inst-b").error_code == NONE


# ---- raw frames: errors ------------------------------------------------------------------------


def test_heartbeat_errors_as_kafka_answers_them(cbroker: BrokerProcess, conn: RawConnection) -> None:
    topic = new_topic(cbroker, 2)
    group = f"g-{topic}"
    # Requests Kafka refuses before looking at the group.
    assert join(conn, "", "m", [topic]).error_code == INVALID_REQUEST
    assert join(conn, group, "", [topic]).error_code == INVALID_REQUEST  # v1: the client names itself
    assert hb(conn, group, "m", 0, topics=[topic], owned={}).error_code == INVALID_REQUEST  # no rebalance timeout
    assert hb(conn, group, "m", 0, topics=[topic], owned=None, rebalance_ms=1).error_code == INVALID_REQUEST
    assert hb(conn, group, "m", 0, topics=[topic], owned={topic_id(conn, topic): [0]},
              rebalance_ms=1).error_code == INVALID_REQUEST
    assert hb(conn, group, "m", 0, owned={}, rebalance_ms=1).error_code == INVALID_REQUEST  # no subscription
    assert hb(conn, group, "m", -3).error_code == INVALID_REQUEST
    assert hb(conn, group, "m", -2).error_code == INVALID_REQUEST  # a static leave without an instance id
    assert join(conn, group, "m", [topic], instance="").error_code == INVALID_REQUEST
    refused = join(conn, group, "m", [topic], assignor="sticky")
    assert refused.error_code == UNSUPPORTED_ASSIGNOR and "uniform" in refused.error_message
    assert join(conn, group, "m", [], regex="kip848-[").error_code == INVALID_REGULAR_EXPRESSION
    # The group and member must exist unless joining. Kafka answers GROUP_ID_NOT_FOUND for an unknown
    # group; Strata does not keep membership over a restart, so it tells the member to rejoin.
    assert hb(conn, group, "m", 4).error_code == UNKNOWN_MEMBER_ID
    assert hb(conn, group, "m", -1).error_code == UNKNOWN_MEMBER_ID
    first = join(conn, group, "m", [topic])
    assert (first.error_code, first.member_epoch) == (NONE, 1)
    assert hb(conn, group, "other", 1).error_code == UNKNOWN_MEMBER_ID
    assert hb(conn, group, "other", -1).error_code == UNKNOWN_MEMBER_ID
    # An epoch ahead of the coordinator's is fenced.
    assert hb(conn, group, "m", 7).error_code == FENCED_MEMBER_EPOCH
    # v0: the coordinator names a member that comes without an id.
    v0 = hb(conn, group, "", 0, topics=[topic], owned={}, rebalance_ms=1000, version=0)
    assert v0.error_code == NONE and v0.member_id
    # A regex subscription resolves to the topics whose whole name matches.
    rx = join(conn, group, "rx", [], regex=f"{topic}|kip848-no-such-topic.*")
    assert rx.error_code == NONE
    assert [m.subscribed_topic_names for m in describe(conn, group)[0].members if m.member_id == "rx"] == [[topic]]
    for member in ("m", v0.member_id, "rx"):
        assert hb(conn, group, member, -1).error_code == NONE, member
    # ConsumerGroupDescribe for groups that are not consumer groups.
    unknown, empty = describe(conn, f"nope-{topic}", "")
    assert (unknown.error_code, empty.error_code) == (GROUP_ID_NOT_FOUND, INVALID_GROUP_ID)


def test_classic_and_consumer_protocol_do_not_share_a_group(cbroker: BrokerProcess, conn: RawConnection) -> None:
    topic = new_topic(cbroker, 2)
    subscription = bytes(ConsumerProtocolSubscription(version=0, topics=[topic], user_data=None).encode())

    def classic_join(group: str):  # type: ignore[no-untyped-def]
        return conn.request(JoinGroupRequest(
            version=5, group_id=group, session_timeout_ms=10000, rebalance_timeout_ms=10000, member_id="",
            group_instance_id="classic-1", protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=subscription)]))

    # A consumer group with a member refuses a classic JoinGroup.
    consumer_group = f"cg-{topic}"
    assert join(conn, consumer_group, "m", [topic]).error_code == NONE
    assert classic_join(consumer_group).error_code == INCONSISTENT_GROUP_PROTOCOL
    # A classic group with a member refuses a ConsumerGroupHeartbeat, and is not described as one.
    classic_group = f"classic-{topic}"
    joined = classic_join(classic_group)
    assert joined.error_code == NONE
    refused = join(conn, classic_group, "m2", [topic])
    assert (refused.error_code, refused.error_message) == (GROUP_ID_NOT_FOUND,
                                                           f"Group {classic_group} is not a consumer group.")
    assert describe(conn, classic_group)[0].error_code == GROUP_ID_NOT_FOUND
    groups = {g.group_id: g.group_type for g in conn.request(ListGroupsRequest(
        version=5, states_filter=[], types_filter=[])).groups}
    assert (groups[consumer_group], groups[classic_group]) == ("consumer", "classic")
    # Once Empty (offsets only), a consumer group may become a classic one.
    assert commit(conn, consumer_group, "m", 1, topic, 3) == NONE
    assert hb(conn, consumer_group, "m", -1).error_code == NONE
    assert classic_join(consumer_group).error_code == NONE


def test_apis_advertised_and_garbage_bodies(cbroker: BrokerProcess, conn: RawConnection) -> None:
    versions = {k.api_key: (k.min_version, k.max_version)
                for k in conn.request(ApiVersionsRequest(version=3, client_software_name="t",
                                                         client_software_version="1")).api_keys}
    assert versions[68] == (0, 1) and versions[69] == (0, 1)
    good = ConsumerGroupHeartbeatRequest(version=1, group_id="g", member_id="m", member_epoch=0, instance_id=None,
                                         rack_id=None, rebalance_timeout_ms=1000, subscribed_topic_names=["t"],
                                         subscribed_topic_regex=None, server_assignor=None, topic_partitions=[])
    body = bytes(good.encode())
    for bad in (b"", b"\xff" * 64, body[: len(body) // 2], body[:-1], b"\x02g\x02m" + b"\x7f" * 40):
        for api_key in (68, 69):
            with connect(cbroker.port) as sock:
                sock.sendall(raw_frame(api_key, 1, 1, bad, flexible=True))
                result = outcome(sock, 1)
            assert result.closed or len(result.frames) == 1, (api_key, bad, result)
    # The broker is still serving.
    assert describe(conn, "after-garbage")[0].error_code == GROUP_ID_NOT_FOUND


def test_membership_survives_a_restart_then_delete_group_is_persisted_too(broker_factory) -> None:  # type: ignore[no-untyped-def]
    """Membership is in __consumer_offsets (Kafka's consumer-group records): right after a crash and
    restart the group is described with the same member id, epoch and partitions; the librdkafka
    consumer heartbeats on without a revoke and nothing is consumed twice. Once the member left,
    the Empty group comes back Empty after a restart, and DeleteGroups' tombstones keep it deleted."""
    proc = broker_factory(settings={**SETTINGS, "group.consumer.session.timeout.ms": "30000"})
    topic = new_topic(proc, 4)
    group = f"g-{topic}"
    producer = Producer({"bootstrap.servers": proc.bootstrap})
    sent = [str(i).encode() for i in range(80)]
    for i, value in enumerate(sent[:40]):
        producer.produce(topic, value=value, partition=i % 4)
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": proc.bootstrap, "group.id": group, "group.protocol": "consumer",
                         "client.id": "c1", "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "reconnect.backoff.max.ms": 500})
    events: list[str] = []
    consumer.subscribe([topic], on_assign=lambda c, ps: events.append(f"assign {len(ps)}"),
                       on_revoke=lambda c, ps: events.append(f"revoke {len(ps)}"),
                       on_lost=lambda c, ps: events.append(f"lost {len(ps)}"))
    seen: list[bytes] = []

    def member_state(conn: RawConnection):  # type: ignore[no-untyped-def]
        described = describe(conn, group)[0]
        return described.error_code, described.group_state, described.group_epoch, [
            (m.member_id, m.member_epoch, m.client_id, sorted(p for t in m.assignment.topic_partitions
                                                             for p in t.partitions)) for m in described.members]

    try:
        wait_until(lambda: (consume_one(consumer, seen), len(seen) >= 40)[1], timeout=60, what="first half",
                   every=0.01)
        with RawConnection(proc.bootstrap) as conn:
            before = member_state(conn)
        assert before[:2] == (NONE, "Stable") and before[3][0][1:] == (before[2], "c1", [0, 1, 2, 3])
        events.clear()
        proc.kill()
        proc.start()
        with RawConnection(proc.bootstrap) as conn:
            assert member_state(conn) == before  # loaded from the log, before any heartbeat
        for i, value in enumerate(sent[40:]):
            producer.produce(topic, value=value, partition=i % 4)
        producer.flush(30)
        wait_until(lambda: (consume_one(consumer, seen), len(seen) >= 80)[1], timeout=90, what="second half",
                   every=0.01)
        assert sorted(seen, key=int) == sent
        assert events == [], "the consumer's partitions were revoked or lost over the restart"
        with RawConnection(proc.bootstrap) as conn:
            assert member_state(conn) == before
    finally:
        consumer.close()
    with RawConnection(proc.bootstrap) as conn:
        wait_until(lambda: describe(conn, group)[0].group_state == "Empty", timeout=30, what="group Empty")
    proc.restart()
    with RawConnection(proc.bootstrap) as conn:
        described = describe(conn, group)[0]
        assert (described.error_code, described.group_state, described.members) == (NONE, "Empty", [])
        listed = conn.request(ListGroupsRequest(version=5, states_filter=[], types_filter=[])).groups
        assert [(g.group_type, g.group_state) for g in listed if g.group_id == group] == [("consumer", "Empty")]
        # DescribeGroups describes classic groups only, before a restart and after it alike.
        classic = conn.request(DescribeGroupsRequest(version=5, groups=[group])).groups[0]
        assert (classic.error_code, classic.group_state) == (NONE, "Dead")
        assert conn.request(DeleteGroupsRequest(version=2, groups_names=[group])).results[0].error_code == NONE
    proc.restart()
    with RawConnection(proc.bootstrap) as conn:
        assert describe(conn, group)[0].error_code == GROUP_ID_NOT_FOUND
        listed = conn.request(ListGroupsRequest(version=5, states_filter=[], types_filter=[])).groups
        assert group not in {g.group_id for g in listed}


def test_member_that_does_not_revoke_in_its_rebalance_timeout_is_removed(cbroker: BrokerProcess,
                                                                         conn: RawConnection) -> None:
    topic = new_topic(cbroker, 2)
    tid = topic_id(conn, topic)
    group = f"g-{topic}"
    a = hb(conn, group, "slow", 0, topics=[topic], owned={}, rebalance_ms=1000)
    assert parts(a) == {0, 1}
    assert join(conn, group, "fast", [topic]).error_code == NONE
    a = hb(conn, group, "slow", 1, owned={tid: [0, 1]})
    assert (a.member_epoch, len(parts(a))) == (1, 1)  # asked to give one partition up

    def slow_is_gone() -> bool:  # it keeps heartbeating, still owning both, past its 1 s rebalance timeout
        return hb(conn, group, "slow", 1, owned={tid: [0, 1]}).error_code == UNKNOWN_MEMBER_ID

    wait_until(slow_is_gone, timeout=30, what="the member that did not revoke to be removed")
    fast = hb(conn, group, "fast", describe(conn, group)[0].members[0].member_epoch, owned={})
    wait_until(lambda: describe(conn, group)[0].group_state == "Stable", timeout=30, what="Stable")
    fast = hb(conn, group, "fast", fast.member_epoch, owned={}, topics=[topic], rebalance_ms=30000)
    assert (fast.error_code, parts(fast)) == (NONE, {0, 1})

"""A KIP-848 consumer group whose coordinator moves to another broker of a cluster (two real brokers,
moto S3, the real controller): the new coordinator loads the group's records from the offsets
partition it took over, so the librdkafka member (group.protocol=consumer) keeps its member id,
epoch and partitions, and consumes on without a revoke and without a record twice."""

from __future__ import annotations

import uuid
from pathlib import Path

from clusterharness import Cluster
from confluent_kafka import Consumer, KafkaException, Producer
from kafkaclients import create_topic
from rawclient import RawConnection
from s3server import S3Bucket
from strata_broker.protocol.messages import ConsumerGroupDescribeRequest
from waiting import wait_until

OFFSETS = "__consumer_offsets"


def member_state(bootstrap: str, group: str) -> tuple:  # type: ignore[type-arg]
    """(error, state, group epoch, [(member id, epoch, client id, partitions)]) as a broker describes it."""
    with RawConnection(bootstrap) as conn:
        described = conn.request(ConsumerGroupDescribeRequest(version=1, group_ids=[group],
                                                              include_authorized_operations=False)).groups[0]
    return described.error_code, described.group_state, described.group_epoch, [
        (m.member_id, m.member_epoch, m.client_id,
         sorted(p for t in m.assignment.topic_partitions for p in t.partitions)) for m in described.members]


def consume_one(consumer: Consumer, seen: list[bytes]) -> None:
    """Poll once; a record is counted and its offset committed (retried while the coordinator moves)."""
    msg = consumer.poll(0.1)
    if msg is None or msg.error():
        return
    seen.append(msg.value())
    for attempt in range(100):
        try:
            consumer.commit(message=msg, asynchronous=False)
            return
        except KafkaException as exc:
            if attempt == 99 or not exc.args[0].retriable() and exc.args[0].code() not in (15, 16, 14):
                raise
            consumer.poll(0.1)


def test_consumer_group_members_survive_a_coordinator_move(tmp_path: Path, s3: S3Bucket) -> None:
    cluster = Cluster(tmp_path / "cluster", s3, 2, settings={"group.consumer.session.timeout.ms": "60000",
                                                             "group.consumer.heartbeat.interval.ms": "500"}).start()
    try:
        topic = f"moving-{uuid.uuid4().hex[:6]}"
        create_topic(cluster.bootstrap, topic, 4, {"strata.durability": "s3"})
        cluster.wait_placed(topic, 4)
        group = f"g-{topic}"
        producer = Producer({"bootstrap.servers": cluster.bootstrap})
        sent = [str(i).encode() for i in range(80)]

        def produce(values: list[bytes]) -> None:
            for value in values:
                producer.produce(topic, value=value, partition=int(value) % 4)
            assert producer.flush(60) == 0

        produce(sent[:40])
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "group.protocol": "consumer",
                             "client.id": "c1", "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "reconnect.backoff.max.ms": 500})
        events: list[str] = []
        consumer.subscribe([topic], on_revoke=lambda c, ps: events.append(f"revoke {len(ps)}"),
                           on_lost=lambda c, ps: events.append(f"lost {len(ps)}"))
        seen: list[bytes] = []
        try:
            wait_until(lambda: (consume_one(consumer, seen), len(seen) >= 40)[1], timeout=60, what="first half",
                       every=0.01)
            victim = cluster.coordinator(OFFSETS, group)  # the offsets topic exists since the first commit
            assert victim is not None
            survivor = 1 - victim
            before = member_state(cluster.brokers[victim].bootstrap, group)
            assert before[:2] == (0, "Stable") and before[3][0][2:] == ("c1", [0, 1, 2, 3])
            cluster.brokers[victim].kill()
            cluster.wait(lambda p: cluster.coordinator(OFFSETS, group) == survivor, 60, "the coordinator to move")
            wait_until(lambda: member_state(cluster.brokers[survivor].bootstrap, group)[0] == 0, timeout=60,
                       what="the new coordinator to have loaded the group")
            moved = member_state(cluster.brokers[survivor].bootstrap, group)
            assert moved[2:] == before[2:], "the member's id, epoch or partitions changed with the coordinator"
            produce(sent[40:])
            wait_until(lambda: (consume_one(consumer, seen), len(seen) >= 80)[1], timeout=120, what="second half",
                       every=0.01)
            assert sorted(seen, key=int) == sent, "a record consumed twice or never"
            assert events == [], "the consumer's partitions were revoked or lost over the move"
            assert member_state(cluster.brokers[survivor].bootstrap, group)[3] == before[3]
        finally:
            consumer.close()
    finally:
        cluster.stop()

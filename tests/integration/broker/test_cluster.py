"""Broker clusters (issue 10): three and four real broker processes sharing one moto S3
endpoint, the real controller process writing the placement file, and the real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import aiokafka
import confluent_kafka
import pytest
import secutil
from clusterharness import Cluster
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka import KafkaConsumer
from kafkaclients import PRODUCERS, Record, create_topic
from rawclient import RawConnection, produce, record_batch
from s3server import S3Bucket

NOT_LEADER_OR_FOLLOWER = 6


@pytest.fixture
def cluster_factory(tmp_path: Path, s3: S3Bucket):  # type: ignore[no-untyped-def]
    made: list[Cluster] = []

    def make(brokers: int = 3, **kwargs: object) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(made)}", s3, brokers, **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


# ---- group consumers, one per client library ----------------------------------------------------

def group_consume_confluent(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60,
                            **conf: str) -> list[Record]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **conf})
    consumer.subscribe([topic])
    try:
        out = _drain(consumer, expected, timeout)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def _drain(consumer: confluent_kafka.Consumer, expected: int, timeout: float) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if not msg.error():
                out.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value()))
    return out


def group_consume_kafka_python(bootstrap: str, topic: str, group: str, expected: int,
                               timeout: float = 60) -> list[Record]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.partitions_for_topic(topic)  # metadata first: see group_worker.py on kafka-python's rejoin stall
    consumer.subscribe([topic])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                out.extend(Record(tp.partition, m.offset, m.key, m.value) for m in msgs)
        consumer.commit()
    finally:
        consumer.close()
    return out


def group_consume_aiokafka(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60) -> list[Record]:
    async def run() -> list[Record]:
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=group,
                                             auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        out: list[Record] = []
        try:
            deadline = time.monotonic() + timeout
            while len(out) < expected and time.monotonic() < deadline:
                for tp, msgs in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                    out.extend(Record(tp.partition, m.offset, m.key, m.value) for m in msgs)
            await consumer.commit()
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def group_consume_kip848(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60) -> list[Record]:
    """librdkafka with the KIP-848 consumer group protocol (ConsumerGroupHeartbeat)."""
    return group_consume_confluent(bootstrap, topic, group, expected, timeout, **{"group.protocol": "consumer"})


GROUP_CONSUMERS = {"confluent-kafka": group_consume_confluent, "kafka-python": group_consume_kafka_python,
                   "aiokafka": group_consume_aiokafka, "confluent-kafka group.protocol=consumer": group_consume_kip848}


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([confluent_kafka.TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 60) -> list[Record]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"audit-{time.time_ns()}",
                                         "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                     for p in range(partitions)])
    try:
        return _drain(consumer, expected, timeout)
    finally:
        consumer.close()


def assert_log_consistent(acked: list[Record], seen: list[Record]) -> None:
    """Every acknowledged record is there at its offset, and no record sits at two offsets."""
    by_offset: dict[tuple[int, int], bytes | None] = {}
    for r in seen:
        previous = by_offset.setdefault((r.partition, r.offset), r.value)
        assert previous == r.value, f"two different records at {r.partition}/{r.offset}"
    for r in acked:
        assert by_offset.get((r.partition, r.offset)) == r.value, f"acknowledged record lost: {r.partition}/{r.offset}"
    where = Counter(v for v in by_offset.values())
    doubled = [v for v, n in where.items() if n > 1]
    assert not doubled, f"{len(doubled)} record(s) readable at two offsets, e.g. {doubled[:3]}"


class BackgroundProducer:
    """A confluent-kafka idempotent producer with acks=all, running until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: int = 400, label: str = "") -> None:
        self.label = label or topic
        self.producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                                  "enable.idempotence": True, "linger.ms": 5,
                                                  "message.timeout.ms": 120000})
        self.topic = topic
        self.rate = rate
        self.acked: list[Record] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _on_delivery(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value()))

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self.rate // 20):
                value = f"{self.label}-{self.sent:08d}".encode()
                try:
                    self.producer.produce(self.topic, key=str(self.sent % 97).encode(), value=value,
                                          on_delivery=self._on_delivery)
                    self.sent += 1
                except BufferError:
                    break
            self.producer.poll(0.05)

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        remaining = self.producer.flush(120)
        assert remaining == 0, f"{remaining} records never delivered"


def test_partitions_spread_and_every_client_works_across_brokers(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(3)
    topic = "spread"
    create_topic(cluster.bootstrap, topic, 12)
    leaders = cluster.wait_placed(topic, 12)
    assert sorted(Counter(leaders).values()) == [4, 4, 4], leaders
    # Each client is given the whole bootstrap list and nothing else.
    acked: list[Record] = []
    for client, produce_with in PRODUCERS.items():
        records = [(f"{client}-{i % 50}".encode(), f"{client}-{i}".encode()) for i in range(400)]
        acked += produce_with(cluster.bootstrap, topic, records)
    assert len(acked) == 1200
    assert {r.partition for r in acked} == set(range(12))
    for client, consume_with in GROUP_CONSUMERS.items():
        seen = consume_with(cluster.bootstrap, topic, f"group-{client}", len(acked))
        assert_log_consistent(acked, seen)
        offsets = committed(cluster.bootstrap, topic, f"group-{client}", 12)
        ends = {p: max(r.offset for r in acked if r.partition == p) + 1 for p in range(12)}
        assert offsets == ends, client
    # The group coordinators are spread as well: the offsets partitions have several leaders.
    assert len(set(cluster.leaders("__consumer_offsets"))) == 3


def test_killed_broker_is_replaced_and_s3_durable_records_survive(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(3)
    topic = "durable"
    create_topic(cluster.bootstrap, topic, 6, {"strata.durability": "s3"})
    leaders = cluster.wait_placed(topic, 6)
    victim = 1
    lost = [p for p, leader in enumerate(leaders) if leader == victim]
    assert lost
    producer = BackgroundProducer(cluster.bootstrap, topic).start()
    time.sleep(3)
    killed_at = time.monotonic()
    cluster.brokers[victim].kill()
    cluster.wait(lambda p: all(p.topics[topic].partitions[i].leader != victim for i in lost), 60,
                 "the killed broker's partitions to be placed elsewhere")
    # Served again: new records reach every partition the dead broker led.
    before = len(producer.acked)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if {r.partition for r in producer.acked[before:]} >= set(lost):
            break
        time.sleep(0.2)
    recovered = time.monotonic() - killed_at
    producer.stop()
    bound = (cluster.lease_ms + cluster.grace_ms) / 1000 + 30
    assert recovered < bound, f"clients resumed after {recovered:.1f}s (bound {bound:.0f}s)\n{cluster.logs()}"
    assert {r.partition for r in producer.acked[before:]} >= set(lost), cluster.logs()
    seen = read_all(cluster.bootstrap, topic, 6, len(producer.acked))
    assert_log_consistent(producer.acked, seen)
    # The broker comes back with its old disk: it gets partitions again (a member reappearing is
    # a scale-out) and its stale copies never resurface.
    cluster.brokers[victim].start()
    cluster.wait(lambda p: victim in [a.leader for a in p.topics[topic].partitions], 60,
                 "the restarted broker to lead partitions again")
    more = BackgroundProducer(cluster.bootstrap, topic, label="after-restart").start()
    time.sleep(3)
    more.stop()
    acked = producer.acked + more.acked
    seen = read_all(cluster.bootstrap, topic, 6, len(acked))
    assert_log_consistent(acked, seen)


def test_scale_out_moves_partitions_under_load(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(3)
    topic = "elastic"
    create_topic(cluster.bootstrap, topic, 12, {"strata.durability": "s3"})
    cluster.wait_placed(topic, 12)
    producer = BackgroundProducer(cluster.bootstrap, topic).start()
    group_seen: list[Record] = []
    stop_consuming = threading.Event()

    def consume() -> None:
        consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "elastic-readers",
                                             "auto.offset.reset": "earliest", "enable.auto.commit": True,
                                             "auto.commit.interval.ms": 500})
        consumer.subscribe([topic])
        try:
            while not stop_consuming.is_set():
                for msg in consumer.consume(1000, 0.3):
                    if not msg.error():
                        group_seen.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value()))
        finally:
            consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(3)
    cluster.add_broker()
    placement = cluster.wait(lambda p: sorted(Counter(a.leader for a in p.topics[topic].partitions).values())
                             == [3, 3, 3, 3], 60, "the topic spread over four brokers")
    moved = [p for p, a in enumerate(placement.topics[topic].partitions) if a.leader == 3]
    assert len(moved) == 3
    time.sleep(3)
    producer.stop()
    deadline = time.monotonic() + 60
    wanted = {(r.partition, r.offset) for r in producer.acked}
    while time.monotonic() < deadline and not wanted <= {(r.partition, r.offset) for r in group_seen}:
        time.sleep(0.3)
    stop_consuming.set()
    reader.join()
    assert not producer.failed, producer.failed[:3]
    # Every record exactly once by offset: nothing missing, nothing at two offsets.
    assert_log_consistent(producer.acked, group_seen)
    assert {r.partition for r in producer.acked if r.partition in moved}, "no writes reached the moved partitions"
    # Each move is a hand-over through S3, not a copy: seconds.
    times = cluster.takeover_times(3)
    assert len(times) >= 3 and max(times) < 10, (times, cluster.logs())


def test_stale_leader_cannot_accept_writes(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(3)
    topic = "fenced"
    create_topic(cluster.bootstrap, topic, 3, {"strata.durability": "s3"})
    leaders = cluster.wait_placed(topic, 3)
    stale = 2
    partition = leaders.index(stale)
    before = cluster.placement().topics[topic].partitions[partition]
    connection = RawConnection(cluster.brokers[stale].bootstrap)
    deadline = time.monotonic() + 30
    while True:  # the placement is out; the broker may still be taking the partition over
        first = connection.request(produce(topic, record_batch(1), partition=partition, acks=-1))
        code = first.responses[0].partition_responses[0].error_code
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0
    os.kill(cluster.brokers[stale].pid, signal.SIGSTOP)
    waiting = produce(topic, record_batch(1), partition=partition)
    try:
        cluster.wait(lambda p: p.topics[topic].partitions[partition].leader != stale, 60, "the partition to move")
        after = cluster.placement().topics[topic].partitions[partition]
        assert after.epoch > before.epoch
        # The new leader takes writes...
        new_leader = RawConnection(cluster.brokers[after.leader].bootstrap)
        deadline = time.monotonic() + 30
        while True:
            answer = new_leader.request(produce(topic, record_batch(1), partition=partition, acks=-1))
            code = answer.responses[0].partition_responses[0].error_code
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 0, cluster.logs()
        # ...while the old one, still stopped, gets a write into its socket.
        waiting.with_header(correlation_id=1000, client_id="stale-test")
        connection.sock.sendall(bytes(waiting.encode(header=True, framed=True)))
    finally:
        os.kill(cluster.brokers[stale].pid, signal.SIGCONT)
    (size,) = struct.unpack(">i", connection.read_exact(4))
    refused = waiting.header.get_response_class().decode(connection.read_exact(size), header=True)
    assert refused.responses[0].partition_responses[0].error_code == NOT_LEADER_OR_FOLLOWER
    again = connection.request(produce(topic, record_batch(1), partition=partition))
    assert again.responses[0].partition_responses[0].error_code == NOT_LEADER_OR_FOLLOWER
    # The partition's log is the new leader's: the record acknowledged before the pause, then
    # the one written after the move; nothing the stale broker was sent.
    seen = read_all(cluster.bootstrap, topic, 3, 2, timeout=20)
    assert sorted(r.offset for r in seen if r.partition == partition) == [0, 1], cluster.logs()


def test_credentials_and_acls_set_on_one_broker_hold_on_every_broker(cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {"admin": "admin-pw"})
    cluster = cluster_factory(3, listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "authorizer.enable": "true", "super.users": "User:admin"})
    sasl = [b.address("SASL_PLAINTEXT") for b in cluster.brokers]
    admin = AdminClient(secutil.confluent(sasl[0], secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", "admin",
                                                                "admin-pw")))
    topic = "secured"
    for f in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        f.result(30)
    assert sorted(cluster.wait_placed(topic, 3)) == [0, 1, 2]
    # A user and its ACL, created through broker 0 ...
    for f in admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "svc", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"svc-pw")]).values():
        f.result(30)
    binding = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:svc", "*",
                         AclOperation.WRITE, AclPermissionType.ALLOW)
    admin.create_acls([binding])[binding].result(30)

    def produce_everywhere() -> list[str]:
        """svc, bootstrapping from broker 2 only, writes to every partition (so to every broker)."""
        producer = confluent_kafka.Producer({**secutil.confluent(sasl[2], secutil.Auth(
            "SASL_PLAINTEXT", "SCRAM-SHA-512", "svc", "svc-pw")), "message.timeout.ms": 8000, "retries": 0})
        errors: list[str] = []
        for p in range(3):
            producer.produce(topic, value=b"v", partition=p,
                             on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
        producer.flush(20)
        return errors

    # ... authenticate and authorize on brokers 1 and 2 as well (within a second or so).
    deadline = time.monotonic() + 20
    while (errors := produce_everywhere()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not errors, errors
    # Deleted through broker 1: no broker lets svc write any more.
    admin1 = AdminClient(secutil.confluent(sasl[1], secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", "admin",
                                                                 "admin-pw")))
    for f in admin1.delete_acls([AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
                                                  "User:svc", "*", AclOperation.ANY,
                                                  AclPermissionType.ANY)]).values():
        f.result(30)
    deadline = time.monotonic() + 20
    while len(errors := produce_everywhere()) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(errors) == 3 and all("AUTHORIZATION" in e for e in errors), errors

"""The rest of the admin API (issue 22) on Strata alone: DeleteRecords on local and tiered partitions
(restart and restore from the bucket included), config sources and synonyms, the session-timeout
bounds a default kafka-python consumer needs, and the partition admin calls in a 3-broker cluster.

What Kafka answers for the same calls is checked in tests/integration/broker/test_kafka_differential.py.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import confluent_kafka
import pytest
from clusterharness import Cluster
from confluent_kafka import ElectionType, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.errors import PolicyViolationError
from kafka.protocol.admin import DescribeConfigsRequest
from kafka.protocol.consumer import OffsetForLeaderEpochRequest
from kafkaclients import consume_confluent, create_topic, produce_numbered
from rawclient import RawConnection
from s3server import CREDENTIALS
from waiting import wait_until

STATIC_BROKER_CONFIG, DEFAULT_CONFIG, TOPIC_CONFIG = 4, 5, 1
ELECTION_NOT_NEEDED, INVALID_REPLICA_ASSIGNMENT, NO_REASSIGNMENT_IN_PROGRESS = 84, 39, 85


def earliest(bootstrap: str, topic: str, partition: int = 0) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, partition)
    return admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(30).offset


def delete_records(bootstrap: str, topic: str, offsets: dict[int, int]) -> dict[int, int]:
    """kafka-python's admin: partition -> the low watermark the broker answered."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.delete_records({KpTopicPartition(topic, p): o for p, o in offsets.items()}, timeout_ms=30_000)
    finally:
        admin.close()
    return {tp.partition: info["low_watermark"] for tp, info in result.items()}


def produce_small_batches(bootstrap: str, topic: str, n: int) -> None:
    """n records of 1 KiB in batches of about 8 KiB, so small segments roll between batches."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                         "batch.size": 8192})
    for i in range(n):
        producer.produce(topic, value=f"{i:09d}".encode().ljust(1024, b"#"), partition=0)
        if i % 50 == 49:
            producer.flush(60)
    assert producer.flush(60) == 0


def remote_manifest(s3, topic: str) -> dict:
    """Partition 0's manifest in the bucket ({"segments": []} until the first upload writes it)."""
    keys = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/topics/{topic}-" in k]
    return json.loads(s3.read(keys[0])) if keys else {"segments": []}


# ---- DeleteRecords ---------------------------------------------------------------------------------

def test_delete_records_deletes_local_segments_and_survives_a_restart(broker_factory, topic_name):
    broker = broker_factory({"segment.bytes": str(64 << 10)})
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "-1"})
    produce_small_batches(broker.bootstrap, topic_name, 400)  # several 64 KiB segments
    partition_dir = broker.data_dir / f"{topic_name}-0"
    before = sorted(partition_dir.glob("*.log"))
    assert len(before) >= 5

    assert delete_records(broker.bootstrap, topic_name, {0: 250}) == {0: 250}
    assert earliest(broker.bootstrap, topic_name) == 250
    after = sorted(partition_dir.glob("*.log"))
    # Closed segments wholly below 250 are gone; the one holding 250 stays.
    assert len(after) < len(before)
    assert int(after[0].stem) <= 250
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=150, timeout=30)
    assert [r.offset for r in records] == list(range(250, 400))

    # Asking for less than the log start changes nothing and answers where the log starts.
    assert delete_records(broker.bootstrap, topic_name, {0: 10}) == {0: 250}

    broker.stop()
    broker.start()
    assert earliest(broker.bootstrap, topic_name) == 250
    assert delete_records(broker.bootstrap, topic_name, {0: -1}) == {0: 400}  # -1: the high watermark
    assert earliest(broker.bootstrap, topic_name) == 400


def test_delete_records_refuses_compacted_and_internal_topics(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, 1, {"cleanup.policy": "compact"})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(topic_name, key=b"k", value=b"v").get(30)
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        with pytest.raises(PolicyViolationError):
            admin.delete_records({KpTopicPartition(topic_name, 0): 1}, timeout_ms=30_000)
    finally:
        admin.close()
    assert earliest(broker.bootstrap, topic_name) == 0


def test_delete_records_on_a_tiered_partition(broker_factory, topic_name, s3):
    """The new log start reaches the manifest in the bucket at once; retention then deletes the
    remote segments wholly below it; a broker that lost its disk restores from the bucket and
    starts there too."""
    settings = s3.broker_settings(**{"segment.bytes": str(256 << 10), "tiered.upload.interval.ms": "1000",
                                     "log.retention.check.interval.ms": "500"})
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "-1", "local.retention.bytes": str(512 << 10)})
    n = 3000
    produce_numbered(broker.bootstrap, topic_name, n)
    wait_until(lambda: remote_manifest(s3, topic_name)["segments"]
               and remote_manifest(s3, topic_name)["segments"][-1]["last_offset"] >= 2000, 120, "uploads")
    segments = remote_manifest(s3, topic_name)["segments"]
    assert segments[0]["base_offset"] == 0 and len(segments) >= 4
    cut = segments[2]["base_offset"] + 5  # inside the third remote segment
    doomed = [s for s in segments if s["last_offset"] < cut]

    assert delete_records(broker.bootstrap, topic_name, {0: cut}) == {0: cut}
    assert remote_manifest(s3, topic_name)["log_start_offset"] == cut
    assert earliest(broker.bootstrap, topic_name) == cut
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=n - cut, timeout=120)
    assert [r.offset for r in records] == list(range(cut, n))

    def remote_logs() -> set[int]:
        return {int(k.rsplit("/", 1)[1].split("-")[0]) for k in s3.objects()
                if f"/topics/{topic_name}-" in k and k.endswith(".log")}

    wait_until(lambda: not remote_logs() & {s["base_offset"] for s in doomed}, 60, "remote segments below to go")
    kept = remote_manifest(s3, topic_name)["segments"]
    assert kept[0]["base_offset"] <= cut <= kept[0]["last_offset"]

    broker.stop()
    shutil.rmtree(broker.data_dir)
    broker.start()
    assert earliest(broker.bootstrap, topic_name) == cut
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=n - cut, timeout=120)
    assert [r.offset for r in records] == list(range(cut, n))


# ---- configs ---------------------------------------------------------------------------------------

def describe_raw(bootstrap: str, resource_type: int, name: str, keys: list[str]) -> dict:
    R = DescribeConfigsRequest.DescribeConfigsResource
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(DescribeConfigsRequest(version=4, resources=[R(
            resource_type=resource_type, resource_name=name, configuration_keys=keys)],
            include_synonyms=True, include_documentation=False))
    finally:
        conn.close()
    (result,) = response.results
    assert result.error_code == 0, result.error_message
    return {c.name: (c.value, c.config_source, [(s.name, s.value, s.source) for s in c.synonyms])
            for c in result.configs}


def test_config_sources_and_synonyms(broker_factory, topic_name):
    broker = broker_factory({"log.retention.ms": "1234567", "num.partitions": "2"})
    create_topic(broker.bootstrap, topic_name, 1, {"segment.bytes": "2000000"})
    topic = describe_raw(broker.bootstrap, 2, topic_name, ["retention.ms", "segment.bytes", "compression.type"])
    # Set on the broker: STATIC_BROKER_CONFIG, under the broker's name, then Kafka's default.
    assert topic["retention.ms"] == ("1234567", STATIC_BROKER_CONFIG, [
        ("log.retention.ms", "1234567", STATIC_BROKER_CONFIG), ("log.retention.ms", "604800000", DEFAULT_CONFIG)])
    assert topic["segment.bytes"] == ("2000000", TOPIC_CONFIG, [
        ("segment.bytes", "2000000", TOPIC_CONFIG), ("log.segment.bytes", "1073741824", DEFAULT_CONFIG)])
    assert topic["compression.type"] == ("producer", DEFAULT_CONFIG, [
        ("compression.type", "producer", DEFAULT_CONFIG)])
    node = describe_raw(broker.bootstrap, 4, "0", ["log.retention.ms", "num.partitions",
                                                   "group.min.session.timeout.ms", "log.segment.bytes"])
    assert node["log.retention.ms"][:2] == ("1234567", STATIC_BROKER_CONFIG)
    assert node["num.partitions"][:2] == ("2", STATIC_BROKER_CONFIG)
    assert node["group.min.session.timeout.ms"] == ("6000", DEFAULT_CONFIG, [
        ("group.min.session.timeout.ms", "6000", DEFAULT_CONFIG)])
    assert node["log.segment.bytes"][:2] == ("1073741824", DEFAULT_CONFIG)


def test_a_kafka_python_consumer_with_its_defaults_joins_a_group(broker, topic_name):
    """kafka-python's session.timeout.ms (10 s) lies within group.min/max.session.timeout.ms (6 s / 30 min)."""
    create_topic(broker.bootstrap, topic_name, 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(3):
        producer.send(topic_name, value=f"v{i}".encode()).get(30)
    producer.close()
    consumer = KafkaConsumer(topic_name, bootstrap_servers=broker.bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
                             auto_offset_reset="earliest")
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                seen += [r.value for r in records]
        assert seen == [b"v0", b"v1", b"v2"]
        assert consumer.assignment() == {KpTopicPartition(topic_name, 0)}
    finally:
        consumer.close()


# ---- a cluster -------------------------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path, s3):  # type: ignore[no-untyped-def]
    made = Cluster(tmp_path / "cluster", s3, 3).start()
    yield made
    made.stop()


def test_partition_admin_in_a_cluster(cluster, topic_name):
    """ElectLeaders: the placement already decided (ELECTION_NOT_NEEDED); a reassignment to the current
    leader is a no-op, to a broker that does not exist INVALID_REPLICA_ASSIGNMENT; DescribeLogDirs lists
    on each broker the partitions it leads; DeleteRecords and OffsetForLeaderEpoch reach the leaders;
    then a reassignment to another broker moves the partition (listed until done) and it serves there."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic_name, 3, 1)])[topic_name].result(30)
    leaders = cluster.wait_placed(topic_name, 3)
    wait_until(lambda: all(p.leader >= 0 for p in admin.list_topics(topic_name, timeout=10)
                           .topics[topic_name].partitions.values()), 30, "leaders in metadata")
    producer = confluent_kafka.Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for p in range(3):
        for i in range(10):
            producer.produce(topic_name, value=f"{p}-{i}".encode(), partition=p)
    assert producer.flush(60) == 0

    kp = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        elected = kp.elect_leaders(0, {topic_name: [0, 1, 2]}, raise_errors=False)
        assert sorted((p.partition_id, p.error_code) for t in elected.replica_election_results
                      for p in t.partition_result) == [(0, ELECTION_NOT_NEEDED), (1, ELECTION_NOT_NEEDED),
                                                       (2, ELECTION_NOT_NEEDED)]
        tp = KpTopicPartition(topic_name, 0)
        assert kp.alter_partition_reassignments({tp: [leaders[0]]}).get(tp) is None
        refused = kp.alter_partition_reassignments({tp: [7]})
        assert refused[tp].errno == INVALID_REPLICA_ASSIGNMENT
        assert kp.alter_partition_reassignments({tp: None})[tp].errno == NO_REASSIGNMENT_IN_PROGRESS
        assert kp.list_partition_reassignments() == {}

        by_broker = {d["broker"]: d["log_dirs"] for d in kp.describe_log_dirs([topic_name])}
        for node, dirs in by_broker.items():
            listed = sorted(p["partition_index"] for d in dirs for t in d["topics"] if t["name"] == topic_name
                            for p in t["partitions"])
            assert listed == [p for p in range(3) if leaders[p] == node]
        assert kp.delete_records({KpTopicPartition(topic_name, p): 4 for p in range(3)}, timeout_ms=30_000) \
            and all(earliest(cluster.bootstrap, topic_name, p) == 4 for p in range(3))
    finally:
        kp.close()

    metadata = admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[0]
    leader_broker = cluster.brokers[metadata.leader]
    epoch = cluster.placement().topics[topic_name].partitions[0].epoch
    conn = RawConnection(leader_broker.bootstrap)
    try:
        T = OffsetForLeaderEpochRequest.OffsetForLeaderTopic

        def end_of(leader_epoch: int) -> tuple[int, int, int]:
            response = conn.request(OffsetForLeaderEpochRequest(version=4, replica_id=-1, topics=[T(
                topic=topic_name, partitions=[T.OffsetForLeaderPartition(partition=0, current_leader_epoch=-1,
                                                                         leader_epoch=leader_epoch)])]))
            (answer,) = response.topics[0].partitions
            return answer.error_code, answer.leader_epoch, answer.end_offset

        assert end_of(epoch) == (0, epoch, 10)  # the leader's epoch ends at the log end
        if epoch > 0:  # an epoch before the leader's first: it ends where the leader's began (Kafka)
            assert end_of(0) == (0, 0, 0)
    finally:
        conn.close()

    # A reassignment to another broker moves the partition's leadership there (S3 hand-over).
    other = next(b for b in range(3) if b != leaders[0])
    kp = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        assert kp.alter_partition_reassignments({tp: [other]}) == {tp: None}
        listed = kp.list_partition_reassignments()
        # In progress until the new leader took the partition over (the controller may already be done).
        assert listed in ({tp: {"replicas": [other], "adding_replicas": [other], "removing_replicas": [leaders[0]]}},
                          {tp: {"replicas": [other], "adding_replicas": [], "removing_replicas": []}}, {}), listed
        cluster.wait(lambda p: p.topics[topic_name].partitions[0].leader == other, 60, "the move in the placement")
        wait_until(lambda: kp.list_partition_reassignments() == {}, 60, "the reassignment to be done")
        assert cluster.leaders(topic_name)[1:] == leaders[1:]  # nothing else moved
    finally:
        kp.close()
    wait_until(lambda: admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[0].leader == other,
               60, "metadata naming the new leader")
    producer.produce(topic_name, value=b"after-move", partition=0)
    assert producer.flush(60) == 0
    values = [r.value for r in consume_confluent(cluster.bootstrap, topic_name, 1, 7)]
    assert values == [f"0-{i}".encode() for i in range(4, 10)] + [b"after-move"]


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")  # the call under test
def test_confluent_elect_leaders_and_legacy_alter_configs(broker, topic_name):
    """confluent-kafka's AdminClient: elect_leaders (ELECTION_NOT_NEEDED per partition, as Kafka when the
    preferred replica leads) and the deprecated non-incremental alter_configs (unnamed configs reset)."""
    create_topic(broker.bootstrap, topic_name, 2, {"retention.ms": "1000"})
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tps = [TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)]
    result = admin.elect_leaders(ElectionType.PREFERRED, tps).result(30)
    assert {(tp.partition, err.name() if err else None) for tp, err in result.items()} == {
        (0, "ELECTION_NOT_NEEDED"), (1, "ELECTION_NOT_NEEDED")}

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name, set_config={"segment.bytes": "3000000"})
    admin.alter_configs([resource])[resource].result(30)
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic_name)])
    (entries,) = [f.result(30) for f in described.values()]
    assert entries["segment.bytes"].value == "3000000"
    assert entries["retention.ms"].value == "604800000"  # not named: back to the default
    assert entries["retention.ms"].source == confluent_kafka.admin.ConfigSource.DEFAULT_CONFIG.value


# ---- message.timestamp.type=LogAppendTime --------------------------------------------------------

def test_log_append_time_is_kept_by_compaction_and_used_by_timestamp_lookups(broker_factory, topic_name):
    """The broker stamps batches as it appends them; kafka-python reads the append time with its type;
    offsets_for_times searches the append times; the cleaner's rebuilt batches keep type and time."""
    broker = broker_factory({"log.cleaner.backoff.ms": "200"})
    create_topic(broker.bootstrap, topic_name, 1, {
        "message.timestamp.type": "LogAppendTime", "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
        "segment.bytes": str(64 << 10), "segment.ms": "500"})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    start = int(time.time() * 1000)
    for round_keys in (20, 20, 10):  # batches of several records; the last rewrites half the keys, so the
        for i in range(round_keys):   # cleaner rebuilds the batch before it with the other half
            producer.send(topic_name, key=f"k{i}".encode(), value=f"{i}".ljust(512, "#").encode(),
                          timestamp_ms=1_000 + i)
        producer.flush(30)
    time.sleep(0.6)
    producer.send(topic_name, key=b"sentinel", value=b"x", timestamp_ms=5).get(30)  # rolls the active segment
    producer.close()
    end = int(time.time() * 1000)

    def read() -> list:  # type: ignore[type-arg]
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        consumer.assign([KpTopicPartition(topic_name, 0)])
        try:
            return list(consumer)
        finally:
            consumer.close()

    first = read()  # 51 records, or fewer if the cleaner was already there
    assert len(first) >= 21 and first[-1].key == b"sentinel"
    assert all(r.timestamp_type == 1 and start <= r.timestamp <= end for r in first)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        tp = KpTopicPartition(topic_name, 0)
        middle = first[len(first) // 2]
        # (the cleaner may remove records meanwhile: the answer is a record of the same append time)
        assert consumer.offsets_for_times({tp: middle.timestamp})[tp].timestamp == middle.timestamp
        assert consumer.offsets_for_times({tp: 1_000})[tp].timestamp >= start  # not the producer's 1000 + i
    finally:
        consumer.close()

    wait_until(lambda: len(read()) == 21, 60, "compaction down to one record per key")
    compacted = read()
    by_offset = {r.offset: r.timestamp for r in first}
    assert all(r.timestamp_type == 1 and start <= r.timestamp <= end for r in compacted)
    assert all(r.timestamp == by_offset[r.offset] for r in compacted if r.offset in by_offset)

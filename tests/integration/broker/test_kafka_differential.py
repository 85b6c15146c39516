"""Differential compatibility: the same scenarios against Apache Kafka and against Strata, compared.

Each scenario runs with real clients (confluent-kafka, kafka-python's protocol codecs) against one
Apache Kafka 4.x KRaft node (tests/support/kafkaref.py) and one Strata broker, and returns its observations as
a dict (field -> value). The two dicts must be equal field by field, except where KNOWN_DIFFERENCES (the one list
of them, mirrored in docs/references.md) says what each side answers: there both sides must answer
exactly that, so a difference that goes away or changes fails as surely as a new one. The two
`test_strata_*` tests at the end pin the small fixes this comparison led to, with Strata alone.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from brokerproc import BrokerProcess, free_port
from confluent_kafka import Consumer, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)
from faultproxy import KafkaProxy
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka.protocol.admin import AlterConfigsRequest, CreateTopicsRequest, DeleteTopicsRequest, ListGroupsRequest
from kafka.protocol.consumer import JoinGroupRequest, LeaveGroupRequest, OffsetForLeaderEpochRequest
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment
from kafka.protocol.metadata import FindCoordinatorRequest
from kafka.protocol.producer import InitProducerIdRequest, ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafkaclients import consume_confluent, consume_to_end, produce_confluent
from kafkaref import KafkaBroker, missing_tools
from rawclient import RawConnection, fetch, metadata, produce, record_batch
from test_groups_protocol import commit as group_commit
from test_groups_protocol import describe as describe_group
from test_groups_protocol import heartbeat, join, subscription, sync

DOCS = Path(__file__).resolve().parents[3] / "docs" / "references.md"
SETTINGS = {"auto.create.topics.enable": "true", "num.partitions": "1"}

# (scenario, field) -> (what Kafka answers, what Strata answers, why). The only place differences are
# allowed; docs/references.md has the same table for readers (a test checks it lists every entry).
KNOWN_DIFFERENCES: dict[tuple[str, str], tuple[Any, Any, str]] = {
    ("describe_configs", "names only here"): (
        [], ["strata.durability", "strata.key.schema.validation", "strata.value.schema.validation"],
        "Strata describes every Kafka topic config (those without effect documented in "
        "docs/kafka-compatibility.md) and adds its own durability and schema-validation settings"),
    ("describe_configs", "config min.insync.replicas"): (
        ("1", "DYNAMIC_DEFAULT_BROKER_CONFIG", False, False, False), ("1", "DEFAULT_CONFIG", False, False, True),
        "a KRaft cluster stores min.insync.replicas=1 as a dynamic cluster-wide default when it is formatted; "
        "Strata has no dynamic broker configs, and the value is the same"),
    ("internal_topics", "create __<name>"): (
        0, 17,
        "Strata reserves every name starting with __ (and _schemas) for its internal topics from the first "
        "start, so no client can create one and write forged records into it (INVALID_TOPIC_EXCEPTION)"),
    ("internal_topics", "create _schemas, validate only"): (
        0, 17, "_schemas is the schema registry's internal topic in Strata: reserved like the __ names"),
    ("internal_topics", "delete __<name>"): (
        0, 42,
        "no admin request deletes, grows or reconfigures an internal topic (or a reserved name) in Strata, "
        "whoever asks (INVALID_REQUEST); Kafka deletes it"),
    ("idempotence", "unknown producer id, seq 5"): (
        (0, 8), (45, -1),
        "Kafka accepts any first sequence from a producer id it holds no state for (its state may have "
        "expired); Strata answers OUT_OF_ORDER_SEQUENCE_NUMBER unless a new producer id starts at 0"),
    ("consumer_group_wire", "classic join into a consumer group"): (
        (0, 0), (0, 23),
        "Kafka (group.consumer.migration.policy=bidirectional) lets a classic member join a consumer group "
        "that has members; a Strata group is classic or consumer until it is Empty "
        "(INCONSISTENT_GROUP_PROTOCOL)"),
}

Observations = dict[str, Any]


# ---- the two brokers -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka_and_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, KafkaProxy]]:
    """Apache Kafka with SETTINGS, plus a FLAKY listener reached through a produce-response-dropping proxy."""
    missing = missing_tools()
    if missing:
        pytest.skip(missing)
    upstream = free_port()
    proxy = KafkaProxy(upstream, drop_api_key=PRODUCE, probability=0.2, max_drops=15)
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-ref"), settings=SETTINGS,
                         extra_listeners={"FLAKY": (upstream, f"127.0.0.1:{proxy.port}")})
    try:
        yield broker.start(), proxy
    finally:
        broker.stop()
        proxy.close()


@pytest.fixture(scope="module")
def kafka(kafka_and_proxy: tuple[KafkaBroker, KafkaProxy]) -> KafkaBroker:
    return kafka_and_proxy[0]


@pytest.fixture(scope="module")
def strata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("strata-ref") / "broker", settings=SETTINGS).start()
    yield proc
    proc.stop()


@pytest.fixture
def both(kafka: KafkaBroker, strata: BrokerProcess) -> Callable[[str, Callable[[str, str], Observations]], None]:
    """Run a scenario against each broker (the same names on each) and compare what it observed."""

    def run(scenario: str, body: Callable[[str, str], Observations]) -> None:
        name = f"d-{uuid.uuid4().hex[:8]}"
        seen = {"kafka": body(kafka.bootstrap, name), "strata": body(strata.bootstrap, name)}
        compare(scenario, seen["kafka"], seen["strata"])

    return run


def compare(scenario: str, kafka_obs: Observations, strata_obs: Observations) -> None:
    assert kafka_obs.keys() == strata_obs.keys(), "scenarios observe the same fields on both brokers"
    problems = []
    for field, k in kafka_obs.items():
        s = strata_obs[field]
        documented = KNOWN_DIFFERENCES.get((scenario, field))
        if documented is not None:
            if (k, s) != documented[:2]:
                problems.append(f"{field}: documented kafka={documented[0]!r} strata={documented[1]!r}, "
                                f"observed kafka={k!r} strata={s!r}")
        elif k != s:
            problems.append(f"{field}: kafka={k!r} strata={s!r}")
    assert not problems, f"{scenario}:\n  " + "\n  ".join(problems)


def outcome(future: Any, timeout: float = 30.0) -> str:
    """NONE when an admin future succeeds, else the Kafka error's name."""
    try:
        future.result(timeout)
        return "NONE"
    except KafkaException as exc:
        return exc.args[0].name()


def admin_for(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create(admin: AdminClient, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    assert outcome(admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})])[topic]) == "NONE"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{topic} has no leaders after 30 s")


# ---- admin calls and their error codes ---------------------------------------------------------

def admin_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    obs: Observations = {}

    def create_one(label: str, topic: NewTopic, **kw: Any) -> None:
        obs[label] = outcome(admin.create_topics([topic], **kw)[topic.topic])

    create_one("create", NewTopic(name, 3, 1))
    create_one("create existing", NewTopic(name, 3, 1))
    create_one("create 0 partitions", NewTopic(f"{name}-p0", 0, 1))
    create_one("create replication factor 3", NewTopic(f"{name}-rf3", 1, 3))
    create_one("create replication factor 0", NewTopic(f"{name}-rf0", 1, 0))
    create_one("create invalid name", NewTopic(f"{name} has spaces", 1, 1))
    create_one("create name of 250 chars", NewTopic("x" * 250, 1, 1))
    create_one("create '..'", NewTopic("..", 1, 1))
    create_one("create bad config value", NewTopic(f"{name}-badval", 1, 1, config={"retention.ms": "soon"}))
    create_one("create unknown config", NewTopic(f"{name}-unk", 1, 1, config={"no.such.config": "1"}))
    create_one("create validate_only", NewTopic(f"{name}-vo", 2, 1), validate_only=True)
    time.sleep(0.5)
    topics = admin.list_topics(timeout=10).topics
    obs["validate_only topic exists"] = f"{name}-vo" in topics
    obs["failed creations left topics"] = sorted(t for t in topics if t.startswith(f"{name}-"))

    described = admin.describe_topics(TopicCollection([name]))[name].result(30)
    obs["describe partitions"] = [(p.id, len(p.replicas), len(p.isr)) for p in described.partitions]
    obs["describe internal"] = described.is_internal
    obs["describe unknown topic"] = outcome(admin.describe_topics(TopicCollection([f"{name}-none"]))[f"{name}-none"])

    obs["add partitions to fewer"] = outcome(admin.create_partitions([NewPartitions(name, 2)])[name])
    obs["add partitions to same"] = outcome(admin.create_partitions([NewPartitions(name, 3)])[name])
    obs["add partitions to unknown"] = outcome(
        admin.create_partitions([NewPartitions(f"{name}-none", 4)])[f"{name}-none"])
    obs["add partitions 3->4"] = outcome(admin.create_partitions([NewPartitions(name, 4)])[name])

    unknown = ConfigResource(ConfigResource.Type.TOPIC, f"{name}-none")
    obs["describe configs unknown topic"] = outcome(admin.describe_configs([unknown])[unknown])
    bad_alter = ConfigResource(ConfigResource.Type.TOPIC, f"{name}-none", incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    obs["alter configs unknown topic"] = outcome(admin.incremental_alter_configs([bad_alter])[bad_alter])
    bad_value = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    obs["alter configs bad value"] = outcome(admin.incremental_alter_configs([bad_value])[bad_value])

    obs["delete unknown"] = outcome(admin.delete_topics([f"{name}-none"])[f"{name}-none"])
    obs["delete"] = outcome(admin.delete_topics([name])[name])
    deadline = time.monotonic() + 30
    while name in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    obs["deleted topic listed"] = name in admin.list_topics(timeout=10).topics
    obs["delete again"] = outcome(admin.delete_topics([name])[name])
    return obs


def test_admin_calls_and_error_codes(both):
    both("admin", admin_scenario)


# ---- ListOffsets by timestamp ------------------------------------------------------------------

def list_offsets_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 1)
    base = int(time.time() * 1000) - 600_000  # ten minutes ago: inside every timestamp bound
    stamps = [base, base + 1000, base + 1000, base + 2000, base + 3000, base + 500]  # the last is out of order
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for i, ts in enumerate(stamps):
        producer.produce(name, value=f"v{i}".encode(), partition=0, timestamp=ts)
        producer.flush(30)  # one batch per record: offsets and timestamps line up one to one
    assert producer.flush(30) == 0
    tp = TopicPartition(name, 0)
    specs = {"earliest": OffsetSpec.earliest(), "latest": OffsetSpec.latest(),
             "max timestamp": OffsetSpec.max_timestamp()}
    for label, ts in (("before all", base - 1), ("first", base), ("between", base + 400), ("tie", base + 1000),
                      ("later", base + 2500), ("last", base + 3000), ("after all", base + 3001)):
        specs[f"timestamp {label}"] = OffsetSpec.for_timestamp(ts)
    obs: Observations = {}
    for label, spec in specs.items():
        info = admin.list_offsets({tp: spec})[tp].result(30)
        obs[label] = (info.offset, info.timestamp - base if info.timestamp >= 0 else info.timestamp)
        obs[f"{label} leader epoch"] = info.leader_epoch
    empty = f"{name}-empty"
    create(admin, empty, 1)
    etp = TopicPartition(empty, 0)
    for label, spec in (("earliest", OffsetSpec.earliest()), ("latest", OffsetSpec.latest()),
                        ("max timestamp", OffsetSpec.max_timestamp()), ("timestamp", OffsetSpec.for_timestamp(base))):
        info = admin.list_offsets({etp: spec})[etp].result(30)
        obs[f"empty partition {label}"] = (info.offset, info.timestamp, info.leader_epoch)
    missing = TopicPartition(name, 7)
    obs["unknown partition"] = outcome(admin.list_offsets({missing: OffsetSpec.latest()})[missing])
    return obs


def test_list_offsets_by_timestamp(both):
    both("list_offsets", list_offsets_scenario)


# ---- DeleteRecords and the log start offset ----------------------------------------------------

def delete_records_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for i in range(10):
        producer.produce(name, value=f"v{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    obs: Observations = {}

    def delete_before(offset: int, topic: str = name) -> Any:
        tp = TopicPartition(topic, 0, offset)
        try:
            return admin.delete_records([tp], request_timeout=30)[tp].result(30).low_watermark
        except KafkaException as exc:
            return exc.args[0].name()

    obs["delete before 4"] = delete_before(4)
    earliest = TopicPartition(name, 0)
    obs["earliest after"] = admin.list_offsets({earliest: OffsetSpec.earliest()})[earliest].result(30).offset
    obs["delete before 2 (already gone)"] = delete_before(2)
    obs["delete beyond the end"] = delete_before(50)
    obs["delete unknown topic"] = delete_before(1, f"{name}-none")  # librdkafka's own answer: _NOENT
    consumed = consume_confluent(bootstrap, name, 1, expected=6, timeout=30)
    obs["consumed from the beginning"] = [r.offset for r in consumed]
    obs["delete all (-1 = high watermark)"] = delete_before(-1)
    obs["earliest at the end"] = admin.list_offsets({earliest: OffsetSpec.earliest()})[earliest].result(30).offset
    return obs


def test_delete_records(both):
    both("delete_records", delete_records_scenario)


# ---- consumer-group rebalance with two consumers -----------------------------------------------

def rebalance_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 4)
    group = f"g-{name}"
    assigned: dict[str, set[int]] = {"a": set(), "b": set()}
    consumers: dict[str, Consumer] = {}

    def track(member: str) -> dict[str, Any]:
        def on_assign(_c: Consumer, parts: list[TopicPartition]) -> None:
            assigned[member] = {p.partition for p in parts}

        def on_revoke(_c: Consumer, _parts: list[TopicPartition]) -> None:
            assigned[member] = set()
        return {"on_assign": on_assign, "on_revoke": on_revoke}

    def make(member: str) -> Consumer:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                      "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
        c.subscribe([name], **track(member))
        consumers[member] = c
        return c

    def settled() -> bool:
        return all(assigned.values()) and sum(map(len, assigned.values())) == 4

    try:
        make("a")
        deadline = time.monotonic() + 60
        while not assigned["a"] and time.monotonic() < deadline:
            consumers["a"].poll(0.2)
        first = sorted(assigned["a"])
        make("b")
        while not settled() and time.monotonic() < deadline:
            for c in consumers.values():
                c.poll(0.1)
        obs: Observations = {
            "first member alone gets": first,
            "assignment sizes": sorted(len(p) for p in assigned.values()),
            "union": sorted(assigned["a"] | assigned["b"]),
            "overlap": sorted(assigned["a"] & assigned["b"]),
        }
        # Keep both members polling while the group is described: it must stay stable meanwhile.
        description = admin.describe_consumer_groups([group])[group]
        while not description.done():
            for c in consumers.values():
                c.poll(0.05)
        desc = description.result()
        obs["group state"] = desc.state.name
        obs["group type"] = desc.type.name
        obs["members"] = len(desc.members)
        obs["assignor"] = desc.partition_assignor
        obs["member assignments"] = sorted(sorted(tp.partition for tp in m.assignment.topic_partitions)
                                           for m in desc.members)
        obs["described matches consumers"] = obs["member assignments"] == sorted(sorted(p) for p in assigned.values())
    finally:
        for c in consumers.values():
            c.close()
    return obs


def test_group_rebalance_with_two_consumers(both):
    both("rebalance", rebalance_scenario)


# ---- the classic group protocol on the wire ------------------------------------------------------

def group_wire_scenario(bootstrap: str, name: str) -> Observations:
    create(admin_for(bootstrap), name, 2)
    group = f"g-{name}"
    conn = RawConnection(bootstrap)
    obs: Observations = {}
    try:
        # As a client does: find the coordinator, then retry while it is still loading the offsets topic
        # (Kafka creates __consumer_offsets on the first FindCoordinator, then loads its partitions).
        deadline = time.monotonic() + 60
        while True:
            found = conn.request(FindCoordinatorRequest(version=3, key=group, key_type=0))
            if found.error_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        obs["find coordinator"] = found.error_code
        protocols = [("range", subscription(name))]
        while True:
            first = join(conn, group, protocols=protocols)
            if first.error_code not in RETRIABLE_COORDINATOR_ERRORS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        obs["join without a member id"] = (first.error_code, bool(first.member_id))
        joined = join(conn, group, member_id=first.member_id, protocols=protocols)
        me, gen = first.member_id, joined.generation_id
        obs["join"] = (joined.error_code, gen, joined.protocol_name, joined.leader == me, len(joined.members))
        obs["join with session timeout 1 ms"] = join(conn, f"{group}-x", session_ms=1, protocols=protocols).error_code
        obs["join with protocol type 'other'"] = join(conn, group, member_id=me, protocol_type="other",
                                                      protocols=protocols).error_code
        assignment = bytes(ConsumerProtocolAssignment(
            version=0, assigned_partitions=[ConsumerProtocolAssignment.TopicPartition(topic=name, partitions=[0, 1])],
            user_data=None).encode())
        synced = sync(conn, group, gen, me, {me: assignment})
        obs["sync as leader"] = (synced.error_code, bytes(synced.assignment) == assignment)
        obs["sync unknown member"] = sync(conn, group, gen, "nobody").error_code
        obs["heartbeat"] = heartbeat(conn, group, gen, me)
        obs["heartbeat wrong generation"] = heartbeat(conn, group, gen + 5, me)
        obs["heartbeat unknown member"] = heartbeat(conn, group, gen, "nobody")
        obs["heartbeat unknown group"] = heartbeat(conn, f"{group}-none", 1, "nobody")
        obs["commit"] = sorted(group_commit(conn, group, gen, me, {(name, 0): 5}).values())
        obs["commit wrong generation"] = sorted(group_commit(conn, group, gen + 5, me, {(name, 0): 6}).values())
        obs["commit unknown member"] = sorted(group_commit(conn, group, gen, "nobody", {(name, 0): 6}).values())
        obs["commit unknown partition"] = sorted(group_commit(conn, group, gen, me, {(name, 9): 1}).values())
        obs["commit metadata of 5000 bytes"] = sorted(
            group_commit(conn, group, gen, me, {(name, 1): 1}, metadata="x" * 5000).values())
        obs["simple commit (generation -1, no member)"] = sorted(
            group_commit(conn, f"{group}-simple", -1, "", {(name, 0): 3}).values())
        obs["simple commit into the live group"] = sorted(group_commit(conn, group, -1, "", {(name, 0): 7}).values())
        obs["described"] = (lambda d: (d.error_code, d.group_state, d.protocol_type, d.protocol_data,
                                       len(d.members)))(describe_group(conn, group))
        left = conn.request(LeaveGroupRequest(version=3, group_id=group, members=[
            LeaveGroupRequest.MemberIdentity(member_id=m, group_instance_id=None) for m in (me, "nobody")]))
        obs["leave (member, unknown member)"] = (left.error_code, [m.error_code for m in left.members])
        obs["described after leave"] = (lambda d: (d.group_state, len(d.members)))(describe_group(conn, group))
    finally:
        conn.close()
    return obs


def test_group_protocol_on_the_wire(both):
    both("group_wire", group_wire_scenario)


# ---- committed offsets -------------------------------------------------------------------------

def committed_offsets_scenario(bootstrap: str, name: str) -> Observations:
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = admin_for(bootstrap)
    create(admin, name, 3)
    group = f"g-{name}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    obs: Observations = {}
    try:
        consumer.assign([TopicPartition(name, p) for p in range(3)])
        committed = consumer.commit(offsets=[TopicPartition(name, 0, 5, metadata="m0"),
                                             TopicPartition(name, 1, 7)], asynchronous=False)
        obs["commit result"] = sorted((tp.partition, tp.offset, tp.error) for tp in committed)
        fetched = consumer.committed([TopicPartition(name, p) for p in range(3)], timeout=30)
        obs["committed"] = [(tp.partition, tp.offset, tp.metadata, tp.error) for tp in fetched]
        consumer.commit(offsets=[TopicPartition(name, 0, 9)], asynchronous=False)
        fetched = consumer.committed([TopicPartition(name, 0)], timeout=30)
        obs["committed after recommit"] = [(tp.partition, tp.offset, tp.metadata) for tp in fetched]

        request = ConsumerGroupTopicPartitions(group)
        listed = admin.list_consumer_group_offsets([request])[group].result(30)
        obs["list_consumer_group_offsets"] = sorted(
            (tp.topic == name, tp.partition, tp.offset, tp.metadata, tp.error) for tp in listed.topic_partitions)
        some = ConsumerGroupTopicPartitions(group, [TopicPartition(name, 1), TopicPartition(name, 2)])
        listed = admin.list_consumer_group_offsets([some])[group].result(30)
        obs["list_consumer_group_offsets partitions"] = sorted(
            (tp.partition, tp.offset, tp.error) for tp in listed.topic_partitions)
        nobody = ConsumerGroupTopicPartitions(f"{group}-none")
        listed = admin.list_consumer_group_offsets([nobody])[f"{group}-none"].result(30)
        obs["list_consumer_group_offsets unknown group"] = [tp.partition for tp in listed.topic_partitions]
        groups = admin.list_consumer_groups().result(30)
        listing = {g.group_id: g for g in groups.valid}
        obs["group listed"] = group in listing
        obs["listed state"] = listing[group].state.name if group in listing else None
        obs["listed simple"] = listing[group].is_simple_consumer_group if group in listing else None
        desc = admin.describe_consumer_groups([f"{group}-none"])[f"{group}-none"].result(30)
        obs["describe unknown group state"] = desc.state.name
    finally:
        consumer.close()
    obs["delete group"] = outcome(admin.delete_consumer_groups([group])[group])
    obs["delete unknown group"] = outcome(admin.delete_consumer_groups([f"{group}-none"])[f"{group}-none"])
    after = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    obs["offsets after delete"] = [tp.offset for tp in after.topic_partitions]
    return obs


def test_committed_offsets(both):
    both("committed_offsets", committed_offsets_scenario)


# ---- DescribeConfigs for a topic ---------------------------------------------------------------

# ---- the partition-level admin APIs (issue 22) ----------------------------------------------------

def partition_admin_scenario(bootstrap: str, name: str) -> Observations:
    """DescribeLogDirs, ElectLeaders, Alter/ListPartitionReassignments, AlterReplicaLogDirs,
    OffsetForLeaderEpoch and the legacy AlterConfigs, through kafka-python's admin and codecs."""
    admin = admin_for(bootstrap)
    create(admin, name, 2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for i in range(5):
        producer.produce(name, value=f"v{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    leader = admin.list_topics(name, timeout=10).topics[name].partitions[0].leader
    kp = KafkaAdminClient(bootstrap_servers=bootstrap)
    obs: Observations = {}
    try:
        (broker_dirs,) = kp.describe_log_dirs({name: [0, 1]})  # one broker
        obs["log dirs"] = len(broker_dirs["log_dirs"])
        obs["log dir partitions"] = sorted(
            (t["name"], p["partition_index"], p["partition_size"] > 0, p["offset_lag"], p["is_future_key"])
            for d in broker_dirs["log_dirs"] for t in d["topics"] for p in t["partitions"])
        log_dir = broker_dirs["log_dirs"][0]["log_dir"]

        def elect(partitions: dict[str, list[int]], election_type: int = 0) -> Any:
            response = kp.elect_leaders(election_type, partitions, raise_errors=False)
            return [(t.topic, p.partition_id, p.error_code) for t in response.replica_election_results
                    for p in t.partition_result]

        obs["elect preferred"] = elect({name: [0, 1]})
        obs["elect unclean"] = elect({name: [0]}, 1)
        obs["elect unknown partition"] = elect({name: [7]})
        obs["list reassignments"] = kp.list_partition_reassignments()
        tp = KpTopicPartition(name, 0)

        def reassign(replicas: list[int] | None) -> Any:
            result = kp.alter_partition_reassignments({tp: replicas})
            return None if result.get(tp) is None else result[tp].__name__

        obs["reassign to the current replica"] = reassign([leader])
        obs["cancel a reassignment"] = reassign(None)
        obs["reassign to a broker that does not exist"] = reassign([leader + 100])
        obs["move to the current log dir"] = {k[:2]: v.__name__ for k, v in kp.alter_replica_log_dirs(
            {(name, 0, leader): log_dir}).items()}
        obs["move to an unknown log dir"] = {k[:2]: v.__name__ for k, v in kp.alter_replica_log_dirs(
            {(name, 0, leader): log_dir + "-elsewhere"}).items()}

        def epoch_end(epoch: int, current: int = -1) -> Any:
            T = OffsetForLeaderEpochRequest.OffsetForLeaderTopic
            request = OffsetForLeaderEpochRequest(version=4, replica_id=-1, topics=[T(topic=name, partitions=[
                T.OffsetForLeaderPartition(partition=0, current_leader_epoch=current, leader_epoch=epoch)])])
            response = raw_call(bootstrap, request)
            (p,) = response.topics[0].partitions
            return p.error_code, p.leader_epoch, p.end_offset

        obs["end of epoch 0"] = epoch_end(0)
        obs["end of epoch 0, current 0"] = epoch_end(0, 0)
        obs["end of a future epoch"] = epoch_end(3)
        obs["current epoch from the future"] = epoch_end(0, 5)

        def legacy_alter(configs: dict[str, str]) -> Any:
            Resource = AlterConfigsRequest.AlterConfigsResource
            request = AlterConfigsRequest(version=2, validate_only=False, resources=[
                Resource(resource_type=2, resource_name=name, configs=[
                    Resource.AlterableConfig(name=k, value=v) for k, v in configs.items()])])
            return [r.error_code for r in raw_call(bootstrap, request).responses]

        resource = ConfigResource(ConfigResource.Type.TOPIC, name)

        def described(*keys: str, once: tuple[str, str]) -> Any:
            entries = configs_once(admin, resource, *once)
            return [(entries[k].value, confluent_kafka.admin.ConfigSource(entries[k].source).name) for k in keys]

        obs["legacy alter"] = legacy_alter({"retention.ms": "1000", "compression.type": "zstd"})
        obs["after legacy alter"] = described("retention.ms", "compression.type", "segment.bytes",
                                              once=("retention.ms", "1000"))
        obs["legacy alter replaces all"] = legacy_alter({"segment.bytes": "2000000"})
        obs["after the second legacy alter"] = described("retention.ms", "compression.type", "segment.bytes",
                                                         once=("segment.bytes", "2000000"))
        obs["legacy alter bad value"] = legacy_alter({"retention.ms": "soon"})
        obs["legacy alter unknown name"] = legacy_alter({"no.such.config": "1"})
    finally:
        kp.close()
    return obs


def configs_once(admin: AdminClient, resource: ConfigResource, name: str, value: str) -> dict[str, Any]:
    """A topic's described configs once `name` reads `value` (or after 20 s): Kafka applies a config change
    to the broker's cache after answering the request, so a describe straight after can show the old ones."""
    deadline = time.monotonic() + 20
    while True:
        try:
            entries = admin.describe_configs([resource])[resource].result(30)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
        else:
            if entries[name].value == value or time.monotonic() > deadline:
                return entries
        time.sleep(0.1)


def test_partition_admin_apis(both):
    both("partition_admin", partition_admin_scenario)


def topic_configs_scenario(bootstrap: str, name: str) -> Observations:
    """Kafka's standard topic configs on create (as admin tools and Terraform send them) and on alter."""
    admin = admin_for(bootstrap)
    obs: Observations = {}
    standard = {"compression.type": "zstd", "min.insync.replicas": "2", "unclean.leader.election.enable": "true",
                "message.timestamp.type": "CreateTime", "message.timestamp.before.max.ms": "86400000",
                "flush.messages": "10000", "preallocate": "true", "segment.jitter.ms": "1000",
                "leader.replication.throttled.replicas": "*", "compression.zstd.level": "5"}
    obs["create with standard configs"] = outcome(admin.create_topics([NewTopic(name, 1, 1, config=standard)])[name])
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = configs_once(admin, resource, "compression.type", "zstd")
    obs["described"] = {k: (entries[k].value, confluent_kafka.admin.ConfigSource(entries[k].source).name)
                        for k in standard}
    for label, config in [("compression.type=brotli", {"compression.type": "brotli"}),
                          ("compression.gzip.level=12", {"compression.gzip.level": "12"}),
                          ("min.insync.replicas=0", {"min.insync.replicas": "0"}),
                          ("message.timestamp.type=WallClock", {"message.timestamp.type": "WallClock"}),
                          ("message.timestamp.type=LogAppendTime", {"message.timestamp.type": "LogAppendTime"}),
                          ("leader.replication.throttled.replicas=x", {"leader.replication.throttled.replicas": "x"})]:
        topic = f"{name}-{len(obs)}"
        obs[f"create {label}"] = outcome(admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic])
    alter = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("compression.type", "lz4", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("min.insync.replicas", "1", incremental_operation=AlterConfigOpType.SET)])
    obs["alter standard configs"] = outcome(admin.incremental_alter_configs([alter])[alter])
    entries = configs_once(admin, resource, "compression.type", "lz4")
    obs["after alter"] = (entries["compression.type"].value, entries["min.insync.replicas"].value)
    return obs


def test_standard_topic_configs(both):
    both("topic_configs", topic_configs_scenario)


def log_append_time_scenario(bootstrap: str, name: str) -> Observations:
    """message.timestamp.type=LogAppendTime: the broker stamps each batch with its append time, in the
    produce response and in what consumers read, whatever timestamp the producer set."""
    admin = admin_for(bootstrap)
    create(admin, name, 1, {"message.timestamp.type": "LogAppendTime"})
    reports: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    before = int(time.time() * 1000) - 1000
    for i in range(3):
        producer.produce(name, value=f"v{i}".encode(), partition=0, timestamp=1_600_000_000_000 + i,
                         on_delivery=lambda err, msg: reports.append(msg.timestamp()))
        producer.flush(30)
    after = int(time.time() * 1000) + 1000
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{name}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(name, 0, confluent_kafka.OFFSET_BEGINNING)])
    stamps: list[tuple[int, int]] = []
    deadline = time.monotonic() + 30
    try:
        while len(stamps) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                stamps.append(msg.timestamp())
    finally:
        consumer.close()
    return {
        "delivery reports": [(kind == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME, before <= ts <= after)
                             for kind, ts in reports],
        "consumed": [(kind == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME, before <= ts <= after)
                     for kind, ts in stamps],
        "consumed stamps ascend": [ts for _, ts in stamps] == sorted(ts for _, ts in stamps),
    }


def test_log_append_time(both):
    both("log_append_time", log_append_time_scenario)


def broker_configs_scenario(bootstrap: str, name: str) -> Observations:
    """The broker's own configs: sources (STATIC_BROKER_CONFIG for what the operator set, DEFAULT_CONFIG
    for the rest) of the names both brokers have."""
    admin = admin_for(bootstrap)
    (broker_id,) = [b.id for b in admin.list_topics(timeout=10).brokers.values()][:1]
    resource = ConfigResource(ConfigResource.Type.BROKER, str(broker_id))
    entries = admin.describe_configs([resource])[resource].result(30)
    keys = ["num.partitions", "auto.create.topics.enable", "group.min.session.timeout.ms",
            "group.max.session.timeout.ms", "log.segment.bytes", "message.max.bytes", "log.retention.bytes",
            "compression.type", "offsets.topic.num.partitions", "log.retention.check.interval.ms",
            "transactional.id.expiration.ms", "transaction.remove.expired.transaction.cleanup.interval.ms"]
    return {k: (entries[k].value, confluent_kafka.admin.ConfigSource(entries[k].source).name,
                entries[k].is_default) for k in keys}


def test_broker_config_sources(both):
    both("broker_configs", broker_configs_scenario)


def describe_configs_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 1, {"retention.ms": "123456", "cleanup.policy": "compact"})
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([resource])[resource].result(30)
    return {"names": sorted(entries), **{
        f"config {key}": (e.value, confluent_kafka.admin.ConfigSource(e.source).name, e.is_read_only,
                          e.is_sensitive, e.is_default)
        for key, e in entries.items()}}


def test_describe_configs_of_a_topic(kafka, strata):
    """Every config both brokers describe must match; the names only one side has are documented."""
    name = f"d-{uuid.uuid4().hex[:8]}"
    k, s = describe_configs_scenario(kafka.bootstrap, name), describe_configs_scenario(strata.bootstrap, name)
    kafka_names, strata_names = set(k.pop("names")), set(s.pop("names"))
    common = kafka_names & strata_names
    assert {"cleanup.policy", "retention.ms", "retention.bytes", "segment.bytes", "max.message.bytes",
            "message.timestamp.type"} <= common
    # "names only here": each side's names the other lacks (equal, both empty, when the sets match).
    compare("describe_configs",
            {"names only here": sorted(kafka_names - strata_names),
             **{f: v for f, v in k.items() if f.removeprefix("config ") in common}},
            {"names only here": sorted(strata_names - kafka_names),
             **{f: v for f, v in s.items() if f.removeprefix("config ") in common}})


# ---- produce / fetch / metadata error codes on the wire ------------------------------------------

def raw_call(bootstrap: str, request: Any) -> Any:
    """One request on its own connection ("closed" if the broker hung up instead of answering)."""
    conn = RawConnection(bootstrap)
    try:
        return conn.request(request)
    except ConnectionError:
        return "closed"
    finally:
        conn.close()


def produce_errors(response: Any) -> Any:
    if isinstance(response, str):
        return response
    return [(p.index, p.error_code) for t in response.responses for p in t.partition_responses]


def wire_errors_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 1, {"max.message.bytes": "2000"})
    obs: Observations = {}
    small = record_batch(3)
    obs["produce"] = produce_errors(raw_call(bootstrap, produce(name, small)))
    obs["produce to partition 5"] = produce_errors(raw_call(bootstrap, produce(name, small, partition=5)))
    obs["produce to unknown topic"] = produce_errors(raw_call(bootstrap, produce(f"{name}-none", small)))
    obs["produce acks=2"] = produce_errors(raw_call(bootstrap, produce(name, small, acks=2)))
    obs["produce over max.message.bytes"] = produce_errors(
        raw_call(bootstrap, produce(name, record_batch(3, payload=b"x" * 1500))))
    corrupt = bytearray(small)
    corrupt[-1] ^= 0xFF  # inside the last record: the batch CRC no longer matches
    obs["produce with a bad CRC"] = produce_errors(raw_call(bootstrap, produce(name, bytes(corrupt))))

    def fetch_result(request: Any) -> Any:
        response = raw_call(bootstrap, request)
        if isinstance(response, str):
            return response
        part = response.responses[0].partitions[0]
        return (part.error_code, part.high_watermark, part.last_stable_offset, part.log_start_offset)

    obs["fetch at 0"] = fetch_result(fetch(name, offset=0))
    obs["fetch beyond the end"] = fetch_result(fetch(name, offset=100))
    obs["fetch unknown topic"] = fetch_result(fetch(f"{name}-none"))
    md = raw_call(bootstrap, metadata([f"{name}-none"], allow_auto=False))
    obs["metadata unknown topic, no auto-create"] = [(t.name == f"{name}-none", t.error_code) for t in md.topics]
    md = raw_call(bootstrap, metadata([name]))
    obs["metadata"] = [(t.error_code, len(t.partitions), t.is_internal) for t in md.topics]
    return obs


def test_produce_fetch_metadata_error_codes(both):
    both("wire_errors", wire_errors_scenario)


# ---- internal topics: reserved names ----------------------------------------------------------

def internal_topics_scenario(bootstrap: str, name: str) -> Observations:
    T = CreateTopicsRequest.CreatableTopic

    def create_code(topic: str, validate_only: bool) -> Any:
        response = raw_call(bootstrap, CreateTopicsRequest(version=5, topics=[T(
            name=topic, num_partitions=1, replication_factor=1, assignments=[], configs=[])],
            timeout_ms=10_000, validate_only=validate_only))
        return response if isinstance(response, str) else response.topics[0].error_code

    obs: Observations = {}
    obs["create __<name>"] = create_code(f"__{name}", False)
    obs["create _schemas, validate only"] = create_code("_schemas", True)
    time.sleep(0.5)  # Kafka: the new topic's metadata reaches its broker
    deleted = raw_call(bootstrap, DeleteTopicsRequest(version=4, topic_names=[f"__{name}"], timeout_ms=10_000))
    obs["delete __<name>"] = deleted if isinstance(deleted, str) else deleted.responses[0].error_code
    obs["produce to __consumer_offsets"] = produce_errors(
        raw_call(bootstrap, produce("__consumer_offsets", record_batch(1))))
    return obs


def test_internal_topics_and_reserved_names(both):
    both("internal_topics", internal_topics_scenario)


# ---- idempotent producer: retried, out-of-order and duplicate batches --------------------------

def idempotent_batch(producer_id: int, epoch: int, sequence: int, count: int, tag: str) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=producer_id,
                                        producer_epoch=epoch, base_sequence=sequence, batch_size=1 << 20)
    ts = int(time.time() * 1000)
    for i in range(count):
        builder.append(i, timestamp=ts, key=None, value=f"{tag}-{sequence + i}".encode(), headers=[])
    return bytes(builder.build())


def produce_raw(conn: RawConnection, topic: str, records: bytes) -> tuple[int, int]:
    P = ProduceRequest.TopicProduceData.PartitionProduceData
    response = conn.request(ProduceRequest(version=8, transactional_id=None, acks=-1, timeout_ms=10_000,
                                           topic_data=[ProduceRequest.TopicProduceData(
                                               name=topic, partition_data=[P(index=0, records=records)])]))
    part = response.responses[0].partition_responses[0]
    return part.error_code, part.base_offset if part.error_code == 0 else -1


RETRIABLE_COORDINATOR_ERRORS = {14, 15, 16}  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR


def idempotence_scenario(bootstrap: str, name: str) -> Observations:
    admin = admin_for(bootstrap)
    create(admin, name, 1)
    conn = RawConnection(bootstrap)
    obs: Observations = {}
    try:
        deadline = time.monotonic() + 60
        while True:  # as a client does: retry while the coordinator that hands out ids is loading
            init = conn.request(InitProducerIdRequest(version=4, transactional_id=None,
                                                      transaction_timeout_ms=60_000, producer_id=-1,
                                                      producer_epoch=-1))
            if init.error_code not in RETRIABLE_COORDINATOR_ERRORS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        obs["init producer id error"] = init.error_code
        obs["init producer epoch"] = init.producer_epoch
        pid, epoch = init.producer_id, init.producer_epoch
        steps = [("seq 0-2", pid, epoch, 0, 3), ("seq 0-2 retried", pid, epoch, 0, 3), ("seq 3-4", pid, epoch, 3, 2),
                 ("seq 0-2 retried again", pid, epoch, 0, 3), ("seq 3-4 retried", pid, epoch, 3, 2),
                 ("seq 7 (gap)", pid, epoch, 7, 1), ("seq 5", pid, epoch, 5, 1),
                 ("seq 0 of a bumped epoch", pid, epoch + 1, 0, 1), ("old epoch", pid, epoch, 6, 1),
                 ("unknown producer id, seq 0", pid + 1_000_000, 0, 0, 1),
                 ("unknown producer id, seq 5", pid + 2_000_000, 0, 5, 1)]
        for label, p, e, seq, n in steps:
            obs[label] = produce_raw(conn, name, idempotent_batch(p, e, seq, n, label.split(" ")[0]))
    finally:
        conn.close()
    tp = TopicPartition(name, 0)
    end = admin.list_offsets({tp: OffsetSpec.latest()})[tp].result(30).offset
    records = consume_confluent(bootstrap, name, 1, expected=end, timeout=30)
    # The record only Kafka took (see KNOWN_DIFFERENCES) is left out: the rest must match exactly.
    obs["log"] = [(r.offset, r.value) for r in records if r.value != b"unknown-5"]
    return obs


def test_idempotent_producer_retries(both):
    both("idempotence", idempotence_scenario)


# ---- idempotent producer through a link that drops produce responses (real client retries) -------

PRODUCE = 0


def flaky_produce_scenario(direct: str, flaky: str, proxy: KafkaProxy, name: str) -> Observations:
    """confluent-kafka, idempotent, through `flaky`: retried batches must not duplicate anything."""
    admin = admin_for(direct)
    create(admin, name, 2)
    drops_before = proxy.drops
    records = [(f"k{i % 13}".encode(), f"{i:05d}".encode()) for i in range(2000)]
    produce_confluent(flaky, name, records, **{
        "enable.idempotence": True, "acks": "all", "linger.ms": 1, "batch.num.messages": 50,
        "max.in.flight.requests.per.connection": 5, "retry.backoff.ms": 10})
    ends = admin.list_offsets({TopicPartition(name, p): OffsetSpec.latest() for p in range(2)})
    in_log = sum(f.result(30).offset for f in ends.values())  # duplicates included, if any
    consumed = consume_confluent(direct, name, 2, expected=in_log, timeout=60)
    values = Counter(r.value for r in consumed)
    return {"retried (responses dropped)": proxy.drops > drops_before,
            "duplicates": sorted(v for v, n in values.items() if n > 1),
            "all records once": sorted(values) == sorted(v for _, v in records),
            "per-key order kept": all(
                [r.value for r in consumed if r.key == k] == sorted(r.value for r in consumed if r.key == k)
                for k in {key for key, _ in records})}


def test_idempotent_producer_retries_through_a_flaky_link(kafka_and_proxy, tmp_path):
    kafka, kafka_proxy = kafka_and_proxy
    name = f"d-{uuid.uuid4().hex[:8]}"
    observed_kafka = flaky_produce_scenario(kafka.bootstrap, f"127.0.0.1:{kafka_proxy.port}", kafka_proxy, name)
    port = free_port()
    proxy = KafkaProxy(port, drop_api_key=PRODUCE, probability=0.2, max_drops=15)
    strata = BrokerProcess(tmp_path / "strata", port=port, settings=SETTINGS, advertise=f"127.0.0.1:{proxy.port}")
    try:
        strata.start()
        observed_strata = flaky_produce_scenario(strata.bootstrap, f"127.0.0.1:{proxy.port}", proxy, name)
    finally:
        strata.stop()
        proxy.close()
    compare("flaky_produce", observed_kafka, observed_strata)
    assert observed_kafka["retried (responses dropped)"] and observed_kafka["all records once"]


# ---- the documentation lists exactly the known differences -------------------------------------

def test_documented_differences_match_the_table():
    text = DOCS.read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \|", text, flags=re.M))
    assert rows == {(scenario, field) for scenario, field in KNOWN_DIFFERENCES}, (
        "docs/references.md's table of differences and KNOWN_DIFFERENCES list the same (scenario, field) pairs")


def test_strata_lookup_without_a_match_has_no_leader_epoch(strata):
    """Strata alone (no Kafka needed): a ListOffsets lookup that finds no record answers -1 throughout."""
    admin = admin_for(strata.bootstrap)
    name = f"d-{uuid.uuid4().hex[:8]}"
    create(admin, name, 1)
    tp = TopicPartition(name, 0)
    for spec in (OffsetSpec.max_timestamp(), OffsetSpec.for_timestamp(0)):
        info = admin.list_offsets({tp: spec})[tp].result(30)
        assert (info.offset, info.timestamp, info.leader_epoch) == (-1, -1, None)


def test_strata_fetch_in_error_carries_no_offsets(strata):
    """Strata alone: a partition answered with an error (here OFFSET_OUT_OF_RANGE) has -1 offsets, as in Kafka."""
    name = f"d-{uuid.uuid4().hex[:8]}"
    create(admin_for(strata.bootstrap), name, 1)
    assert produce_errors(raw_call(strata.bootstrap, produce(name, record_batch(3)))) == [(0, 0)]
    part = raw_call(strata.bootstrap, fetch(name, offset=100)).responses[0].partitions[0]
    assert (part.error_code, part.high_watermark, part.last_stable_offset, part.log_start_offset) == (1, -1, -1, -1)
    part = raw_call(strata.bootstrap, fetch(name, offset=0)).responses[0].partitions[0]
    assert (part.error_code, part.high_watermark, part.log_start_offset) == (0, 3, 0)


# ---- transactions --------------------------------------------------------------------------


def transactions_scenario(bootstrap: str, name: str) -> Observations:
    """A transactional producer's commit and abort as read_committed / read_uncommitted readers see
    them, the LSO while a transaction is open, and the coordinator's answers to wrong requests."""
    from kafka.protocol.consumer import ListOffsetsRequest
    from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest, EndTxnRequest

    admin = admin_for(bootstrap)
    create(admin, name, 2)
    obs: Observations = {}
    txn_id = f"{name}-tx"
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5})
    producer.init_transactions(60)
    producer.begin_transaction()
    for i in range(4):
        producer.produce(name, value=b"c%d" % i, partition=i % 2)
    producer.commit_transaction(60)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(name, value=b"a%d" % i, partition=0)
    assert producer.flush(30) == 0

    def latest(isolation: int) -> int:
        conn = RawConnection(bootstrap)
        try:
            T = ListOffsetsRequest.ListOffsetsTopic
            response = conn.request(ListOffsetsRequest(version=5, replica_id=-1, isolation_level=isolation, topics=[
                T(name=name, partitions=[T.ListOffsetsPartition(partition_index=0, current_leader_epoch=-1,
                                                                timestamp=-1)])]))
            return response.topics[0].partitions[0].offset
        finally:
            conn.close()

    obs["open: latest read_uncommitted, read_committed"] = (latest(0), latest(1))
    producer.abort_transaction(60)
    # Kafka answers EndTxn once the outcome is persisted and writes the markers after; Strata answers
    # once the markers are durable. Observed when both offsets have settled.
    deadline = time.monotonic() + 20
    while latest(0) != latest(1) and time.monotonic() < deadline:
        time.sleep(0.1)
    obs["aborted: latest read_uncommitted, read_committed"] = (latest(0), latest(1))
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{name}-{isolation}",
                             "auto.offset.reset": "earliest", "isolation.level": isolation,
                             "enable.partition.eof": True})
        consumer.assign([TopicPartition(name, 0), TopicPartition(name, 1)])
        values, ends, deadline = [], 0, time.monotonic() + 30
        while ends < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append((msg.partition(), msg.offset(), msg.value()))
            elif msg is not None and msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                ends += 1
        consumer.close()
        obs[f"{isolation} records"] = sorted(values)

    conn = RawConnection(bootstrap)
    try:
        def init(timeout_ms: int) -> tuple[int, int]:
            r = conn.request(InitProducerIdRequest(version=4, transactional_id=f"{name}-raw",
                                                   transaction_timeout_ms=timeout_ms, producer_id=-1,
                                                   producer_epoch=-1))
            return r.error_code, r.producer_epoch

        obs["init: timeout over the maximum"] = init(10**9)
        obs["init: first, second (epochs)"] = (init(60000), init(60000))
        r = conn.request(InitProducerIdRequest(version=4, transactional_id=f"{name}-raw",
                                               transaction_timeout_ms=60000, producer_id=-1, producer_epoch=-1))
        pid, epoch = r.producer_id, r.producer_epoch

        def end(txn: str, p: int, e: int, commit: bool, version: int = 3) -> int:
            return conn.request(EndTxnRequest(version=version, transactional_id=txn, producer_id=p, producer_epoch=e,
                                              committed=commit)).error_code

        def add(p: int, e: int, topic: str) -> int:
            T = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic
            return conn.request(AddPartitionsToTxnRequest(
                version=3, v3_and_below_transactional_id=f"{name}-raw", v3_and_below_producer_id=p,
                v3_and_below_producer_epoch=e, v3_and_below_topics=[T(name=topic, partitions=[0])],
            )).results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code

        obs["add: unknown topic"] = add(pid, epoch, f"{name}-missing")
        obs["add: wrong producer id"] = add(pid + 1000, epoch, name)
        obs["add: older epoch"] = add(pid, epoch - 1, name)
        obs["end: older epoch v3, v1"] = (end(f"{name}-raw", pid, epoch - 1, True),
                                          end(f"{name}-raw", pid, epoch - 1, True, version=1))
        obs["end: unknown transactional id"] = end(f"{name}-nobody", pid, epoch, True)
        added, ended = add(pid, epoch, name), end(f"{name}-raw", pid, epoch, True)
        again, deadline = end(f"{name}-raw", pid, epoch, True), time.monotonic() + 20
        while again == 51 and time.monotonic() < deadline:  # CONCURRENT_TRANSACTIONS while Kafka writes markers
            time.sleep(0.1)
            again = end(f"{name}-raw", pid, epoch, True)
        obs["add, end commit, end commit again"] = (added, ended, again)
    finally:
        conn.close()
    return obs


def test_transactions(both):
    both("transactions", transactions_scenario)


def producers_and_end_txn_v5_scenario(bootstrap: str, name: str) -> Observations:
    """DescribeProducers of a partition with an idempotent and a transactional producer, before and
    after the commit; EndTxn v5's epoch bump (transaction version 2) and what follows from it."""
    from kafka.protocol.admin.transactions import DescribeProducersRequest
    from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest, EndTxnRequest

    admin = admin_for(bootstrap)
    create(admin, name, 1)
    idempotent = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for i in range(2):
        idempotent.produce(name, value=b"i%d" % i, partition=0)
        assert idempotent.flush(30) == 0
    obs: Observations = {}
    conn = RawConnection(bootstrap)
    try:
        deadline = time.monotonic() + 60
        while True:  # Kafka creates and loads __transaction_state on the first FindCoordinator
            conn.request(FindCoordinatorRequest(version=3, key=f"{name}-tx", key_type=1))
            r = conn.request(InitProducerIdRequest(version=4, transactional_id=f"{name}-tx",
                                                   transaction_timeout_ms=60000, producer_id=-1, producer_epoch=-1))
            if r.error_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.error_code == 0, r
        pid, epoch = r.producer_id, r.producer_epoch

        def add(e: int) -> int:
            T = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic
            return conn.request(AddPartitionsToTxnRequest(
                version=3, v3_and_below_transactional_id=f"{name}-tx", v3_and_below_producer_id=pid,
                v3_and_below_producer_epoch=e, v3_and_below_topics=[T(name=name, partitions=[0])],
            )).results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code

        def send(e: int, sequence: int, value: bytes) -> int:
            builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=pid,
                                                producer_epoch=e, base_sequence=sequence, batch_size=1 << 20)
            builder.append(0, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
            T = ProduceRequest.TopicProduceData
            return conn.request(ProduceRequest(version=8, transactional_id=f"{name}-tx", acks=-1, timeout_ms=10000,
                                               topic_data=[T(name=name, partition_data=[T.PartitionProduceData(
                                                   index=0, records=bytes(builder.build()))])])
                                ).responses[0].partition_responses[0].error_code

        def end(e: int, commit: bool) -> tuple[int, bool, int]:
            """(error, same producer id, epoch - the first epoch) of an EndTxn v5, retried while
            CONCURRENT_TRANSACTIONS (Kafka writes the previous transaction's markers)."""
            deadline = time.monotonic() + 20
            while True:
                r = conn.request(EndTxnRequest(version=5, transactional_id=f"{name}-tx", producer_id=pid,
                                               producer_epoch=e, committed=commit))
                if r.error_code != 51 or time.monotonic() > deadline:
                    return r.error_code, r.producer_id == pid, r.producer_epoch - epoch if r.error_code == 0 else -1
                time.sleep(0.1)

        def producers() -> list[tuple[str, int, int, int, int]]:
            T = DescribeProducersRequest.TopicRequest
            part = conn.request(DescribeProducersRequest(version=0, topics=[T(name=name, partition_indexes=[0])])
                                ).topics[0].partitions[0]
            assert part.error_code == 0, part
            return sorted(("transactional" if p.producer_id == pid else "idempotent", p.producer_epoch - (
                epoch if p.producer_id == pid else 0), p.last_sequence, p.coordinator_epoch, p.current_txn_start_offset)
                for p in part.active_producers)

        obs["add, produce"] = (add(epoch), send(epoch, 0, b"t0"), send(epoch, 1, b"t1"))
        obs["producers: transaction open"] = producers()
        obs["end v5 commit"] = end(epoch, True)
        obs["end v5 commit again (a retry)"] = end(epoch, True)
        obs["produce at the old epoch after the commit"] = send(epoch, 2, b"late")
        deadline = time.monotonic() + 20
        while any(p[0] == "transactional" and p[4] != -1 for p in producers()) and time.monotonic() < deadline:
            # Kafka's markers land after its answer
            time.sleep(0.1)
        obs["producers: committed"] = producers()
        obs["next transaction at epoch + 1"] = (add(epoch), add(epoch + 1), send(epoch + 1, 0, b"n0"))
        obs["end v5 abort"] = end(epoch + 1, False)
        obs["end v5 commit of nothing, abort of nothing"] = (end(epoch + 2, True), end(epoch + 2, False))
    finally:
        conn.close()
    return obs


def transaction_version_2_scenario(bootstrap: str, name: str) -> Observations:
    """Transaction version 2 on the wire (KIP-890 part 2): the finalized feature, a Produce v12 of a
    partition never added (the broker adds it), two pipelined, a v11 one refused, TxnOffsetCommit v5
    without AddOffsetsToTxn, EndTxn v5, and what read_committed and the group see after."""
    import struct

    from kafka.protocol.metadata import ApiVersionsRequest
    from kafka.protocol.producer.transaction import EndTxnRequest, TxnOffsetCommitRequest

    admin = admin_for(bootstrap)
    create(admin, name, 1)
    obs: Observations = {}
    txn_id, group = f"{name}-tx", f"{name}-g"
    conn = RawConnection(bootstrap)
    try:
        versions = conn.request(ApiVersionsRequest(version=4, client_software_name="t", client_software_version="1"))
        obs["supported transaction.version"] = [(f.min_version, f.max_version) for f in versions.supported_features
                                                if f.name == "transaction.version"]
        obs["finalized transaction.version"] = [(f.min_version_level, f.max_version_level)
                                                for f in versions.finalized_features
                                                if f.name == "transaction.version"]
        obs["finalized features epoch known"] = versions.finalized_features_epoch >= 0
        deadline = time.monotonic() + 60
        while True:  # Kafka creates and loads __transaction_state on the first FindCoordinator
            conn.request(FindCoordinatorRequest(version=3, key=txn_id, key_type=1))
            r = conn.request(InitProducerIdRequest(version=4, transactional_id=txn_id, transaction_timeout_ms=60000,
                                                   producer_id=-1, producer_epoch=-1))
            if r.error_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.error_code == 0, r
        pid, epoch = r.producer_id, r.producer_epoch

        def produce_request(e: int, sequence: int, value: bytes, version: int) -> ProduceRequest:
            builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=pid,
                                                producer_epoch=e, base_sequence=sequence, batch_size=1 << 20)
            builder.append(0, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
            T = ProduceRequest.TopicProduceData
            return ProduceRequest(version=version, transactional_id=txn_id, acks=-1, timeout_ms=10000, topic_data=[
                T(name=name, partition_data=[T.PartitionProduceData(index=0, records=bytes(builder.build()))])])

        def send(e: int, sequence: int, value: bytes, version: int = 12) -> int:
            """The produce's error, retried while NOT_LEADER_OR_FOLLOWER (a new topic's leader
            is not ready yet) or CONCURRENT_TRANSACTIONS (Kafka still writes the previous
            transaction's markers after answering its EndTxn), as clients retry them."""
            deadline = time.monotonic() + 30
            while True:
                response = conn.request(produce_request(e, sequence, value, version))
                error = response.responses[0].partition_responses[0].error_code
                if error not in (6, 51) or time.monotonic() > deadline:
                    return error
                time.sleep(0.1)

        def end(e: int, commit: bool) -> tuple[int, bool, int]:
            deadline = time.monotonic() + 20
            while True:
                r = conn.request(EndTxnRequest(version=5, transactional_id=txn_id, producer_id=pid, producer_epoch=e,
                                               committed=commit))
                if r.error_code != 51 or time.monotonic() > deadline:
                    return r.error_code, r.producer_id == pid, r.producer_epoch - epoch if r.error_code == 0 else -1
                time.sleep(0.1)

        obs["produce v11 of a partition never added"] = send(epoch, 0, b"v11", version=11)
        pipelined = [produce_request(epoch, 0, b"a0", 12), produce_request(epoch, 1, b"a1", 12)]
        for request in pipelined:
            conn.send(request)
        errors = []
        for request in pipelined:
            (size,) = struct.unpack(">i", conn.read_exact(4))
            response = request.header.get_response_class().decode(conn.read_exact(size), header=True)
            errors.append(response.responses[0].partition_responses[0].error_code)
        obs["two produce v12 pipelined, the first adds the partition"] = errors
        T = TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic
        deadline = time.monotonic() + 60
        while True:  # Kafka creates __consumer_offsets on the first FindCoordinator of a group
            conn.request(FindCoordinatorRequest(version=3, key=group, key_type=0))
            committed = conn.request(TxnOffsetCommitRequest(
                version=5, transactional_id=txn_id, group_id=group, producer_id=pid, producer_epoch=epoch,
                generation_id=-1, member_id="", group_instance_id=None, topics=[T(name=name, partitions=[
                    T.TxnOffsetCommitRequestPartition(partition_index=0, committed_offset=7, committed_leader_epoch=-1,
                                                      committed_metadata="")])])).topics[0].partitions[0].error_code
            if committed not in (3, 14, 15, 16, 51) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        obs["txn offset commit v5 without AddOffsetsToTxn"] = committed
        obs["end v5 commit"] = end(epoch, True)
        obs["next transaction: produce v12 at epoch + 1"] = send(epoch + 1, 0, b"aborted")
        obs["end v5 abort"] = end(epoch + 1, False)
    finally:
        conn.close()
    deadline = time.monotonic() + 30
    while True:  # Kafka writes the markers after its answer
        values = consume_to_end(bootstrap, [(name, 0)], "read_committed")
        if len(values) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    obs["read_committed"] = values
    kp = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 30
        while True:
            offsets = kp.list_group_offsets(group)[group]
            if offsets or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        kp.close()
    obs["group offsets"] = {tp.partition: o.offset for tp, o in offsets.items()}
    return obs


def test_transaction_version_2(both):
    both("transaction version 2", transaction_version_2_scenario)


# ---- the KIP-848 consumer group protocol on the wire --------------------------------------------

def consumer_group_wire_scenario(bootstrap: str, name: str) -> Observations:
    from test_consumer_group_protocol import commit as member_commit
    from test_consumer_group_protocol import describe as describe_consumer_group
    from test_consumer_group_protocol import fetch_error, hb, topic_id
    from test_consumer_group_protocol import join as member_join

    admin = admin_for(bootstrap)
    create(admin, name, 4)
    group = f"g-{name}"
    conn = RawConnection(bootstrap)
    obs: Observations = {}
    try:
        tid = topic_id(conn, name)
        deadline = time.monotonic() + 60
        while True:  # Kafka may still be loading __consumer_offsets
            conn.request(FindCoordinatorRequest(version=3, key=group, key_type=0))
            a = member_join(conn, group, "member-a", [name])
            if a.error_code not in RETRIABLE_COORDINATOR_ERRORS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        obs["join"] = (a.error_code, a.member_id, a.member_epoch > 0, a.heartbeat_interval_ms)
        b = member_join(conn, group, "member-b", [name])
        obs["second join"] = (b.error_code, b.member_epoch > 0, [t.partitions for t in b.assignment.topic_partitions])
        # Both members heartbeat as clients do (reporting what they own) until the group is Stable;
        # Kafka may compute the target assignment later than the join, so the steps are not compared.
        owned = {"member-a": set(p for t in a.assignment.topic_partitions for p in t.partitions), "member-b": set()}
        epochs = {"member-a": a.member_epoch, "member-b": b.member_epoch}
        overlaps, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline:
            for member in ("member-a", "member-b"):
                r = hb(conn, group, member, epochs[member], owned={tid: sorted(owned[member])})
                assert r.error_code == 0, r
                epochs[member] = r.member_epoch
                if r.assignment is not None:
                    owned[member] = {p for t in r.assignment.topic_partitions for p in t.partitions}
                overlaps += bool(owned["member-a"] & owned["member-b"])
            d = describe_consumer_group(conn, group)[0]
            if d.group_state == "Stable" and set(epochs.values()) == {d.group_epoch}:
                break
            time.sleep(0.1)
        obs["stable"] = (d.group_state, overlaps, sorted(len(o) for o in owned.values()),
                         sorted(owned["member-a"] | owned["member-b"]))
        epoch = epochs["member-b"]
        b = hb(conn, group, "member-b", epoch, owned={tid: sorted(owned["member-b"])})
        obs["owned partitions only: no assignment"] = (b.error_code, b.assignment is None)
        b = hb(conn, group, "member-b", epoch, owned={tid: sorted(owned["member-b"])}, topics=[name],
               rebalance_ms=30000)
        obs["full heartbeat carries the assignment"] = (b.error_code, b.assignment is not None)
        obs["no change, no assignment"] = hb(conn, group, "member-b", epoch).assignment is None
        described = {g.group_id: g for g in describe_consumer_group(conn, group, f"{group}-none", "")}
        d = described[group]
        obs["describe"] = (d.error_code, d.group_state, d.group_epoch == d.assignment_epoch == epoch,
                           d.assignor_name, sorted((m.member_id, m.member_epoch == epoch, m.subscribed_topic_names,
                                                    m.member_type, m.client_id) for m in d.members))
        obs["describe unknown"] = described[f"{group}-none"].error_code
        obs["describe empty id"] = described[""].error_code
        classic_view = describe_group(conn, group)
        obs["DescribeGroups of a consumer group"] = (classic_view.error_code, classic_view.group_state,
                                                     classic_view.protocol_type, len(classic_view.members))
        desc = admin.describe_consumer_groups([group])[group].result(30)
        obs["AdminClient describe_consumer_groups"] = (
            desc.state.name, desc.type.name, desc.partition_assignor,
            sorted(len(m.assignment.topic_partitions) for m in desc.members))
        obs["epoch ahead"] = hb(conn, group, "member-a", epoch + 5).error_code
        obs["older epoch, not a subset"] = hb(conn, group, "member-a", epoch - 1, owned={tid: [0, 1, 2, 3]}).error_code
        obs["unknown member"] = hb(conn, group, "nobody", epoch).error_code
        obs["empty group id"] = hb(conn, "", "m", 0, topics=[name], owned={}, rebalance_ms=1000).error_code
        obs["join without rebalance timeout"] = hb(conn, group, "c", 0, topics=[name], owned={}).error_code
        obs["join owning partitions"] = hb(conn, group, "c", 0, topics=[name], owned={tid: [0]},
                                          rebalance_ms=1000).error_code
        obs["join without subscription"] = hb(conn, group, "c", 0, owned={}, rebalance_ms=1000).error_code
        obs["epoch -3"] = hb(conn, group, "member-a", -3).error_code
        obs["static leave without instance"] = hb(conn, group, "member-a", -2).error_code
        obs["unknown assignor"] = member_join(conn, group, "c", [name], assignor="sticky").error_code
        obs["commit"] = member_commit(conn, group, "member-b", epoch, name, 5)
        obs["commit stale epoch"] = member_commit(conn, group, "member-b", epoch - 1, name, 5)
        obs["commit unknown member"] = member_commit(conn, group, "nobody", epoch, name, 5)
        obs["commit v8 by a member"] = member_commit(conn, group, "member-b", epoch, name, 5, version=8)
        obs["fetch stale epoch"] = fetch_error(conn, group, "member-b", epoch + 1)
        obs["fetch unknown member"] = fetch_error(conn, group, "nobody", epoch)
        obs["fetch admin"] = fetch_error(conn, group, None, -1)
        listed = [(g.group_type, g.protocol_type, g.group_state) for g in conn.request(ListGroupsRequest(
            version=5, states_filter=[], types_filter=[])).groups if g.group_id == group]
        obs["list groups"] = listed
        obs["leave"] = [hb(conn, group, m, -1).member_epoch for m in ("member-a", "member-b")]
        obs["leave again"] = hb(conn, group, "member-a", -1).error_code
        obs["state after leave"] = describe_consumer_group(conn, group)[0].group_state
        obs["admin commit into the empty group"] = member_commit(conn, group, "", -1, name, 8)
        # Last, as it changes the group on Kafka: a classic member joins a consumer group.
        rejoined = member_join(conn, group, "member-c", [name])
        classic = conn.request(JoinGroupRequest(
            version=5, group_id=group, session_timeout_ms=10000, rebalance_timeout_ms=10000, member_id="",
            group_instance_id="classic-1", protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=subscription(name))]))
        obs["classic join into a consumer group"] = (rejoined.error_code, classic.error_code)
    finally:
        conn.close()
    return obs


def test_describe_producers_and_end_txn_v5(both):
    both("producers and EndTxn v5", producers_and_end_txn_v5_scenario)


def test_consumer_group_protocol_on_the_wire(both):
    both("consumer_group_wire", consumer_group_wire_scenario)

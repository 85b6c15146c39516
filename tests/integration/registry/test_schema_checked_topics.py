"""Schema-checked topics: strata.value.schema.validation / strata.key.schema.validation make the broker refuse
records without a schema id registered under the topic's subject (INVALID_RECORD), with real clients."""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
import rawclient
from brokerproc import BrokerProcess
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka.record.default_records import DefaultRecordBatchBuilder
from rawclient import RawConnection
from registryproc import RegistryProcess
from waiting import wait_until

SCHEMA = json.dumps({"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"},
                                                                    {"name": "note", "type": "string"}]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, RegistryProcess]]:
    base = tmp_path_factory.mktemp("checked")
    broker = BrokerProcess(base / "broker", settings={"schema.registry.principal": "User:ANONYMOUS"}).start()
    registry = RegistryProcess(broker.bootstrap, base / "registry.log").start()
    wait_until(registry.leads, 30, "the registry to lead")
    yield broker, registry
    registry.stop()
    broker.stop()


def create(bootstrap: str, topic: str, configs: dict[str, str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1, config=configs)])[topic].result(30)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
            **config: str) -> list[KafkaError | None]:
    """One outcome per record (None: written)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20, "retries": 0,
                         "enable.idempotence": False, **config})
    outcomes: list[KafkaError | None] = [None] * len(records)

    def report(i: int):  # type: ignore[no-untyped-def]
        def on_delivery(err, msg):  # type: ignore[no-untyped-def]
            outcomes[i] = err
        return on_delivery

    for i, (key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, on_delivery=report(i))
    assert producer.flush(30) == 0
    return outcomes


def framed(schema_id: int, payload: bytes = b"x") -> bytes:
    return b"\x00" + struct.pack(">i", schema_id) + payload


def test_checked_value_refuses_unregistered_and_accepts_serialized(stack):
    broker, registry = stack
    topic = f"checked-{uuid.uuid4().hex[:8]}"
    create(broker.bootstrap, topic, {"strata.value.schema.validation": "true"})
    client = SchemaRegistryClient({"url": registry.url})
    serializer = AvroSerializer(client, SCHEMA)
    good = serializer({"id": 1, "note": "ok"}, SerializationContext(topic, MessageField.VALUE))
    schema_id = struct.unpack(">i", good[1:5])[0]
    # Accepted: serialized with a schema registered under <topic>-value (the serializer registered it).
    assert produce(broker.bootstrap, topic, [(None, good)]) == [None]
    # Refused: no framing, an unknown id, an id registered under another subject only, a null value.
    other_id = client.register_schema(f"other-{topic}-value", Schema('"string"', "AVRO"))
    for value in (b"plain json {}", framed(999_999), framed(other_id), None, b"\x00\x01"):
        outcomes = produce(broker.bootstrap, topic, [(None, value)])
        assert outcomes[0] is not None and outcomes[0].code() == KafkaError.INVALID_RECORD, (value, outcomes)
    # Compressed batches are checked too.
    assert produce(broker.bootstrap, topic, [(None, good)] * 20, **{"compression.type": "lz4"}) == [None] * 20
    outcomes = produce(broker.bootstrap, topic, [(None, good)] * 5 + [(None, b"raw")],
                       **{"compression.type": "zstd"})
    assert all(o is not None and o.code() == KafkaError.INVALID_RECORD for o in outcomes)
    # A soft-deleted version's id is refused from then on (the broker reads the delete from _schemas).
    registry_version = client.get_latest_version(f"{topic}-value")
    assert registry_version.schema_id == schema_id
    client.delete_version(f"{topic}-value", registry_version.version)
    outcomes = produce(broker.bootstrap, topic, [(None, good)])
    assert outcomes[0] is not None and outcomes[0].code() == KafkaError.INVALID_RECORD


def test_the_refusal_names_the_record(stack):
    broker, registry = stack
    topic = f"named-{uuid.uuid4().hex[:8]}"
    create(broker.bootstrap, topic, {"strata.value.schema.validation": "true"})
    schema_id = SchemaRegistryClient({"url": registry.url}).register_schema(f"{topic}-value",
                                                                           Schema(SCHEMA, "AVRO"))
    # One batch of three records, the third without an id: Produce v8 carries the broker's message.
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, value in enumerate((framed(schema_id), framed(schema_id), b"no id")):
        builder.append(i, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
    conn = RawConnection(broker.bootstrap)
    try:
        response = conn.request(rawclient.produce(topic, bytes(builder.build()), version=8, acks=-1))
    finally:
        conn.close()
    part = response.responses[0].partition_responses[0]
    assert part.error_code == 87  # INVALID_RECORD
    assert part.error_message.startswith("record 2 of the batch: its value does not start with a schema id")
    assert topic in part.error_message
    conn = RawConnection(broker.bootstrap)
    try:
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        builder.append(0, timestamp=int(time.time() * 1000), key=None, value=framed(4242), headers=[])
        response = conn.request(rawclient.produce(topic, bytes(builder.build()), version=8, acks=-1))
    finally:
        conn.close()
    part = response.responses[0].partition_responses[0]
    assert (part.error_code, part.error_message) == (
        87, f"record 0 of the batch: its value has schema id 4242, which is not registered under subject "
            f"{topic}-value")


def test_key_check_and_unchecked_topics(stack):
    broker, registry = stack
    topic = f"keys-{uuid.uuid4().hex[:8]}"
    create(broker.bootstrap, topic, {"strata.key.schema.validation": "true"})
    key_id = SchemaRegistryClient({"url": registry.url}).register_schema(f"{topic}-key", Schema('"string"', "AVRO"))
    assert produce(broker.bootstrap, topic, [(framed(key_id), b"any value at all")]) == [None]
    outcomes = produce(broker.bootstrap, topic, [(b"plain-key", b"v")])
    assert outcomes[0] is not None and outcomes[0].code() == KafkaError.INVALID_RECORD
    # A topic without the configs takes anything; turning the check on is an ordinary config change.
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    create(broker.bootstrap, plain, {})
    assert produce(broker.bootstrap, plain, [(b"k", b"raw"), (None, None)]) == [None, None]
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ConfigResource("topic", plain, incremental_configs=[
        ConfigEntry("strata.value.schema.validation", "true", incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    outcomes = produce(broker.bootstrap, plain, [(b"k", b"raw")])
    assert outcomes[0] is not None and outcomes[0].code() == KafkaError.INVALID_RECORD


def test_schemas_is_written_only_by_the_registry_principal(stack):
    broker, _ = stack
    # The broker here names User:ANONYMOUS, so plain clients may write; a broker naming another principal
    # refuses them (the internal-topic rule).
    other = BrokerProcess(broker.data_dir.parent / "other", settings={"schema.registry.principal": "User:registry"})
    other.start()
    try:
        outcomes = produce(other.bootstrap, "_schemas", [(b'{"keytype":"NOOP","magic":0}', None)])
        assert outcomes[0] is not None and outcomes[0].code() == KafkaError.TOPIC_EXCEPTION, outcomes
    finally:
        other.stop()


def test_a_corrupt_batch_on_a_checked_topic_is_refused_not_fatal(stack):
    broker, registry = stack
    topic = f"corrupt-{uuid.uuid4().hex[:8]}"
    create(broker.bootstrap, topic, {"strata.value.schema.validation": "true"})
    schema_id = SchemaRegistryClient({"url": registry.url}).register_schema(f"{topic}-value", Schema(SCHEMA, "AVRO"))
    conn = RawConnection(broker.bootstrap)
    try:
        for codec in (0, 3):  # none, lz4
            builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                                producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                                batch_size=1 << 20)
            for i in range(50):
                builder.append(i, timestamp=int(time.time() * 1000), key=None, value=framed(schema_id, b"y" * 300),
                               headers=[])
            batch = bytearray(builder.build())
            for pos in range(70, len(batch), 97):  # damage the records (and so the CRC)
                batch[pos] ^= 0xFF
            response = conn.request(rawclient.produce(topic, bytes(batch), version=8, acks=-1))
            part = response.responses[0].partition_responses[0]
            assert part.error_code in (2, 87), (codec, part)  # CORRUPT_MESSAGE or INVALID_RECORD
        # The connection still serves a good batch.
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        builder.append(0, timestamp=int(time.time() * 1000), key=None, value=framed(schema_id), headers=[])
        response = conn.request(rawclient.produce(topic, bytes(builder.build()), version=8, acks=-1))
        assert response.responses[0].partition_responses[0].error_code == 0
    finally:
        conn.close()


def test_ids_only_in_the_bucket_are_known_after_a_restore(tmp_path, s3):
    """A broker restored from the bucket onto an empty disk reads all of `_schemas` (remote storage included)
    before it listens: an id registered before the loss is accepted by a checked topic with no registry
    running, and resolves in a new registry afterwards."""
    import shutil

    from s3server import CREDENTIALS

    settings = {"schema.registry.principal": "User:ANONYMOUS", "tiered.upload.interval.ms": "300",
                **s3.broker_settings()}
    broker = BrokerProcess(tmp_path / "broker", settings=settings, env=CREDENTIALS).start()
    registry = RegistryProcess(broker.bootstrap, tmp_path / "registry.log").start()
    try:
        wait_until(registry.leads, 30, "the registry to lead")
        topic = "restored-checked"
        create(broker.bootstrap, topic, {"strata.value.schema.validation": "true"})
        client = SchemaRegistryClient({"url": registry.url})
        serializer = AvroSerializer(client, SCHEMA)
        good = serializer({"id": 7, "note": "before"}, SerializationContext(topic, MessageField.VALUE))
        schema_id = struct.unpack(">i", good[1:5])[0]
        assert produce(broker.bootstrap, topic, [(None, good)]) == [None]
        end = registry_end(broker.bootstrap)

        def schemas_uploaded() -> bool:
            manifests = [k for k in s3.objects() if "/_schemas-" in k and k.endswith("/0/manifest.json")]
            return bool(manifests) and max(
                (s["last_offset"] for s in json.loads(s3.read(manifests[0])).get("segments", [])),
                default=-1) >= end - 1

        # Every _schemas record in an uploaded segment: after the restore none of them is on the disk.
        wait_until(schemas_uploaded, 60, "_schemas uploaded to the bucket")
        registry.kill()
        broker.kill()
        shutil.rmtree(broker.data_dir)
        broker.start()
        assert produce(broker.bootstrap, topic, [(None, good)]) == [None]  # known from the bucket alone
        outcomes = produce(broker.bootstrap, topic, [(None, framed(schema_id + 1000))])
        assert outcomes[0] is not None and outcomes[0].code() == KafkaError.INVALID_RECORD
        registry = RegistryProcess(broker.bootstrap, tmp_path / "registry2.log").start()
        wait_until(registry.leads, 30, "the new registry to lead")
        assert json.loads(registry.get(f"/schemas/ids/{schema_id}")["schema"]) == json.loads(SCHEMA)
        assert registry.get(f"/subjects/{topic}-value/versions/1")["id"] == schema_id
    finally:
        registry.kill()
        broker.kill()


def registry_end(bootstrap: str) -> int:
    """The end offset of `_schemas` now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition("_schemas", 0), timeout=10, cached=False)[1]
    finally:
        consumer.close()

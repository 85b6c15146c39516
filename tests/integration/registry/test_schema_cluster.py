"""The schema registry against a broker cluster (docs/cluster.md): `_schemas` is created by the controller
broker and placed like any topic, a registry on the cluster's bootstrap registers, serializes and resolves,
and a checked topic accepts registered ids on the broker leading `_schemas`, also after that broker stops and
the other takes `_schemas` over from the bucket."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from clusterharness import Cluster
from confluent_kafka import KafkaError, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from registryproc import RegistryProcess
from s3server import S3Bucket
from test_schema_checked_topics import create, framed, produce
from test_schema_registry import roundtrip
from waiting import wait_until

SCHEMA = json.dumps({"type": "record", "name": "Shipment", "fields": [{"name": "id", "type": "long"}]})


def test_registry_on_a_two_broker_cluster(tmp_path: Path, s3: S3Bucket) -> None:
    cluster = Cluster(tmp_path / "cluster", s3, 2, settings={"schema.registry.principal": "User:ANONYMOUS"})
    registry = None
    try:
        cluster.start()
        cluster.wait_placed("_schemas", 1, timeout=60)
        registry = RegistryProcess(cluster.bootstrap, tmp_path / "registry.log").start()
        wait_until(registry.leads, 60, "the registry to lead")
        client = SchemaRegistryClient({"url": registry.url})
        schema_id = client.register_schema("shipments-value", Schema(SCHEMA, "AVRO"))
        assert registry.get(f"/schemas/ids/{schema_id}")["schema"] == SCHEMA
        serializer = AvroSerializer(client, SCHEMA)
        deserializer = AvroDeserializer(client)
        objects = [{"id": i} for i in range(20)]
        assert roundtrip(cluster.bootstrap, "shipments", serializer, deserializer, objects) == objects
        # Created once, by the controller broker (the lowest id), after it joined.
        assert "created _schemas" in cluster.brokers[0].log_path.read_text(errors="replace")
        assert "created _schemas" not in cluster.brokers[1].log_path.read_text(errors="replace")

        # A checked topic with partitions on both brokers: the one not leading `_schemas` reads it from the
        # bucket (the registration is in its S3 commit log before it is answered), and refuses unknown ids.
        holder = cluster.leaders("_schemas")[0]
        admin_bootstrap = cluster.bootstrap
        create(admin_bootstrap, "spread", {"strata.value.schema.validation": "true"}, partitions=4)
        leaders = cluster.wait_placed("spread", 4)
        assert set(leaders) == {0, 1}, leaders
        spread = AvroSerializer(client, SCHEMA)({"id": 2}, SerializationContext("spread", MessageField.VALUE))
        spread_id = struct.unpack(">i", spread[1:5])[0]
        other = cluster.brokers[1 - holder].bootstrap
        partition = leaders.index(1 - holder)
        wait_until(lambda: accepted(other, spread, "spread", partition), 30, "a checked write on the other broker")
        unknown = framed(spread_id + 77)
        wait_until(lambda: invalid_record(other, unknown, "spread", partition), 30, "an unknown id refused there")
        # A new version registered now is accepted there at once or after a retry.
        newer = client.register_schema("spread-value", Schema(json.dumps(
            {"type": "record", "name": "Shipment", "fields": [{"name": "id", "type": "long"},
                                                              {"name": "n", "type": "int", "default": 0}]}), "AVRO"))
        wait_until(lambda: accepted(other, framed(newer), "spread", partition), 30, "the new id on the other broker")

        # A checked topic whose partitions all live with `_schemas` (the other broker stopped cleanly).
        cluster.brokers[1 - holder].stop()
        cluster.wait(lambda p: {b.id for b in p.brokers} == {holder} and all(
            a.leader == holder for t in p.topics.values() for a in t.partitions), 60, "one broker left")
        bootstrap = cluster.brokers[holder].bootstrap
        create(bootstrap, "orders", {"strata.value.schema.validation": "true"})
        cluster.wait_placed("orders", 1)
        order = AvroSerializer(client, SCHEMA)({"id": 1}, SerializationContext("orders", MessageField.VALUE))
        wait_until(lambda: accepted(bootstrap, order), 30, "a checked write")
        refused = produce(bootstrap, "orders", [(None, framed(struct.unpack(">i", order[1:5])[0] + 99))])
        assert refused[0] is not None and refused[0].code() == KafkaError.INVALID_RECORD

        # The other broker back, then the holder stops: the survivor takes `_schemas` over from the bucket
        # (its local log starts where the bucket ends) and still knows the id.
        survivor = 1 - holder
        cluster.brokers[survivor].start()
        cluster.wait(lambda p: {b.id for b in p.brokers} == {0, 1}, 60, "both brokers")
        cluster.brokers[holder].stop()
        cluster.wait(lambda p: {b.id for b in p.brokers} == {survivor} and all(
            a.leader == survivor for t in p.topics.values() for a in t.partitions), 60, "the survivor alone")
        bootstrap = cluster.brokers[survivor].bootstrap
        wait_until(lambda: accepted(bootstrap, order), 60, "the survivor to accept the registered id")
    finally:
        if registry is not None:
            registry.kill()
        cluster.stop()


def accepted(bootstrap: str, value: bytes, topic: str = "orders", partition: int | None = None) -> bool:
    """Whether one record written to `topic` (`partition`) was accepted (a KafkaError is never compared with
    None: its comparison raises inside the C extension)."""
    return all(outcome is None for outcome in send(bootstrap, topic, value, partition))


def invalid_record(bootstrap: str, value: bytes, topic: str, partition: int) -> bool:
    """Whether one record was refused with INVALID_RECORD (REQUEST_TIMED_OUT while the broker still reads)."""
    (outcome,) = send(bootstrap, topic, value, partition)
    return outcome is not None and outcome.code() == KafkaError.INVALID_RECORD


def send(bootstrap: str, topic: str, value: bytes, partition: int | None) -> list[KafkaError | None]:
    if partition is None:
        return produce(bootstrap, topic, [(None, value)])
    outcomes: list[KafkaError | None] = [None]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0, "enable.idempotence": False})
    producer.produce(topic, value=value, partition=partition,
                     on_delivery=lambda err, msg: outcomes.__setitem__(0, err))
    assert producer.flush(30) == 0
    return outcomes

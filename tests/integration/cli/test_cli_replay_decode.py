"""`strata replay --decode` against a real broker and a real `strata-registry` process: Avro, JSON
Schema and Protobuf values written by confluent-kafka's serializers come out as JSON."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import confluent_kafka
import pytest
from brokerproc import BrokerProcess
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafkaclients import create_topic
from registryproc import RegistryProcess
from waiting import wait_until

AVRO = json.dumps({"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"]},
    {"name": "blob", "type": "bytes"},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]})
JSON_SCHEMA = json.dumps({"type": "object", "properties": {"sku": {"type": "string"}, "n": {"type": "integer"}},
                          "required": ["sku"]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, RegistryProcess]]:
    base = tmp_path_factory.mktemp("decode")
    # The registry writes the broker's internal _schemas topic as the principal the broker trusts for it.
    broker = BrokerProcess(base / "broker", settings={"schema.registry.principal": "User:ANONYMOUS"}).start()
    registry = RegistryProcess(broker.bootstrap, base / "registry.log")
    try:
        registry.start()
        wait_until(registry.leads, 30, "the registry to lead")
        yield broker, registry
    finally:
        registry.stop()
        broker.stop()


def _user_class():  # type: ignore[no-untyped-def]
    """A Protobuf message with a reference (another file) and a well-known type (Timestamp)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    fdp = descriptor_pb2.FieldDescriptorProto
    address = descriptor_pb2.FileDescriptorProto(
        name="replay/test/address.proto", package="replay.test", syntax="proto3",
        message_type=[descriptor_pb2.DescriptorProto(name="Address", field=[
            fdp(name="city", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)])])
    user = descriptor_pb2.FileDescriptorProto(
        name="replay/test/user.proto", package="replay.test", syntax="proto3",
        dependency=["replay/test/address.proto", "google/protobuf/timestamp.proto"],
        message_type=[
            descriptor_pb2.DescriptorProto(name="Other", field=[
                fdp(name="x", number=1, type=fdp.TYPE_INT32, label=fdp.LABEL_OPTIONAL)]),
            descriptor_pb2.DescriptorProto(name="User", field=[
                fdp(name="user_name", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL),
                fdp(name="id", number=2, type=fdp.TYPE_INT64, label=fdp.LABEL_OPTIONAL),
                fdp(name="address", number=3, type=fdp.TYPE_MESSAGE, label=fdp.LABEL_OPTIONAL,
                    type_name=".replay.test.Address"),
                fdp(name="at", number=4, type=fdp.TYPE_MESSAGE, label=fdp.LABEL_OPTIONAL,
                    type_name=".google.protobuf.Timestamp")])])
    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool.Add(ts)
    pool.Add(address)
    pool.Add(user)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("replay.test.User"))


def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    for v in values:
        producer.produce(topic, value=v, partition=0)
    assert producer.flush(30) == 0


def strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "strata_cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_decode_avro_json_schema_and_protobuf(stack: tuple[BrokerProcess, RegistryProcess], tmp_path: Path) -> None:
    broker, registry = stack
    topic = f"decode-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": "-1"})
    client = SchemaRegistryClient({"url": registry.url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    avro = AvroSerializer(client, AVRO, conf={"auto.register.schemas": True})
    orders = [{"id": i, "note": None if i % 2 else f"n{i}", "blob": bytes([i, 255]), "price": Decimal(f"{i}.25")}
              for i in range(3)]
    jsonser = JSONSerializer(JSON_SCHEMA, client, conf={"auto.register.schemas": True})
    items = [{"sku": "a-1", "n": 1}, {"sku": "ü"}]
    user_cls = _user_class()
    protoser = ProtobufSerializer(user_cls, client, conf={"use.deprecated.format": False})
    users = []
    for i in range(2):
        u = user_cls(user_name=f"u{i}", id=2**40 + i)
        u.address.city = f"c{i}"
        u.at.seconds = 1_700_000_000 + i
        users.append(u)
    values: list[bytes | None] = [avro(o, ctx) for o in orders]
    values += [jsonser(x, SerializationContext(f"{topic}-j", MessageField.VALUE)) for x in items]
    values += [protoser(u, SerializationContext(f"{topic}-p", MessageField.VALUE)) for u in users]
    values += [b"plain text", None, b"\x00\x01"]  # not framed: as without --decode
    produce(broker.bootstrap, topic, values)

    result = strata("replay", "-b", broker.bootstrap, "-t", topic, "--from-offset", "0", "--decode",
                    "--schema-registry", registry.url, "-q")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(values)
    ids = [struct.unpack(">I", v[1:5])[0] for v in values[:7]]  # type: ignore[index]
    for line, schema_id in zip(lines[:7], ids, strict=True):
        assert line["value_schema_id"] == schema_id
        assert list(line) == ["topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
                              "value_schema_id", "headers"]
    assert [x["value"] for x in lines[:3]] == [
        {"id": o["id"], "note": o["note"], "blob": base64.b64encode(o["blob"]).decode(), "price": str(o["price"])}
        for o in orders]
    assert [x["value"] for x in lines[3:5]] == items
    from google.protobuf import json_format

    assert [x["value"] for x in lines[5:7]] == [json_format.MessageToDict(u, preserving_proto_field_name=True)
                                                for u in users]
    assert lines[5]["value"]["id"] == str(2**40) and lines[5]["value"]["at"] == "2023-11-14T22:13:20Z"
    assert lines[7]["value"] == "plain text" and "value_schema_id" not in lines[7]
    assert lines[8]["value"] is None and lines[9]["value"] == "\x00\x01"

    # CSV: the value column holds the JSON text.
    result = strata("replay", "-b", broker.bootstrap, "-t", topic, "--from-offset", "0", "--to-offset", "1",
                    "--decode", "--schema-registry", registry.url, "--format", "csv", "-q")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert json.loads(rows[0]["value"]) == lines[0]["value"] and rows[0]["value_b64"] == ""


def test_decode_unknown_schema_id_is_one_line_naming_the_offset(stack: tuple[BrokerProcess, RegistryProcess]) -> None:
    broker, registry = stack
    topic = f"decode-bad-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1, {"retention.ms": "-1"})
    unknown = b"\x00" + struct.pack(">I", 987_654) + b"\xff"  # not UTF-8: written as value_b64
    produce(broker.bootstrap, topic, [b"ok", b"fine", unknown, b"after"])
    result = strata("replay", "-b", broker.bootstrap, "-t", topic, "--from-offset", "0", "--decode",
                    "--schema-registry", registry.url, "-q")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "partition 0 offset 2" in errors[0] and "schema id 987654 is not in the registry" in errors[0]
    # --decode-errors raw: such a value is written as without --decode.
    result = strata("replay", "-b", broker.bootstrap, "-t", topic, "--from-offset", "0", "--decode",
                    "--schema-registry", registry.url, "--decode-errors", "raw", "-q")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x.get("value") for x in lines] == ["ok", "fine", None, "after"]
    assert base64.b64decode(lines[2]["value_b64"]) == unknown
    # Usage: --decode needs a registry, and is not for --to-topic.
    env = {k: v for k, v in os.environ.items() if k != "STRATA_SCHEMA_REGISTRY"}
    bad = subprocess.run([sys.executable, "-m", "strata_cli", "replay", "-b", broker.bootstrap, "-t", topic,
                          "--from-offset", "0", "--decode"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "--schema-registry" in bad.stderr

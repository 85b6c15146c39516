"""The schema registry (strata-registry) with real clients: confluent-kafka's SchemaRegistryClient and its
Avro, JSON Schema and Protobuf serializers, records through a real Strata broker, `_schemas` as its store."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from registryproc import RegistryProcess
from waiting import wait_until

REGISTRY_BROKER = {"schema.registry.principal": "User:ANONYMOUS"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, RegistryProcess]]:
    base = tmp_path_factory.mktemp("registry")
    broker = BrokerProcess(base / "broker", settings=REGISTRY_BROKER).start()
    registry = RegistryProcess(broker.bootstrap, base / "registry.log").start()
    wait_until(registry.leads, 30, "the registry to lead")
    yield broker, registry
    registry.stop()
    broker.stop()


def schemas_end(bootstrap: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition("_schemas", 0), timeout=10, cached=False)[1]
    finally:
        consumer.close()


def roundtrip(bootstrap: str, topic: str, serializer, deserializer, objects: list) -> list:  # type: ignore[no-untyped-def]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for obj in objects:
        producer.produce(topic, value=serializer(obj, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < len(objects) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            assert msg.value()[0] == 0  # Confluent's framing: magic byte 0, then the schema id
            out.append(deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE)))
    finally:
        consumer.close()
    return out


def test_avro_roundtrip_with_references(stack):
    broker, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    topic = f"avro-{uuid.uuid4().hex[:8]}"
    address = json.dumps({"type": "record", "name": "Address", "namespace": "strata.test",
                          "fields": [{"name": "city", "type": "string"}]})
    addr_id = client.register_schema(f"{topic}-address", Schema(address, "AVRO"))
    user = json.dumps({"type": "record", "name": "User", "namespace": "strata.test",
                       "fields": [{"name": "name", "type": "string"}, {"name": "age", "type": "int"},
                                  {"name": "address", "type": "strata.test.Address"}]})
    schema = Schema(user, "AVRO", references=[SchemaReference("strata.test.Address", f"{topic}-address", 1)])
    serializer = AvroSerializer(client, schema)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    users = [{"name": f"u{i}", "age": i, "address": {"city": f"c{i}"}} for i in range(5)]
    assert roundtrip(broker.bootstrap, topic, serializer, deserializer, users) == users
    latest = client.get_latest_version(f"{topic}-value")
    assert latest.version == 1 and latest.schema_id != addr_id
    assert [r.subject for r in latest.schema.references] == [f"{topic}-address"]
    # The same schema under another subject keeps its id; the id lists both subjects.
    again = client.register_schema(f"{topic}-copy", schema)
    assert again == latest.schema_id
    assert sorted(registry.get(f"/schemas/ids/{again}/subjects")) == sorted([f"{topic}-value", f"{topic}-copy"])
    assert registry.get(f"/subjects/{topic}-address/versions/1/referencedby") == [again]
    # A referenced version cannot go.
    status, body = registry.request("DELETE", f"/subjects/{topic}-address/versions/1")
    assert (status, body["error_code"]) == (422, 42206)


def test_json_schema_roundtrip_with_references(stack):
    broker, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    topic = f"json-{uuid.uuid4().hex[:8]}"
    address = {"$schema": "http://json-schema.org/draft-07/schema#", "$id": "address.json", "type": "object",
               "properties": {"city": {"type": "string"}}, "required": ["city"]}
    client.register_schema(f"{topic}-address", Schema(json.dumps(address), "JSON"))
    order = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "Order", "type": "object",
             "properties": {"id": {"type": "integer"}, "ship_to": {"$ref": "address.json"}},
             "required": ["id", "ship_to"]}
    schema = Schema(json.dumps(order), "JSON", references=[SchemaReference("address.json", f"{topic}-address", 1)])
    serializer = JSONSerializer(schema, client)
    deserializer = JSONDeserializer(None, schema_registry_client=SchemaRegistryClient({"url": registry.url}))
    orders = [{"id": i, "ship_to": {"city": f"c{i}"}} for i in range(4)]
    assert roundtrip(broker.bootstrap, topic, serializer, deserializer, orders) == orders
    stored = registry.get(f"/subjects/{topic}-value/versions/latest")
    assert stored["schemaType"] == "JSON" and stored["references"][0]["name"] == "address.json"


def _proto_classes():  # type: ignore[no-untyped-def]
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    address = descriptor_pb2.FileDescriptorProto(
        name="strata/test/address.proto", package="strata.test", syntax="proto3",
        message_type=[descriptor_pb2.DescriptorProto(name="Address", field=[
            fdp(name="city", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)])])
    user = descriptor_pb2.FileDescriptorProto(
        name="strata/test/user.proto", package="strata.test", syntax="proto3",
        dependency=["strata/test/address.proto", "google/protobuf/timestamp.proto"],
        message_type=[descriptor_pb2.DescriptorProto(name="User", field=[
            fdp(name="name", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL),
            fdp(name="id", number=2, type=fdp.TYPE_INT64, label=fdp.LABEL_OPTIONAL),
            fdp(name="address", number=3, type=fdp.TYPE_MESSAGE, label=fdp.LABEL_OPTIONAL,
                type_name=".strata.test.Address"),
            fdp(name="at", number=4, type=fdp.TYPE_MESSAGE, label=fdp.LABEL_OPTIONAL,
                type_name=".google.protobuf.Timestamp")])])
    from google.protobuf import timestamp_pb2

    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool.Add(ts)
    pool.Add(address)
    pool.Add(user)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("strata.test.User"))


def test_protobuf_roundtrip_with_references(stack):
    broker, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    topic = f"proto-{uuid.uuid4().hex[:8]}"
    user_cls = _proto_classes()
    serializer = ProtobufSerializer(user_cls, client)
    deserializer = ProtobufDeserializer(user_cls, {},
                                        schema_registry_client=SchemaRegistryClient({"url": registry.url}))
    users = []
    for i in range(3):
        u = user_cls(name=f"u{i}", id=i)
        u.address.city = f"c{i}"
        u.at.seconds = 1_700_000_000 + i
        users.append(u)
    assert roundtrip(broker.bootstrap, topic, serializer, deserializer, users) == users
    # The imported file was registered as its own subject and referenced (well-known types are not).
    latest = registry.get(f"/subjects/{topic}-value/versions/latest")
    assert latest["schemaType"] == "PROTOBUF"
    assert [r["name"] for r in latest["references"]] == ["strata/test/address.proto"]
    assert "strata/test/address.proto" in registry.get("/subjects")


def test_protobuf_text_schema_and_compatibility(stack):
    _, registry = stack
    subject = f"proto-text-{uuid.uuid4().hex[:6]}"
    v1 = 'syntax = "proto3";\npackage shop;\nmessage Item { string sku = 1; int32 count = 2; }\n'
    status, body = registry.request("POST", f"/subjects/{subject}/versions", {"schema": v1, "schemaType": "PROTOBUF"})
    assert status == 200, body
    v2 = 'syntax = "proto3";\npackage shop;\nmessage Item { string sku = 1; int64 count = 2; string note = 3; }\n'
    status, body = registry.request("POST", f"/subjects/{subject}/versions", {"schema": v2, "schemaType": "PROTOBUF"})
    assert status == 200, body  # int32 -> int64 read the same wire type
    v3 = 'syntax = "proto3";\npackage shop;\nmessage Item { string sku = 1; string count = 2; }\n'
    status, body = registry.request("POST", f"/subjects/{subject}/versions", {"schema": v3, "schemaType": "PROTOBUF"})
    assert (status, body["error_code"]) == (409, 409)
    assert "FIELD_SCALAR_KIND_CHANGED" in body["message"]
    bad = 'syntax = "proto3";\nmessage Item { Missing m = 1; }\n'
    status, body = registry.request("POST", f"/subjects/{subject}/versions", {"schema": bad, "schemaType": "PROTOBUF"})
    assert (status, body["error_code"]) == (422, 42201)
    assert "Missing" in body["message"]
    # The serialized form of a text schema, as the Protobuf deserializer asks for it.
    serialized = registry.get(f"/subjects/{subject}/versions/1?format=serialized")["schema"]
    assert registry.get(f"/subjects/{subject}/versions/1")["schema"] == v1 and serialized != v1


AVRO_V1 = {"type": "record", "name": "Evt", "fields": [{"name": "a", "type": "int"}]}
# v2 adds a field with a default (backward and forward compatible), v3 a field without one
# (forward compatible only), v4 removes `a` (readers of v1 need it: backward compatible only).
AVRO_WITH_DEFAULT = {"type": "record", "name": "Evt", "fields": [{"name": "a", "type": "int"},
                                                                 {"name": "b", "type": "string", "default": ""}]}
AVRO_NO_DEFAULT = {"type": "record", "name": "Evt", "fields": [{"name": "a", "type": "int"},
                                                               {"name": "c", "type": "long"}]}
AVRO_DROP_A = {"type": "record", "name": "Evt", "fields": []}


@pytest.mark.parametrize("level, second, compatible", [
    ("NONE", AVRO_NO_DEFAULT, True),
    ("BACKWARD", AVRO_WITH_DEFAULT, True),
    ("BACKWARD", AVRO_NO_DEFAULT, False),
    ("BACKWARD_TRANSITIVE", AVRO_NO_DEFAULT, False),
    ("FORWARD", AVRO_NO_DEFAULT, True),
    ("FORWARD", AVRO_DROP_A, False),
    ("FORWARD_TRANSITIVE", AVRO_DROP_A, False),
    ("FULL", AVRO_WITH_DEFAULT, True),
    ("FULL", AVRO_NO_DEFAULT, False),
    ("FULL_TRANSITIVE", AVRO_DROP_A, False),
])
def test_evolution_under_each_level(stack, level, second, compatible):
    _, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    subject = f"evo-{level.lower()}-{uuid.uuid4().hex[:6]}"
    client.register_schema(subject, Schema(json.dumps(AVRO_V1), "AVRO"))
    assert client.set_compatibility(subject, level)["compatibility"] == level
    assert client.get_compatibility(subject) == level
    assert client.test_compatibility(subject, Schema(json.dumps(second), "AVRO")) is compatible
    if compatible:
        client.register_schema(subject, Schema(json.dumps(second), "AVRO"))
        assert client.get_versions(subject) == [1, 2]
    else:
        with pytest.raises(SchemaRegistryError) as info:
            client.register_schema(subject, Schema(json.dumps(second), "AVRO"))
        assert (info.value.http_status_code, info.value.error_code) == (409, 409)
        assert info.value.error_message.startswith(
            f'Schema being registered is incompatible with an earlier schema for subject "{subject}"')
        assert client.get_versions(subject) == [1]


def test_transitive_checks_every_version(stack):
    _, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    subject = f"trans-{uuid.uuid4().hex[:6]}"
    client.set_compatibility(subject, "BACKWARD")
    client.register_schema(subject, Schema(json.dumps(AVRO_V1), "AVRO"))
    client.register_schema(subject, Schema(json.dumps(AVRO_DROP_A), "AVRO"))
    # Needs a default for `a` to read v1, but not to read v2: BACKWARD takes it, BACKWARD_TRANSITIVE does not.
    readd = {"type": "record", "name": "Evt", "fields": [{"name": "a", "type": "int"}]}
    client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    assert client.test_compatibility_all_versions(subject, Schema(json.dumps(readd), "AVRO")) is False
    client.set_compatibility(subject, "BACKWARD")
    assert client.test_compatibility(subject, Schema(json.dumps(readd), "AVRO")) is False  # a has no default
    with_default = {"type": "record", "name": "Evt", "fields": [{"name": "a", "type": "int", "default": 0}]}
    assert client.test_compatibility(subject, Schema(json.dumps(with_default), "AVRO")) is True


def test_json_schema_compatibility_rules(stack):
    _, registry = stack
    subject = f"jsonc-{uuid.uuid4().hex[:6]}"
    closed = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert registry.request("POST", f"/subjects/{subject}/versions",
                            {"schema": json.dumps(closed), "schemaType": "JSON"})[0] == 200
    wider = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
             "additionalProperties": False}
    assert registry.request("POST", f"/subjects/{subject}/versions",
                            {"schema": json.dumps(wider), "schemaType": "JSON"})[0] == 200
    retyped = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
               "additionalProperties": False}
    status, body = registry.request("POST", f"/subjects/{subject}/versions",
                                    {"schema": json.dumps(retyped), "schemaType": "JSON"})
    assert (status, body["error_code"]) == (409, 409) and "TYPE_CHANGED" in body["message"]


def test_bad_input_writes_nothing(stack):
    broker, registry = stack
    subject = f"bad-{uuid.uuid4().hex[:6]}"
    before = schemas_end(broker.bootstrap)
    cases = [
        ({"schema": '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nosuch"}]}'}, 422, 42201),
        ({"schema": "not json at all"}, 422, 42201),
        ({"schema": '{"type": 12}', "schemaType": "JSON"}, 422, 42201),
        ({"schema": "message {", "schemaType": "PROTOBUF"}, 422, 42201),
        ({"schema": '"string"', "schemaType": "XML"}, 422, 42201),
        ({"schema": '"int"', "references": [{"name": "x", "subject": "nosuch", "version": 1}]}, 422, 42201),
        ({"schema": json.dumps({"type": "enum", "name": "E", "symbols": ["S"] * 2})}, 422, 42201),
        ({"schema": json.dumps({"type": "record", "name": "Big", "doc": "x" * (1024 * 1024 + 10),
                                "fields": []})}, 422, 42209),
        ({"nope": 1}, 422, 42201),
    ]
    for body, status, code in cases:
        got_status, got = registry.request("POST", f"/subjects/{subject}/versions", body)
        assert (got_status, got["error_code"]) == (status, code), (body if len(str(body)) < 200 else "big", got)
    status, got = registry.request("POST", f"/subjects/{subject}/versions", raw=b"{not json")
    assert (status, got["error_code"]) == (400, 400)
    status, got = registry.request("POST", f"/subjects/{subject}/versions", raw=b"x" * (3 * 1024 * 1024))
    assert status == 422 and got["error_code"] == 42209
    status, got = registry.request("PUT", "/config", {"compatibility": "SIDEWAYS"})
    assert (status, got["error_code"]) == (422, 42203)
    status, got = registry.request("PUT", "/mode", {"mode": "WRITEONLY"})
    assert (status, got["error_code"]) == (422, 42204)
    status, got = registry.request("GET", "/schemas/ids/987654")
    assert (status, got) == (404, {"error_code": 40403, "message": "Schema 987654 not found"})
    status, got = registry.request("GET", f"/subjects/{subject}/versions")
    assert (status, got["error_code"]) == (404, 40401)
    status, got = registry.request("GET", "/subjects/nosuch/versions/1")
    assert (status, got["error_code"]) == (404, 40401)
    status, got = registry.request("GET", f"/subjects/{subject}/versions/zero")
    assert (status, got["error_code"]) in ((404, 40401), (422, 42202))
    status, got = registry.request("GET", f"/config/{subject}")
    assert (status, got["error_code"]) == (404, 40408)
    status, got = registry.request("GET", f"/mode/{subject}")
    assert (status, got["error_code"]) == (404, 40409)
    client = SchemaRegistryClient({"url": registry.url})
    with pytest.raises(SchemaRegistryError) as info:
        client.get_schema(424242)
    assert info.value.error_code == 40403
    time.sleep(0.5)
    assert schemas_end(broker.bootstrap) == before, "a refused request wrote to _schemas"


def test_versions_lookup_deletes_and_ids(stack):
    _, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    subject = f"del-{uuid.uuid4().hex[:6]}"
    client.set_compatibility(subject, "NONE")
    ids = [client.register_schema(subject, Schema(json.dumps({"type": "enum", "name": "E", "symbols": [f"S{i}"]}),
                                                  "AVRO")) for i in range(3)]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert client.register_schema(subject, Schema(json.dumps({"type": "enum", "name": "E", "symbols": ["S1"]}),
                                                  "AVRO")) == ids[1]  # already there: same id, no new version
    found = client.lookup_schema(subject, Schema(json.dumps({"type": "enum", "name": "E", "symbols": ["S1"]}), "AVRO"))
    assert (found.version, found.schema_id) == (2, ids[1])
    assert registry.get(f"/schemas/ids/{ids[2]}/versions") == [{"subject": subject, "version": 3}]
    # Soft delete, then permanent.
    status, body = registry.request("DELETE", f"/subjects/{subject}/versions/2?permanent=true")
    assert (status, body["error_code"]) == (404, 40407)
    assert client.delete_version(subject, 2) == 2
    assert client.get_versions(subject) == [1, 3]
    assert registry.get(f"/subjects/{subject}/versions?deleted=true") == [1, 2, 3]
    status, body = registry.request("DELETE", f"/subjects/{subject}/versions/2")
    assert (status, body["error_code"]) == (404, 40406)
    assert registry.get(f"/schemas/ids/{ids[1]}")["schema"]  # soft-deleted ids still resolve
    assert client.delete_version(subject, 2, permanent=True) == 2
    status, body = registry.request("GET", f"/schemas/ids/{ids[1]}")
    assert (status, body["error_code"]) == (404, 40403)
    status, body = registry.request("DELETE", f"/subjects/{subject}?permanent=true")
    assert (status, body["error_code"]) == (404, 40405)
    assert client.delete_subject(subject) == [1, 3]
    assert subject not in client.get_subjects()
    assert subject in registry.get("/subjects?deleted=true")
    status, body = registry.request("DELETE", f"/subjects/{subject}")
    assert (status, body["error_code"]) == (404, 40404)
    assert client.delete_subject(subject, permanent=True) == [1, 3]
    status, body = registry.request("GET", f"/subjects/{subject}/versions?deleted=true")
    assert (status, body["error_code"]) == (404, 40401)
    # A new schema after a permanent delete never reuses an id.
    new_id = client.register_schema(subject, Schema('"string"', "AVRO"))
    assert new_id > max(ids)


def test_config_and_modes(stack):
    _, registry = stack
    client = SchemaRegistryClient({"url": registry.url})
    subject = f"mode-{uuid.uuid4().hex[:6]}"
    assert registry.get("/config")["compatibilityLevel"] == "BACKWARD"
    assert registry.get(f"/config/{subject}?defaultToGlobal=true")["compatibilityLevel"] == "BACKWARD"
    client.set_compatibility(subject, "FULL")
    assert registry.request("DELETE", f"/config/{subject}") == (200, {"compatibilityLevel": "FULL"})
    assert registry.request("GET", f"/config/{subject}")[1]["error_code"] == 40408
    # READONLY refuses writes to the subject.
    assert registry.request("PUT", f"/mode/{subject}", {"mode": "READONLY"}) == (200, {"mode": "READONLY"})
    status, body = registry.request("POST", f"/subjects/{subject}/versions", {"schema": '"int"'})
    assert (status, body["error_code"]) == (422, 42205)
    assert registry.request("DELETE", f"/mode/{subject}") == (200, {"mode": "READONLY"})
    # IMPORT keeps the ids and versions it is given (a migration from another registry).
    imported = f"imp-{uuid.uuid4().hex[:6]}"
    assert registry.request("PUT", f"/mode/{imported}", {"mode": "IMPORT"})[0] == 200
    status, body = registry.request("POST", f"/subjects/{imported}/versions",
                                    {"schema": '{"type":"fixed","name":"F","size":3}', "id": 5000, "version": 7})
    assert (status, body) == (200, {"id": 5000})
    assert registry.get(f"/subjects/{imported}/versions") == [7]
    status, body = registry.request("POST", f"/subjects/{imported}/versions",
                                    {"schema": '{"type":"fixed","name":"G","size":4}', "id": 5000, "version": 8})
    assert (status, body["error_code"]) == (422, 42207)
    status, body = registry.request("PUT", "/mode", {"mode": "IMPORT"})
    assert (status, body["error_code"]) == (422, 42205)  # not on a registry that has subjects
    assert registry.request("PUT", f"/mode/{imported}", {"mode": "READWRITE"})[0] == 200
    # Ids the registry hands out afterwards start above the imported one.
    assert client.register_schema(f"after-{imported}", Schema('"bytes"', "AVRO")) > 5000


def test_restart_keeps_ids(tmp_path):
    broker = BrokerProcess(tmp_path / "broker", settings=REGISTRY_BROKER).start()
    registry = RegistryProcess(broker.bootstrap, tmp_path / "registry.log").start()
    try:
        wait_until(registry.leads, 30, "the registry to lead")
        client = SchemaRegistryClient({"url": registry.url})
        ids = {f"s{i}": client.register_schema(f"s{i}", Schema(json.dumps(
            {"type": "record", "name": f"R{i}", "fields": []}), "AVRO")) for i in range(4)}
        client.delete_version("s1", 1)
        registry.stop()
        broker.stop()
        broker.start()
        registry.start()
        wait_until(registry.leads, 30, "the restarted registry to lead")
        for subject, schema_id in ids.items():
            assert registry.get(f"/schemas/ids/{schema_id}")["schema"] == json.dumps(
                {"type": "record", "name": f"R{subject[1:]}", "fields": []})
        assert registry.get("/subjects") == ["s0", "s2", "s3"]
        fresh = SchemaRegistryClient({"url": registry.url}).register_schema("s9", Schema('"int"', "AVRO"))
        assert fresh == max(ids.values()) + 1
    finally:
        registry.kill()
        broker.kill()


def test_two_instances_distinct_ids_and_failover(tmp_path):
    broker = BrokerProcess(tmp_path / "broker", settings=REGISTRY_BROKER).start()
    a = RegistryProcess(broker.bootstrap, tmp_path / "a.log").start()
    b = RegistryProcess(broker.bootstrap, tmp_path / "b.log").start()
    try:
        wait_until(lambda: a.leads() or b.leads(), 30, "one instance to lead")
        time.sleep(2)  # the second member's join may move the lead: let it settle
        wait_until(lambda: a.leads() != b.leads(), 30, "exactly one instance to lead")
        clients = [SchemaRegistryClient({"url": a.url}), SchemaRegistryClient({"url": b.url})]

        def register(i: int) -> int:
            # A rebalance still settling answers 50003/50004 (no leader for a moment): a client retries.
            deadline = time.monotonic() + 30
            while True:
                try:
                    return clients[i % 2].register_schema(f"two-{i}", Schema(json.dumps(
                        {"type": "fixed", "name": f"F{i}", "size": i + 1}), "AVRO"))
                except SchemaRegistryError as exc:
                    if exc.error_code not in (50003, 50004) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

        got = [register(i) for i in range(10)]
        assert len(set(got)) == 10, got
        # Both serve every id (the follower forwarded its writes and reads the same log; a write made
        # through the other instance reaches it within its tail's poll).
        for schema_id in got:
            wait_until(lambda sid=schema_id: all(r.request("GET", f"/schemas/ids/{sid}")[0] == 200 for r in (a, b)),
                       15, f"schema {schema_id} on both instances")
            assert a.get(f"/schemas/ids/{schema_id}") == b.get(f"/schemas/ids/{schema_id}")
        leader, follower = (a, b) if a.leads() else (b, a)
        leader.kill()
        start = time.monotonic()
        client = SchemaRegistryClient({"url": follower.url})
        took_write = None
        while time.monotonic() - start < 30:
            try:
                new_id = client.register_schema("after-failover", Schema('"double"', "AVRO"))
                took_write = time.monotonic() - start
                break
            except SchemaRegistryError:
                time.sleep(0.2)
        assert took_write is not None and took_write < 15, f"the survivor took writes after {took_write}s"
        assert new_id == max(got) + 1
        print(f"failover: the surviving instance took writes {took_write:.1f}s after the leader was killed")
    finally:
        a.kill()
        b.kill()
        broker.kill()


def test_restored_from_the_bucket_onto_an_empty_disk(tmp_path, s3):
    """`_schemas` is tiered like any topic (and written with strata.durability=s3): a broker that lost its
    disk restores it from the bucket, and a new registry resolves the same ids to the same schemas."""
    import shutil

    from s3server import CREDENTIALS

    broker = BrokerProcess(tmp_path / "broker", settings={**REGISTRY_BROKER, **s3.broker_settings()},
                           env=CREDENTIALS).start()
    registry = RegistryProcess(broker.bootstrap, tmp_path / "registry.log").start()
    try:
        wait_until(registry.leads, 30, "the registry to lead")
        client = SchemaRegistryClient({"url": registry.url})
        schemas = {f"bucket-{i}": json.dumps({"type": "record", "name": f"B{i}", "fields": [
            {"name": "f", "type": "string"}]}) for i in range(3)}
        ids = {subject: client.register_schema(subject, Schema(text, "AVRO")) for subject, text in schemas.items()}
        client.set_compatibility("bucket-1", "FULL")
        registry.kill()
        broker.kill()
        shutil.rmtree(broker.data_dir)
        broker.start()
        registry = RegistryProcess(broker.bootstrap, tmp_path / "registry2.log").start()
        wait_until(registry.leads, 30, "the new registry to lead")
        for subject, schema_id in ids.items():
            assert registry.get(f"/schemas/ids/{schema_id}")["schema"] == schemas[subject]
            assert registry.get(f"/subjects/{subject}/versions/1")["id"] == schema_id
        assert registry.get("/config/bucket-1")["compatibilityLevel"] == "FULL"
        assert SchemaRegistryClient({"url": registry.url}).register_schema(
            "bucket-new", Schema('"long"', "AVRO")) == max(ids.values()) + 1
    finally:
        registry.kill()
        broker.kill()

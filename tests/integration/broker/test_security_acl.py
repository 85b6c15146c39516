"""Authorization with real clients: Kafka ACLs managed with the admin API, enforced on every request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import secutil
from brokerproc import BrokerProcess
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

USERS = {"admin": "admin-pw", "writer": "writer-pw", "reader": "reader-pw"}


@pytest.fixture(scope="module")
def abroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    creds = tmp_path_factory.mktemp("acl-creds") / "users.json"
    secutil.write_credentials(creds, USERS)
    proc = BrokerProcess(tmp_path_factory.mktemp("acl") / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "authorizer.enable": "true", "super.users": "User:admin",
        "num.partitions": "1"}).start()
    yield proc
    proc.stop()


def cfg(proc: BrokerProcess, user: str) -> dict:
    return secutil.kafka_python(proc.address("SASL_PLAINTEXT"),
                                secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", user, USERS[user]))


@pytest.fixture(scope="module")
def admin(abroker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(**cfg(abroker, "admin"))
    yield client
    client.close()


def allow(principal: str, op: ACLOperation, rtype: ResourceType, name: str,
          pattern: ACLResourcePatternType = ACLResourcePatternType.LITERAL,
          permission: ACLPermissionType = ACLPermissionType.ALLOW) -> ACL:
    return ACL(principal, "*", op, permission, ResourcePattern(rtype, name, pattern))


def create(admin: KafkaAdminClient, acls: list[ACL]) -> None:
    result = admin.create_acls(acls)
    assert not result["failed"], result


def delete(admin: KafkaAdminClient, acl: ACL) -> None:
    flt = ACLFilter(acl.principal, acl.host, acl.operation, acl.permission_type,
                    ResourcePatternFilter(acl.resource_pattern.resource_type, acl.resource_pattern.resource_name,
                                          acl.resource_pattern.pattern_type))
    admin.delete_acls([flt])


def produce(proc: BrokerProcess, user: str, topic: str) -> None:
    producer = KafkaProducer(**cfg(proc, user), max_block_ms=5000, request_timeout_ms=5000, retries=0,
                             enable_idempotence=False)
    try:
        producer.send(topic, b"v").get(timeout=10)
    finally:
        producer.close(2)


def consume(proc: BrokerProcess, user: str, topic: str, group: str | None = None) -> list[bytes]:
    consumer = KafkaConsumer(**cfg(proc, user), group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", request_timeout_ms=10000)
    try:
        if group is None:
            consumer.assign([TopicPartition(topic, 0)])
        else:
            consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got += [r.value for r in records]
        return got
    finally:
        consumer.close()


def test_write_on_one_topic_only(abroker: BrokerProcess, admin: KafkaAdminClient) -> None:
    x, y = f"x-{uuid.uuid4().hex[:6]}", f"y-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(x, 1, 1), NewTopic(y, 1, 1)])
    acl = allow("User:writer", ACLOperation.WRITE, ResourceType.TOPIC, x)
    create(admin, [acl])
    produce(abroker, "writer", x)
    with pytest.raises(TopicAuthorizationFailedError):
        produce(abroker, "writer", y)
    # Reading X needs Read: Write is not enough.
    with pytest.raises(TopicAuthorizationFailedError):
        consume(abroker, "writer", x)
    # Metadata shows the writer only the topic it may describe (Write implies Describe).
    consumer = KafkaConsumer(**cfg(abroker, "writer"))
    try:
        assert x in consumer.topics() and y not in consumer.topics()
    finally:
        consumer.close()
    # Taking the ACL away takes effect at once, without a restart.
    delete(admin, acl)
    with pytest.raises(TopicAuthorizationFailedError):
        produce(abroker, "writer", x)


def _read_denied(proc: BrokerProcess, user: str, topic: str) -> bool:
    try:
        return consume(proc, user, topic) == []
    except TopicAuthorizationFailedError:
        return True


def test_read_and_group_read(abroker: BrokerProcess, admin: KafkaAdminClient) -> None:
    topic, group = f"r-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(topic, 1, 1)])
    produce(abroker, "admin", topic)
    # Without Describe the topic is invisible to the reader (kafka-python then reads nothing, silently);
    # with Describe but not Read, the fetch itself is refused.
    assert _read_denied(abroker, "reader", topic)
    create(admin, [allow("User:reader", ACLOperation.DESCRIBE, ResourceType.TOPIC, topic)])
    with pytest.raises(TopicAuthorizationFailedError):
        consume(abroker, "reader", topic)
    create(admin, [allow("User:reader", ACLOperation.READ, ResourceType.TOPIC, topic)])
    assert consume(abroker, "reader", topic) == [b"v"]  # assigned partitions need no group
    # Joining a group needs Read on the group.
    with pytest.raises(GroupAuthorizationFailedError):
        consume(abroker, "reader", topic, group=group)
    create(admin, [allow("User:reader", ACLOperation.READ, ResourceType.GROUP, group)])
    assert consume(abroker, "reader", topic, group=group) == [b"v"]


def test_prefixed_acls_and_deny_wins(abroker: BrokerProcess, admin: KafkaAdminClient) -> None:
    prefix = f"team-{uuid.uuid4().hex[:6]}."
    admin.create_topics([NewTopic(prefix + "orders", 1, 1), NewTopic(prefix + "audit", 1, 1)])
    create(admin, [allow("User:writer", ACLOperation.WRITE, ResourceType.TOPIC, prefix,
                         ACLResourcePatternType.PREFIXED)])
    produce(abroker, "writer", prefix + "orders")
    produce(abroker, "writer", prefix + "audit")
    create(admin, [allow("User:writer", ACLOperation.WRITE, ResourceType.TOPIC, prefix + "audit",
                         permission=ACLPermissionType.DENY)])
    produce(abroker, "writer", prefix + "orders")
    with pytest.raises(TopicAuthorizationFailedError):
        produce(abroker, "writer", prefix + "audit")


def test_non_admins_cannot_manage_acls_or_topics(abroker: BrokerProcess) -> None:
    from kafka.errors import ClusterAuthorizationFailedError

    client = KafkaAdminClient(**cfg(abroker, "reader"))
    try:
        with pytest.raises(ClusterAuthorizationFailedError):
            client.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                                           ResourcePatternFilter(ResourceType.ANY, None,
                                                                 ACLResourcePatternType.ANY)))
        with pytest.raises(TopicAuthorizationFailedError):
            client.create_topics([NewTopic(f"nope-{uuid.uuid4().hex[:6]}", 1, 1)])
    finally:
        client.close()


def test_acls_survive_a_restart(tmp_path: Path) -> None:
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, USERS)
    proc = BrokerProcess(tmp_path / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "authorizer.enable": "true", "super.users": "User:admin"}).start()
    try:
        admin = KafkaAdminClient(**cfg(proc, "admin"))
        acl = allow("User:writer", ACLOperation.WRITE, ResourceType.TOPIC, "kept")
        create(admin, [acl])
        admin.close()
        proc.restart()
        admin = KafkaAdminClient(**cfg(proc, "admin"))
        found, _ = admin.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                                                 ResourcePatternFilter(ResourceType.TOPIC, "kept",
                                                                       ACLResourcePatternType.LITERAL)))
        assert [(a.principal, a.operation) for a in found] == [("User:writer", ACLOperation.WRITE)]
        admin.close()
    finally:
        proc.stop()

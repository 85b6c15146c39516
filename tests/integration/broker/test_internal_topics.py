"""Internal topics and what a principal may learn or take over, with exact requests.

- `__consumer_offsets`, `__transaction_state`, `_schemas` and every `__*` name are internal from the
  first start: no client creates (explicitly or by Metadata auto-creation), deletes, grows or
  reconfigures them, whoever asks, even before the broker has created them itself.
- Metadata asked by topic id names no topic the principal may not describe.
- InitProducerId never bumps the epoch of a producer id the caller names: it hands out a new id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import secutil
from brokerproc import BrokerProcess
from kafka.protocol.admin import (
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    IncrementalAlterConfigsRequest,
)
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.producer import InitProducerIdRequest
from rawclient import RawConnection

INVALID_REQUEST = 42
INVALID_TOPIC_EXCEPTION = 17
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_AUTHORIZATION_FAILED = 29
RESERVED = ["__consumer_offsets", "__transaction_state", "_schemas", "__strata_anything"]
USERS = {"admin": "admin-pw"}


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """No authorizer: anyone may administer topics, which makes the refusals 'whoever asks'."""
    proc = BrokerProcess(tmp_path_factory.mktemp("internal") / "broker", settings={
        "num.partitions": "1", "auto.create.topics.enable": "true"}).start()
    yield proc
    proc.kill()


def create_topics(conn: RawConnection, names: list[str]) -> dict[str, int]:
    T = CreateTopicsRequest.CreatableTopic
    response = conn.request(CreateTopicsRequest(version=5, topics=[
        T(name=n, num_partitions=1, replication_factor=1, assignments=[], configs=[]) for n in names],
        timeout_ms=10_000, validate_only=False))
    return {t.name: t.error_code for t in response.topics}


def metadata_names(conn: RawConnection, names: list[str] | None) -> dict[str, int]:
    T = MetadataRequest.MetadataRequestTopic
    response = conn.request(MetadataRequest(version=9, topics=None if names is None else [T(name=n) for n in names],
                                            allow_auto_topic_creation=True, include_cluster_authorized_operations=False,
                                            include_topic_authorized_operations=False))
    return {t.name: t.error_code for t in response.topics}


def test_reserved_names_are_never_created_by_clients(open_broker: BrokerProcess) -> None:
    conn = RawConnection(open_broker.bootstrap)
    try:
        assert create_topics(conn, RESERVED) == {n: INVALID_TOPIC_EXCEPTION for n in RESERVED}
        # Metadata with auto-creation on: answered, not created.
        answered = metadata_names(conn, RESERVED)
        assert set(answered) == set(RESERVED) and all(code != 0 for code in answered.values()), answered
        assert not set(RESERVED) & set(metadata_names(conn, None))
    finally:
        conn.close()


def test_internal_topics_are_never_deleted_grown_or_reconfigured(open_broker: BrokerProcess) -> None:
    from kafka import KafkaConsumer

    # The group coordinator creates __consumer_offsets on the first commit.
    consumer = KafkaConsumer(bootstrap_servers=open_broker.bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}",
                             enable_auto_commit=False)
    try:
        consumer.commit({})
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        create = RawConnection(open_broker.bootstrap)
        create_topics(create, ["plain-for-commit"])
        create.close()
        consumer.commit({TopicPartition("plain-for-commit", 0): OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()
    conn = RawConnection(open_broker.bootstrap)
    try:
        assert metadata_names(conn, ["__consumer_offsets"]) == {"__consumer_offsets": 0}
        for name in ("__consumer_offsets", "_schemas"):
            deleted = conn.request(DeleteTopicsRequest(version=4, topic_names=[name], timeout_ms=10_000))
            assert [r.error_code for r in deleted.responses] == [INVALID_REQUEST], deleted
            grown = conn.request(CreatePartitionsRequest(version=2, topics=[
                CreatePartitionsRequest.CreatePartitionsTopic(name=name, count=60, assignments=None)],
                timeout_ms=10_000, validate_only=False))
            assert [r.error_code for r in grown.results] == [INVALID_REQUEST], grown
            R = IncrementalAlterConfigsRequest.AlterConfigsResource
            altered = conn.request(IncrementalAlterConfigsRequest(version=1, resources=[R(
                resource_type=2, resource_name=name, configs=[R.AlterableConfig(
                    name="retention.ms", config_operation=0, value="1000")])], validate_only=False))
            assert [r.error_code for r in altered.responses] == [INVALID_REQUEST], altered
        assert metadata_names(conn, ["__consumer_offsets"]) == {"__consumer_offsets": 0}
    finally:
        conn.close()


def test_init_producer_id_never_bumps_a_named_producer_id(open_broker: BrokerProcess) -> None:
    conn = RawConnection(open_broker.bootstrap)
    try:
        def init(producer_id: int, epoch: int):  # type: ignore[no-untyped-def]
            response = conn.request(InitProducerIdRequest(version=4, transactional_id=None,
                                                          transaction_timeout_ms=60_000, producer_id=producer_id,
                                                          producer_epoch=epoch))
            assert response.error_code == 0, response
            return response.producer_id, response.producer_epoch

        victim = init(-1, -1)
        taken = init(victim[0], victim[1])  # a stranger names the victim's id and epoch
        assert taken[0] != victim[0], "InitProducerId bumped the epoch of a producer id the caller named"
        assert taken[1] == 0
    finally:
        conn.close()


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    creds = tmp_path_factory.mktemp("internal-creds") / "users.json"
    secutil.write_credentials(creds, USERS)
    proc = BrokerProcess(tmp_path_factory.mktemp("internal-acl") / "broker", listeners={"SASL_PLAINTEXT": None},
                         settings={"sasl.credentials.file": str(creds), "authorizer.enable": "true",
                                   "super.users": "User:admin", "num.partitions": "1"}).start()
    yield proc
    proc.kill()


def test_metadata_by_topic_id_names_no_topic_the_principal_may_not_describe(acl_broker: BrokerProcess) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    secret = f"secret-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**secutil.kafka_python(acl_broker.address("SASL_PLAINTEXT"),
                                                    secutil.Auth("SASL_PLAINTEXT", "PLAIN", "admin", USERS["admin"])))
    try:
        admin.create_topics([NewTopic(secret, 1, 1)])
    finally:
        admin.close()
    meta = json.loads((acl_broker.data_dir / "__meta" / "topics" / f"{secret}.json").read_text())
    topic_id = uuid.UUID(meta["id"])
    conn = RawConnection(acl_broker.bootstrap)  # PLAINTEXT: User:ANONYMOUS, no ACLs
    try:
        T = MetadataRequest.MetadataRequestTopic
        response = conn.request(MetadataRequest(version=12, topics=[T(name=None, topic_id=topic_id)],
                                                allow_auto_topic_creation=False,
                                                include_topic_authorized_operations=False))
    finally:
        conn.close()
    [answer] = response.topics
    assert answer.error_code == TOPIC_AUTHORIZATION_FAILED
    assert answer.name is None, f"Metadata by id named {answer.name!r} to a principal that may not describe it"
    assert answer.topic_id == topic_id

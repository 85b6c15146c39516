"""Topic administration through the Kafka admin API, with confluent-kafka's and kafka-python's admins."""

from __future__ import annotations

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic
from kafka import KafkaAdminClient
from kafka.admin import NewTopic as KpNewTopic
from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError


def wait(futures: dict) -> dict:
    return {k: f.result(timeout=30) for k, f in futures.items()}


def test_topic_lifecycle_with_confluent_admin(broker, topic_name):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    configs = {"retention.ms": "123456", "cleanup.policy": "delete"}
    wait(admin.create_topics([NewTopic(topic_name, 3, 1, config=configs)]))
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics[topic_name].partitions) == 3

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    (configs,) = wait(admin.describe_configs([resource])).values()
    assert configs["retention.ms"].value == "123456"
    assert configs["retention.ms"].source == confluent_kafka.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].source == confluent_kafka.admin.ConfigSource.DEFAULT_CONFIG.value

    alter = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
    ])
    wait(admin.incremental_alter_configs([alter]))
    (configs,) = wait(admin.describe_configs([resource])).values()
    assert (configs["retention.ms"].value, configs["segment.bytes"].value) == ("-1", "1048576")

    bad = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(confluent_kafka.KafkaException) as err:
        wait(admin.incremental_alter_configs([bad]))
    assert err.value.args[0].code() == confluent_kafka.KafkaError.INVALID_CONFIG

    wait(admin.create_partitions([NewPartitions(topic_name, 5)]))
    assert len(admin.list_topics(timeout=10).topics[topic_name].partitions) == 5
    with pytest.raises(confluent_kafka.KafkaException) as err:
        wait(admin.create_partitions([NewPartitions(topic_name, 2)]))
    assert err.value.args[0].code() == confluent_kafka.KafkaError.INVALID_PARTITIONS

    wait(admin.delete_topics([topic_name]))
    assert topic_name not in admin.list_topics(timeout=10).topics
    assert not (broker.data_dir / f"{topic_name}-0").exists()


def test_create_topic_errors_with_kafka_python_admin(broker, topic_name):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([KpNewTopic(topic_name, 1, 1)])
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([KpNewTopic(topic_name, 1, 1)])
        with pytest.raises(InvalidReplicationFactorError):
            admin.create_topics([KpNewTopic(topic_name + "-rf3", 1, 3)])
        assert topic_name in admin.list_topics()
        assert topic_name + "-rf3" not in admin.list_topics()
        cluster = admin.describe_cluster()
        assert cluster["controller_id"] == 0
        assert [b["broker_id"] if "broker_id" in b else b["node_id"] for b in cluster["brokers"]] == [0]
    finally:
        admin.close()


def test_recreated_topic_gets_a_new_id_and_no_old_data(broker, topic_name):
    from kafkaclients import consume_kafka_python, create_topic, produce_kafka_python

    create_topic(broker.bootstrap, topic_name, 1)
    produce_kafka_python(broker.bootstrap, topic_name, [(b"k", b"old")])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    first_id = topic_id(admin, topic_name)
    wait(admin.delete_topics([topic_name]))
    create_topic(broker.bootstrap, topic_name, 1)
    produce_kafka_python(broker.bootstrap, topic_name, [(b"k", b"new")])
    records = consume_kafka_python(broker.bootstrap, topic_name, 1, expected=2, timeout=3)
    assert [r.value for r in records] == [b"new"]
    assert topic_id(admin, topic_name) != first_id


def topic_id(admin: AdminClient, name: str) -> str:
    from confluent_kafka import TopicCollection

    (description,) = wait(admin.describe_topics(TopicCollection([name]))).values()
    assert description.topic_id is not None
    return str(description.topic_id)

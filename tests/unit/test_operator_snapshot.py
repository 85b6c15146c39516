"""The operator's broker snapshot, the parts that need no broker (operator/strata_operator/admin.py,
handlers/resync.py): topic ids from kafka-python written as confluent-kafka writes them (status.topicId
compares the two), configs split into the topic's own and the shared defaults, and the config keys a
resync pass asks for."""

from __future__ import annotations

import uuid

import confluent_kafka
from strata_operator.admin import DYNAMIC_TOPIC_CONFIG, _snapshot_configs, kafka_uuid
from strata_operator.handlers.resync import config_keys


def test_a_kafka_python_topic_id_reads_as_confluent_kafka_writes_it():
    for _ in range(50):
        u = uuid.uuid4()
        msb = int.from_bytes(u.bytes[:8], "big", signed=True)
        lsb = int.from_bytes(u.bytes[8:], "big", signed=True)
        assert kafka_uuid(str(u)) == str(confluent_kafka.Uuid(msb, lsb))


def test_configs_split_into_the_topics_own_and_one_shared_dict_of_defaults():
    def entry(value: str | None, source: str) -> dict[str, object]:
        return {"value": value, "config_source": source, "read_only": False, "synonyms": []}
    shared: dict = {}
    a = _snapshot_configs({"retention.ms": entry("1000", DYNAMIC_TOPIC_CONFIG),
                           "cleanup.policy": entry("delete", "DEFAULT_CONFIG")}, shared)
    b = _snapshot_configs({"retention.ms": entry("604800000", "STATIC_BROKER_CONFIG"),
                           "cleanup.policy": entry("compact", DYNAMIC_TOPIC_CONFIG)}, shared)
    c = _snapshot_configs({"retention.ms": entry("2000", DYNAMIC_TOPIC_CONFIG),
                           "cleanup.policy": entry("delete", "DEFAULT_CONFIG"),
                           "min.insync.replicas": entry(None, "DEFAULT_CONFIG")}, shared)
    assert a == ({"retention.ms": "1000"}, {"cleanup.policy": "delete"})
    assert b == ({"cleanup.policy": "compact"}, {"retention.ms": "604800000"})
    assert c[0] == {"retention.ms": "2000"} and c[1] is a[1]  # the same defaults: one dict for both


def test_a_pass_asks_for_the_keys_any_topic_names_or_managed():
    topics = [
        {"spec": {"retention": "1d"}, "status": {"managedConfigs": ["retention.ms"]}},
        {"spec": {"cleanupPolicy": "compact", "config": {"max.message.bytes": "2048"}}, "status": {}},
        {"spec": {}, "status": {"managedConfigs": ["segment.ms"]}},  # no longer named: reset, so read
        {"spec": {"retention": "not a duration"}, "status": None},  # invalid: left to its handler
    ]
    assert config_keys(topics) == {"retention.ms", "cleanup.policy", "max.message.bytes", "segment.ms"}
    assert config_keys([{"spec": {"partitions": 3}}]) == frozenset()  # no config named: no DescribeConfigs

"""Consumer-group lag in a cluster: a group's `group` usage records cover every partition of the topic,
whichever broker leads it, not only the partitions its coordinator leads.

Three real brokers sharing one moto bucket with the real controller (tests/clusterharness.py), a topic
of 6 partitions spread over them, records produced to each partition, a group whose offsets are
committed at a known place: the coordinator's latest `group` record has exactly the lag summed over
all 6 partitions, and follows the end offsets when more is produced. The end offsets of partitions
led elsewhere come from the leaders' leases (docs/cluster.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import confluent_kafka
import pytest
from clusterharness import Cluster
from kafkaclients import create_topic
from s3server import S3Bucket
from strata_operator.billing.usage import read_dir

PARTITIONS = 6
GROUP = "lagging-readers"
TOPIC = "orders"


def _produce(bootstrap: str, per_partition: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for p in range(PARTITIONS):
        for i in range(per_partition):
            producer.produce(TOPIC, value=f"{p}-{i}".encode(), partition=p)
            producer.poll(0)
    assert producer.flush(60) == 0


def _latest_lag(cluster: Cluster) -> tuple[str, int] | None:
    """(broker, lag) of the newest `group` record of GROUP on TOPIC across the brokers' usage files."""
    records = []
    for broker in cluster.brokers:
        usage = broker.data_dir / "usage"
        if usage.is_dir():
            records += [r for r in read_dir(usage).records
                        if r.kind == "group" and r.group == GROUP and r.topic == TOPIC]
    if not records:
        return None
    newest = max(records, key=lambda r: r.window_end)
    return newest.broker, newest.lag


def _wait_for_lag(cluster: Cluster, expected: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = _latest_lag(cluster)
        if last is not None and last[1] == expected:
            return last[0]
        time.sleep(0.3)
    pytest.fail(f"the group's lag never became {expected}: last {last}\n{cluster.logs()[-3000:]}")


def test_group_lag_covers_partitions_led_by_other_brokers(tmp_path: Path, s3: S3Bucket) -> None:
    cluster = Cluster(tmp_path / "cluster", s3, 3, settings={
        "metering.snapshot.interval.ms": "500", "metering.sample.interval.ms": "200"}).start()
    try:
        create_topic(cluster.bootstrap, TOPIC, PARTITIONS)
        leaders = cluster.wait_placed(TOPIC, PARTITIONS)
        assert len(set(leaders)) == 3, leaders  # every broker leads some: most are not the coordinator's
        _produce(cluster.bootstrap, 60)
        consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": GROUP,
                                             "enable.auto.commit": False})
        try:
            consumer.commit(offsets=[confluent_kafka.TopicPartition(TOPIC, p, 10) for p in range(PARTITIONS)],
                            asynchronous=False)
        finally:
            consumer.close()
        coordinator = _wait_for_lag(cluster, PARTITIONS * (60 - 10))
        led_by_coordinator = sum(1 for leader in leaders if str(leader) == coordinator)
        assert led_by_coordinator < PARTITIONS  # the lag counted partitions it does not lead
        # more records: the lag follows the other brokers' end offsets (renewed with their leases)
        _produce(cluster.bootstrap, 20)
        assert _wait_for_lag(cluster, PARTITIONS * (80 - 10)) == coordinator
    finally:
        cluster.stop()

"""`strata groups list|describe` and offset reset behaviour (earliest, latest, explicit seeks)."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafkaclients import create_topic
from strata_cli.main import main


def _produce(bootstrap: str, topic: str, count: int, partitions: int, start: int = 0) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(start, start + count):
        producer.send(topic, str(i).encode(), partition=i % partitions)
    producer.flush()
    producer.close()


def _poll(consumer: KafkaConsumer, want: int, timeout: float = 15.0) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(300).values():
            got.extend(int(r.value) for r in records)
    return got


def test_groups_describe_shows_lag(broker, topic_name: str) -> None:
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 3)
    _produce(bootstrap, topic_name, 90, 3)  # 30 per partition
    group = f"lag-{topic_name}"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic_name, 0): OffsetAndMetadata(30, "", -1),
                     TopicPartition(topic_name, 1): OffsetAndMetadata(12, "", -1),
                     TopicPartition(topic_name, 2): OffsetAndMetadata(0, "", -1)})
    consumer.close()

    runner = CliRunner()
    result = runner.invoke(main, ["groups", "describe", group, "--bootstrap", bootstrap, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["partition"]: (r["committed_offset"], r["log_end_offset"], r["lag"]) for r in data["partitions"]}
    assert rows == {0: (30, 30, 0), 1: (12, 30, 18), 2: (0, 30, 30)}
    assert data["total_lag"] == 48 and data["state"] == "Empty"

    table = runner.invoke(main, ["groups", "describe", group, "--bootstrap", bootstrap])
    assert table.exit_code == 0, table.output
    assert "LAG" in table.output and "18" in table.output and "total lag=48" in table.output

    listed = runner.invoke(main, ["groups", "list", "--bootstrap", bootstrap, "--json"])
    assert listed.exit_code == 0, listed.output
    assert group in {g["group_id"] for g in json.loads(listed.output)}
    table = runner.invoke(main, ["groups", "list", "--bootstrap", bootstrap])
    assert table.exit_code == 0 and "GROUP" in table.output


def test_offset_reset_earliest_latest_and_seek(broker, topic_name: str) -> None:
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 1)
    _produce(bootstrap, topic_name, 20, 1)
    common = {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 500}

    earliest = KafkaConsumer(topic_name, group_id=f"e-{topic_name}", auto_offset_reset="earliest", **common)
    assert sorted(_poll(earliest, 20)) == list(range(20))
    earliest.close()

    latest = KafkaConsumer(topic_name, group_id=f"l-{topic_name}", auto_offset_reset="latest", **common)
    deadline = time.monotonic() + 15
    while not latest.assignment() and time.monotonic() < deadline:
        latest.poll(200)
    tp = TopicPartition(topic_name, 0)
    assert latest.position(tp) == 20
    _produce(bootstrap, topic_name, 5, 1, start=20)
    assert sorted(_poll(latest, 5)) == list(range(20, 25))
    # An explicit seek wins over the committed offset.
    latest.seek(tp, 7)
    assert sorted(_poll(latest, 18)) == list(range(7, 25))
    latest.commit()
    latest.close()

    again = KafkaConsumer(topic_name, group_id=f"l-{topic_name}", auto_offset_reset="earliest", **common)
    _produce(bootstrap, topic_name, 3, 1, start=25)
    assert sorted(_poll(again, 3)) == [25, 26, 27]
    again.close()

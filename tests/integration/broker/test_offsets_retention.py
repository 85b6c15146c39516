"""ListOffsets by timestamp across segments; retention by bytes and by time."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafkaclients import consume_kafka_python, create_topic

BASE_TS = 1_700_000_000_000


def produce_timestamped(bootstrap: str, topic: str, timestamps: list[int], value_size: int = 300) -> list[int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, batch_size=1)
    offsets = []
    for i, ts in enumerate(timestamps):
        meta = producer.send(topic, value=f"{i:06d}".encode().ljust(value_size, b"."), partition=0,
                             timestamp_ms=ts).get(timeout=30)
        offsets.append(meta.offset)
    producer.close()
    return offsets


def segment_files(broker, topic: str) -> list[str]:
    return sorted(p.name for p in (broker.data_dir / f"{topic}-0").glob("*.log"))


def test_offsets_for_times_across_segments(broker_factory, topic_name):
    broker = broker_factory({"segment.bytes": "4096", "index.interval.bytes": "512"})
    create_topic(broker.bootstrap, topic_name, 1)
    timestamps = [BASE_TS + 10 * i for i in range(300)]
    offsets = produce_timestamped(broker.bootstrap, topic_name, timestamps)
    assert offsets == list(range(300))
    assert len(segment_files(broker, topic_name)) > 10

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition(topic_name, 0)
    try:
        for i in (0, 1, 17, 18, 99, 150, 151, 222, 299):
            exact = consumer.offsets_for_times({tp: timestamps[i]})[tp]
            assert (exact.offset, exact.timestamp) == (i, timestamps[i])
            between = consumer.offsets_for_times({tp: timestamps[i] - 5})[tp]
            assert (between.offset, between.timestamp) == (i, timestamps[i])
        assert consumer.offsets_for_times({tp: BASE_TS - 1_000_000})[tp].offset == 0
        assert consumer.offsets_for_times({tp: timestamps[-1] + 1})[tp] is None
        assert consumer.beginning_offsets([tp])[tp] == 0
        assert consumer.end_offsets([tp])[tp] == 300
    finally:
        consumer.close()


def test_retention_bytes_deletes_whole_old_segments(broker_factory, topic_name):
    broker = broker_factory({"segment.bytes": "4096", "log.retention.check.interval.ms": "100"})
    create_topic(broker.bootstrap, topic_name, 1, {"retention.bytes": "16384"})
    now = int(time.time() * 1000)
    produce_timestamped(broker.bootstrap, topic_name, [now] * 300)
    tp = TopicPartition(topic_name, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + 10
        while consumer.beginning_offsets([tp])[tp] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        start = consumer.beginning_offsets([tp])[tp]
        assert start > 0
    finally:
        consumer.close()
    files = segment_files(broker, topic_name)
    # The log start is a segment boundary and every older segment file is gone.
    assert files[0] == f"{start:020d}.log"
    total = sum((broker.data_dir / f"{topic_name}-0" / f).stat().st_size for f in files)
    assert total <= 16384 + 4096
    # What is left reads back from the new start to the end, contiguously.
    records = consume_kafka_python(broker.bootstrap, topic_name, 1, expected=300 - start, timeout=20)
    assert [r.offset for r in records] == list(range(start, 300))
    # The new log start survives a restart.
    broker.restart()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        assert consumer.beginning_offsets([tp])[tp] == start
    finally:
        consumer.close()


def test_retention_ms_deletes_expired_segments(broker_factory, topic_name):
    broker = broker_factory({"segment.bytes": "4096", "log.retention.check.interval.ms": "100"})
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "3600000"})
    now = int(time.time() * 1000)
    old = [now - 2 * 3600_000] * 100
    fresh = [now] * 20
    produce_timestamped(broker.bootstrap, topic_name, old + fresh)
    tp = TopicPartition(topic_name, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        deadline = time.monotonic() + 10
        while consumer.beginning_offsets([tp])[tp] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        start = consumer.beginning_offsets([tp])[tp]
        # Every segment holding only expired records is gone; no fresh record is.
        assert 0 < start <= 100
        assert consumer.end_offsets([tp])[tp] == 120
    finally:
        consumer.close()

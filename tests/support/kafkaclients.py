"""Produce and consume with each real client library, the same way for every test."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import aiokafka
import confluent_kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1


def create_topic(bootstrap: str, name: str, partitions: int, configs: dict[str, str] | None = None,
                 **conf: object) -> None:
    """Create a topic with kafka-python's admin client (`conf`: more of its settings, e.g. TLS)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **conf)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
    finally:
        admin.close()


# ---- confluent-kafka (librdkafka) ---------------------------------------------------------

def produce_confluent(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], **conf: object) -> list[Record]:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    acked: list[Record] = []
    errors: list[object] = []

    def on_delivery(err: object, msg: confluent_kafka.Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value()))

    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records not delivered"
    assert not errors, errors[:5]
    return acked


def consume_confluent(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 60.0,
                      **conf: object) -> list[Record]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}",
                                         "enable.auto.commit": False, **conf})
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                     for p in range(partitions)])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    raise AssertionError(str(msg.error()))
                out.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp()[1]))
    finally:
        consumer.close()
    return out


def consume_to_end(bootstrap: str, partitions: list[tuple[str, int]], isolation: str, timeout: float = 60.0,
                   group: str | None = None, **conf: object) -> list[bytes]:
    """Every record value readable at `isolation` in these (topic, partition)s, until each reports
    its end (read_committed: its last stable offset); `conf`: more consumer settings (e.g. TLS)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap,
                                         "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                                         "auto.offset.reset": "earliest", "isolation.level": isolation,
                                         "enable.partition.eof": True, "enable.auto.commit": False, **conf})
    consumer.assign([confluent_kafka.TopicPartition(t, p) for t, p in partitions])
    values: list[bytes] = []
    ended: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    ended.add((msg.topic(), msg.partition()))
                continue
            values.append(msg.value())
    finally:
        consumer.close()
    assert len(ended) == len(partitions), f"partitions never reached their end: {set(partitions) - ended}"
    return values


# ---- kafka-python -----------------------------------------------------------------------------

def commit_abort_commit(producer: confluent_kafka.Producer, topic: str, partitions: list[int],
                        tag: bytes = b"") -> tuple[list[bytes], int]:
    """Three transactions of 5 records per partition, committed, aborted, committed: the committed
    values and how many records were aborted."""
    committed: list[bytes] = []
    aborted = 0
    for round_, commit in enumerate((True, False, True)):
        producer.begin_transaction()
        values = [b"%sr%d-p%d-%d" % (tag, round_, p, i) for p in partitions for i in range(5)]
        for i, value in enumerate(values):
            producer.produce(topic, value=value, partition=partitions[i // 5])
        if commit:
            producer.commit_transaction(60)
            committed += values
        else:
            assert producer.flush(30) == 0
            producer.abort_transaction(60)
            aborted += len(values)
    producer.flush(10)
    return committed, aborted


def produce_kafka_python(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                         **conf: object) -> list[Record]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **conf)
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    producer.flush(60)
    acked = []
    for (key, value), future in zip(records, futures, strict=True):
        meta = future.get(timeout=60)
        acked.append(Record(meta.partition, meta.offset, key, value))
    producer.close()
    return acked


def consume_kafka_python(bootstrap: str, topic: str, partitions: int, expected: int,
                         timeout: float = 60.0) -> list[Record]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                out.extend(Record(tp.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs)
    finally:
        consumer.close()
    return out


# ---- aiokafka ---------------------------------------------------------------------------------

def produce_aiokafka(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], **conf: object) -> list[Record]:
    async def run() -> list[Record]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **conf)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=key, value=value) for key, value in records]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return [Record(m.partition, m.offset, k, v) for (k, v), m in zip(records, metas, strict=True)]

    return asyncio.run(run())


def consume_aiokafka(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 60.0) -> list[Record]:
    async def run() -> list[Record]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                             auto_offset_reset="earliest")
        await consumer.start()
        out: list[Record] = []
        try:
            consumer.assign([aiokafka.TopicPartition(topic, p) for p in range(partitions)])
            await consumer.seek_to_beginning()
            deadline = time.monotonic() + timeout
            while len(out) < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, msgs in batches.items():
                    out.extend(Record(tp.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


PRODUCERS = {"confluent-kafka": produce_confluent, "kafka-python": produce_kafka_python,
             "aiokafka": produce_aiokafka}
CONSUMERS = {"confluent-kafka": consume_confluent, "kafka-python": consume_kafka_python,
             "aiokafka": consume_aiokafka}


NUMBERED_SIZE = 1024
NUMBERED_TS0 = 1_600_000_000_000


def produce_numbered(bootstrap: str, topic: str, n: int, start: int = 0) -> None:
    """Records start..start+n-1 to partition 0 (acks=all): value = the number, 9 digits, padded with
    "#" to NUMBERED_SIZE bytes; timestamp NUMBERED_TS0 + the number."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                                         "batch.size": 256 * 1024})
    errors: list[object] = []
    for i in range(start, start + n):
        value = f"{i:09d}".encode().ljust(NUMBERED_SIZE, b"#")
        while True:
            try:
                producer.produce(topic, value=value, partition=0, timestamp=NUMBERED_TS0 + i,
                                 on_delivery=lambda err, _msg: errors.append(err) if err else None)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    assert not errors, errors[:3]


METERED_VALUE = 4096  # large values keep per-record framing well under 1% of the bytes


def produce_as(bootstrap: str, client_id: str, topic: str, n: int) -> int:
    """n records of METERED_VALUE bytes with client.id `client_id`; the value bytes sent."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "client.id": client_id, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, key=str(i % 7).encode(), value=bytes([65 + i % 26]) * METERED_VALUE)
        producer.poll(0)
    assert producer.flush(60) == 0
    return n * METERED_VALUE

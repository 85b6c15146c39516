"""Compacted entity streams: latest value per key, tombstones, locally and in S3."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict

import confluent_kafka
import pytest
from brokerproc import free_port
from kafkaclients import consume_confluent, create_topic
from metrics import metric
from s3server import CREDENTIALS
from waiting import wait_until

KEYS = 1000
UPDATES = 100
DELETED = 100


def entity_events(seed: int = 3) -> list[tuple[bytes, bytes | None]]:
    """KEYS keys x UPDATES updates each, interleaved, then DELETED tombstones."""
    rng = random.Random(seed)
    events: list[tuple[bytes, bytes | None]] = []
    for update in range(UPDATES):
        keys = list(range(KEYS))
        rng.shuffle(keys)
        events.extend((f"entity-{k:04d}".encode(), f"{k}:{update:03d}".encode()) for k in keys)
    events.extend((f"entity-{k:04d}".encode(), None) for k in range(DELETED))
    return events


def produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes | None]]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                         "compression.type": "lz4"})
    for key, value in events:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def expected_table() -> dict[bytes, bytes]:
    return {f"entity-{k:04d}".encode(): f"{k}:{UPDATES - 1:03d}".encode() for k in range(DELETED, KEYS)}


def read_all(bootstrap: str, topic: str, at_least: int, timeout: float = 30):
    return consume_confluent(bootstrap, topic, 1, expected=at_least, timeout=timeout)


def read_until_sentinel(bootstrap: str, topic: str, timeout: float = 120.0):
    """Everything up to the last record written (the sentinel), however slow the machine is."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_all(bootstrap, topic, 10**9, timeout=10)
        if any(r.key == b"sentinel" for r in records) or time.monotonic() > deadline:
            return records


def log_bytes(broker, topic: str) -> int:
    return sum(p.stat().st_size for p in (broker.data_dir / f"{topic}-0").glob("*.log"))


COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "0",
           "segment.bytes": str(256 << 10), "segment.ms": "1000"}


def test_local_compaction_keeps_latest_values_and_drops_tombstones(broker_factory, topic_name):
    broker = broker_factory({"log.cleaner.backoff.ms": "200"})
    create_topic(broker.bootstrap, topic_name, 1, COMPACT)
    events = entity_events()
    produce(broker.bootstrap, topic_name, events)
    before = log_bytes(broker, topic_name)
    # The active segment is never compacted: roll it with one more (unrelated) event.
    time.sleep(1.1)
    produce(broker.bootstrap, topic_name, [(b"sentinel", b"x")])

    wait_until(lambda: log_bytes(broker, topic_name) < before / 20, 60, "compaction")
    wait_until(lambda: len(read_all(broker.bootstrap, topic_name, 10**9, timeout=3)) == KEYS - DELETED + 1, 30,
               "tombstones to go")
    records = read_all(broker.bootstrap, topic_name, KEYS - DELETED + 1)
    assert_table(records, extra={b"sentinel": b"x"})
    # The compacted log survives a restart (clean and crash).
    broker.restart()
    assert_table(read_all(broker.bootstrap, topic_name, KEYS - DELETED + 1), extra={b"sentinel": b"x"})


def assert_table(records, extra: dict[bytes, bytes] | None = None) -> None:
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)), "offsets must strictly increase"
    table = {r.key: r.value for r in records}
    assert len(table) == len(records), "a key appears twice after compaction"
    assert table == {**expected_table(), **(extra or {})}


def test_reader_during_compaction_never_goes_back_in_time(broker_factory, topic_name):
    metrics_listen = f"127.0.0.1:{free_port()}"
    broker = broker_factory({"log.cleaner.backoff.ms": "100", "log.cleaner.io.max.bytes.per.second": str(1 << 20),
                             "metrics.listen": metrics_listen})
    create_topic(broker.bootstrap, topic_name, 1, COMPACT)
    produce(broker.bootstrap, topic_name, entity_events())
    time.sleep(1.1)
    produce(broker.bootstrap, topic_name, [(b"sentinel", b"x")])
    violations: list[str] = []
    stop = threading.Event()
    passes = [0]

    def reader() -> None:
        consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader",
                                             "enable.auto.commit": False, "fetch.max.bytes": 65536,
                                             "message.max.bytes": 65536, "max.partition.fetch.bytes": 65536})
        try:
            while not stop.is_set():
                consumer.assign([confluent_kafka.TopicPartition(topic_name, 0, confluent_kafka.OFFSET_BEGINNING)])
                seen: dict[bytes, int] = {}
                done = False
                while not done and not stop.is_set():
                    for msg in consumer.consume(500, 0.5):
                        assert not msg.error(), msg.error()
                        if msg.key() == b"sentinel":
                            done = True
                            break
                        if msg.value() is None:
                            continue
                        update = int(msg.value().split(b":")[1])
                        if update < seen.get(msg.key(), -1):
                            violations.append(f"{msg.key()!r}: {update} after {seen[msg.key()]}")
                        seen[msg.key()] = update
                passes[0] += done
        finally:
            consumer.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_until(lambda: metric(metrics_listen, "strata_compaction_local_passes_total") >= 1, 60,
                   "a compaction pass")
        passes_before_end = passes[0]
        wait_until(lambda: passes[0] >= passes_before_end + 2, 60, "two full reads after compaction")
    finally:
        stop.set()
        thread.join()
    assert passes[0] >= 2
    assert violations == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_during_compaction_leaves_a_correct_log(broker_factory, topic_name, s3, where):
    rng = random.Random(11)
    # A slow cleaner, so kills land in the middle of passes.
    settings = {"log.cleaner.backoff.ms": "50", "log.cleaner.io.max.bytes.per.second": str(1 << 20)}
    topic_configs = {**COMPACT, "delete.retention.ms": "86400000"}
    if where == "s3":
        settings = s3.broker_settings(**settings, **{"tiered.upload.interval.ms": "500",
                                                     "log.retention.check.interval.ms": "300",
                                                     "tiered.compaction.delete.delay.ms": "0"})
        topic_configs["local.retention.bytes"] = "0"
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, topic_configs)
    events = entity_events()
    produce(broker.bootstrap, topic_name, events)
    time.sleep(1.1)
    produce(broker.bootstrap, topic_name, [(b"sentinel", b"x")])
    # Kill at random moments until passes have both completed and been interrupted (bounded). A
    # completed pass is read from the log, which spans every run: the passes counter of /metrics
    # starts again at 0 after each SIGKILL.
    for cycle in range(15):
        time.sleep(rng.uniform(0.2, 1.5))
        broker.kill()
        broker.start()
        if cycle >= 4 and "compacted" in broker.log_tail(2000):
            break
    # On a slow machine every kill may land before a pass ends: then let one finish after them.
    wait_until(lambda: "compacted" in broker.log_tail(2000), 90, "a compaction pass")
    records = read_until_sentinel(broker.bootstrap, topic_name)
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    # Whatever was compacted so far, the last value of every key is the latest one written,
    # deleted keys end in their tombstone, and no key goes back in time.
    last: dict[bytes, bytes | None] = {}
    history: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        last[r.key] = r.value
        if r.value is not None and r.key != b"sentinel":
            history[r.key].append(int(r.value.split(b":")[1]))
    assert all(h == sorted(h) for h in history.values())
    for k in range(KEYS):
        key = f"entity-{k:04d}".encode()
        assert last[key] == (None if k < DELETED else f"{k}:{UPDATES - 1:03d}".encode())


def test_s3_compaction_keeps_latest_values_and_shrinks_the_bucket(broker_factory, topic_name, s3):
    settings = s3.broker_settings(**{"log.cleaner.backoff.ms": "200", "tiered.upload.interval.ms": "1000",
                                     "log.retention.check.interval.ms": "300",
                                     "tiered.compaction.delete.delay.ms": "500"})
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {**COMPACT, "local.retention.bytes": "0"})
    produce(broker.bootstrap, topic_name, entity_events())

    def bucket_log_bytes() -> int:
        return sum(size for key, size in s3.objects().items() if key.endswith(".log") and f"/{topic_name}-" in key)

    def manifest() -> dict:
        (key,) = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/{topic_name}-" in k]
        return json.loads(s3.read(key))

    wait_until(lambda: any(k.endswith("manifest.json") and f"/{topic_name}-" in k for k in s3.objects())
               and manifest()["segments"] and manifest()["segments"][-1]["last_offset"] >= len(entity_events()) - 1,
               90, "everything in S3")
    wait_until(lambda: manifest()["cleaned_offset"] >= len(entity_events()), 90, "S3 compaction")
    wait_until(lambda: not manifest()["garbage"], 30, "replaced objects to be deleted")
    # Only what the manifest lists is left, and it is a fraction of what was written.
    listed = {s["base_offset"] for s in manifest()["segments"]}
    logs_in_bucket = [k for k in s3.objects() if k.endswith(".log") and f"/{topic_name}-" in k]
    assert len(logs_in_bucket) == len(listed)
    assert bucket_log_bytes() < 200_000
    wait_until(lambda: log_bytes(broker, topic_name) == 0, 30, "local copies to go")
    assert_table(read_all(broker.bootstrap, topic_name, KEYS - DELETED))

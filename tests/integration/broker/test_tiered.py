"""Tiered storage against a real S3 HTTP endpoint (moto server)."""

from __future__ import annotations

import json
import shutil
import time

import confluent_kafka
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, TopicPartition
from kafkaclients import NUMBERED_SIZE as RECORD
from kafkaclients import NUMBERED_TS0 as TS0
from kafkaclients import consume_confluent, create_topic, produce_numbered
from metrics import metric, scrape
from s3server import CREDENTIALS, TIERED
from waiting import wait_until


def local_bytes(broker, topic: str) -> int:
    return sum(p.stat().st_size for p in (broker.data_dir / f"{topic}-0").glob("*.log"))


def manifest(s3, topic: str) -> dict:
    (key,) = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/topics/{topic}-" in k]
    return json.loads(s3.read(key))




def test_offload_replay_timestamps_and_restore(broker_factory, topic_name, s3):
    broker = broker_factory(s3.broker_settings(**TIERED), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {"local.retention.bytes": str(4 << 20), "retention.ms": "-1"})
    n = 52_000  # > 50 MB of 1 KiB records
    produce_numbered(broker.bootstrap, topic_name, n)

    # Everything but the newest few segments ends up in S3 only.
    wait_until(lambda: manifest(s3, topic_name)["segments"] and
               manifest(s3, topic_name)["segments"][-1]["last_offset"] >= n - 1, 120, "uploads to finish")
    wait_until(lambda: local_bytes(broker, topic_name) <= (4 << 20) + (1 << 20), 30, "local retention")
    segments = manifest(s3, topic_name)["segments"]
    assert segments[0]["base_offset"] == 0
    assert all(a["last_offset"] + 1 == b["base_offset"] for a, b in zip(segments, segments[1:], strict=False))
    stored = sum(size for key, size in s3.objects().items() if key.endswith(".log") and topic_name in key)
    assert stored >= 50 * 1024 * 1024

    # A consumer from offset 0 reads every record, in order, byte-identical, across the S3/local boundary.
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=n, timeout=180)
    assert [r.offset for r in records] == list(range(n))
    assert all(r.value == f"{r.offset:09d}".encode().ljust(RECORD, b"#") for r in records)

    # Fetch-by-timestamp lands in cold data.
    check_timestamps(broker.bootstrap, topic_name, [5, 1234, 20_000, n - 1])

    # Wipe the disk: the broker rebuilds the topic from the bucket and serves every offset.
    broker.stop()
    shutil.rmtree(broker.data_dir)
    broker.start()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition(topic_name, 0)
    try:
        assert consumer.beginning_offsets([tp])[tp] == 0
        assert consumer.end_offsets([tp])[tp] == n
    finally:
        consumer.close()
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=n, timeout=180)
    assert [r.offset for r in records] == list(range(n))
    assert all(r.value == f"{r.offset:09d}".encode().ljust(RECORD, b"#") for r in records)
    # And it keeps going: new records land after the restored ones.
    produce_numbered(broker.bootstrap, topic_name, 10, start=n)
    tail = consume_confluent(broker.bootstrap, topic_name, 1, expected=n + 10, timeout=180)
    assert [r.offset for r in tail[-10:]] == list(range(n, n + 10))


def check_timestamps(bootstrap: str, topic: str, indexes: list[int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tp = TopicPartition(topic, 0)
    try:
        for i in indexes:
            found = consumer.offsets_for_times({tp: TS0 + i})[tp]
            assert (found.offset, found.timestamp) == (i, TS0 + i)
    finally:
        consumer.close()


def test_deleting_a_topic_empties_its_prefix(broker_factory, topic_name, s3):
    broker = broker_factory(s3.broker_settings(**TIERED), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "-1"})
    produce_numbered(broker.bootstrap, topic_name, 3000)
    wait_until(lambda: any(k.endswith(".log") and topic_name in k for k in s3.objects()), 60, "an upload")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics([topic_name])[topic_name].result(30)
    wait_until(lambda: not [k for k in s3.objects() if f"/topics/{topic_name}-" in k], 30, "objects to go")
    create_topic(broker.bootstrap, topic_name, 1)
    produce_numbered(broker.bootstrap, topic_name, 5, start=777)
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=6, timeout=5)
    assert [r.value[:9] for r in records] == [f"{i:09d}".encode() for i in range(777, 782)]


def test_s3_durability_survives_losing_the_disk(broker_factory, topic_name, s3):
    # Uploads are rare here, so what survives comes from the S3 commit log.
    broker = broker_factory(s3.broker_settings(**{**TIERED, "tiered.upload.interval.ms": "600000",
                                                  "segment.bytes": str(64 << 20)}), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 3, {"strata.durability": "s3", "retention.ms": "-1"})
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                                         "enable.idempotence": True, "linger.ms": 5})
    acked: dict[bytes, tuple[int, int]] = {}

    def on_delivery(err, msg):
        assert err is None, err
        acked[msg.value()] = (msg.partition(), msg.offset())

    for i in range(3000):
        producer.produce(topic_name, key=str(i % 31).encode(), value=f"{i:06d}".encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert len(acked) == 3000
    assert not any(k.endswith(".log") and topic_name in k for k in s3.objects()), "a segment was uploaded"
    # The node and its disk are gone.
    broker.kill()
    shutil.rmtree(broker.data_dir)
    broker.start()
    records = consume_confluent(broker.bootstrap, topic_name, 3, expected=3000, timeout=60)
    stored = {(r.partition, r.offset): r.value for r in records}
    assert len(records) == 3000
    assert all(stored.get(position) == value for value, position in acked.items())


def test_s3_outage_keeps_producing_on_disk_and_catches_up(broker_factory, topic_name, s3):
    import threading

    from brokerproc import free_port
    from s3faults import S3FaultProxy

    proxy = S3FaultProxy(s3.server.port)
    metrics_port = free_port()
    settings = s3.broker_settings(endpoint=proxy.endpoint, **{**TIERED, "segment.bytes": str(256 << 10),
                                                              "metrics.listen": f"127.0.0.1:{metrics_port}"})
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "-1", "local.retention.bytes": str(512 << 10)})
    acked: dict[bytes, int] = {}
    stop = threading.Event()

    def produce() -> None:
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 20})
        i = 0
        while not stop.is_set():
            value = f"{i:08d}".encode().ljust(512, b"-")
            producer.produce(topic_name, value=value, partition=0,
                             on_delivery=lambda err, msg: acked.__setitem__(msg.value(), msg.offset()) if not err
                             else None)
            i += 1
            producer.poll(0.002)
        assert producer.flush(60) == 0

    def remote_end() -> int:
        segments = manifest(s3, topic_name)["segments"] if any(
            k.endswith("manifest.json") and topic_name in k for k in s3.objects()) else []
        return segments[-1]["last_offset"] + 1 if segments else 0

    def check_nothing_dropped() -> None:
        # Every offset not yet in S3 is still on local disk.
        bases = sorted(int(p.stem) for p in (broker.data_dir / f"{topic_name}-0").glob("*.log"))
        assert bases[0] <= remote_end()

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        time.sleep(3)
        for mode, seconds in (("error", 16), ("hang", 16)):
            proxy.set_mode(mode)
            frozen = remote_end()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                check_nothing_dropped()
                assert remote_end() == frozen, "an upload landed through a dead endpoint"
                time.sleep(1)
        metrics = scrape(metrics_port)
        assert "strata_s3_healthy 0.0" in metrics
        lag = [line for line in metrics.splitlines() if line.startswith("strata_tier_upload_lag_offsets{")]
        assert lag and float(lag[0].split()[-1]) > 0
        proxy.set_mode("ok")
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
        proxy.set_mode("ok")
    assert proxy.refused > 0
    assert metric(metrics_port, "strata_s3_request_failures_total") > 0  # the outage reached the broker
    produced = max(acked.values()) + 1
    wait_until(lambda: remote_end() >= produced, 90, "uploads to catch up after the outage")
    check_nothing_dropped()
    records = consume_confluent(broker.bootstrap, topic_name, 1, expected=len(acked), timeout=120)
    stored = {r.offset: r.value for r in records}
    assert all(stored.get(offset) == value for value, offset in acked.items())
    metrics = scrape(metrics_port)
    assert "strata_s3_healthy 1.0" in metrics
    proxy.close()


def test_committed_group_offsets_survive_losing_the_disk(broker_factory, topic_name, s3):
    from kafka import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    broker = broker_factory(s3.broker_settings(**{**TIERED, "tiered.upload.interval.ms": "600000"}),
                            env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 2, {"retention.ms": "-1"})
    produce_numbered(broker.bootstrap, topic_name, 100)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="billing", enable_auto_commit=False)
    consumer.assign([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)])
    consumer.commit({TopicPartition(topic_name, 0): OffsetAndMetadata(42, "", -1),
                     TopicPartition(topic_name, 1): OffsetAndMetadata(0, "", -1)})
    consumer.close()
    broker.kill()
    shutil.rmtree(broker.data_dir)
    broker.start()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        committed = admin.list_group_offsets("billing")["billing"]
    finally:
        admin.close()
    assert committed[TopicPartition(topic_name, 0)].offset == 42
    assert committed[TopicPartition(topic_name, 1)].offset == 0

"""Producer ids are unique across a cluster's brokers and across a broker's lost disk.

An idempotent producer's batches are told apart by (producer id, epoch, sequence). A partition
restored from the bucket remembers the ids that wrote it, so an id handed out again after the
disk is lost makes a new producer's first batch look like a retry of an old one: acknowledged,
never written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import confluent_kafka
from kafka.protocol.producer import InitProducerIdRequest
from kafkaclients import consume_confluent, create_topic
from rawclient import RawConnection
from s3server import CREDENTIALS
from strata_broker.config import BrokerConfig
from strata_broker.tier.manager import TierManager

TIERED = {"segment.bytes": str(1 << 20), "tiered.upload.interval.ms": "500", "log.retention.check.interval.ms": "500"}


def init_producer_id(bootstrap: str) -> int:
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(InitProducerIdRequest(version=4, transactional_id=None, transaction_timeout_ms=60_000,
                                                      producer_id=-1, producer_epoch=-1))
    finally:
        conn.close()
    assert response.error_code == 0, response
    return response.producer_id


def produce_one_batch(bootstrap: str, topic: str, tag: str) -> None:
    """Ten records in one idempotent batch (sequences 0..9 of a new producer id)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                         "linger.ms": 200})
    errors: list[object] = []
    for i in range(10):
        producer.produce(topic, value=f"{tag}-{i}".encode(), partition=0,
                         on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert producer.flush(60) == 0
    assert not errors, errors


def uploaded_end(s3, topic: str) -> int:
    keys = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/topics/{topic}-" in k]
    if not keys:
        return 0
    segments = json.loads(s3.read(keys[0]))["segments"]
    return segments[-1]["last_offset"] + 1 if segments else 0


def test_a_new_producer_after_a_lost_disk_is_not_taken_for_an_old_one(broker_factory, topic_name, s3):
    broker = broker_factory(s3.broker_settings(**TIERED), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, {"retention.ms": "-1"})
    produce_one_batch(broker.bootstrap, topic_name, "before")
    deadline = time.monotonic() + 60
    while uploaded_end(s3, topic_name) < 10:  # the manifest now remembers the producer's id and sequences
        assert time.monotonic() < deadline, "the batch was not uploaded"
        time.sleep(0.2)
    first_id = init_producer_id(broker.bootstrap)
    broker.kill()
    shutil.rmtree(broker.data_dir)  # the disk, with the broker's own producer id counter, is gone
    broker.start()
    assert init_producer_id(broker.bootstrap) > first_id
    produce_one_batch(broker.bootstrap, topic_name, "after")
    values = sorted(r.value.decode() for r in consume_confluent(broker.bootstrap, topic_name, 1, expected=20,
                                                                 timeout=60))
    assert values == sorted([f"before-{i}" for i in range(10)] + [f"after-{i}" for i in range(10)])


def test_brokers_sharing_a_bucket_never_hand_out_the_same_producer_id(broker_factory, s3):
    brokers = [broker_factory(s3.broker_settings(**TIERED), name=f"b{i}", env=CREDENTIALS) for i in range(2)]
    ids = [init_producer_id(brokers[i % 2].bootstrap) for i in range(6)]
    assert len(set(ids)) == len(ids), ids
    for b in brokers:  # and after restarts, none comes back
        b.stop()
        b.start()
    more = [init_producer_id(b.bootstrap) for b in brokers]
    assert not set(more) & set(ids), (ids, more)


def test_concurrent_reservations_never_overlap(tmp_path, s3, monkeypatch):
    """Many brokers' reservations racing on the bucket's counter: each block is somebody's alone."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = BrokerConfig.from_overrides(s3.broker_settings())

    async def scenario() -> list[int]:
        tiers = [TierManager(config, str(tmp_path / f"b{i}"), broker_id=i) for i in range(3)]
        for tier in tiers:
            await tier.open()
        try:
            return list(await asyncio.gather(*(tier.reserve_producer_ids(1000) for tier in tiers for _ in range(8))))
        finally:
            for tier in tiers:
                await tier.close()

    starts = sorted(asyncio.run(scenario()))
    assert len(set(starts)) == len(starts) == 24
    assert all(b - a >= 1000 for a, b in zip(starts, starts[1:], strict=False)), starts

"""Fetch semantics at the protocol level: long poll, byte limits, several partitions per request."""

from __future__ import annotations

import threading
import time

from kafka.protocol.consumer import FetchRequest
from kafkaclients import create_topic
from rawclient import RawConnection

FETCH_VERSION = 11


def fetch(conn: RawConnection, topic: str, offsets: dict[int, int], *, max_wait_ms: int = 0, min_bytes: int = 1,
          max_bytes: int = 50 << 20, partition_max_bytes: int = 1 << 20):
    P = FetchRequest.FetchTopic.FetchPartition
    request = FetchRequest(
        version=FETCH_VERSION, replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes,
        isolation_level=0, session_id=0, session_epoch=-1,
        topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
            P(partition=p, current_leader_epoch=-1, fetch_offset=o, log_start_offset=-1,
              partition_max_bytes=partition_max_bytes) for p, o in offsets.items()])],
        forgotten_topics_data=[], rack_id="")
    response = conn.request(request)
    (topic_response,) = response.responses
    return {p.partition_index: p for p in topic_response.partitions}


def test_fetch_several_partitions_and_limits(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, 3)
    for p in range(3):
        _produce_to(broker.bootstrap, topic_name, p, 20)
    conn = RawConnection(broker.bootstrap)
    try:
        whole = fetch(conn, topic_name, {0: 0, 1: 0, 2: 0})
        assert sorted(whole) == [0, 1, 2]
        assert all(r.error_code == 0 and r.high_watermark == 20 and len(r.records) > 20_000 for r in whole.values())
        # partition_max_bytes smaller than one batch: still exactly one whole batch for the first
        # partition (KIP-74), nothing for the others once the response budget is used.
        small = fetch(conn, topic_name, {0: 0, 1: 0}, max_bytes=100, partition_max_bytes=100)
        first = small[0].records
        assert 0 < len(first) == 12 + int.from_bytes(first[8:12], "big")
        assert small[1].records in (b"", None)
        # From the middle: the response starts with the batch holding the offset.
        middle = fetch(conn, topic_name, {2: 7})
        assert int.from_bytes(middle[2].records[:8], "big") <= 7
        # Out of range answers OFFSET_OUT_OF_RANGE for that partition only.
        bad = fetch(conn, topic_name, {0: 21, 1: 0})
        assert bad[0].error_code == 1 and bad[1].error_code == 0
    finally:
        conn.close()


def _produce_to(bootstrap: str, topic: str, partition: int, n: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, batch_size=1)
    for i in range(n):
        producer.send(topic, key=b"k%d" % i, value=b"x" * 1000, partition=partition).get(timeout=30)
    producer.close()


def test_long_poll_waits_for_data_and_wakes_on_produce(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, 1)
    conn = RawConnection(broker.bootstrap)
    try:
        started = time.monotonic()
        empty = fetch(conn, topic_name, {0: 0}, max_wait_ms=600)
        assert empty[0].records in (b"", None)
        assert time.monotonic() - started >= 0.5  # it waited instead of answering at once

        producer = threading.Timer(0.3, _produce_to, args=(broker.bootstrap, topic_name, 0, 1))
        producer.start()
        started = time.monotonic()
        woken = fetch(conn, topic_name, {0: 0}, max_wait_ms=20_000)
        waited = time.monotonic() - started
        producer.join()
        assert len(woken[0].records) > 1000
        assert waited < 15  # answered when the record arrived, not at max_wait_ms
    finally:
        conn.close()

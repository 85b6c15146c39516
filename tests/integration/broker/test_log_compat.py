"""Log-level Kafka compatibility, over real sockets with real clients.

* Compaction removes transaction markers as Kafka's cleaner does (locally, and in S3 by the tier
  compactor, which also drops aborted records by the segments' `.txnindex`).
* compression.type: the broker recompresses batches whose codec differs from the topic's.
* message.timestamp.before/after.max.ms: CreateTime batches outside the bounds are refused.
* OffsetForLeaderEpoch answers from the leader-epoch history.
"""

from __future__ import annotations

import json
import struct
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka.protocol.consumer import FetchRequest
from kafkaclients import create_topic
from rawclient import RawConnection
from s3server import CREDENTIALS
from waiting import wait_until

ATTR_CONTROL = 0x20
ATTR_DELETE_HORIZON = 0x40
_HEADER = struct.Struct(">qiibIhiqqqhii")


def batches_of(data: bytes) -> list[dict[str, int]]:
    """The batch headers of a record set (magic v2), as dicts."""
    out, pos = [], 0
    while pos + 61 <= len(data):
        base, length, _, _, _, attrs, lod, bts, mts, pid, _, _, count = _HEADER.unpack_from(data, pos)
        if pos + 12 + length > len(data):
            break
        out.append({"base": base, "last": base + lod, "attributes": attrs, "base_timestamp": bts,
                    "max_timestamp": mts, "producer_id": pid, "count": count})
        pos += 12 + length
    return out


def fetch_raw(bootstrap: str, topic: str, offset: int, isolation: int = 0):  # type: ignore[no-untyped-def]
    """One Fetch v11 of partition 0 at `offset` (the partition's response)."""
    T = FetchRequest.FetchTopic
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(FetchRequest(
            version=11, replica_id=-1, max_wait_ms=0, min_bytes=0, max_bytes=8 << 20, isolation_level=isolation,
            session_id=0, session_epoch=-1, rack_id="", forgotten_topics_data=[], topics=[T(
                topic=topic, partitions=[T.FetchPartition(partition=0, current_leader_epoch=-1, fetch_offset=offset,
                                                          log_start_offset=-1, partition_max_bytes=8 << 20)])]))
        return response.responses[0].partitions[0]
    finally:
        conn.close()


def all_batches(bootstrap: str, topic: str) -> list[dict[str, int]]:
    """Every batch of partition 0 as the broker serves it, from the log start to the high watermark."""
    out: list[dict[str, int]] = []
    offset = 0
    for _ in range(1000):
        part = fetch_raw(bootstrap, topic, offset)
        assert part.error_code in (0, 1), part.error_code  # 1: OFFSET_OUT_OF_RANGE below the log start
        if part.error_code == 1:
            offset = part.log_start_offset
            continue
        found = [b for b in batches_of(bytes(part.records or b"")) if b["last"] >= offset]
        out += found
        if not found or found[-1]["last"] + 1 >= part.high_watermark:
            return out
        offset = found[-1]["last"] + 1
    raise AssertionError("the partition never reached its end")


def consume_values(bootstrap: str, topic: str, isolation: str, timeout: float = 30.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "isolation.level": isolation,
                         "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return values
                continue
            values.append(msg.value())
    finally:
        consumer.close()
    raise AssertionError("the partition never reached its end")


# ---- compaction and transaction markers ------------------------------------------------------------


def write_transactions(bootstrap: str, topic: str) -> None:
    """Four transactions of one producer: 'old' values, then 'committed' ones of the same keys (both
    committed), an aborted one of the same keys; after a segment roll, a committed sentinel."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    producer.init_transactions(30)
    for kind, commit in (("old", True), ("committed", True), ("aborted", False)):
        producer.begin_transaction()
        for i in range(10):
            producer.produce(topic, key=b"k%d" % i, value=b"%s-%d" % (kind.encode(), i))
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    time.sleep(1.2)  # segment.ms: the sentinel starts a new segment, so the others can be cleaned
    producer.begin_transaction()
    producer.produce(topic, key=b"sentinel", value=b"x")
    producer.commit_transaction(30)


EXPECTED = sorted([b"committed-%d" % i for i in range(10)] + [b"x"])
RETENTION_MS = 6000


def bucket_batches(s3, topic: str) -> tuple[list[dict[str, int]], list[str]]:  # type: ignore[no-untyped-def]
    """The batches of the segments the partition's manifest lists, and its `.txnindex` keys (read
    again when compaction replaced the objects between the manifest and their GETs)."""
    for _ in range(20):
        try:
            return _bucket_batches(s3, topic)
        except Exception as exc:  # NoSuchKey: a manifest older than the objects
            if "NoSuchKey" not in repr(exc):
                raise
            time.sleep(0.2)
    return _bucket_batches(s3, topic)


def _bucket_batches(s3, topic: str) -> tuple[list[dict[str, int]], list[str]]:  # type: ignore[no-untyped-def]
    (key,) = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/{topic}-" in k]
    manifest = json.loads(s3.read(key))
    prefix = key[:-len("manifest.json")]
    out: list[dict[str, int]] = []
    txnindexes = []
    objects = s3.objects()
    for seg in manifest["segments"]:
        name = f"{seg['base_offset']:020d}-{seg['last_offset']:020d}"
        if seg.get("generation"):
            name += f"-c{seg['generation']}"
        out += batches_of(s3.read(prefix + name + ".log"))
        if prefix + name + ".txnindex" in objects:
            txnindexes.append(prefix + name + ".txnindex")
    return out, txnindexes


@pytest.mark.parametrize("where", ["local", "s3"])
def test_compaction_removes_aborted_records_then_markers(broker_factory, topic_name, s3, where):
    """Aborted records go with the first pass; a marker whose transaction has no record left is
    stamped with a delete horizon and removed by a pass after delete.retention.ms; read_committed
    and read_uncommitted readers see the committed values throughout, also after a restart."""
    settings = {"log.cleaner.backoff.ms": "200"}
    configs = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "segment.ms": "1000",
               "delete.retention.ms": str(RETENTION_MS)}
    if where == "s3":
        settings = s3.broker_settings(**settings, **{"tiered.upload.interval.ms": "500",
                                                     "log.retention.check.interval.ms": "300",
                                                     "tiered.compaction.delete.delay.ms": "0"})
        configs["local.retention.bytes"] = "0"
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 1, configs)
    write_transactions(broker.bootstrap, topic_name)

    def stored() -> list[dict[str, int]]:
        return bucket_batches(s3, topic_name)[0] if where == "s3" else all_batches(broker.bootstrap, topic_name)

    def data_records() -> int:
        return sum(b["count"] for b in stored() if not b["attributes"] & ATTR_CONTROL)

    def markers() -> list[dict[str, int]]:
        return [b for b in stored() if b["attributes"] & ATTR_CONTROL]

    if where == "s3":
        wait_until(lambda: any(k.endswith("/0/manifest.json") and f"/{topic_name}-" in k for k in s3.objects())
                   and len(markers()) + data_records() > 0, 90, "the segments in S3")
    # 30 records + 4 markers written; superseded and aborted records go: 10 committed + sentinel.
    wait_until(lambda: data_records() == 11, 90, "compaction to drop superseded and aborted records")
    seen = markers()
    stamped = [b for b in seen if b["attributes"] & ATTR_DELETE_HORIZON]
    now_ms = time.time() * 1000
    # The 'old' transaction (all superseded) and the aborted one (all dropped) have no record left:
    # their markers carry the horizon; the others (records remain) are unstamped.
    assert len(seen) == 4 and len(stamped) == 2, seen
    assert all(now_ms - 60_000 < b["base_timestamp"] <= now_ms + RETENTION_MS for b in stamped), stamped
    assert all(b["max_timestamp"] < b["base_timestamp"] for b in stamped)  # record times unchanged
    if where == "s3":
        # The rewritten segment keeps the aborted transaction's index entry while its marker stays.
        assert len(bucket_batches(s3, topic_name)[1]) == 1
    assert sorted(consume_values(broker.bootstrap, topic_name, "read_uncommitted")) == EXPECTED
    assert sorted(consume_values(broker.bootstrap, topic_name, "read_committed")) == EXPECTED

    wait_until(lambda: len(markers()) == 2, 90, "markers to go after delete.retention.ms")
    assert time.time() * 1000 >= max(b["base_timestamp"] for b in stamped)
    assert all(not b["attributes"] & ATTR_DELETE_HORIZON for b in markers())
    if where == "s3":
        assert bucket_batches(s3, topic_name)[1] == []  # no aborted transaction left to index
    for _ in range(2):
        assert sorted(consume_values(broker.bootstrap, topic_name, "read_uncommitted")) == EXPECTED
        assert sorted(consume_values(broker.bootstrap, topic_name, "read_committed")) == EXPECTED
        last_stable = fetch_raw(broker.bootstrap, topic_name, 0, isolation=1)
        assert last_stable.last_stable_offset == last_stable.high_watermark  # no transaction left open
        broker.restart()

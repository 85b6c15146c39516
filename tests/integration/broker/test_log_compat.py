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
        # Everything in the bucket: 30 records, 4 markers, the sentinel and its marker (offset 34).
        wait_until(lambda: any(k.endswith("/0/manifest.json") and f"/{topic_name}-" in k for k in s3.objects())
                   and max((b["last"] for b in stored()), default=-1) >= 34, 90, "the segments in S3")
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


# ---- compression.type: broker-side recompression -----------------------------------------------------

CLIENT_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def produce_with(bootstrap: str, topic: str, codec: str, values: list[bytes], **conf: object) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20,
                         "enable.idempotence": True, **conf})
    for i, value in enumerate(values):
        producer.produce(topic, key=b"k%d" % i, value=value, headers=[("h", codec.encode())])
    assert producer.flush(30) == 0


def read_batches_and_values(bootstrap: str, topic: str) -> tuple[list[dict[str, int]], list[tuple]]:
    """The raw batches of the partition and its records (key, value, headers) decoded from them."""
    from kafka.record.default_records import DefaultRecordBatch

    part = fetch_raw(bootstrap, topic, 0)
    data = bytes(part.records or b"")
    batches = batches_of(data)
    records, pos = [], 0
    for _ in batches:
        length = struct.unpack_from(">i", data, pos + 8)[0] + 12
        records += [(r.offset, r.key, r.value, list(r.headers)) for r in DefaultRecordBatch(data[pos:pos + length])]
        pos += length
    return batches, records


@pytest.mark.parametrize("target", ["zstd", "uncompressed", "producer"])
def test_compression_type_recompresses_batches_of_other_codecs(broker, target):
    """Each client codec into a topic of `target`: the batches come back in the topic's codec (as
    sent for `producer`), with the same offsets, keys, values, headers and timestamps."""
    topic = f"cmpr-{target}-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1, {"compression.type": target, "compression.zstd.level": "9"})
    sent = []
    for codec in CLIENT_CODECS:
        values = [(b"%s-%d " % (codec.encode(), i)) * 20 for i in range(50)]
        produce_with(broker.bootstrap, topic, codec, values)
        sent += [(codec, v) for v in values]
    batches, records = read_batches_and_values(broker.bootstrap, topic)
    assert [r[0] for r in records] == list(range(len(sent)))
    assert [r[2] for r in records] == [v for _, v in sent]
    assert [r[3] for r in records] == [[("h", c.encode())] for c, _ in sent]
    codecs = [b["attributes"] & 0x07 for b in batches]
    if target == "producer":
        # Every codec was kept as the client chose it (in the order they were sent).
        assert sorted(set(codecs)) == sorted(CLIENT_CODECS.values())
    else:
        want = {"zstd": 4, "uncompressed": 0}[target]
        assert set(codecs) == {want}, codecs
    # A consumer reads them back as written.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0)])
    got = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            got.append(msg.value())
    finally:
        consumer.close()
    assert got == [v for _, v in sent]


def test_recompressed_idempotent_retry_is_still_a_duplicate(broker):
    """Recompression keeps the producer id, epoch and sequence: a retried batch is recognised."""
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder

    topic = f"cmpr-retry-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1, {"compression.type": "gzip"})
    conn = RawConnection(broker.bootstrap)
    try:
        from kafka.protocol.producer import InitProducerIdRequest

        init = conn.request(InitProducerIdRequest(version=1, transactional_id=None, transaction_timeout_ms=-1))
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                            producer_id=init.producer_id, producer_epoch=init.producer_epoch,
                                            base_sequence=0, batch_size=1 << 20)
        for i in range(5):
            builder.append(i, timestamp=int(time.time() * 1000), key=None, value=b"v%d" % i * 30, headers=[])
        batch = bytes(builder.build())
        T = ProduceRequest.TopicProduceData

        def send():  # type: ignore[no-untyped-def]
            response = conn.request(ProduceRequest(version=8, transactional_id=None, acks=-1, timeout_ms=5000,
                                                   topic_data=[T(name=topic, partition_data=[
                                                       T.PartitionProduceData(index=0, records=batch)])]))
            return response.responses[0].partition_responses[0]

        first, again = send(), send()
    finally:
        conn.close()
    assert (first.error_code, first.base_offset) == (0, 0)
    assert (again.error_code, again.base_offset) == (0, 0)  # answered where it first landed
    batches, records = read_batches_and_values(broker.bootstrap, topic)
    assert [b["attributes"] & 0x07 for b in batches] == [1]
    assert [r[2] for r in records] == [b"v%d" % i * 30 for i in range(5)]


# ---- message.timestamp.before/after.max.ms --------------------------------------------------------------


def produce_at(bootstrap: str, topic: str, timestamps: list[int]) -> list[int]:
    """The error code of each record produced with these timestamps (0: appended)."""
    errors: list[int] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "retries": 0})
    for ts in timestamps:
        producer.produce(topic, value=b"v", timestamp=ts,
                         on_delivery=lambda err, _msg: errors.append(0 if err is None else err.code()))
        producer.flush(30)
    assert len(errors) == len(timestamps)
    return errors


def test_timestamp_bounds_refuse_createtime_records_outside_them(broker):
    hour = 3_600_000
    now = int(time.time() * 1000)
    bounded = f"ts-bounded-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, bounded, 1, {"message.timestamp.before.max.ms": str(hour),
                                                "message.timestamp.after.max.ms": str(hour)})
    assert produce_at(broker.bootstrap, bounded, [now, now - 2 * hour, now + 2 * hour, now - hour // 2]) == \
        [0, KafkaError.INVALID_TIMESTAMP, KafkaError.INVALID_TIMESTAMP, 0]
    # Kafka 4's defaults: no bound in the past, one hour into the future.
    default = f"ts-default-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, default, 1)
    assert produce_at(broker.bootstrap, default, [now - 1000 * 24 * hour, now + 2 * hour]) == \
        [0, KafkaError.INVALID_TIMESTAMP]
    # LogAppendTime topics are not checked: the broker stamps its own time.
    stamped = f"ts-append-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, stamped, 1, {"message.timestamp.type": "LogAppendTime",
                                                "message.timestamp.before.max.ms": str(hour),
                                                "message.timestamp.after.max.ms": str(hour)})
    assert produce_at(broker.bootstrap, stamped, [now - 2 * hour, now + 2 * hour]) == [0, 0]
    # Only the refused records are missing.
    batches, records = read_batches_and_values(broker.bootstrap, bounded)
    assert len(records) == 2


def test_timestamp_bound_reads_records_older_than_the_first(broker):
    """A batch whose first record is recent but a later one too old is refused as a whole."""
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder

    topic = f"ts-inner-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1, {"message.timestamp.before.max.ms": "60000"})
    now = int(time.time() * 1000)
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=3, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=now, key=None, value=b"new", headers=[])
    builder.append(1, timestamp=now - 3_600_000, key=None, value=b"old", headers=[])
    T = ProduceRequest.TopicProduceData
    conn = RawConnection(broker.bootstrap)
    try:
        response = conn.request(ProduceRequest(version=8, transactional_id=None, acks=1, timeout_ms=5000,
                                               topic_data=[T(name=topic, partition_data=[
                                                   T.PartitionProduceData(index=0, records=bytes(builder.build()))])]))
    finally:
        conn.close()
    assert response.responses[0].partition_responses[0].error_code == 32  # INVALID_TIMESTAMP


# ---- leader-epoch history: OffsetForLeaderEpoch ---------------------------------------------------------


def epoch_end(bootstrap: str, topic: str, epoch: int) -> tuple[int, int, int]:
    """OffsetForLeaderEpoch v4 of partition 0: (error, epoch, end offset)."""
    from kafka.protocol.consumer import OffsetForLeaderEpochRequest

    T = OffsetForLeaderEpochRequest.OffsetForLeaderTopic
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(OffsetForLeaderEpochRequest(version=4, replica_id=-1, topics=[T(
            topic=topic, partitions=[T.OffsetForLeaderPartition(partition=0, current_leader_epoch=-1,
                                                                leader_epoch=epoch)])]))
    finally:
        conn.close()
    (p,) = response.topics[0].partitions
    return p.error_code, p.leader_epoch, p.end_offset


def batch_epochs(bootstrap: str, topic: str) -> list[int]:
    """The partitionLeaderEpoch of every batch of partition 0, in offset order."""
    part = fetch_raw(bootstrap, topic, 0)
    data, pos, out = bytes(part.records or b""), 0, []
    while pos + 61 <= len(data):
        length, epoch = struct.unpack_from(">ii", data, pos + 8)
        out.append(epoch)
        pos += 12 + length
    return out


def test_offset_for_leader_epoch_single_broker(broker):
    topic = f"ofle-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    produce_with(broker.bootstrap, topic, "none", [b"a", b"b", b"c"])
    assert epoch_end(broker.bootstrap, topic, 0) == (0, 0, 3)
    assert epoch_end(broker.bootstrap, topic, 1) == (0, -1, -1)  # above the current epoch: undefined
    assert set(batch_epochs(broker.bootstrap, topic)) == {0}  # the leader stamps its epoch


def test_offset_for_leader_epoch_after_leader_changes(tmp_path, s3):
    """Two failovers in a 3-broker cluster: each leader's records carry its epoch, and every broker
    that leads afterwards answers each earlier epoch with the offset where the next one began, the
    last one from the history it took from the bucket."""
    from clusterharness import Cluster

    cluster = Cluster(tmp_path / "cluster", s3, 3).start()
    try:
        topic = f"ofle-{uuid.uuid4().hex[:6]}"
        create_topic(cluster.bootstrap, topic, 1, {"strata.durability": "s3"})
        cluster.wait_placed(topic, 1)

        def leader_and_epoch() -> tuple[int, int]:
            placed = cluster.placement().topics[topic].partitions[0]
            return placed.leader, placed.epoch

        def produce_n(n: int, label: str) -> None:
            deadline = time.monotonic() + 90
            while True:  # until the new leader serves
                producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 5,
                                     "message.timeout.ms": 20000})
                failed: list[object] = []
                for i in range(n):
                    producer.produce(topic, value=b"%s-%d" % (label.encode(), i), partition=0,
                                     on_delivery=lambda err, _m, failed=failed: err and failed.append(err))
                producer.flush(30)
                if not failed:
                    return
                assert time.monotonic() < deadline, failed
                time.sleep(1)  # offsets below are read from the broker, so a resend changes nothing

        def high_watermark(bootstrap: str) -> int:
            return fetch_raw(bootstrap, topic, 0).high_watermark

        def failover(leader: int) -> tuple[int, int]:
            cluster.brokers[leader].kill()
            cluster.wait(lambda p: p.topics[topic].partitions[0].leader not in (leader, -1), 60,
                         "another leader")
            new, epoch = leader_and_epoch()
            wait_until(lambda: epoch_end(cluster.brokers[new].bootstrap, topic, epoch)[0] == 0, 60,
                       "the new leader to serve")
            return new, epoch

        first, e1 = leader_and_epoch()
        produce_n(10, "first")
        written = high_watermark(cluster.brokers[first].bootstrap)
        second, e2 = failover(first)
        assert e2 > e1
        at_second = high_watermark(cluster.brokers[second].bootstrap)
        assert at_second == written  # strata.durability=s3: every acknowledged record survived
        produce_n(5, "second")
        end = high_watermark(cluster.brokers[second].bootstrap)
        on_second = cluster.brokers[second].bootstrap
        assert epoch_end(on_second, topic, e1) == (0, e1, at_second)
        assert epoch_end(on_second, topic, e2) == (0, e2, end)
        assert epoch_end(on_second, topic, e2 + 1) == (0, -1, -1)
        if e1 > 0:  # before the first known epoch: it ends where that one began
            assert epoch_end(on_second, topic, e1 - 1) == (0, e1 - 1, 0)
        assert sorted(set(batch_epochs(on_second, topic))) == [e1, e2]

        # The history reaches the manifest with its next write; then the second leader fails too.
        def manifest_epochs() -> list[list[int]]:
            keys = [k for k in s3.objects() if k.endswith("/0/manifest.json") and f"/{topic}-" in k]
            return json.loads(s3.read(keys[0])).get("leader_epochs", []) if keys else []

        wait_until(lambda: [e2, at_second] in manifest_epochs(), 60, "the history in the manifest")
        cluster.brokers[first].start()  # back with its old disk, as a member again
        third, e3 = failover(second)
        on_third = cluster.brokers[third].bootstrap
        assert high_watermark(on_third) == end
        assert epoch_end(on_third, topic, e1) == (0, e1, at_second)
        assert epoch_end(on_third, topic, e2) == (0, e2, end)
        assert epoch_end(on_third, topic, e3) == (0, e3, end)
    finally:
        cluster.stop()

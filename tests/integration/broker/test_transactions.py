"""Kafka transactions (KIP-98) against real broker processes with real clients.

confluent-kafka (librdkafka), kafka-python and aiokafka transactional producers; read_committed
and read_uncommitted consumers; exactly-once consume-process-produce with
send_offsets_to_transaction; zombie fencing; a broker SIGKILL in the middle of a transaction;
raw frames for hostile or wrong requests; ACLs on transactional ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import aiokafka
import pytest
import secutil
from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest
from kafka.protocol.producer import InitProducerIdRequest, ProduceRequest
from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest, EndTxnRequest
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafkaclients import consume_to_end, create_topic, produce_confluent
from rawclient import RawConnection
from waiting import wait_until

FAST = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "300",
        "transaction.state.log.num.partitions": "4", "offsets.topic.num.partitions": "4"}

PRODUCER_FENCED = 90
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
TOPIC_AUTHORIZATION_FAILED = 29
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53


def txn_producer(bootstrap: str, txn_id: str, **conf: object) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5, **conf})
    producer.init_transactions(30)
    return producer


def list_offset(bootstrap: str, topic: str, partition: int, isolation: int) -> int:
    """ListOffsets LATEST at an isolation level (0 read_uncommitted: high watermark; 1: LSO)."""
    conn = RawConnection(bootstrap)
    try:
        T = ListOffsetsRequest.ListOffsetsTopic
        response = conn.request(ListOffsetsRequest(version=5, replica_id=-1, isolation_level=isolation, topics=[
            T(name=topic, partitions=[T.ListOffsetsPartition(partition_index=partition, current_leader_epoch=-1,
                                                             timestamp=-1)])]))
        part = response.topics[0].partitions[0]
        assert part.error_code == 0, part
        return part.offset
    finally:
        conn.close()


# ---- commit, abort, read_committed ----------------------------------------------------------


def test_committed_visible_aborted_never(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, a, 2)
    create_topic(broker.bootstrap, b, 1)
    producer = txn_producer(broker.bootstrap, "tx-basic")
    producer.begin_transaction()
    for i in range(6):
        producer.produce(a, value=b"c1-%d" % i, partition=i % 2)
    producer.produce(b, value=b"c1-b")
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(4):
        producer.produce(a, value=b"ab-%d" % i, partition=i % 2)
    producer.produce(b, value=b"ab-b")
    assert producer.flush(30) == 0  # the aborted records are in the log before the abort
    # While the transaction is open, read_committed readers stop at the last stable offset.
    assert list_offset(broker.bootstrap, b, 0, 1) < list_offset(broker.bootstrap, b, 0, 0)
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(a, value=b"c2", partition=0)
    producer.commit_transaction(30)
    assert list_offset(broker.bootstrap, b, 0, 1) == list_offset(broker.bootstrap, b, 0, 0)

    parts = [(a, 0), (a, 1), (b, 0)]
    committed = consume_to_end(broker.bootstrap, parts, "read_committed")
    assert sorted(committed) == sorted([b"c1-%d" % i for i in range(6)] + [b"c1-b", b"c2"])
    everything = consume_to_end(broker.bootstrap, parts, "read_uncommitted")
    assert sorted(everything) == sorted(committed + [b"ab-%d" % i for i in range(4)] + [b"ab-b"])


def test_fetch_reports_aborted_transactions_and_lso(broker_factory) -> None:
    """Raw read_committed Fetch: records stop at the LSO while a transaction is open; after an
    abort the response lists (producer id, first offset) of the aborted transaction."""
    broker = broker_factory(settings=FAST)
    topic = f"f-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    produce_confluent(broker.bootstrap, topic, [(None, b"plain")])
    producer = txn_producer(broker.bootstrap, "tx-fetch")
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=b"x%d" % i)
    assert producer.flush(30) == 0

    def fetch(isolation: int):
        conn = RawConnection(broker.bootstrap)
        try:
            T = FetchRequest.FetchTopic
            response = conn.request(FetchRequest(
                version=11, replica_id=-1, max_wait_ms=0, min_bytes=0, max_bytes=1 << 20, isolation_level=isolation,
                session_id=0, session_epoch=-1, rack_id="", forgotten_topics_data=[], topics=[T(
                    topic=topic, partitions=[T.FetchPartition(partition=0, current_leader_epoch=-1, fetch_offset=0,
                                                              log_start_offset=-1, partition_max_bytes=1 << 20)])]))
            return response.responses[0].partitions[0]
        finally:
            conn.close()

    open_part = fetch(1)
    assert open_part.error_code == 0
    assert open_part.last_stable_offset == 1 and open_part.high_watermark == 4
    assert len(fetch(0).records) > len(open_part.records) > 0  # only the plain record's batch
    producer.abort_transaction(30)
    done = fetch(1)
    assert done.last_stable_offset == done.high_watermark == 5  # 1 + 3 + the abort marker
    assert [(a.producer_id, a.first_offset) for a in done.aborted_transactions] == [(_pid(done), 1)]


def _pid(part) -> int:
    return part.aborted_transactions[0].producer_id


# ---- exactly once ---------------------------------------------------------------------------


def test_consume_process_produce_exactly_once(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    source, sink = f"in-{uuid.uuid4().hex[:6]}", f"out-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, source, 2)
    create_topic(broker.bootstrap, sink, 2)
    inputs = [(b"k%d" % (i % 7), b"%04d" % i) for i in range(200)]
    produce_confluent(broker.bootstrap, source, inputs)
    group = "eos-group"
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.subscribe([source])
    producer = txn_producer(broker.bootstrap, "tx-eos")
    processed = 0
    aborted_once = False
    deadline = time.monotonic() + 90
    try:
        while processed < len(inputs) and time.monotonic() < deadline:
            batch = consumer.consume(40, 1.0)
            batch = [m for m in batch if not m.error()]
            if not batch:
                continue
            producer.begin_transaction()
            for msg in batch:
                producer.produce(sink, key=msg.key(), value=b"out-" + msg.value(), partition=msg.partition())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            if not aborted_once and processed >= 80:
                # Not yet committed: the group's committed offsets do not move.
                before = consumer.committed(consumer.assignment(), 10)
                assert producer.flush(30) == 0
                producer.abort_transaction(30)
                aborted_once = True
                assert [tp.offset for tp in consumer.committed(consumer.assignment(), 10)] == \
                    [tp.offset for tp in before]
                for tp in before:  # process the same records again
                    consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))
                continue
            producer.commit_transaction(30)
            processed += len(batch)
        assert aborted_once
        committed = consumer.committed([TopicPartition(source, 0), TopicPartition(source, 1)], 10)
    finally:
        consumer.close()
    out = consume_to_end(broker.bootstrap, [(sink, 0), (sink, 1)], "read_committed")
    counts = Counter(out)
    assert [v for v, n in counts.items() if n > 1] == []
    assert sorted(counts) == sorted(b"out-" + v for _, v in inputs)
    ends = [list_offset(broker.bootstrap, source, p, 0) for p in (0, 1)]
    assert [tp.offset for tp in committed] == ends
    # The aborted round is in the log: read_uncommitted sees its duplicates.
    assert len(consume_to_end(broker.bootstrap, [(sink, 0), (sink, 1)], "read_uncommitted")) > len(out)


# ---- fencing ---------------------------------------------------------------------------------


def test_zombie_producer_is_fenced(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"z-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    zombie = txn_producer(broker.bootstrap, "tx-zombie")
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    assert zombie.flush(30) == 0
    successor = txn_producer(broker.bootstrap, "tx-zombie")  # same id: fences the first, aborts its txn
    successor.begin_transaction()
    successor.produce(topic, value=b"successor")
    successor.commit_transaction(30)
    with pytest.raises(KafkaException) as raised:
        zombie.produce(topic, value=b"late")
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal(), error
    assert error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH), error
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed") == [b"successor"]


# ---- restart in the middle of a transaction ------------------------------------------------------


def test_sigkill_mid_transaction_aborts_on_timeout(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"k-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 2)
    producer = txn_producer(broker.bootstrap, "tx-kill", **{"transaction.timeout.ms": 6000})
    producer.begin_transaction()
    producer.produce(topic, value=b"before", partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for p in (0, 1):
        producer.produce(topic, value=b"open-%d" % p, partition=p)
    assert producer.flush(30) == 0
    broker.kill()
    broker.restart()
    # The coordinator recovered the Ongoing transaction and aborts it once its timeout passes;
    # until then read_committed readers stop before it.
    assert list_offset(broker.bootstrap, topic, 1, 1) == 0
    wait_until(lambda: all(list_offset(broker.bootstrap, topic, p, 1) == list_offset(broker.bootstrap, topic, p, 0)
                           for p in (0, 1)), 60, "the timed-out transaction to be aborted")
    assert consume_to_end(broker.bootstrap, [(topic, 0), (topic, 1)], "read_committed") == [b"before"]
    # The transactional id lives on: a new producer with it commits.
    again = txn_producer(broker.bootstrap, "tx-kill")
    again.begin_transaction()
    again.produce(topic, value=b"after", partition=1)
    again.commit_transaction(30)
    assert sorted(consume_to_end(broker.bootstrap, [(topic, 0), (topic, 1)], "read_committed")) == [b"after", b"before"]


def test_committed_transaction_survives_sigkill(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"s-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    producer = txn_producer(broker.bootstrap, "tx-survive")
    producer.begin_transaction()
    producer.produce(topic, value=b"a")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"b")
    assert producer.flush(30) == 0
    producer.abort_transaction(30)
    broker.kill()
    broker.restart()
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed") == [b"a"]
    assert sorted(consume_to_end(broker.bootstrap, [(topic, 0)], "read_uncommitted")) == [b"a", b"b"]


# ---- other clients --------------------------------------------------------------------------


def test_aiokafka_transactional_producer(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"aio-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)

    async def run() -> list[bytes]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="tx-aio")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"kept-1")
                await producer.send_and_wait(topic, b"kept-2")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"dropped")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"kept-3")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                             isolation_level="read_committed", enable_auto_commit=False)
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += [r.value for r in records]
            await asyncio.sleep(1)  # nothing else arrives (the aborted record stays hidden)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += [r.value for r in records]
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == [b"kept-1", b"kept-2", b"kept-3"]


def test_kafka_python_transactional_producer(broker_factory) -> None:
    from kafka import KafkaProducer

    broker = broker_factory(settings=FAST)
    topic = f"kp-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="tx-kp")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"yes")
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic, b"no").get(timeout=30)
        producer.abort_transaction()
    finally:
        producer.close(5)
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed") == [b"yes"]


# ---- raw frames: wrong and hostile requests --------------------------------------------------------


def _txn_batch(producer_id: int, epoch: int, sequence: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=producer_id,
                                        producer_epoch=epoch, base_sequence=sequence, batch_size=1 << 20)
    builder.append(0, timestamp=int(time.time() * 1000), key=None, value=b"raw", headers=[])
    return bytes(builder.build())


def _produce(conn: RawConnection, txn_id: str | None, topic: str, records: bytes) -> int:
    T = ProduceRequest.TopicProduceData
    response = conn.request(ProduceRequest(version=8, transactional_id=txn_id, acks=-1, timeout_ms=10000, topic_data=[
        T(name=topic, partition_data=[T.PartitionProduceData(index=0, records=records)])]))
    return response.responses[0].partition_responses[0].error_code


def _add_partitions(conn: RawConnection, txn_id: str, pid: int, epoch: int, topic: str, version: int = 3) -> int:
    T = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic
    response = conn.request(AddPartitionsToTxnRequest(
        version=version, v3_and_below_transactional_id=txn_id, v3_and_below_producer_id=pid,
        v3_and_below_producer_epoch=epoch, v3_and_below_topics=[T(name=topic, partitions=[0])]))
    return response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code


def _init(conn: RawConnection, txn_id: str, timeout_ms: int = 60000) -> tuple[int, int, int]:
    r = conn.request(InitProducerIdRequest(version=4, transactional_id=txn_id, transaction_timeout_ms=timeout_ms,
                                           producer_id=-1, producer_epoch=-1))
    return r.error_code, r.producer_id, r.producer_epoch


def _end(conn: RawConnection, txn_id: str, pid: int, epoch: int, commit: bool, version: int = 3) -> int:
    return conn.request(EndTxnRequest(version=version, transactional_id=txn_id, producer_id=pid, producer_epoch=epoch,
                                      committed=commit)).error_code


def test_raw_frames_wrong_epoch_timeout_and_unadded_partition(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    conn = RawConnection(broker.bootstrap)
    try:
        assert _init(conn, "tx-raw", timeout_ms=10**9)[0] == INVALID_TRANSACTION_TIMEOUT
        assert _init(conn, "tx-raw", timeout_ms=0)[0] == INVALID_TRANSACTION_TIMEOUT
        error, pid, epoch = _init(conn, "tx-raw")
        assert error == 0 and pid >= 0 and epoch == 0
        # A transactional batch for a partition the transaction did not add is refused (KIP-890).
        assert _produce(conn, "tx-raw", topic, _txn_batch(pid, epoch)) == INVALID_TXN_STATE
        # ... and without a transactional id at all, as Kafka: not authorized.
        assert _produce(conn, None, topic, _txn_batch(pid, epoch)) == TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        assert _add_partitions(conn, "tx-raw", pid, epoch, topic) == 0
        assert _add_partitions(conn, "tx-raw", pid, epoch, "__consumer_offsets") == TOPIC_AUTHORIZATION_FAILED
        assert _add_partitions(conn, "tx-raw", pid + 1, epoch, topic) == INVALID_PRODUCER_ID_MAPPING
        assert _produce(conn, "tx-raw", topic, _txn_batch(pid, epoch)) == 0
        # EndTxn with a wrong epoch: fenced (PRODUCER_FENCED from v2, INVALID_PRODUCER_EPOCH before).
        assert _end(conn, "tx-raw", pid, epoch + 5, True) == PRODUCER_FENCED
        assert _end(conn, "tx-raw", pid, epoch + 5, True, version=1) == INVALID_PRODUCER_EPOCH
        assert _end(conn, "tx-unknown", pid, epoch, True) == INVALID_PRODUCER_ID_MAPPING
        # A second InitProducerId bumps the epoch and aborts the open transaction; the old epoch is fenced.
        error, pid2, epoch2 = _init(conn, "tx-raw")
        assert (error, pid2, epoch2) == (0, pid, epoch + 1)
        assert _end(conn, "tx-raw", pid, epoch, True) == PRODUCER_FENCED
        assert _add_partitions(conn, "tx-raw", pid, epoch, topic) == PRODUCER_FENCED
        assert _produce(conn, "tx-raw", topic, _txn_batch(pid, epoch, 1)) == INVALID_PRODUCER_EPOCH
        # Ending a transaction that was never begun is fine; the current epoch commits.
        assert _end(conn, "tx-raw", pid2, epoch2, False) == 0
        assert _add_partitions(conn, "tx-raw", pid2, epoch2, topic) == 0
        assert _produce(conn, "tx-raw", topic, _txn_batch(pid2, epoch2)) == 0
        assert _end(conn, "tx-raw", pid2, epoch2, True) == 0
        assert _end(conn, "tx-raw", pid2, epoch2, True) == 0  # a retried EndTxn
        assert _add_partitions(conn, "tx-raw", pid2, epoch2, topic) == 0
        assert _end(conn, "tx-raw", pid2, epoch2, False) == 0
        assert _end(conn, "tx-raw", pid2, epoch2, True) == INVALID_TXN_STATE  # commit after the abort
    finally:
        conn.close()
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed") == [b"raw"]


# ---- ACLs on transactional ids -------------------------------------------------------------------

USERS = {"admin": "admin-pw", "txuser": "txuser-pw"}


def test_transactional_id_and_topic_acls(tmp_path) -> None:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        NewTopic,
        ResourcePattern,
        ResourceType,
    )
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, USERS)
    broker = BrokerProcess(tmp_path / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        **FAST, "sasl.credentials.file": str(creds), "authorizer.enable": "true", "super.users": "User:admin"}).start()

    def cfg(user: str) -> dict:
        return secutil.kafka_python(broker.address("SASL_PLAINTEXT"),
                                    secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", user, USERS[user]))

    try:
        admin = KafkaAdminClient(**cfg("admin"))
        admin.create_topics([NewTopic("allowed", 1, 1), NewTopic("forbidden", 1, 1)])

        def allow(op: ACLOperation, rtype: ResourceType, name: str) -> ACL:
            return ACL("User:txuser", "*", op, ACLPermissionType.ALLOW,
                       ResourcePattern(rtype, name, ACLResourcePatternType.LITERAL))

        result = admin.create_acls([allow(ACLOperation.WRITE, ResourceType.TOPIC, "allowed"),
                                    allow(ACLOperation.DESCRIBE, ResourceType.TOPIC, "forbidden"),
                                    allow(ACLOperation.WRITE, ResourceType.TRANSACTIONAL_ID, "tx-ok")])
        assert not result["failed"], result
        admin.close()

        conf = secutil.confluent(broker.address("SASL_PLAINTEXT"),
                                 secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", "txuser", USERS["txuser"]))
        denied = Producer({**conf, "transactional.id": "tx-denied"})
        with pytest.raises(KafkaException) as raised:
            denied.init_transactions(30)
        assert raised.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

        producer = Producer({**conf, "transactional.id": "tx-ok"})
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce("allowed", b"ok")
        producer.commit_transaction(30)
        producer.begin_transaction()
        producer.produce("forbidden", b"no")
        with pytest.raises(KafkaException) as raised:
            producer.commit_transaction(30)
        assert raised.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, raised.value
        assert raised.value.args[0].txn_requires_abort()
        producer.abort_transaction(30)
    finally:
        broker.stop()


# ---- tiered storage: cold reads of aborted ranges, restore onto an empty disk -----------------------


def test_tiered_cold_reads_and_restore_keep_aborted_ranges_hidden(broker_factory, s3) -> None:
    import shutil

    from s3server import CREDENTIALS

    broker = broker_factory(s3.broker_settings(**FAST, **{
        "tiered.upload.interval.ms": "1000", "log.retention.check.interval.ms": "300"}), env=CREDENTIALS)
    topic = f"cold-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1, {"segment.bytes": str(16 << 10), "local.retention.bytes": "1",
                                              "retention.ms": "-1"})
    producer = txn_producer(broker.bootstrap, "tx-cold")
    expected: list[bytes] = []
    pad = b"#" * 1000
    for round_ in range(6):
        producer.begin_transaction()
        values = [b"r%d-%02d" % (round_, i) + pad for i in range(20)]
        for value in values:
            producer.produce(topic, value=value)
        assert producer.flush(30) == 0
        if round_ % 2:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            expected += values
    # A tail without transactions rolls the last transactional segment so it is uploaded too.
    produce_confluent(broker.bootstrap, topic, [(None, b"tail-%03d" % i + pad) for i in range(40)])
    expected += [b"tail-%03d" % i + pad for i in range(40)]

    def local_start() -> int:
        names = sorted(p.name for p in (broker.data_dir / f"{topic}-0").glob("*.log"))
        return int(names[0][:-4]) if names else 0

    wait_until(lambda: local_start() > 120, 90, "transactional segments to be uploaded and dropped locally")
    assert any(k.endswith(".txnindex") and f"/topics/{topic}-" in k for k in s3.objects()), \
        "no aborted-transaction index was uploaded"
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed", timeout=60) == expected
    assert len(consume_to_end(broker.bootstrap, [(topic, 0)], "read_uncommitted", timeout=60)) == len(expected) + 60

    # An empty disk: topic data, the aborted-transaction index and the coordinator's state come from the bucket.
    broker.kill()
    shutil.rmtree(broker.data_dir)
    broker.start(timeout=60)
    assert consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed", timeout=60) == expected
    conn = RawConnection(broker.bootstrap)
    try:
        error, _, epoch = _init(conn, "tx-cold")
    finally:
        conn.close()
    assert error == 0 and epoch == 1, "the transactional id's epoch was not restored from __transaction_state"


# ---- compaction ------------------------------------------------------------------------------------


def test_compaction_drops_aborted_records_and_keeps_committed_values(broker_factory) -> None:
    """An aborted write of a key must neither survive compaction nor supersede the committed value."""
    broker = broker_factory(settings={**FAST, "log.cleaner.backoff.ms": "200"})
    topic = f"cmp-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1, {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
                                              "delete.retention.ms": "0", "segment.ms": "1000"})
    producer = txn_producer(broker.bootstrap, "tx-compact")
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"k%d" % i, value=b"old-%d" % i)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"k%d" % i, value=b"committed-%d" % i)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=b"k%d" % i, value=b"aborted-%d" % i)
    assert producer.flush(30) == 0
    producer.abort_transaction(30)
    time.sleep(1.2)  # the active segment is never cleaned: roll it with a later transaction
    producer.begin_transaction()
    producer.produce(topic, key=b"sentinel", value=b"x")
    producer.commit_transaction(30)

    def values() -> list[bytes]:
        return consume_to_end(broker.bootstrap, [(topic, 0)], "read_uncommitted", timeout=10)

    wait_until(lambda: not any(v.startswith(b"old-") or v.startswith(b"aborted-") for v in values()), 60,
               "compaction to drop superseded and aborted records")
    expected = sorted([b"committed-%d" % i for i in range(10)] + [b"x"])
    assert sorted(values()) == expected
    assert sorted(consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed")) == expected
    broker.restart()
    assert sorted(consume_to_end(broker.bootstrap, [(topic, 0)], "read_committed")) == expected


def test_describe_and_list_transactions(broker_factory) -> None:
    from kafka.protocol.admin.transactions import DescribeTransactionsRequest, ListTransactionsRequest

    broker = broker_factory(settings=FAST)
    topic = f"dt-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    conn = RawConnection(broker.bootstrap)
    try:
        _, pid, epoch = _init(conn, "tx-described", timeout_ms=45000)
        assert _add_partitions(conn, "tx-described", pid, epoch, topic) == 0
        _init(conn, "tx-idle")
        described = conn.request(DescribeTransactionsRequest(version=0, transactional_ids=["tx-described",
                                                                                          "tx-nobody"]))
        found, missing = described.transaction_states
        assert (found.error_code, found.transaction_state, found.producer_id, found.producer_epoch,
                found.transaction_timeout_ms) == (0, "Ongoing", pid, epoch, 45000)
        assert [(t.topic, list(t.partitions)) for t in found.topics] == [(topic, [0])]
        assert found.transaction_start_time_ms > 0
        assert missing.error_code == 105  # TRANSACTIONAL_ID_NOT_FOUND
        listed = conn.request(ListTransactionsRequest(version=1, state_filters=["Ongoing", "Bogus"],
                                                      producer_id_filters=[], duration_filter=-1))
        assert [(s.transactional_id, s.transaction_state) for s in listed.transaction_states] == \
            [("tx-described", "Ongoing")]
        assert list(listed.unknown_state_filters) == ["Bogus"]
        everything = conn.request(ListTransactionsRequest(version=1, state_filters=[], producer_id_filters=[],
                                                          duration_filter=-1))
        assert sorted(s.transactional_id for s in everything.transaction_states) == ["tx-described", "tx-idle"]
    finally:
        conn.close()

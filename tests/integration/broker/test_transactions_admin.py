"""The transaction admin side against a real broker: DescribeProducers (KIP-664) through
kafka-python's KafkaAdminClient and raw frames, the expiry of idle transactional ids
(`transactional.id.expiration.ms`), EndTxn v5 and transaction version 2 on the wire (KIP-890 part 2:
the finalized feature, partitions added by Produce v12 and TxnOffsetCommit v5)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from kafka import KafkaAdminClient, TopicPartition
from kafka.protocol.admin.transactions import DescribeProducersRequest
from kafkaclients import create_topic
from rawclient import RawConnection

FAST = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "300",
        "transaction.state.log.num.partitions": "4", "offsets.topic.num.partitions": "4"}


def txn_producer(bootstrap: str, txn_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5})
    producer.init_transactions(30)
    return producer


def test_describe_producers(broker_factory) -> None:
    broker = broker_factory(settings=FAST)
    topic = f"dp-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 2)
    idempotent = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for i in range(4):
        idempotent.produce(topic, value=b"i%d" % i, partition=0)
        idempotent.flush(30)
    before = int(time.time() * 1000)
    producer = txn_producer(broker.bootstrap, "tx-producers")
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=b"t%d" % i, partition=0)
    assert producer.flush(30) == 0
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        txn_pid = admin.describe_transactions(["tx-producers"])["tx-producers"].producer_id
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        found = admin.describe_producers([tp0, tp1])
        assert found[tp1].active_producers == []
        by_pid = {p.producer_id: p for p in found[tp0].active_producers}
        assert len(by_pid) == 2 and txn_pid in by_pid
        (plain,) = [p for pid, p in by_pid.items() if pid != txn_pid]
        assert (plain.producer_epoch, plain.last_sequence, plain.coordinator_epoch,
                plain.current_transaction_start_offset) == (0, 3, -1, -1)
        ongoing = by_pid[txn_pid]
        # The transaction's first record follows the idempotent producer's four; no marker yet.
        assert (ongoing.producer_epoch, ongoing.last_sequence, ongoing.coordinator_epoch,
                ongoing.current_transaction_start_offset) == (0, 2, -1, 4)
        assert ongoing.last_timestamp >= before
        producer.commit_transaction(30)
        done = {p.producer_id: p for p in admin.describe_producers([tp0])[tp0].active_producers}[txn_pid]
        # The commit marker ended the transaction here, at the coordinator's epoch.
        assert (done.last_sequence, done.coordinator_epoch, done.current_transaction_start_offset) == (2, 0, -1)
    finally:
        admin.close()
    del producer, idempotent  # their librdkafka threads would retry against the killed broker
    # The producer state survives a restart (snapshot + replay).
    broker.kill()
    broker.start()
    conn = RawConnection(broker.bootstrap)
    try:
        T = DescribeProducersRequest.TopicRequest
        response = conn.request(DescribeProducersRequest(version=0, topics=[
            T(name=topic, partition_indexes=[0, 7]), T(name="no-such-topic", partition_indexes=[0])]))
        (p0, p7), (missing,) = [t.partitions for t in response.topics]
        assert (p0.error_code, p7.error_code, missing.error_code) == (0, 3, 3)
        restored = {p.producer_id: p for p in p0.active_producers}
        assert (restored[txn_pid].last_sequence, restored[txn_pid].current_txn_start_offset,
                restored[txn_pid].coordinator_epoch) == (2, -1, 0)
        assert restored[txn_pid].last_timestamp == done.last_timestamp
    finally:
        conn.close()


# ---- transactional.id.expiration.ms -----------------------------------------------------------


def _txn_state_records(bootstrap: str, txn_key: bytes) -> list[bytes | None]:
    """The values of every `__transaction_state` record of one transactional id, in order."""
    from confluent_kafka import Consumer, KafkaError
    from confluent_kafka import TopicPartition as CTP

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ts-{uuid.uuid4().hex[:6]}",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    partitions = int(FAST["transaction.state.log.num.partitions"])
    consumer.assign([CTP("__transaction_state", p, 0) for p in range(partitions)])
    values: list[bytes | None] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(msg.partition())
                continue
            if msg.key() == txn_key:
                values.append(msg.value())
    finally:
        consumer.close()
    assert len(ended) == partitions
    return values


def test_idle_transactional_id_expires(broker_factory) -> None:
    from kafka.errors import TransactionalIdNotFoundError
    from strata_broker.groups.txn_log import encode_key

    broker = broker_factory(settings={**FAST, "transactional.id.expiration.ms": "2000",
                                      "transaction.remove.expired.transaction.cleanup.interval.ms": "200"})
    topic = f"exp-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    idle = txn_producer(broker.bootstrap, "tx-idle")
    idle.begin_transaction()
    idle.produce(topic, value=b"committed")
    idle.commit_transaction(30)
    busy = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-open", "linger.ms": 5,
                     "transaction.timeout.ms": 120000})
    busy.init_transactions(30)
    busy.begin_transaction()
    busy.produce(topic, value=b"open")
    assert busy.flush(30) == 0
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        old_pid = admin.describe_transactions(["tx-idle"])["tx-idle"].producer_id
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.describe_transactions(["tx-idle"])
            except TransactionalIdNotFoundError:
                break
            assert time.monotonic() < deadline, "the idle transactional id never expired"
            time.sleep(0.3)
        # An open transaction is never expired, however old.
        assert admin.describe_transactions(["tx-open"])["tx-open"].state == "Ongoing"
        assert "tx-idle" not in {t.transactional_id for ts in admin.list_transactions().values() for t in ts}
    finally:
        admin.close()
    assert _txn_state_records(broker.bootstrap, encode_key("tx-idle"))[-1] is None  # the tombstone
    # The producer that held the id is unknown to the coordinator now: its next transaction fails.
    idle.begin_transaction()
    idle.produce(topic, value=b"too late")
    with pytest.raises(KafkaException):
        idle.commit_transaction(30)
    del idle, busy
    # The tombstone outlives a crash; the id starts afresh with a new producer id.
    broker.kill()
    broker.start()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        with pytest.raises(TransactionalIdNotFoundError):
            admin.describe_transactions(["tx-idle"])
        again = txn_producer(broker.bootstrap, "tx-idle")
        described = admin.describe_transactions(["tx-idle"])["tx-idle"]
        assert described.producer_id != old_pid and described.producer_epoch == 0
        del again
    finally:
        admin.close()


# ---- EndTxn v5 (KIP-890 part 2) -----------------------------------------------------------------


def _txn_batch(producer_id: int, epoch: int, sequence: int, value: bytes) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=producer_id,
                                        producer_epoch=epoch, base_sequence=sequence, batch_size=1 << 20)
    builder.append(0, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
    return bytes(builder.build())


class _RawTxn:
    """Raw transaction requests for one transactional id on one connection."""

    def __init__(self, conn: RawConnection, txn_id: str, topic: str) -> None:
        self.conn, self.txn_id, self.topic = conn, txn_id, topic

    def init(self) -> tuple[int, int, int]:
        from kafka.protocol.producer import InitProducerIdRequest

        r = self.conn.request(InitProducerIdRequest(version=4, transactional_id=self.txn_id,
                                                    transaction_timeout_ms=60000, producer_id=-1, producer_epoch=-1))
        return r.error_code, r.producer_id, r.producer_epoch

    def add(self, pid: int, epoch: int) -> int:
        from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest

        T = AddPartitionsToTxnRequest.AddPartitionsToTxnTopic
        r = self.conn.request(AddPartitionsToTxnRequest(
            version=3, v3_and_below_transactional_id=self.txn_id, v3_and_below_producer_id=pid,
            v3_and_below_producer_epoch=epoch, v3_and_below_topics=[T(name=self.topic, partitions=[0])]))
        return r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code

    def produce_request(self, pid: int, epoch: int, sequence: int, value: bytes, version: int = 8) -> Any:
        from kafka.protocol.producer import ProduceRequest

        T = ProduceRequest.TopicProduceData
        return ProduceRequest(version=version, transactional_id=self.txn_id, acks=-1, timeout_ms=10000,
                              topic_data=[T(name=self.topic, partition_data=[T.PartitionProduceData(
                                  index=0, records=_txn_batch(pid, epoch, sequence, value))])])

    def produce(self, pid: int, epoch: int, sequence: int, value: bytes, version: int = 8) -> int:
        r = self.conn.request(self.produce_request(pid, epoch, sequence, value, version))
        return r.responses[0].partition_responses[0].error_code

    def end(self, pid: int, epoch: int, commit: bool, version: int = 5) -> tuple[int, int, int]:
        from kafka.protocol.producer.transaction import EndTxnRequest

        r = self.conn.request(EndTxnRequest(version=version, transactional_id=self.txn_id, producer_id=pid,
                                            producer_epoch=epoch, committed=commit))
        return r.error_code, r.producer_id, r.producer_epoch


def test_end_txn_v5_bumps_the_epoch_per_transaction(broker_factory) -> None:
    from eos_killloop import read_partitions

    broker = broker_factory(settings=FAST)
    topic = f"tv2-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    conn = RawConnection(broker.bootstrap)
    try:
        txn = _RawTxn(conn, "tx-v2", topic)
        error, pid, epoch = txn.init()
        assert error == 0
        assert txn.add(pid, epoch) == 0
        assert txn.produce(pid, epoch, 0, b"first") == 0
        # The commit returns the same producer id at the next epoch; a retry answers the same.
        assert txn.end(pid, epoch, True) == (0, pid, epoch + 1)
        assert txn.end(pid, epoch, True) == (0, pid, epoch + 1)
        # A late produce of the finished transaction (the old epoch) cannot open a new one.
        assert txn.produce(pid, epoch, 1, b"late") == 47  # INVALID_PRODUCER_EPOCH
        assert txn.add(pid, epoch) == 90  # PRODUCER_FENCED
        # The next transaction runs at the new epoch, its sequences from 0; an abort bumps too.
        assert txn.add(pid, epoch + 1) == 0
        assert txn.produce(pid, epoch + 1, 0, b"aborted") == 0
        assert txn.end(pid, epoch + 1, False) == (0, pid, epoch + 2)
        assert txn.add(pid, epoch + 2) == 0
        assert txn.produce(pid, epoch + 2, 0, b"second") == 0
        assert txn.end(pid, epoch + 2, True) == (0, pid, epoch + 3)
        # Nothing in the transaction: an abort still bumps, a commit is INVALID_TXN_STATE (48).
        assert txn.end(pid, epoch + 3, True)[0] == 48
        assert txn.end(pid, epoch + 3, False) == (0, pid, epoch + 4)
        assert txn.end(pid, epoch + 3, False, version=4)[0] == 90  # the old epoch is fenced
        # v4 and below: no bump, no producer id in the response.
        assert txn.add(pid, epoch + 4) == 0
        assert txn.produce(pid, epoch + 4, 0, b"third") == 0
        assert txn.end(pid, epoch + 4, True, version=4) == (0, -1, -1)
    finally:
        conn.close()
    assert read_partitions(broker.bootstrap, topic, 1, "read_committed")[0] == [b"first", b"second", b"third"]


def test_transaction_version_2_on_the_wire(broker_factory) -> None:
    """The broker finalizes transaction.version 2; a Produce v12 of a partition not in the
    transaction adds it (no AddPartitionsToTxn), a v11 one is refused (verification), and a
    TxnOffsetCommit v5 adds the group's offsets partition (no AddOffsetsToTxn)."""
    import struct

    from eos_killloop import read_partitions
    from kafka.protocol.producer.transaction import TxnOffsetCommitRequest
    from rawclient import api_versions

    broker = broker_factory(settings=FAST)
    topic = f"tv2w-{uuid.uuid4().hex[:6]}"
    create_topic(broker.bootstrap, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        features = admin.describe_features()
    finally:
        admin.close()
    assert features["transaction.version"] == {"supported": (0, 2), "finalized": (2, 2), "finalized_epoch": 1}
    conn = RawConnection(broker.bootstrap)
    try:
        assert conn.request(api_versions(3)).supported_features == []  # v3 leaves out ranges from 0
        txn = _RawTxn(conn, "tx-tv2", topic)
        error, pid, epoch = txn.init()
        assert error == 0
        assert txn.produce(pid, epoch, 0, b"v11", version=11) == 120  # TRANSACTION_ABORTABLE: never added
        assert txn.produce(pid, epoch, 0, b"v10", version=10) == 48  # INVALID_TXN_STATE before v11
        # Two v12 requests pipelined: the first adds the partition, the second waits for it to append.
        first = txn.produce_request(pid, epoch, 0, b"a0", version=12)
        second = txn.produce_request(pid, epoch, 1, b"a1", version=12)
        conn.send(first)
        conn.send(second)
        for request in (first, second):
            (size,) = struct.unpack(">i", conn.read_exact(4))
            response = request.header.get_response_class().decode(conn.read_exact(size), header=True)
            assert response.responses[0].partition_responses[0].error_code == 0, response
        T = TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic
        committed = conn.request(TxnOffsetCommitRequest(
            version=5, transactional_id="tx-tv2", group_id="g-tv2", producer_id=pid, producer_epoch=epoch,
            generation_id=-1, member_id="", group_instance_id=None, topics=[T(name=topic, partitions=[
                T.TxnOffsetCommitRequestPartition(partition_index=0, committed_offset=7, committed_leader_epoch=-1,
                                                  committed_metadata="")])]))
        assert committed.topics[0].partitions[0].error_code == 0, committed
        assert txn.end(pid, epoch, True) == (0, pid, epoch + 1)
        # The next transaction at the new epoch: added by its first v12 batch, then aborted.
        assert txn.produce(pid, epoch + 1, 0, b"aborted", version=12) == 0
        assert txn.end(pid, epoch + 1, False) == (0, pid, epoch + 2)
        assert txn.produce(pid, epoch + 1, 1, b"late", version=12) == 47  # INVALID_PRODUCER_EPOCH
    finally:
        conn.close()
    assert read_partitions(broker.bootstrap, topic, 1, "read_committed")[0] == [b"a0", b"a1"]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets("g-tv2")["g-tv2"]
    finally:
        admin.close()
    assert offsets[TopicPartition(topic, 0)].offset == 7

"""Transactions in cluster mode (issue 22): three real broker processes sharing one moto bucket,
the real controller, confluent-kafka's transactional producer and read_committed consumers.

Transaction coordinators are spread by `__transaction_state` partition; a transaction over
partitions led by all three brokers gets its markers through WriteTxnMarkers; the group's offsets
in a consume-process-produce loop live on another broker than the transaction's coordinator; and
the coordinator SIGKILLed mid-transaction leaves it completed or aborted, never half visible.
A partition leader SIGKILLed before the commit gets its marker once another broker took the partition
over; a coordinator SIGKILLed after it decided a commit has it completed by its successor. One
cluster of four brokers for the module (the three SIGKILL tests, last, leave it with one); its
brokers send each other markers over a SASL_PLAINTEXT listener.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import secutil
from clusterharness import Cluster
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kafka.protocol.admin.transactions import DescribeTransactionsRequest
from kafka.protocol.consumer import ListOffsetsRequest
from kafka.protocol.metadata import FindCoordinatorRequest
from kafka.protocol.producer import InitProducerIdRequest
from kafka.protocol.producer.transaction import EndTxnRequest, WriteTxnMarkersRequest
from kafkaclients import commit_abort_commit, consume_to_end, create_topic, produce_confluent
from rawclient import RawConnection
from s3server import S3Server
from waiting import wait_until

TXN_TOPIC = "__transaction_state"
OFFSETS_TOPIC = "__consumer_offsets"
CLUSTER_AUTHORIZATION_FAILED = 31
COORDINATOR_LOAD_IN_PROGRESS = 14
NOT_COORDINATOR = 16

SETTINGS = {
    "transaction.state.log.num.partitions": "6",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "300",
    # Acknowledged batches and markers are in the bucket's commit log before the answer, so a
    # SIGKILLed leader's partitions lose nothing when another broker takes them over.
    "strata.durability": "s3",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("txn-cluster")
    creds = root / "users.json"
    secutil.write_credentials(creds, {"admin": "admin-pw"})
    # Clients use PLAINTEXT; brokers send each other WriteTxnMarkers over SASL_PLAINTEXT (SCRAM-SHA-512
    # as strata-broker, with the password derived from the bucket's inter-broker secret).
    made = Cluster(root, s3_server.new_bucket(), 4, listeners={"SASL_PLAINTEXT": None}, settings={
        **SETTINGS, "sasl.credentials.file": str(creds), "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256"})  # as the operator sets it (no PLAIN)
    made.start()
    try:
        # FindCoordinator creates both internal topics; the controller places them.
        with RawConnection(made.brokers[0].bootstrap) as conn:
            for key_type in (0, 1):
                conn.request(FindCoordinatorRequest(version=1, key="warm-up", key_type=key_type))
        made.wait_placed(TXN_TOPIC, 6)
        made.wait_placed(OFFSETS_TOPIC, 6)
        for broker in made.brokers:  # every broker follows that placement
            with RawConnection(broker.bootstrap) as conn:
                wait_until(lambda c=conn: all(c.request(FindCoordinatorRequest(
                    version=1, key="warm-up", key_type=k)).error_code == 0 for k in (0, 1)), 30,
                    "FindCoordinator answered")
        yield made
    finally:
        made.stop()


def txn_producer(bootstrap: str, txn_id: str, **conf: object) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5, **conf})
    producer.init_transactions(90)
    return producer


def live(cluster: Cluster) -> set[int]:
    return {i for i, b in enumerate(cluster.brokers) if b.proc is not None and b.proc.poll() is None}


def bootstrap_of(cluster: Cluster) -> str:
    return ",".join(cluster.brokers[i].bootstrap for i in sorted(live(cluster)))


def one_partition_per_broker(cluster: Cluster, topic: str, partitions: int = 6) -> dict[int, int]:
    """{broker id: a partition of `topic` it leads}, for every live broker."""
    create_topic(bootstrap_of(cluster), topic, partitions)
    leaders = cluster.wait_placed(topic, partitions)
    by_broker = {leader: p for p, leader in reversed(list(enumerate(leaders)))}
    assert set(by_broker) == live(cluster), f"{topic} not spread over the live brokers: {leaders}"
    return by_broker


def key_coordinated_by(cluster: Cluster, topic: str, prefix: str, wanted: set[int]) -> str:
    """A key (transactional or group id) whose coordinator, per the placement, is one of `wanted`."""
    for i in range(1000):
        key = f"{prefix}-{i}"
        if cluster.coordinator(topic, key) in wanted:
            return key
    raise AssertionError(f"no {prefix} key coordinated by {wanted}: {cluster.leaders(topic)}")


def lso_and_high_watermark(cluster: Cluster, topic: str, partition: int) -> tuple[int, int]:
    leader = cluster.brokers[cluster.leaders(topic)[partition]]
    conn = RawConnection(leader.bootstrap)
    out = []
    try:
        for isolation in (1, 0):
            T = ListOffsetsRequest.ListOffsetsTopic
            response = conn.request(ListOffsetsRequest(version=5, replica_id=-1, isolation_level=isolation, topics=[
                T(name=topic, partitions=[T.ListOffsetsPartition(partition_index=partition, current_leader_epoch=-1,
                                                                 timestamp=-1)])]))
            part = response.topics[0].partitions[0]
            assert part.error_code == 0, part
            out.append(part.offset)
    finally:
        conn.close()
    return out[0], out[1]


def test_transaction_over_every_broker_committed_and_aborted(cluster: Cluster) -> None:
    topic = f"span-{uuid.uuid4().hex[:6]}"
    parts = one_partition_per_broker(cluster, topic)
    producer = txn_producer(cluster.bootstrap, "tx-span")
    expected, aborted = commit_abort_commit(producer, topic, list(parts.values()))
    assignment = [(topic, p) for p in parts.values()]
    assert sorted(consume_to_end(cluster.bootstrap, assignment, "read_committed")) == sorted(expected)
    # The aborted round is in the logs (read_uncommitted sees it); every LSO caught up with its end.
    assert len(consume_to_end(cluster.bootstrap, assignment, "read_uncommitted")) == len(expected) + aborted
    for p in parts.values():
        lso, high = lso_and_high_watermark(cluster, topic, p)
        assert lso == high, (p, lso, high)
    # Coordinators are spread: the transaction state topic is led by more than one broker.
    assert len(set(cluster.leaders(TXN_TOPIC))) > 1, cluster.leaders(TXN_TOPIC)


def test_coordinator_found_by_hash_and_others_answer_not_coordinator(cluster: Cluster) -> None:
    txn_id = "tx-where"
    coordinator = cluster.coordinator(TXN_TOPIC, txn_id)
    other = next(i for i in range(len(cluster.brokers)) if i != coordinator)
    with RawConnection(cluster.brokers[other].bootstrap) as conn:
        found = conn.request(FindCoordinatorRequest(version=1, key=txn_id, key_type=1))
        assert (found.error_code, found.node_id) == (0, coordinator)
        init = conn.request(InitProducerIdRequest(version=3, transactional_id=txn_id, transaction_timeout_ms=60000,
                                                  producer_id=-1, producer_epoch=-1))
        assert init.error_code == NOT_COORDINATOR
        for version in (3, 5):  # v5 (transaction version 2) ends through its own path
            end = conn.request(EndTxnRequest(version=version, transactional_id=txn_id, producer_id=1,
                                             producer_epoch=0, committed=True))
            assert end.error_code == NOT_COORDINATOR, version
    with RawConnection(cluster.brokers[coordinator].bootstrap) as conn:
        answers = []

        def init_answered() -> bool:
            answers.append(conn.request(InitProducerIdRequest(
                version=3, transactional_id=txn_id, transaction_timeout_ms=60000, producer_id=-1,
                producer_epoch=-1)))
            # A broker the placement has just named still answers NOT_COORDINATOR until it has
            # claimed the partition, then COORDINATOR_LOAD_IN_PROGRESS while it loads it.
            return answers[-1].error_code not in (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR)

        wait_until(init_answered, 30, "the coordinator loaded")
        assert answers[-1].error_code == 0 and answers[-1].producer_id >= 0


def test_write_txn_markers_refused_to_clients(cluster: Cluster) -> None:
    topic = f"mark-{uuid.uuid4().hex[:6]}"
    create_topic(cluster.bootstrap, topic, 1)
    leader = cluster.brokers[cluster.wait_placed(topic, 1)[0]]
    R = WriteTxnMarkersRequest
    M = R.WritableTxnMarker
    request = R(version=1, markers=[M(producer_id=7, producer_epoch=0, transaction_result=True, coordinator_epoch=0,
                                      topics=[M.WritableTxnMarkerTopic(name=topic, partition_indexes=[0])])])
    with RawConnection(leader.bootstrap, client_id="strata-broker-0.0000") as conn:
        response = conn.request(request)
    assert response.markers[0].topics[0].partitions[0].error_code == CLUSTER_AUTHORIZATION_FAILED


def test_consume_process_produce_with_offsets_on_another_broker(cluster: Cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, sink = f"in-{suffix}", f"out-{suffix}"
    create_topic(cluster.bootstrap, source, 3)
    create_topic(cluster.bootstrap, sink, 3)
    cluster.wait_placed(source, 3)
    cluster.wait_placed(sink, 3)
    inputs = [(b"k%d" % (i % 5), b"%04d" % i) for i in range(150)]
    produce_confluent(cluster.bootstrap, source, inputs)
    txn_id = key_coordinated_by(cluster, TXN_TOPIC, f"tx-cpp-{suffix}", live(cluster))
    txn_coordinator = cluster.coordinator(TXN_TOPIC, txn_id)
    assert txn_coordinator is not None
    group = key_coordinated_by(cluster, OFFSETS_TOPIC, f"g-cpp-{suffix}", live(cluster) - {txn_coordinator})
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.subscribe([source])
    producer = txn_producer(cluster.bootstrap, txn_id)
    processed = 0
    aborted_once = False
    deadline = time.monotonic() + 120
    try:
        while processed < len(inputs) and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(40, 1.0) if not m.error()]
            if not batch:
                continue
            producer.begin_transaction()
            for msg in batch:
                producer.produce(sink, key=msg.key(), value=b"out-" + msg.value(), partition=msg.partition())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 60)
            if not aborted_once and processed >= 50:
                before = consumer.committed(consumer.assignment(), 10)
                assert producer.flush(30) == 0
                producer.abort_transaction(60)
                aborted_once = True
                assert [tp.offset for tp in consumer.committed(consumer.assignment(), 10)] == \
                    [tp.offset for tp in before]
                for tp in before:  # process the same records again
                    consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))
                continue
            producer.commit_transaction(60)
            processed += len(batch)
        assert aborted_once
        committed = consumer.committed([TopicPartition(source, p) for p in range(3)], 10)
    finally:
        consumer.close()
    out = consume_to_end(cluster.bootstrap, [(sink, p) for p in range(3)], "read_committed")
    assert sorted(out) == sorted(b"out-" + v for _, v in inputs)  # each exactly once
    ends = [lso_and_high_watermark(cluster, source, p)[1] for p in range(3)]
    assert [tp.offset for tp in committed] == ends


def _txn_produce(bootstrap: str, txn_id: str, topic: str, partition: int, pid: int, epoch: int, sequence: int,
                 value: bytes, version: int) -> int:
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True, producer_id=pid,
                                        producer_epoch=epoch, base_sequence=sequence, batch_size=1 << 20)
    builder.append(0, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
    T = ProduceRequest.TopicProduceData
    request = ProduceRequest(version=version, transactional_id=txn_id, acks=-1, timeout_ms=10000, topic_data=[
        T(name=topic, partition_data=[T.PartitionProduceData(index=partition, records=bytes(builder.build()))])])
    errors = []
    with RawConnection(bootstrap) as conn:  # while the placed leader is still taking the partition over
        wait_until(lambda: errors.append(conn.request(request).responses[0].partition_responses[0].error_code)
                   or errors[-1] not in (5, 6), 30, f"{topic}-{partition} led")
    return errors[-1]


def test_transaction_version_2_partitions_added_by_their_leaders(cluster: Cluster) -> None:
    """Transaction version 2 on the wire: Produce v12 and TxnOffsetCommit v5 reach brokers that do
    not coordinate the transaction, which add the partitions at its coordinator (AddPartitionsToTxn
    v5 between brokers); a v11 batch of a partition never added is refused there (verification)."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KpTopicPartition
    from kafka.protocol.producer.transaction import TxnOffsetCommitRequest

    topic = f"tv2-{uuid.uuid4().hex[:6]}"
    parts = one_partition_per_broker(cluster, topic)
    txn_id = key_coordinated_by(cluster, TXN_TOPIC, f"tx-{topic}", live(cluster))
    coordinator = cluster.coordinator(TXN_TOPIC, txn_id)
    assert coordinator is not None
    remote = sorted(live(cluster) - {coordinator})
    group = key_coordinated_by(cluster, OFFSETS_TOPIC, f"g-{topic}", set(remote))
    answers = []
    with RawConnection(cluster.brokers[coordinator].bootstrap) as conn:
        wait_until(lambda: answers.append(conn.request(InitProducerIdRequest(
            version=4, transactional_id=txn_id, transaction_timeout_ms=60000, producer_id=-1,
            producer_epoch=-1))) or answers[-1].error_code == 0, 30, "InitProducerId at the coordinator")
    pid, epoch = answers[-1].producer_id, answers[-1].producer_epoch

    def produce(broker: int, sequence: int, value: bytes, version: int = 12, at: int = epoch) -> int:
        return _txn_produce(cluster.brokers[broker].bootstrap, txn_id, topic, parts[broker], pid, at, sequence,
                            value, version)

    assert produce(remote[0], 0, b"v11", version=11) == 120  # TRANSACTION_ABORTABLE: the coordinator says not added
    for broker in [coordinator, *remote]:
        assert produce(broker, 0, b"a%d" % broker) == 0
        assert produce(broker, 1, b"b%d" % broker) == 0  # open here: no round trip
    T = TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic
    with RawConnection(cluster.brokers[cluster.coordinator(OFFSETS_TOPIC, group)].bootstrap) as conn:
        committed = conn.request(TxnOffsetCommitRequest(
            version=5, transactional_id=txn_id, group_id=group, producer_id=pid, producer_epoch=epoch,
            generation_id=-1, member_id="", group_instance_id=None, topics=[T(name=topic, partitions=[
                T.TxnOffsetCommitRequestPartition(partition_index=0, committed_offset=9, committed_leader_epoch=-1,
                                                  committed_metadata="")])]))
        assert committed.topics[0].partitions[0].error_code == 0, committed
    with RawConnection(cluster.brokers[coordinator].bootstrap) as conn:
        end = conn.request(EndTxnRequest(version=5, transactional_id=txn_id, producer_id=pid, producer_epoch=epoch,
                                         committed=True))
    assert (end.error_code, end.producer_id, end.producer_epoch) == (0, pid, epoch + 1)
    assert produce(remote[0], 2, b"late") == 47  # INVALID_PRODUCER_EPOCH: the marker carried epoch + 1
    out = consume_to_end(bootstrap_of(cluster), [(topic, p) for p in parts.values()], "read_committed")
    assert sorted(out) == sorted(v for b in parts for v in (b"a%d" % b, b"b%d" % b))
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_of(cluster))
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert offsets[KpTopicPartition(topic, 0)].offset == 9


def test_partition_leader_sigkilled_before_commit_gets_its_marker_at_the_new_leader(cluster: Cluster) -> None:
    topic = f"lead-{uuid.uuid4().hex[:6]}"
    parts = one_partition_per_broker(cluster, topic)
    txn_id = key_coordinated_by(cluster, TXN_TOPIC, f"tx-lead-{topic}", live(cluster))
    coordinator = cluster.coordinator(TXN_TOPIC, txn_id)
    victim = max(live(cluster) - {coordinator})
    producer = txn_producer(cluster.bootstrap, txn_id)
    producer.begin_transaction()
    values = [b"b%d-%d" % (broker, i) for broker in parts for i in range(10)]
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=list(parts.values())[i // 10])
    assert producer.flush(30) == 0
    cluster.brokers[victim].kill()
    # The coordinator keeps sending the victim's partition its marker until the partition's new
    # leader (after the victim's lease ran out) takes it; EndTxn answers once it is durable there.
    producer.commit_transaction(120)
    placement = cluster.placement()
    assert placement.topics[topic].partitions[parts[victim]].leader != victim
    seen = consume_to_end(bootstrap_of(cluster), [(topic, p) for p in parts.values()], "read_committed")
    assert sorted(seen) == sorted(values)


def describe_state(cluster: Cluster, broker: int, txn_id: str) -> str:
    with RawConnection(cluster.brokers[broker].bootstrap) as conn:
        answer = conn.request(DescribeTransactionsRequest(version=0, transactional_ids=[txn_id]))
    return str(answer.transaction_states[0].transaction_state)


def test_coordinator_sigkilled_with_the_commit_decided_completes_it_at_the_successor(cluster: Cluster) -> None:
    topic = f"prep-{uuid.uuid4().hex[:6]}"
    parts = one_partition_per_broker(cluster, topic)
    txn_id = key_coordinated_by(cluster, TXN_TOPIC, f"tx-prep-{topic}", live(cluster))
    coordinator = cluster.coordinator(TXN_TOPIC, txn_id)
    assert coordinator is not None
    paused = max(live(cluster) - {coordinator})
    producer = txn_producer(bootstrap_of(cluster), txn_id)
    producer.begin_transaction()
    values = [b"b%d-%d" % (broker, i) for broker in parts for i in range(10)]
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=list(parts.values())[i // 10])
    assert producer.flush(30) == 0
    # With one leader paused, EndTxn persists PrepareCommit and then waits for that leader's
    # marker: the commit is decided but not complete when the coordinator is SIGKILLed.
    os.kill(cluster.brokers[paused].proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    outcome: list[BaseException | None] = []
    committer = threading.Thread(target=lambda: outcome.append(_commit(producer)), daemon=True)
    committer.start()
    try:
        wait_until(lambda: describe_state(cluster, coordinator, txn_id) == "PrepareCommit", 30,
                   "the commit decided")
        cluster.brokers[coordinator].kill()
    finally:
        os.kill(cluster.brokers[paused].proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    committer.join(150)
    assert outcome == [None], outcome  # the successor finished the commit the producer asked for
    seen = consume_to_end(bootstrap_of(cluster), [(topic, p) for p in parts.values()], "read_committed", timeout=120)
    assert sorted(seen) == sorted(values)


def _commit(producer: Producer) -> BaseException | None:
    try:
        producer.commit_transaction(120)
    except KafkaException as exc:
        return exc
    return None


def test_coordinator_sigkilled_mid_transaction_is_never_half_visible(cluster: Cluster) -> None:
    topic = f"kill-{uuid.uuid4().hex[:6]}"
    parts = one_partition_per_broker(cluster, topic)
    txn_id = key_coordinated_by(cluster, TXN_TOPIC, f"tx-kill-{topic}", live(cluster))
    victim = cluster.coordinator(TXN_TOPIC, txn_id)
    assert victim is not None
    producer = txn_producer(bootstrap_of(cluster), txn_id, **{"transaction.timeout.ms": 20000})
    producer.begin_transaction()
    values = [b"b%d-%d" % (broker, i) for broker in parts for i in range(10)]
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=list(parts.values())[i // 10])
    assert producer.flush(30) == 0  # every record acknowledged by its leader, the victim's included
    survivors = ",".join(b.bootstrap for i, b in enumerate(cluster.brokers) if i in live(cluster) - {victim})
    cluster.brokers[victim].kill()
    committed = False
    try:
        producer.commit_transaction(120)  # re-finds the coordinator once its partition moved
        committed = True
    except KafkaException as exc:
        print(f"commit after the SIGKILL failed: {exc}")  # the transaction is then aborted on timeout
    cluster.wait(lambda p: victim not in {a.leader for t in (topic, TXN_TOPIC) for a in p.topics[t].partitions},
                 60, "the victim's partitions placed elsewhere")
    seen = consume_to_end(survivors, [(topic, p) for p in parts.values()], "read_committed", timeout=120)
    if committed:
        assert sorted(seen) == sorted(values)
    else:
        assert sorted(seen) in ([], sorted(values)), f"half visible: {len(seen)} of {len(values)}"
    # The new coordinator answers for the id: a new producer of it starts (fencing the old one).
    txn_producer(survivors, txn_id).flush(1)

"""Transactions in a cluster whose only listeners use TLS (issue 22): two real broker processes
sharing one moto bucket, the real controller, confluent-kafka's transactional producer and
read_committed consumers, raw WriteTxnMarkers frames.

Each broker has two listeners, both TLS: SSL requiring client certificates (clients connect there
as `alice`, a super user) and SASL_SSL without them. Broker 0 sends the other its WriteTxnMarkers
on SSL (presenting its own certificate, the peer's checked against the CA and the host it
advertises), broker 1 on SASL_SSL (SCRAM as strata-broker over TLS): a transaction coordinated by
each broker over partitions led by both commits and aborts correctly.

Partition leaders refuse markers from an older coordinator epoch than the last one a producer's
marker carried there (TRANSACTION_COORDINATOR_FENCED, error 52), also after the leader was SIGKILLed.
"""

from __future__ import annotations

import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import secutil
from clusterharness import Cluster, coordinator_partition
from confluent_kafka import Producer
from kafka.protocol.admin.transactions import DescribeProducersRequest
from kafka.protocol.metadata import FindCoordinatorRequest
from kafka.protocol.producer.transaction import WriteTxnMarkersRequest
from kafkaclients import commit_abort_commit, consume_to_end, create_topic
from rawclient import RawConnection
from s3server import S3Server
from waiting import wait_until

TXN_TOPIC = "__transaction_state"
TRANSACTION_COORDINATOR_FENCED = 52
# Which listener each broker sends its markers on (brokers may differ: both have both listeners).
INTER_BROKER = {0: "SSL", 1: "SASL_SSL"}


class TlsCluster:
    """The cluster and how clients reach it over mutual TLS."""

    def __init__(self, cluster: Cluster, pki: secutil.Pki) -> None:
        self.cluster = cluster
        self.pki = pki
        self.auth = secutil.Auth("SSL", pki=pki, client_cert=True)

    def confluent(self) -> dict[str, Any]:
        conf = secutil.confluent(self.cluster.bootstrap, self.auth)
        del conf["bootstrap.servers"]
        return conf

    def kafka_python(self) -> dict[str, Any]:
        conf = secutil.kafka_python(self.cluster.bootstrap, self.auth)
        del conf["bootstrap_servers"]
        return conf

    def raw(self, broker: int, client_id: str = "raw-test") -> RawConnection:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return RawConnection(self.cluster.brokers[broker].bootstrap, client_id=client_id, ssl_context=context)

    def producer(self, txn_id: str) -> Producer:
        producer = Producer({"bootstrap.servers": self.cluster.bootstrap, "transactional.id": txn_id,
                             "linger.ms": 5, **self.confluent()})
        producer.init_transactions(90)
        return producer

    def consume(self, partitions: list[tuple[str, int]], isolation: str) -> list[bytes]:
        return consume_to_end(self.cluster.bootstrap, partitions, isolation, **self.confluent())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[TlsCluster]:
    root: Path = tmp_path_factory.mktemp("txn-cluster-tls")
    # The brokers' certificate also authenticates a client: broker 0 presents it to SSL listeners.
    pki = secutil.make_pki(root / "pki", server_client_auth=True)
    creds = root / "users.json"
    secutil.write_credentials(creds, {"admin": "admin-pw"})
    made = Cluster(root, s3_server.new_bucket(), 2, protocol="SSL", listeners={"SASL_SSL": None}, settings={
        **secutil.ssl_settings(pki, "required"), "ssl.client.auth.listener.map": "SASL_SSL:none",
        "sasl.credentials.file": str(creds), "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "authorizer.enable": "true", "super.users": "User:alice",
        "transaction.state.log.num.partitions": "4", "offsets.topic.num.partitions": "2",
        # Markers are in the bucket's commit log before they are acknowledged (the restart test).
        "strata.durability": "s3"})
    for i, broker in enumerate(made.brokers):
        broker.settings["inter.broker.listener.name"] = INTER_BROKER[i]
    made.start()
    out = TlsCluster(made, pki)
    try:
        with out.raw(0) as conn:  # creates __transaction_state; the controller places it
            conn.request(FindCoordinatorRequest(version=1, key="warm-up", key_type=1))
        made.wait_placed(TXN_TOPIC, 4)
        for i in range(len(made.brokers)):  # every broker follows that placement
            with out.raw(i) as conn:
                wait_until(lambda c=conn: c.request(FindCoordinatorRequest(
                    version=1, key="warm-up", key_type=1)).error_code == 0, 30, "FindCoordinator answered")
        yield out
    finally:
        made.stop()


def txn_id_coordinated_by(cluster: Cluster, prefix: str, broker: int) -> str:
    for i in range(1000):
        key = f"{prefix}-{i}"
        if cluster.coordinator(TXN_TOPIC, key) == broker:
            return key
    raise AssertionError(f"no transactional id coordinated by {broker}: {cluster.leaders(TXN_TOPIC)}")


def test_transactions_spanning_brokers_commit_and_abort_over_tls(tls: TlsCluster) -> None:
    cluster = tls.cluster
    topic = f"span-{uuid.uuid4().hex[:6]}"
    create_topic(cluster.bootstrap, topic, 4, **tls.kafka_python())
    leaders = cluster.wait_placed(topic, 4)
    parts = {leader: p for p, leader in reversed(list(enumerate(leaders)))}  # broker -> a partition it leads
    assert set(parts) == {0, 1}, leaders
    expected: list[bytes] = []
    aborted = 0
    for coordinator in (0, 1):  # markers sent by each broker, on its own inter-broker listener
        producer = tls.producer(txn_id_coordinated_by(cluster, f"tx-tls-{topic}", coordinator))
        committed, dropped = commit_abort_commit(producer, topic, list(parts.values()), b"c%d-" % coordinator)
        expected += committed
        aborted += dropped
    assignment = [(topic, p) for p in parts.values()]
    assert sorted(tls.consume(assignment, "read_committed")) == sorted(expected)
    assert len(tls.consume(assignment, "read_uncommitted")) == len(expected) + aborted
    # Each broker reached the other on its own inter-broker listener, over TLS.
    for broker, listener in INTER_BROKER.items():
        text = cluster.brokers[broker].log_path.read_text(errors="replace")
        peer = cluster.brokers[1 - broker].listeners.get(listener, cluster.brokers[1 - broker].port)
        assert re.search(rf"connected to broker {1 - broker} at 127.0.0.1:{peer} \({listener}[ )]", text), \
            cluster.logs()


def write_marker(conn: RawConnection, topic: str, producer_id: int, producer_epoch: int,
                 coordinator_epoch: int) -> int:
    R = WriteTxnMarkersRequest
    M = R.WritableTxnMarker
    response = conn.request(R(version=1, markers=[M(
        producer_id=producer_id, producer_epoch=producer_epoch, transaction_result=True,
        coordinator_epoch=coordinator_epoch, topics=[M.WritableTxnMarkerTopic(name=topic, partition_indexes=[0])])]))
    return int(response.markers[0].topics[0].partitions[0].error_code)


def producer_state(conn: RawConnection, topic: str, producer_id: int) -> Any:
    T = DescribeProducersRequest.TopicRequest
    response = conn.request(DescribeProducersRequest(version=0, topics=[T(name=topic, partition_indexes=[0])]))
    (part,) = response.topics[0].partitions
    assert part.error_code == 0, part
    return next(p for p in part.active_producers if p.producer_id == producer_id)


def test_markers_from_an_older_coordinator_epoch_are_refused(tls: TlsCluster) -> None:
    cluster = tls.cluster
    topic = f"fence-{uuid.uuid4().hex[:6]}"
    create_topic(cluster.bootstrap, topic, 1, **tls.kafka_python())
    leader = cluster.wait_placed(topic, 1)[0]
    txn_id = f"tx-fence-{topic}"
    producer = tls.producer(txn_id)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(60)
    producer.flush(10)
    del producer
    # The commit marker carries the coordinator epoch: the leader epoch of the id's
    # __transaction_state partition when its coordinator took it over.
    txn_partitions = cluster.placement().topics[TXN_TOPIC].partitions
    epoch = txn_partitions[coordinator_partition(txn_id, len(txn_partitions))].epoch
    with tls.raw(leader) as conn:  # as alice, a super user: CLUSTER_ACTION on the cluster
        pid = only_producer(conn, topic)
        state = producer_state(conn, topic, pid)
        assert state.coordinator_epoch == epoch >= 1, (state, epoch)
        pepoch = state.producer_epoch
        assert write_marker(conn, topic, pid, pepoch, epoch - 1) == TRANSACTION_COORDINATOR_FENCED
        assert write_marker(conn, topic, pid, pepoch, epoch) == 0  # the same coordinator again
        assert write_marker(conn, topic, pid, pepoch, epoch + 3) == 0  # a newer coordinator
        assert write_marker(conn, topic, pid, pepoch, epoch) == TRANSACTION_COORDINATOR_FENCED
        assert producer_state(conn, topic, pid).coordinator_epoch == epoch + 3
    # The coordinator epoch is part of the producer state: it survives the leader's SIGKILL (the
    # markers are replayed from the log, or the bucket's commit log where another broker takes over).
    cluster.brokers[leader].kill()
    cluster.brokers[leader].start()
    answers: list[int] = []

    def refused_again() -> bool:
        now = cluster.leaders(topic)[0]
        try:
            with tls.raw(now) as conn:
                answers.append(write_marker(conn, topic, pid, pepoch, epoch))
        except OSError:
            return False
        return answers[-1] in (0, TRANSACTION_COORDINATOR_FENCED)  # else: not taken over yet

    wait_until(refused_again, 60, "the partition led again")
    assert answers[-1] == TRANSACTION_COORDINATOR_FENCED, answers
    with tls.raw(cluster.leaders(topic)[0]) as conn:
        assert producer_state(conn, topic, pid).coordinator_epoch == epoch + 3


def only_producer(conn: RawConnection, topic: str) -> int:
    """The one producer of a partition a single transaction wrote."""
    T = DescribeProducersRequest.TopicRequest
    response = conn.request(DescribeProducersRequest(version=0, topics=[T(name=topic, partition_indexes=[0])]))
    (only,) = response.topics[0].partitions[0].active_producers
    return int(only.producer_id)

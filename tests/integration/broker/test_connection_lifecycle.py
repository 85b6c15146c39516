"""A connection's lifecycle under hostile or merely buggy clients, with raw frames.

- A connection that hangs up releases its slot and its buffered responses at once, whatever its
  request loop was waiting for (a full in-flight queue behind a closed responder, long polls).
- Nothing pipelined behind a failed SASL authentication runs.
- Memory follows received bytes, not announced frame sizes.
The broker's own gauge `strata_connections_open` (Prometheus /metrics) is the slot count checked.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import metrics
import pytest
import rawclient as rc
import secutil
from brokerproc import BrokerProcess, free_port
from fuzz_auth import proc_rss_kb
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest
from waiting import wait_until

USERS = {"admin": "admin-secret", "alice": "alice-secret"}


def open_connections(proc: BrokerProcess) -> int:
    return metrics.open_connections(proc.settings["metrics.listen"])


def handshake(mechanism: str = "PLAIN", correlation_id: int = 1) -> bytes:
    return rc.encode(SaslHandshakeRequest(version=1, mechanism=mechanism), correlation_id=correlation_id)


def authenticate(user: str, password: str, correlation_id: int = 2) -> bytes:
    token = b"\x00" + user.encode() + b"\x00" + password.encode()
    return rc.encode(SaslAuthenticateRequest(version=2, auth_bytes=token), correlation_id=correlation_id)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base: Path = tmp_path_factory.mktemp("lifecycle-sasl")
    secutil.write_credentials(base / "users.json", USERS)
    proc = BrokerProcess(base / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(base / "users.json"), "num.partitions": "1",
        "max.connections.per.ip": "40", "metrics.listen": f"127.0.0.1:{free_port()}",
        "connection.failed.authentication.delay.ms": "20"}).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def plain_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("lifecycle-plain") / "broker", settings={
        "num.partitions": "1", "auto.create.topics.enable": "true", "queued.max.requests": "4",
        "max.connections.per.ip": "20", "metrics.listen": f"127.0.0.1:{free_port()}"}).start()
    yield proc
    proc.kill()


def _hang_up(port: int, data: bytes, wait_for_close: bool = False) -> None:
    """Send `data` and hang up at once, or after the broker has closed the connection."""
    try:
        with rc.connect(port) as sock:
            if rc.send_all(sock, data) and wait_for_close:
                rc.wait_closed(sock, deadline_s=10)
    except OSError:
        pass  # refused over max.connections.per.ip while earlier ones are still closing: allowed


def test_sasl_hang_ups_behind_a_refused_authenticate_release_their_slots(sasl_broker: BrokerProcess) -> None:
    port = sasl_broker.listeners["SASL_PLAINTEXT"]
    # SaslAuthenticate with no handshake (answered, then closed), ~40 ApiVersions behind it, hang up.
    attack = authenticate("nobody", "x", correlation_id=1) + b"".join(
        rc.encode(rc.api_versions(3), correlation_id=10 + i) for i in range(40))
    for i in range(1000):
        _hang_up(port, attack, wait_for_close=i % 10 == 0)
    wait_until(lambda: open_connections(sasl_broker) == 0, timeout=30,
               what="every hung-up connection's slot released")
    rc.api_versions_ok(port)  # a new client is served


def test_long_poll_fetches_then_hang_up_release_their_slots(plain_broker: BrokerProcess) -> None:
    topic = f"longpoll-{uuid.uuid4().hex[:8]}"
    with rc.connect(plain_broker.port) as sock:
        sock.sendall(rc.encode(rc.metadata([topic])))
        assert not rc.outcome(sock, 1).closed
    # queued.max.requests=4: the request loop waits for a free slot behind long polls when the peer leaves.
    attack = b"".join(rc.encode(rc.fetch(topic, offset=0, max_wait_ms=3000), correlation_id=i) for i in range(20))
    for i in range(60):
        _hang_up(plain_broker.port, attack, wait_for_close=i % 10 == 0)
    wait_until(lambda: open_connections(plain_broker) == 0, timeout=30,
               what="every hung-up connection's slot released")
    rc.api_versions_ok(plain_broker.port)


def _topics(proc: BrokerProcess) -> set[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**secutil.kafka_python(proc.address("SASL_PLAINTEXT"),
                                                    secutil.Auth("SASL_PLAINTEXT", "PLAIN", "admin",
                                                                 USERS["admin"])))
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_nothing_pipelined_behind_a_failed_authentication_runs(sasl_broker: BrokerProcess) -> None:
    port = sasl_broker.listeners["SASL_PLAINTEXT"]
    topic = f"sneaky-{uuid.uuid4().hex[:8]}"
    data = (handshake(correlation_id=1) + authenticate("alice", "wrong", correlation_id=2)
            + handshake(correlation_id=3) + authenticate("alice", USERS["alice"], correlation_id=4)
            + rc.encode(rc.create_topics(topic), correlation_id=5))
    with rc.connect(port) as sock:
        sock.sendall(data)
        result = rc.outcome(sock, 5, deadline_s=10)
    assert result.closed, "the connection stayed open after a failed authentication"
    assert [rc.correlation_id(f) for f in result.frames] == [1, 2], "requests behind the failure were answered"
    time.sleep(0.5)
    assert topic not in _topics(sasl_broker), "a CreateTopics pipelined behind a failed authentication ran"


def test_produce_pipelined_behind_a_failed_authentication_is_not_written(sasl_broker: BrokerProcess) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    port = sasl_broker.listeners["SASL_PLAINTEXT"]
    topic = f"target-{uuid.uuid4().hex[:8]}"
    conf = secutil.confluent(sasl_broker.address("SASL_PLAINTEXT"),
                             secutil.Auth("SASL_PLAINTEXT", "PLAIN", "admin", USERS["admin"]))
    admin = AdminClient(conf)  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    data = (handshake(correlation_id=1) + authenticate("alice", "wrong", correlation_id=2)
            + handshake(correlation_id=3) + authenticate("alice", USERS["alice"], correlation_id=4)
            + rc.encode(rc.produce(topic, rc.record_batch(3)), correlation_id=5))
    with rc.connect(port) as sock:
        sock.sendall(data)
        assert rc.outcome(sock, 5, deadline_s=10).closed
    time.sleep(0.5)
    consumer = Consumer({**conf, "group.id": f"g-{uuid.uuid4().hex[:6]}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        consumer.close()
    assert (low, high) == (0, 0), "a Produce pipelined behind a failed authentication was written"


def test_announced_frame_sizes_do_not_take_memory(plain_broker: BrokerProcess) -> None:
    rc.api_versions_ok(plain_broker.port)
    time.sleep(0.5)
    before = proc_rss_kb(plain_broker.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(10):
            sock = rc.connect(plain_broker.port)
            sock.sendall(struct.pack(">i", 100 << 20) + struct.pack(">hhi", 0, 8, 1) + b"\x00\x00")
            socks.append(sock)
        time.sleep(1.5)
        grown_mib = (proc_rss_kb(plain_broker.pid) - before) / 1024
        assert grown_mib < 50, f"10 announced 100 MiB frames raised the broker's RSS by {grown_mib:.0f} MiB"
        rc.api_versions_ok(plain_broker.port)  # everyone else is still served
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: open_connections(plain_broker) == 0, timeout=30, what="the stalled connections closed")

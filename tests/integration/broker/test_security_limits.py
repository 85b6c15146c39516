"""Connection limits: thousands of idle connections and slowloris clients do not starve a normal
client; per-IP and total caps; unauthenticated and half-sent requests are timed out."""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
from collections.abc import Iterator

import pytest
import rawclient as rc
from brokerproc import BrokerProcess


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if want < 4500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for 2,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connect_from(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def normal_client_roundtrips(bootstrap: str, topic: str, n: int = 20) -> float:
    """Worst produce->ack latency of a fresh kafka-python client doing n acked sends, then a read-back."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0, max_block_ms=10000)
    worst = 0.0
    try:
        for i in range(n):
            t0 = time.monotonic()
            producer.send(topic, f"v{i}".encode()).get(timeout=10)
            worst = max(worst, time.monotonic() - t0)
    finally:
        producer.close(5)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got = 0
        deadline = time.monotonic() + 10
        while got < n and time.monotonic() < deadline:
            got += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
        assert got == n
    finally:
        consumer.close()
    return worst


def test_idle_connections_and_slowloris_do_not_starve_a_client(broker_factory, many_fds: None,  # type: ignore[no-untyped-def]
                                                               topic_name: str) -> None:
    proc: BrokerProcess = broker_factory({"max.connections.per.ip": "2500", "max.connections": "3000",
                                          "request.timeout.ms": "2000", "num.partitions": "1"})
    base_fds, base_rss = fd_count(proc.pid), rss_kb(proc.pid)
    idle = [connect_from(proc.port, "127.0.0.2") for _ in range(2000)]
    # Slowloris: announce a request and trickle it a byte at a time; and a frame-length prefix cut short.
    lorises = [connect_from(proc.port, "127.0.0.3") for _ in range(50)]
    frame = rc.encode(rc.metadata(None, version=9))
    for sock in lorises:
        sock.sendall(frame[:6])
    try:
        deadline = time.monotonic() + 10
        while fd_count(proc.pid) < base_fds + 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fd_count(proc.pid) >= base_fds + 2000, "the broker did not hold the idle connections"
        worst = normal_client_roundtrips(proc.bootstrap, topic_name)
        assert worst < 2.0, f"a produce took {worst:.2f}s beside 2,000 idle connections"
        # The slowloris connections are cut once request.timeout.ms passes, trickling or not.
        for sock in lorises[:10]:
            try:
                sock.send(frame[6:7])
            except OSError:
                pass
        closed = 0
        for sock in lorises:
            closed += rc.wait_closed(sock, 5.0)
        assert closed == len(lorises)
        assert proc.alive()
        assert rss_kb(proc.pid) - base_rss < 200_000, "2,000 idle connections cost more than 200 MB"
    finally:
        for sock in idle + lorises:
            sock.close()
    deadline = time.monotonic() + 10
    while fd_count(proc.pid) > base_fds + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fd_count(proc.pid) <= base_fds + 5, "descriptors leaked after the clients left"


def test_per_ip_and_total_connection_caps(broker_factory, topic_name: str) -> None:  # type: ignore[no-untyped-def]
    proc: BrokerProcess = broker_factory({"max.connections.per.ip": "10", "max.connections": "30"})
    held = [connect_from(proc.port, "127.0.0.2") for _ in range(10)]
    try:
        time.sleep(0.3)
        extra = connect_from(proc.port, "127.0.0.2")
        assert rc.wait_closed(extra, 5.0), "the 11th connection from one IP was not refused"
        extra.close()
        # Another address is not affected by that one's cap.
        with connect_from(proc.port, "127.0.0.3") as other:
            assert not rc.wait_closed(other, 0.5)
        time.sleep(0.5)  # (the broker has noticed that one went away)
        for i in (3, 4):
            for _ in range(10):
                held.append(connect_from(proc.port, f"127.0.0.{i}"))
                time.sleep(0.01)
        time.sleep(0.5)
        over = connect_from(proc.port, "127.0.0.9")
        assert rc.wait_closed(over, 5.0), "a connection over max.connections was not refused"
        over.close()
        assert all(not rc.wait_closed(sock, 0.01) for sock in held), "a connection under the caps was refused"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    normal_client_roundtrips(proc.bootstrap, topic_name, n=3)


def test_unauthenticated_connections_are_timed_out(broker_factory) -> None:  # type: ignore[no-untyped-def]
    proc: BrokerProcess = broker_factory({"request.timeout.ms": "1000"}, listeners={"SASL_PLAINTEXT": None})
    with rc.connect(proc.listeners["SASL_PLAINTEXT"]) as sock:
        sock.sendall(rc.encode(rc.api_versions(3)))
        t0 = time.monotonic()
        assert rc.wait_closed(sock, 5.0)
        assert time.monotonic() - t0 < 3.0
    # An idle authenticated-by-default plaintext connection is left alone (connections.max.idle.ms).
    with rc.connect(proc.port) as sock:
        assert not rc.wait_closed(sock, 1.5)


def test_a_frame_length_alone_does_not_pin_a_connection(broker_factory) -> None:  # type: ignore[no-untyped-def]
    proc: BrokerProcess = broker_factory({"request.timeout.ms": "1000"})
    with rc.connect(proc.port) as sock:
        sock.sendall(struct.pack(">i", 1000))
        assert rc.wait_closed(sock, 5.0)

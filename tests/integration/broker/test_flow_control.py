"""Flow control per connection: a client that stops reading its responses stops the broker reading
its requests (bounded memory), and is served in full once it reads again; other clients are served
throughout."""

from __future__ import annotations

import os
import socket
import struct
import time

import rawclient as rc
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.producer import ProduceResponse

REQUESTS = 600
PAD = 30_000  # rack_id padding: each pipelined Fetch request is ~30 KB on the wire
BATCHES = 48
RECORDS_PER_BATCH = 48  # ~48 KiB batches: every Fetch answer holds one


def _fetch_frame(topic: str, correlation_id: int, offset: int) -> bytes:
    P = FetchRequest.FetchTopic.FetchPartition
    request = FetchRequest(version=11, replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=1 << 20,
                           isolation_level=0, session_id=0, session_epoch=-1,
                           topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                               P(partition=0, current_leader_epoch=-1, fetch_offset=offset, log_start_offset=-1,
                                 partition_max_bytes=1024)])],
                           forgotten_topics_data=[], rack_id="r" * PAD)
    return rc.encode(request, correlation_id=correlation_id)


def _load(port: int, topic: str) -> None:
    sock = rc.connect(port, timeout=15)
    try:
        sock.sendall(rc.encode(rc.metadata([topic])))
        assert rc.read_frame(sock) is not None
        payload = os.urandom(1000)
        for i in range(BATCHES):
            for attempt in range(50):
                sock.sendall(rc.encode(rc.produce(topic, rc.record_batch(RECORDS_PER_BATCH, payload)),
                                       correlation_id=1000 + i))
                body = rc.read_frame(sock)
                assert body is not None
                response = ProduceResponse.decode(body, version=8, header=True)
                if response.responses[0].partition_responses[0].error_code == 0 or attempt == 49:
                    break
                time.sleep(0.1)  # the topic's leader may still be settling
    finally:
        sock.close()


def _parallel_roundtrip(port: int, topic: str) -> float:
    sock = rc.connect(port, timeout=10)
    try:
        t0 = time.monotonic()
        sock.sendall(_fetch_frame(topic, 7, 0))
        body = rc.read_frame(sock)
        assert body is not None and rc.correlation_id(body) == 7
        return time.monotonic() - t0
    finally:
        sock.close()


def test_slow_then_fast_reader_gets_every_response_and_others_are_served(broker_factory, topic_name: str) -> None:
    proc = broker_factory(settings={"auto.create.topics.enable": "true", "num.partitions": "1",
                                    "queued.max.requests": "16"})
    _load(proc.port, topic_name)
    frames = [_fetch_frame(topic_name, i + 1, (i * RECORDS_PER_BATCH) % (BATCHES * RECORDS_PER_BATCH))
              for i in range(REQUESTS)]
    wire = b"".join(frames)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", proc.port))
    sock.setblocking(False)
    sent = 0
    received = bytearray()

    def push() -> None:
        nonlocal sent
        while sent < len(wire):
            try:
                n = sock.send(wire[sent:sent + (1 << 20)])
            except BlockingIOError:
                return
            sent += n

    def pull(limit: int) -> int:
        try:
            chunk = sock.recv(limit)
        except BlockingIOError:
            return 0
        assert chunk, f"the broker closed the connection after {len(received)} response bytes"
        received.extend(chunk)
        return len(chunk)

    try:
        # 1. Pipeline everything and read nothing: the broker must stop taking requests.
        last_progress = time.monotonic()
        deadline = last_progress + 20
        while time.monotonic() < deadline and time.monotonic() - last_progress < 2.0:
            before = sent
            push()
            if sent != before:
                last_progress = time.monotonic()
            time.sleep(0.05)
        assert sent < len(wire), "the broker read every request although no response was read"
        stalled_at = sent
        # ... while a client beside it is served promptly.
        assert _parallel_roundtrip(proc.port, topic_name) < 5.0
        assert proc.alive()

        # 2. Read slowly for a while, then 3. fast: every response arrives, in order.
        slow_until = time.monotonic() + 2.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            push()
            if time.monotonic() < slow_until:
                pull(4096)
                time.sleep(0.01)
            elif not pull(1 << 20):
                time.sleep(0.001)
            if sent == len(wire) and _complete(received) >= REQUESTS:
                break
        assert sent == len(wire), f"requests stalled at {sent} of {len(wire)} bytes (first stall at {stalled_at})"
        ids = _correlation_ids(received)
        assert ids == list(range(1, REQUESTS + 1)), f"{len(ids)} responses of {REQUESTS}"
        assert _parallel_roundtrip(proc.port, topic_name) < 5.0
    finally:
        sock.close()


def _complete(buf: bytearray) -> int:
    n = pos = 0
    while pos + 4 <= len(buf):
        (size,) = struct.unpack_from(">i", buf, pos)
        if pos + 4 + size > len(buf):
            break
        pos += 4 + size
        n += 1
    return n


def _correlation_ids(buf: bytearray) -> list[int]:
    ids = []
    pos = 0
    while pos + 4 <= len(buf):
        (size,) = struct.unpack_from(">i", buf, pos)
        body = bytes(buf[pos + 4:pos + 4 + size])
        response = FetchResponse.decode(body, version=11, header=True)
        partition = response.responses[0].partitions[0]
        assert partition.error_code == 0 and partition.records, "a response without records"
        ids.append(response.header.correlation_id)
        pos += 4 + size
    return ids

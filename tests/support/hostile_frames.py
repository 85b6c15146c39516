"""Raw-socket helpers for the hostile-input tests: build real Kafka frames, send bytes, and
classify what the broker did about them (answered, closed the connection, or nothing)."""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from dataclasses import dataclass

from kafka.protocol.admin import CreateTopicsRequest
from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
from kafka.protocol.producer import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

CLIENT_ID = "hostile"


def encode(request, correlation_id: int = 1, client_id: str | None = CLIENT_ID) -> bytes:
    """A request object -> its framed bytes (size prefix, request header, body)."""
    request.with_header(correlation_id=correlation_id, client_id=client_id)
    return bytes(request.encode(header=True, framed=True))


def raw_frame(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
              client_id: bytes | None = b"hostile", flexible: bool = False) -> bytes:
    """A frame with a hand-made request header: for keys/versions kafka.protocol will not encode."""
    if client_id is None:
        cid = struct.pack(">h", -1)
    else:
        cid = struct.pack(">h", len(client_id)) + client_id
    payload = struct.pack(">hhi", api_key, api_version, correlation_id) + cid
    if flexible:
        payload += b"\x00"  # empty tagged fields of request header v2
    payload += body
    return struct.pack(">i", len(payload)) + payload


def record_batch(n: int = 3, payload: bytes = b"value", base_timestamp: int | None = None) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    for i in range(n):
        builder.append(i, timestamp=ts + i, key=f"k{i}".encode(), value=payload + str(i).encode(), headers=[])
    return bytes(builder.build())


def api_versions(version: int = 3) -> ApiVersionsRequest:
    if version >= 3:
        return ApiVersionsRequest(version=version, client_software_name="hostile",
                                  client_software_version="1.0")
    return ApiVersionsRequest(version=version)


def metadata(topics: list[str] | None, version: int = 9, allow_auto: bool = True) -> MetadataRequest:
    T = MetadataRequest.MetadataRequestTopic
    return MetadataRequest(version=version, topics=None if topics is None else [T(name=t) for t in topics],
                           allow_auto_topic_creation=allow_auto, include_cluster_authorized_operations=False,
                           include_topic_authorized_operations=False)


def produce(topic: str, records: bytes, version: int = 8, acks: int = 1, partition: int = 0) -> ProduceRequest:
    P = ProduceRequest.TopicProduceData.PartitionProduceData
    return ProduceRequest(version=version, transactional_id=None, acks=acks, timeout_ms=5000,
                          topic_data=[ProduceRequest.TopicProduceData(
                              name=topic, partition_data=[P(index=partition, records=records)])])


def fetch(topic: str, version: int = 11, offset: int = 0, max_wait_ms: int = 100) -> FetchRequest:
    P = FetchRequest.FetchTopic.FetchPartition
    return FetchRequest(version=version, replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=1, max_bytes=1 << 20,
                        isolation_level=0, session_id=0, session_epoch=-1,
                        topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                            P(partition=0, current_leader_epoch=-1, fetch_offset=offset, log_start_offset=-1,
                              partition_max_bytes=1 << 20)])],
                        forgotten_topics_data=[], rack_id="")


def list_offsets(topic: str, version: int = 5, timestamp: int = -1) -> ListOffsetsRequest:
    P = ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition
    return ListOffsetsRequest(version=version, replica_id=-1, isolation_level=0,
                              topics=[ListOffsetsRequest.ListOffsetsTopic(name=topic, partitions=[
                                  P(partition_index=0, current_leader_epoch=-1, timestamp=timestamp,
                                    max_num_offsets=1)])])


def create_topics(topic: str, version: int = 5, partitions: int = 1) -> CreateTopicsRequest:
    T = CreateTopicsRequest.CreatableTopic
    return CreateTopicsRequest(version=version, timeout_ms=5000, validate_only=False,
                               topics=[T(name=topic, num_partitions=partitions, replication_factor=1,
                                         assignments=[], configs=[])])


@dataclass
class Outcome:
    """What the broker did with what we sent: answered `frames`, then closed (or not)."""

    frames: list[bytes]
    closed: bool


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first. Raises socket.timeout on a stall."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes | None:
    """One response frame (without its size prefix), or None if the connection closed."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">i", head)
    assert 4 <= size <= 64 << 20, f"broker sent a response frame of length {size}"
    body = _recv_exact(sock, size)
    assert body is not None, "broker closed the connection in the middle of a response frame"
    return body


def send_all(sock: socket.socket, data: bytes) -> bool:
    """False if the broker had already closed the connection (that is an allowed outcome)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def outcome(sock: socket.socket, expect: int, deadline_s: float = 5.0) -> Outcome:
    """Read until `expect` responses arrived or the broker closed the connection.

    A stall of `deadline_s` without either is the failure these tests exist to catch.
    """
    sock.settimeout(deadline_s)
    frames: list[bytes] = []
    while len(frames) < expect:
        try:
            body = read_frame(sock)
        except TimeoutError as exc:
            raise AssertionError(f"broker neither answered nor closed within {deadline_s}s "
                                 f"(got {len(frames)} of {expect} responses)") from exc
        if body is None:
            return Outcome(frames, True)
        frames.append(body)
    return Outcome(frames, False)


def wait_closed(sock: socket.socket, deadline_s: float = 5.0) -> bool:
    """True once the broker closes the connection (EOF/reset); False if it is still open after deadline_s.

    Any bytes the broker sends in the meantime are read and discarded.
    """
    sock.settimeout(0.2)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
        if not chunk:
            return True
    return False


def correlation_id(body: bytes) -> int:
    return struct.unpack_from(">i", body, 0)[0]


def decode_api_versions(body: bytes, version: int = 0) -> ApiVersionsResponse:
    # ApiVersions responses always carry header v0 (no tagged fields), even for flexible versions.
    return ApiVersionsResponse.decode(body, version=version, header=True)


def api_versions_ok(port: int, timeout: float = 5.0) -> ApiVersionsResponse:
    """A fresh connection, one ApiVersions v3 exchange: the broker's 'still alive and serving' check."""
    with connect(port, timeout) as sock:
        sock.sendall(encode(api_versions(3), correlation_id=4242))
        result = outcome(sock, 1, timeout)
    assert not result.closed and result.frames, "broker closed a fresh connection without answering ApiVersions"
    response = decode_api_versions(result.frames[0], version=3)
    assert response.header.correlation_id == 4242
    assert response.error_code == 0
    return response


def metric(metrics_listen: str, name: str) -> float:
    """One unlabelled sample from a broker's /metrics (`metrics_listen` is its metrics.listen setting)."""
    port = int(metrics_listen.rpartition(":")[2])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def open_connections(metrics_listen: str) -> int:
    """The broker's own count of connections holding a slot (strata_connections_open)."""
    return int(metric(metrics_listen, "strata_connections_open"))


class Bystander:
    """A well-behaved kafka-python producer and consumer running in threads beside the abuse.

    The producer sends one record at a time and waits for its ack (so every ack's latency is
    measured); the consumer reads the same partition concurrently. `check()` asserts both keep
    making progress; `finish()` stops them and asserts every acked record was read, in order.
    """

    def __init__(self, bootstrap: str, topic: str, **client: object) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self.topic = topic
        client = {"bootstrap_servers": bootstrap, **client}  # e.g. SASL settings
        self.producer = KafkaProducer(**client, acks=1, linger_ms=0, request_timeout_ms=10000,
                                      max_block_ms=10000)
        self.producer.send(topic, value=b"bystander-0").get(timeout=15)  # auto-creates the topic
        self.acked: list[bytes] = [b"bystander-0"]
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.consumed: list[bytes] = []
        self.consumer = KafkaConsumer(**client, enable_auto_commit=False,
                                      auto_offset_reset="earliest", request_timeout_ms=15000)
        self.consumer.assign([TopicPartition(topic, 0)])
        import threading

        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._produce, daemon=True),
                         threading.Thread(target=self._consume, daemon=True)]
        for t in self._threads:
            t.start()

    def _produce(self) -> None:
        i = 1
        while not self._stop.is_set():
            value = f"bystander-{i}".encode()
            t0 = time.monotonic()
            try:
                self.producer.send(self.topic, value=value).get(timeout=15)
            except BaseException as exc:  # noqa: B036 - reported by check()
                self.errors.append(exc)
                return
            self.latencies.append(time.monotonic() - t0)
            self.acked.append(value)
            i += 1
            time.sleep(0.005)

    def _consume(self) -> None:
        while not self._stop.is_set() or len(self.consumed) < len(self.acked):
            try:
                batches = self.consumer.poll(timeout_ms=100)
            except BaseException as exc:  # noqa: B036 - reported by check()
                self.errors.append(exc)
                return
            for records in batches.values():
                self.consumed.extend(r.value for r in records)
            if self._stop.is_set() and not batches:
                return

    def progress(self) -> tuple[int, int]:
        return len(self.acked), len(self.consumed)

    def check(self, since: tuple[int, int], min_new: int = 3, timeout: float = 10.0) -> None:
        """Both clients made at least `min_new` more acks/reads since `since`, and nothing failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.errors:
            acked, consumed = self.progress()
            if acked >= since[0] + min_new and consumed >= since[1] + min_new:
                break
            time.sleep(0.02)
        assert not self.errors, f"the parallel client failed: {self.errors!r}"
        acked, consumed = self.progress()
        assert acked >= since[0] + min_new, f"producer stalled: {acked - since[0]} acks in {timeout}s"
        assert consumed >= since[1] + min_new, f"consumer stalled: {consumed - since[1]} reads in {timeout}s"

    def finish(self, max_latency: float = 5.0) -> None:
        self._stop.set()
        self._threads[0].join(20)
        deadline = time.monotonic() + 20
        while self._threads[1].is_alive() and time.monotonic() < deadline:
            self._threads[1].join(0.1)
        self.producer.close(5)
        self.consumer.close()
        assert not self.errors, f"the parallel client failed: {self.errors!r}"
        assert self.consumed == self.acked, (
            f"consumer read {len(self.consumed)} records, producer had {len(self.acked)} acked (or out of order)")
        assert max(self.latencies) < max_latency, f"a produce took {max(self.latencies):.2f}s to be acked"

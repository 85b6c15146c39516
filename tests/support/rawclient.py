"""The one raw-frame Kafka client of the tests and benchmarks: exact requests on a plain socket.

* `RawConnection`: a blocking connection that sends request objects (kafka.protocol's codecs) and
  decodes their answers; `read_frame_view` reads whole frames into one reused buffer (the bare Fetch
  loop of bench/fetcher.py).
* Request builders (`api_versions`, `metadata`, `produce`, `fetch`, `list_offsets`, `create_topics`,
  `record_batch`), `encode` (request object -> framed bytes) and `raw_frame` (a hand-made header,
  for keys and versions kafka.protocol will not encode, or for malformed ones).
* For hostile input: `connect`, `send_all`, `read_frame`, `outcome` (answered, closed, or a stall),
  `wait_closed`, `api_versions_ok` (the broker's "still alive and serving" check).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

from kafka.protocol.admin import CreateTopicsRequest
from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
from kafka.protocol.producer import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

CLIENT_ID = "hostile"


class RawConnection:
    """A blocking Kafka connection for exact requests: one request, its decoded response (over TLS
    with `ssl_context`, the server's certificate checked against the host of `bootstrap`)."""

    def __init__(self, bootstrap: str, timeout: float = 15.0, client_id: str = "raw-test",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        host, port = bootstrap.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl_context.wrap_socket(sock, server_hostname=host) if ssl_context else sock
        self.client_id = client_id
        self._correlation = 0
        self._buf = bytearray(1 << 20)

    def send(self, request: Any) -> int:
        """Send one request object with the next correlation id, which is returned."""
        self._correlation += 1
        request.with_header(correlation_id=self._correlation, client_id=self.client_id)
        self.sock.sendall(bytes(request.encode(header=True, framed=True)))
        return self._correlation

    def request(self, request: Any) -> Any:
        """Send `request` and return its decoded response (header included)."""
        correlation = self.send(request)
        (size,) = struct.unpack(">i", self.read_exact(4))
        response = request.header.get_response_class().decode(self.read_exact(size), header=True)
        assert response.header.correlation_id == correlation
        return response

    def read_exact(self, n: int) -> bytes:
        """n bytes; ConnectionError when the broker closes first."""
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by broker")
            buf += chunk
        return buf

    def read_frame_view(self) -> memoryview:
        """The next response frame (without its size prefix) in a buffer reused by the next call: a
        fresh multi-MB buffer per response costs a small VM more in page faults than the receive."""
        (size,) = struct.unpack(">i", self._read_into(4))
        return self._read_into(size)

    def _read_into(self, n: int) -> memoryview:
        if n > len(self._buf):
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("closed by broker")
            got += k
        return view

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



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
    """A v2 record batch of n records (keys k0.., values payload + index), no compression."""
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

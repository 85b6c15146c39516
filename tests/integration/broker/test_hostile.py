"""Hostile input over real sockets: the broker answers with an error or closes that one
connection, never hangs it, never dies, and keeps serving a well-behaved client meanwhile.

Every test runs beside a `Bystander` (a kafka-python producer + consumer in threads) and
checks it kept making progress, that the broker process is alive, and that a fresh
connection still gets an ApiVersions answer.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import rawclient as rc
from brokerproc import BrokerProcess, free_port
from bystander import Bystander
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.protocol.consumer import FetchResponse, ListOffsetsResponse
from kafka.protocol.metadata import ApiVersionsResponse, MetadataResponse
from kafka.protocol.producer import ProduceResponse
from metrics import open_connections
from strata_broker.protocol import API_TABLE
from waiting import wait_until

CORRUPT_MESSAGE = 2
UNSUPPORTED_VERSION = 35
MAX_FRAME = 100 * 1024 * 1024  # socket.request.max.bytes default


# ---- fixtures and shared checks ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bystander(broker: BrokerProcess) -> Iterator[Bystander]:
    client = Bystander(broker.bootstrap, f"bystander-{uuid.uuid4().hex[:8]}")
    yield client
    client.finish()


@pytest.fixture(scope="module")
def supported(broker: BrokerProcess) -> dict[int, tuple[int, int]]:
    """The broker's own advertised version ranges: the reference for 'unsupported'."""
    response = rc.api_versions_ok(broker.port)
    ranges = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert {0, 1, 2, 3, 18, 19} <= set(ranges), ranges
    return ranges


def log_since(proc: BrokerProcess, offset: int) -> str:
    with open(proc.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(proc: BrokerProcess) -> int:
    return Path(proc.log_path).stat().st_size


LEAKS = ("Traceback", "Task exception was never retrieved", "Exception in callback")


@pytest.fixture
def watched(broker: BrokerProcess, bystander: Bystander) -> Iterator[None]:
    """Around each test: the parallel client keeps going, the broker stays up and answering, and no
    request made it crash a handler (a traceback in its log) rather than answer or close cleanly."""
    mark = bystander.progress()
    start = log_size(broker)
    yield
    bystander.check(mark)
    assert broker.alive(), broker.log_tail()
    rc.api_versions_ok(broker.port)
    new_log = log_since(broker, start)
    for leak in LEAKS:
        assert leak not in new_log, new_log


def send_and_expect_close(port: int, data: bytes, half_close: bool = False, deadline: float = 5.0) -> None:
    with rc.connect(port) as sock:
        rc.send_all(sock, data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        result = rc.outcome(sock, 1, deadline)
    assert result.closed and not result.frames, f"expected a close without an answer, got {result}"


def exchange(port: int, data: bytes, expect: int = 1, deadline: float = 5.0) -> rc.Outcome:
    with rc.connect(port) as sock:
        rc.send_all(sock, data)
        return rc.outcome(sock, expect, deadline)


def ensure_topic(port: int, topic: str) -> None:
    """Auto-create `topic` (Metadata with allow_auto_topic_creation) and check it exists."""
    result = exchange(port, rc.encode(rc.metadata([topic], version=9)))
    response = MetadataResponse.decode(result.frames[0], version=9, header=True)
    assert [(t.name, t.error_code) for t in response.topics] in ([(topic, 0)], [(topic, 5)]), response.topics
    deadline = time.monotonic() + 5  # 5 = LEADER_NOT_AVAILABLE while it is being created
    while response.topics[0].error_code and time.monotonic() < deadline:
        time.sleep(0.05)
        result = exchange(port, rc.encode(rc.metadata([topic], version=9)))
        response = MetadataResponse.decode(result.frames[0], version=9, header=True)
    assert response.topics[0].error_code == 0


def varint(n: int) -> bytes:
    """Unsigned varint (compact array/string lengths of flexible versions)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def kstr(s: str) -> bytes:
    return struct.pack(">h", len(s)) + s.encode()


# ---- framing: lengths, garbage, short frames ----------------------------------------------------

_rng = random.Random(20260101)
BAD_FRAMES = {
    "garbage": bytes(_rng.randrange(256) for _ in range(4096)),
    "http-get": b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n",
    "tls-client-hello": bytes.fromhex("1603010200010001fc0303") + bytes(64),
    "length-2GiB": struct.pack(">i", 0x7FFFFFFF),
    "length-2GiB-with-data": struct.pack(">i", 0x7FFFFFFF) + rc.encode(rc.api_versions())[4:] + bytes(65536),
    "length-1GiB": struct.pack(">i", 1 << 30) + bytes(1024),
    "length-max-plus-1": struct.pack(">i", MAX_FRAME + 1) + bytes(1024),
    "length-minus-1": struct.pack(">i", -1) + bytes(16),
    "length-minus-4": struct.pack(">i", -4) + bytes(16),
    "length-int-min": struct.pack(">i", -(1 << 31)) + bytes(16),
    "length-zero": struct.pack(">i", 0),
    "length-zero-repeated": struct.pack(">i", 0) * 64,
    **{f"short-frame-{n}": struct.pack(">i", n) + bytes(range(1, n + 1)) for n in range(1, 8)},
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_framing_closes_that_connection(broker: BrokerProcess, watched: None, name: str) -> None:
    # A parallel raw connection, opened before the abuse, is still served afterwards.
    with rc.connect(broker.port) as other:
        send_and_expect_close(broker.port, BAD_FRAMES[name])
        other.sendall(rc.encode(rc.metadata(None), correlation_id=77))
        result = rc.outcome(other, 1)
        assert not result.closed and rc.correlation_id(result.frames[0]) == 77


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 10, -1])
def test_truncated_frame_then_eof_closes_promptly(broker: BrokerProcess, watched: None, cut: int) -> None:
    """The length prefix promises more than arrives, then the client half-closes."""
    frame = rc.encode(rc.metadata([f"trunc-{uuid.uuid4().hex[:6]}"]))
    send_and_expect_close(broker.port, frame[:cut], half_close=True)


def test_stalled_truncated_frames_do_not_block_others(broker: BrokerProcess, watched: None,
                                                      bystander: Bystander) -> None:
    """Many connections stuck mid-frame (slowloris) while a client keeps working."""
    frame = rc.encode(rc.metadata(None))
    stalled = []
    try:
        for i in range(40):
            sock = rc.connect(broker.port)
            # Alternate: half a length prefix, or all of the frame but its last byte.
            sock.sendall(frame[: 2 if i % 2 else len(frame) - 1])
            stalled.append(sock)
        mark = bystander.progress()
        bystander.check(mark, min_new=5)
        rc.api_versions_ok(broker.port)
        for sock in stalled:  # the broker has not answered any of them (it cannot: the frame is incomplete)
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()


def test_stalled_truncated_frame_closed_by_idle_timeout(broker_factory) -> None:  # type: ignore[no-untyped-def]
    """A frame that never completes is dropped after connections.max.idle.ms, not held forever."""
    proc = broker_factory({"connections.max.idle.ms": "1000", "auto.create.topics.enable": "true"})
    frame = rc.encode(rc.metadata(None))
    for partial in (frame[:2], frame[:4], frame[: len(frame) - 1], struct.pack(">i", MAX_FRAME) + bytes(4096)):
        with rc.connect(proc.port) as sock:
            sock.sendall(partial)
            started = time.monotonic()
            with rc.connect(proc.port) as other:  # served while the first one stalls
                other.sendall(rc.encode(rc.api_versions(), correlation_id=5))
                assert rc.correlation_id(rc.outcome(other, 1).frames[0]) == 5
            assert rc.wait_closed(sock, 6.0), f"stalled connection ({len(partial)} bytes sent) was never closed"
            elapsed = time.monotonic() - started
            assert 0.5 < elapsed < 6.0, elapsed
    assert proc.alive()
    rc.api_versions_ok(proc.port)


# ---- request headers: unknown keys, unsupported versions -------------------------------------------


@pytest.mark.parametrize("api_key", [-1, 38, 40, 67, 999, 32767, -32768])
def test_unknown_api_key_closes_connection(broker: BrokerProcess, watched: None,
                                           supported: dict[int, tuple[int, int]], api_key: int) -> None:
    assert api_key not in supported
    send_and_expect_close(broker.port, rc.raw_frame(api_key, 0, 9, b"\x00" * 16))


@pytest.mark.parametrize("version", [5, 6, 99, 32767, -1, -32768])
def test_unsupported_api_versions_version_answers_v0_error_35(broker: BrokerProcess, watched: None,
                                                              supported: dict[int, tuple[int, int]],
                                                              version: int) -> None:
    assert not supported[18][0] <= version <= supported[18][1]
    with rc.connect(broker.port) as sock:
        # A future ApiVersions: flexible header, a body this broker cannot know.
        sock.sendall(rc.raw_frame(18, version, 31337, b"\x0bfuture-lib\x041.0\x00\x07", flexible=True))
        result = rc.outcome(sock, 1)
        assert not result.closed
        response = rc.decode_api_versions(result.frames[0], version=0)
        assert response.header.correlation_id == 31337
        assert response.error_code == UNSUPPORTED_VERSION
        assert {k.api_key: (k.min_version, k.max_version) for k in response.api_keys} == supported
        # The connection stays usable: the client retries with a version from that range.
        sock.sendall(rc.encode(rc.api_versions(supported[18][1]), correlation_id=31338))
        result = rc.outcome(sock, 1)
        retry = rc.decode_api_versions(result.frames[0], version=supported[18][1])
        assert retry.header.correlation_id == 31338 and retry.error_code == 0


def test_unsupported_versions_of_other_apis_close_connection(broker: BrokerProcess, watched: None,
                                                             supported: dict[int, tuple[int, int]]) -> None:
    checked = 0
    for api_key, (low, high) in sorted(supported.items()):
        if api_key == 18:
            continue
        for version in {high + 1, high + 50, -1, 32767} | ({low - 1} if low > 0 else set()):
            send_and_expect_close(broker.port, rc.raw_frame(api_key, version, 3, bytes(32)))
            checked += 1
    assert checked >= 4 * (len(supported) - 1)


# ---- valid header, hostile body --------------------------------------------------------------------


def _base_requests(topic: str) -> list[tuple[str, bytes]]:
    batch = rc.record_batch(base_timestamp=1_767_225_600_000)  # fixed: the fuzz seeds must not vary by run
    return [
        ("api_versions", rc.encode(rc.api_versions(3))),
        ("metadata-v4", rc.encode(rc.metadata([topic], version=4))),
        ("metadata-v12", rc.encode(rc.metadata([topic], version=12))),
        ("produce-v3", rc.encode(rc.produce(topic, batch, version=3))),
        ("produce-v9", rc.encode(rc.produce(topic, batch, version=9))),
        ("fetch-v11", rc.encode(rc.fetch(topic, version=11, max_wait_ms=0))),
        ("fetch-v12", rc.encode(rc.fetch(topic, version=12, max_wait_ms=0))),
        ("list_offsets-v5", rc.encode(rc.list_offsets(topic, version=5))),
        ("list_offsets-v7", rc.encode(rc.list_offsets(topic, version=7))),
        ("create_topics-v4", rc.encode(rc.create_topics(f"{topic}-c4", version=4))),
        ("create_topics-v5", rc.encode(rc.create_topics(f"{topic}-c5", version=5))),
    ]


def _header_len(frame: bytes) -> int:
    """Bytes of size prefix + request header in a frame built by rc.encode."""
    api_key, version = struct.unpack_from(">hh", frame, 4)
    (cid_len,) = struct.unpack_from(">h", frame, 12)
    flexible = API_TABLE[api_key].request.flexible_version_q(version)
    return 14 + max(cid_len, 0) + (1 if flexible else 0)


def _reframe(frame: bytes, body: bytes) -> bytes:
    head = frame[4:_header_len(frame)]
    return struct.pack(">i", len(head) + len(body)) + head + body


def _may_stay_silent(frame: bytes) -> str | None:
    """Why a well-behaved broker may legitimately not answer this frame at once, if it decodes."""
    api_key, version = struct.unpack_from(">hh", frame, 4)
    spec = API_TABLE.get(api_key)
    if spec is None or api_key not in (0, 1):
        return None
    try:
        request = spec.request.decode(frame[4:], version=version, header=True)
    except Exception:
        return None
    if api_key == 0 and request.acks == 0:
        return "acks=0"
    if api_key == 1 and request.max_wait_ms > 2000:
        return "long-poll"
    return None


def test_valid_header_with_garbage_body(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    rng = random.Random(7)
    for name, frame in _base_requests(topic_name):
        body = frame[_header_len(frame):]
        variants = {
            "empty": b"",
            "ff": b"\xff" * 64,
            "random": bytes(rng.randrange(256) for _ in range(200)),
            "truncated": body[: len(body) // 2],
            "one-byte-short": body[:-1],
            "trailing-garbage": body + bytes(rng.randrange(256) for _ in range(50)),
        }
        for variant, new_body in variants.items():
            request = _reframe(frame, new_body)
            silent = _may_stay_silent(request)
            if silent == "long-poll":
                continue  # it decodes as a Fetch that asked to wait minutes: Kafka would wait too
            with rc.connect(broker.port) as sock:
                sock.sendall(request)
                if silent == "acks=0":  # no answer by design; the connection must still work (or be closed)
                    sock.sendall(rc.encode(rc.api_versions(), correlation_id=2))
                    result = rc.outcome(sock, 1)
                    assert [rc.correlation_id(f) for f in result.frames] in ([2], []), (name, variant, result)
                    continue
                # Whatever decodes may be answered (an error, or even a result); otherwise the connection closes.
                result = rc.outcome(sock, 1)
            assert result.closed or len(result.frames) == 1, (name, variant, result)
            for response in result.frames:  # an answer must be to this request
                assert rc.correlation_id(response) == 1, (name, variant)


# Hand-built bodies with hostile array counts (non-flexible: int32 counts; flexible: varint N+1).
def _metadata_v4(count: int, names: list[str]) -> bytes:
    return struct.pack(">i", count) + b"".join(kstr(n) for n in names) + b"\x01"


def _metadata_v9(count_varint: bytes, names: list[str]) -> bytes:
    return count_varint + b"".join(varint(len(n) + 1) + n.encode() + b"\x00" for n in names) + b"\x00\x00\x00\x00"


def _produce_v3(topic_count: int, topic: str, partition_count: int, batch: bytes) -> bytes:
    return (struct.pack(">hhii", -1, 1, 5000, topic_count) + kstr(topic) + struct.pack(">i", partition_count)
            + struct.pack(">ii", 0, len(batch)) + batch)


HUGE_COUNTS = [0x7FFFFFFF, 0x10000000, 1 << 20]
NEGATIVE_COUNTS = [-2, -1000, -(1 << 31)]


@pytest.mark.parametrize("count", HUGE_COUNTS + NEGATIVE_COUNTS)
def test_hostile_array_counts(broker: BrokerProcess, watched: None, topic_name: str, count: int) -> None:
    batch = rc.record_batch()
    frames = {
        "metadata-v4-topics": rc.raw_frame(3, 4, 1, _metadata_v4(count, [topic_name])),
        "metadata-v9-topics": rc.raw_frame(3, 9, 1, _metadata_v9(varint(count & 0xFFFFFFFF), [topic_name]),
                                           flexible=True),
        "produce-v3-topics": rc.raw_frame(0, 3, 1, _produce_v3(count, topic_name, 1, batch)),
        "produce-v3-partitions": rc.raw_frame(0, 3, 1, _produce_v3(1, topic_name, count, batch)),
    }
    for name, frame in frames.items():
        started = time.monotonic()
        result = exchange(broker.port, frame)
        assert time.monotonic() - started < 5
        if count > 0:
            # More elements than bytes: the request cannot be decoded, so the connection closes.
            assert result.closed and not result.frames, (name, result)
        else:
            # A negative count decodes as an empty array (Kafka's own tolerance differs); either answer
            # with the right correlation id and a decodable response, or close.
            assert result.closed or len(result.frames) == 1, (name, result)
            for response in result.frames:
                assert rc.correlation_id(response) == 1
                cls = MetadataResponse if name.startswith("metadata") else ProduceResponse
                version = 9 if "v9" in name else (4 if name.startswith("metadata") else 3)
                decoded = cls.decode(response, version=version, header=True)
                if cls is ProduceResponse:
                    # Nothing may have been written by a request with no (or a negative number of) partitions.
                    assert all(not t.partition_responses or all(p.error_code != 0 for p in t.partition_responses)
                               for t in decoded.responses), decoded


def test_null_arrays_where_the_schema_forbids_them(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    """A count of -1 decodes as null; for a non-nullable array that is a malformed request (Kafka closes)."""
    frames = {
        "produce-v3-topics": rc.raw_frame(0, 3, 1, _produce_v3(-1, topic_name, 1, b"")),
        "produce-v3-partitions": rc.raw_frame(0, 3, 1, _produce_v3(1, topic_name, -1, b"")),
        "metadata-v0-topics": rc.raw_frame(3, 0, 1, struct.pack(">i", -1)),
        "create-topics-v4-topics": rc.raw_frame(19, 4, 1, struct.pack(">iib", -1, 5000, 0)),
        "create-topics-v5-topics": rc.raw_frame(19, 5, 1, b"\x00" + struct.pack(">ib", 5000, 0) + b"\x00",
                                                flexible=True),
        "fetch-v11-partitions": rc.raw_frame(1, 11, 1, struct.pack(">iiiibii", -1, 0, 1, 1 << 20, 0, 0, -1)
                                             + struct.pack(">i", 1) + kstr(topic_name) + struct.pack(">i", -1)
                                             + struct.pack(">i", 0) + kstr("")),
        "list-offsets-v5-partitions": rc.raw_frame(2, 5, 1, struct.pack(">ibi", -1, 0, 1) + kstr(topic_name)
                                                   + struct.pack(">i", -1)),
    }
    for name, frame in frames.items():
        result = exchange(broker.port, frame)
        assert result.closed and not result.frames, (name, result)


def test_metadata_topic_name_starting_with_nul(broker: BrokerProcess, watched: None) -> None:
    result = exchange(broker.port, rc.encode(rc.metadata(["\x00not-a-uuid"], version=9)))
    assert not result.closed, "a bad topic name deserves an error code, not a closed connection"
    response = MetadataResponse.decode(result.frames[0], version=9, header=True)
    assert [t.error_code for t in response.topics] == [17]  # INVALID_TOPIC_EXCEPTION


def test_hostile_compact_counts(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    for count_varint in (varint(0xFFFFFFFF), varint(0x7FFFFFFF), b"\xff\xff\xff\xff\xff\xff\x01", b"\x80" * 5):
        result = exchange(broker.port, rc.raw_frame(3, 9, 1, _metadata_v9(count_varint, [topic_name]),
                                                    flexible=True))
        assert result.closed and not result.frames, result


def test_hostile_string_lengths(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    """Client id and topic name lengths that lie (too long, negative other than -1)."""
    frames = [
        struct.pack(">i", 10) + struct.pack(">hhih", 3, 4, 1, 0x7FFF),
        struct.pack(">i", 12) + struct.pack(">hhih", 3, 4, 1, -5) + b"\x00\x00",
        rc.raw_frame(3, 4, 1, struct.pack(">ih", 1, 0x7FFF) + b"abc"),
        rc.raw_frame(3, 4, 1, struct.pack(">ih", 1, -7) + b"\x01"),
        rc.raw_frame(3, 9, 1, b"\x02" + varint(0xFFFFFFF0) + b"abc", flexible=True),
    ]
    for frame in frames:
        result = exchange(broker.port, frame)
        assert result.closed or (len(result.frames) == 1 and rc.correlation_id(result.frames[0]) == 1), result


# ---- corrupt record batches ------------------------------------------------------------------------


def _corruptions() -> dict[str, bytes]:
    good = rc.record_batch(n=5)
    out = {}
    b = bytearray(good)
    b[17] ^= 0x01  # a bit of the CRC itself (offset 17..20)
    out["crc-field"] = bytes(b)
    b = bytearray(good)
    b[-1] ^= 0xFF  # a byte of the last record's payload
    out["payload-byte"] = bytes(b)
    b = bytearray(good)
    b[30] ^= 0x40  # the batch's max timestamp (covered by the CRC)
    out["header-byte"] = bytes(b)
    out["two-batches-second-bad"] = good + out["payload-byte"]
    return out


@pytest.mark.parametrize("version", [3, 8, 9, 11])
def test_corrupt_batch_crc_is_corrupt_message(broker: BrokerProcess, watched: None, topic_name: str,
                                              version: int) -> None:
    ensure_topic(broker.port, topic_name)
    with rc.connect(broker.port) as sock:
        corr = 100
        for name, records in _corruptions().items():
            corr += 1
            sock.sendall(rc.encode(rc.produce(topic_name, records, version=version), correlation_id=corr))
            result = rc.outcome(sock, 1)
            assert not result.closed, f"{name}: a corrupt batch must not cost the connection"
            response = ProduceResponse.decode(result.frames[0], version=version, header=True)
            assert response.header.correlation_id == corr
            [topic] = response.responses
            [part] = topic.partition_responses
            assert part.error_code == CORRUPT_MESSAGE, (name, part)
            assert part.base_offset == -1
        # Same connection, a good batch: accepted at offset 0 -- nothing corrupt was written before it.
        sock.sendall(rc.encode(rc.produce(topic_name, rc.record_batch(n=4), version=version), correlation_id=7))
        response = ProduceResponse.decode(rc.outcome(sock, 1).frames[0], version=version, header=True)
        [part] = response.responses[0].partition_responses
        assert (part.error_code, part.base_offset) == (0, 0)
        sock.sendall(rc.encode(rc.list_offsets(topic_name, version=5), correlation_id=8))
        offsets = ListOffsetsResponse.decode(rc.outcome(sock, 1).frames[0], version=5, header=True)
        assert offsets.topics[0].partitions[0].offset == 4


def test_malformed_batches_are_refused_not_fatal(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    good = rc.record_batch(n=2)
    malformed = {
        "length-huge": good[:8] + struct.pack(">i", 0x7FFFFFFF) + good[12:],
        "length-negative": good[:8] + struct.pack(">i", -5) + good[12:],
        "length-zero": good[:8] + struct.pack(">i", 0) + good[12:],
        "truncated-header": good[:30],
        "truncated-records": good[:-3],
        "trailing-bytes": good + b"\x00\x01\x02",
        "magic-0": good[:16] + b"\x00" + good[17:],
        "magic-1": good[:16] + b"\x01" + good[17:],
        "magic-99": good[:16] + b"\x63" + good[17:],
        "empty": b"",
        "garbage": bytes(random.Random(3).randrange(256) for _ in range(300)),
    }
    ensure_topic(broker.port, topic_name)
    with rc.connect(broker.port) as sock:
        for i, (name, records) in enumerate(malformed.items()):
            sock.sendall(rc.encode(rc.produce(topic_name, records, version=9), correlation_id=i))
            result = rc.outcome(sock, 1)
            assert not result.closed, name
            response = ProduceResponse.decode(result.frames[0], version=9, header=True)
            [part] = response.responses[0].partition_responses
            assert part.error_code != 0 and part.base_offset == -1, (name, part)
        sock.sendall(rc.encode(rc.fetch(topic_name, version=12, max_wait_ms=0), correlation_id=99))
        fetched = FetchResponse.decode(rc.outcome(sock, 1).frames[0], version=12, header=True)
        [partition] = fetched.responses[0].partitions
        assert partition.high_watermark == 0, "a refused batch was written to the log"


def test_pipelined_requests_before_a_bad_frame_are_answered_in_order(broker: BrokerProcess, watched: None,
                                                                      topic_name: str) -> None:
    good = [rc.encode(rc.api_versions(3), correlation_id=1), rc.encode(rc.metadata([topic_name]), correlation_id=2),
            rc.encode(rc.produce(topic_name, rc.record_batch()), correlation_id=3),
            rc.encode(rc.list_offsets(topic_name), correlation_id=4)]
    result = exchange(broker.port, b"".join(good) + rc.raw_frame(3, 9, 5, b"\xff" * 20, flexible=True), expect=5)
    assert [rc.correlation_id(f) for f in result.frames] == [1, 2, 3, 4]
    assert result.closed


def test_client_resets_while_responses_are_in_flight(broker: BrokerProcess, watched: None, topic_name: str) -> None:
    """A client pipelines large fetches and resets the connection (RST) instead of reading the answers."""
    ensure_topic(broker.port, topic_name)
    with rc.connect(broker.port) as sock:
        for i in range(8):
            sock.sendall(rc.encode(rc.produce(topic_name, rc.record_batch(n=16, payload=bytes(16384))),
                                   correlation_id=i))
        assert len(rc.outcome(sock, 8).frames) == 8
    fetches = b"".join(rc.encode(rc.fetch(topic_name, max_wait_ms=0), correlation_id=i) for i in range(40))
    for _ in range(10):
        sock = rc.connect(broker.port)
        sock.sendall(fetches)
        time.sleep(0.05)  # let the broker start writing into a receive window nobody drains
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    time.sleep(0.5)  # give the broker the time to notice; the `watched` check then reads its log


# ---- property-based: random and mutated frames ----------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """Its own broker: fuzzing auto-creates topics with mutated names and must not litter the shared one."""
    proc = BrokerProcess(tmp_path_factory.mktemp("fuzz") / "broker",
                         settings={"auto.create.topics.enable": "true", "num.partitions": "1"}).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def fuzz_seeds(fuzz_broker: BrokerProcess) -> list[bytes]:
    topic = "fuzz-topic"
    frames = [frame for _, frame in _base_requests(topic)]
    # The topic exists and has data, so a (mutated) Fetch at offset 0 answers at once.
    result = exchange(fuzz_broker.port, rc.encode(rc.produce(topic, rc.record_batch(n=10))))
    assert len(result.frames) == 1
    return frames


INTERESTING_INT32 = [0, 1, -1, -2, 0x7FFFFFFF, -(1 << 31), 0x7FFF, 0xFFFF, 1 << 20]


@st.composite
def mutated_frame(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    frame = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "int32", "int16", "truncate", "length"]))
        at = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and frame:
            frame[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del frame[at:at + draw(st.integers(1, 16))]
        elif kind == "int32" and len(frame) >= at + 4:
            frame[at:at + 4] = struct.pack(">I", draw(st.sampled_from(INTERESTING_INT32)) & 0xFFFFFFFF)
        elif kind == "int16" and len(frame) >= at + 2:
            frame[at:at + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0xFFFE, 0x8000])))
        elif kind == "truncate":
            del frame[at:]
        elif kind == "length":
            # Keep the bytes, lie about (or re-fix) the size prefix.
            size = draw(st.one_of(st.just(len(frame) - 4), st.integers(-(1 << 31), (1 << 31) - 1),
                                  st.integers(len(frame) - 8, len(frame) + 8)))
            frame[0:4] = struct.pack(">i", size)
    return bytes(frame)


@st.composite
def random_frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "framed", "header"]))
    if kind == "bytes":
        return draw(st.binary(min_size=0, max_size=200))
    if kind == "framed":
        body = draw(st.binary(min_size=0, max_size=200))
        return struct.pack(">i", len(body)) + body
    api_key = draw(st.sampled_from(sorted(API_TABLE) + [draw(st.integers(-(1 << 15), (1 << 15) - 1))]))
    version = draw(st.integers(-1, 20))
    body = draw(st.binary(min_size=0, max_size=200))
    return rc.raw_frame(api_key, version, draw(st.integers(0, 1 << 20)), body, flexible=draw(st.booleans()))


def _broker_framing(stream: bytes) -> list[tuple[int, int, int]]:
    """(api_key, api_version, correlation_id) of each frame, cut the way the broker cuts the stream."""
    out = []
    pos = 0
    while pos + 4 <= len(stream):
        (size,) = struct.unpack_from(">i", stream, pos)
        if size < 8 or size > MAX_FRAME or pos + 4 + size > len(stream):
            break
        out.append(struct.unpack_from(">hhi", stream, pos + 4))
        pos += 4 + size
    return out


_RESPONSES = {0: ProduceResponse, 1: FetchResponse, 2: ListOffsetsResponse, 3: MetadataResponse,
              18: ApiVersionsResponse}


def check_one_connection(port: int, frames: list[bytes]) -> None:
    stream = b"".join(frames)
    with rc.connect(port) as sock:
        rc.send_all(sock, stream)
        try:
            sock.shutdown(socket.SHUT_WR)  # no more bytes: the broker must finish with us and close
        except OSError:
            pass
        # Long polls are flushed for up to 10 s after the peer's EOF; allow that, not more.
        result = rc.outcome(sock, 1 << 30, deadline_s=15.0)
    assert result.closed
    seen = _broker_framing(stream)
    # Answers come in request order, each to a request the broker really framed, and each decodes.
    remaining = iter(seen)
    for response in result.frames:
        corr = rc.correlation_id(response)
        request = next((entry for entry in remaining if entry[2] == corr), None)
        assert request is not None, f"response with correlation id {corr} matches no request in order: {seen}"
        api_key, version, _ = request
        cls = _RESPONSES.get(api_key)
        if cls is None:
            continue
        if api_key == 18:
            low, high = API_TABLE[18].min_version, API_TABLE[18].max_version
            decoded = rc.decode_api_versions(response, version if low <= version <= high else 0)
            assert decoded.error_code in (0, UNSUPPORTED_VERSION)
        else:
            cls.decode(response, version=version, header=True)


def _fuzz(port: int, seeds: list[bytes], max_examples: int) -> None:
    frames = st.lists(st.one_of(mutated_frame(seeds), random_frame(), st.sampled_from(seeds)),
                      min_size=1, max_size=6)

    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frames)
    def run(batch: list[bytes]) -> None:
        check_one_connection(port, batch)
        rc.api_versions_ok(port)

    run()


def _fuzz_with_bystander(proc: BrokerProcess, seeds: list[bytes], max_examples: int) -> None:
    start = log_size(proc)
    client = Bystander(proc.bootstrap, f"bystander-{uuid.uuid4().hex[:8]}")
    try:
        mark = client.progress()
        _fuzz(proc.port, seeds, max_examples)
        client.check(mark)
    finally:
        client.finish()
    assert proc.alive(), proc.log_tail()
    rc.api_versions_ok(proc.port)
    log = log_since(proc, start)
    for leak in LEAKS:
        assert leak not in log, f"broker log shows {leak!r}:\n{log[log.index(leak) - 300:][:3000]}"


# The bystander's kafka-python threads use the `random` module while hypothesis draws; that is not
# the strategies' randomness (which stays derandomized), so its warning is noise here.
_bystander_random = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@_bystander_random
def test_fuzz_random_and_mutated_frames(fuzz_broker: BrokerProcess, fuzz_seeds: list[bytes]) -> None:
    _fuzz_with_bystander(fuzz_broker, fuzz_seeds, max_examples=150)


@pytest.mark.slow
@_bystander_random
def test_fuzz_random_and_mutated_frames_long(fuzz_broker: BrokerProcess, fuzz_seeds: list[bytes]) -> None:
    _fuzz_with_bystander(fuzz_broker, fuzz_seeds, max_examples=5000)


# ---- a SASL listener: fuzzing before and after authentication --------------------------------------

FUZZ_USERS = {"fuzzer": "fuzzer-pw", "bystander": "bystander-pw"}


@pytest.fixture(scope="module")
def sasl_fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    import secutil

    base = tmp_path_factory.mktemp("sasl-fuzz")
    secutil.write_credentials(base / "users.json", FUZZ_USERS)
    proc = BrokerProcess(base / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "auto.create.topics.enable": "true", "num.partitions": "1", "sasl.credentials.file": str(base / "users.json"),
        "authorizer.enable": "true", "super.users": "User:fuzzer;User:bystander",
        "metrics.listen": f"127.0.0.1:{free_port()}"}).start()
    yield proc
    proc.kill()


def sasl_fuzz_run(proc: BrokerProcess, frames: int, seed: int) -> dict[str, int]:
    """Fuzz pre-auth and post-auth beside a SASL bystander; check the broker's fds and RSS stay bounded."""
    import fuzz_auth

    port = proc.listeners["SASL_PLAINTEXT"]
    start = log_size(proc)
    client = Bystander(proc.address("SASL_PLAINTEXT"), f"bystander-{uuid.uuid4().hex[:8]}",
                          security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                          sasl_plain_username="bystander", sasl_plain_password=FUZZ_USERS["bystander"])
    try:
        fds0, rss0 = fuzz_auth.proc_fds(proc.pid), fuzz_auth.proc_rss_kb(proc.pid)
        mark = client.progress()
        pre = fuzz_auth.fuzz(port, frames // 2, seed, login=None)
        post = fuzz_auth.fuzz(port, frames - frames // 2, seed + 1, login=("fuzzer", FUZZ_USERS["fuzzer"]))
        client.check(mark)
        assert not pre.problems and not post.problems, (pre.problems + post.problems)[:5]
        assert post.logins == post.connections, "a legitimate login failed during the fuzzing"
        assert pre.hang_ups and post.hang_ups
        time.sleep(0.5)
        fds, rss = fuzz_auth.proc_fds(proc.pid), fuzz_auth.proc_rss_kb(proc.pid)
        assert fds <= fds0 + 10, f"sockets grew from {fds0} to {fds}"
        assert rss <= rss0 + 150_000, f"RSS grew from {rss0} kB to {rss} kB"
    finally:
        client.finish()
    assert proc.alive(), proc.log_tail()
    # Every connection's slot is released (the broker's own count), the fuzzer's hang-ups included.
    wait_until(lambda: open_connections(proc.settings["metrics.listen"]) == 0, timeout=30,
               what="every connection slot released")
    log = log_since(proc, start)
    for leak in LEAKS:
        assert leak not in log, f"broker log shows {leak!r}:\n{log[log.index(leak) - 300:][:3000]}"
    return {"frames": pre.frames + post.frames, "connections": pre.connections + post.connections}


@_bystander_random
def test_fuzz_sasl_listener_before_and_after_auth(sasl_fuzz_broker: BrokerProcess) -> None:
    done = sasl_fuzz_run(sasl_fuzz_broker, frames=3000, seed=7)
    assert done["frames"] >= 3000


@pytest.mark.slow
@_bystander_random
@pytest.mark.timeout(3600)
def test_fuzz_sasl_listener_long(sasl_fuzz_broker: BrokerProcess) -> None:
    done = sasl_fuzz_run(sasl_fuzz_broker, frames=100_000, seed=20260101)
    assert done["frames"] >= 100_000

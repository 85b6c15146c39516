"""`strata replay --to-topic` by whole record batches: fetched raw, produced verbatim.

The per-record way (a librdkafka consumer decodes every record, an idempotent librdkafka producer
re-encodes it) costs the client several CPU-seconds per 100 MB, and on a small machine the broker
needs those cores to serve the cold reads and take in the copy. This module copies record batches
(magic v2) as they are: a bare Fetch loop (kafka-python's protocol codecs over a plain socket)
hands each batch to a Produce to the same partition number of the target, changed only in its
61-byte header:

* producer id and epoch: this replay's own, from InitProducerId; base sequence: the count of
  records this producer sent to that partition before, so the broker's idempotence check holds
  the batches in order (the broker takes a batch at sequence n only after the one before it);
* attributes: the transactional bit cleared (a copy is not part of the source's transactions);
* base offset 0 and partition leader epoch -1 (the broker assigns both);
* CRC-32C recomputed (the `crc32c` C library the broker uses) over attributes..end.

Keys, values, headers, timestamps (CreateTime), offset deltas and the compressed bytes are not
touched: a consumer of the copy reads record for record what a consumer of the source reads.
A batch is rebuilt record by record (kafka-python's DefaultRecordBatchBuilder) only where it
cannot be sent as it is: the first or last batch of a range that starts or ends inside it, a
compacted batch (offset gaps, which a Produce may not carry), and a LogAppendTime batch (its
records' timestamps are the batch's append time; rebuilt as CreateTime records with that time).
When the target's `compression.type` (or `--compression`) names a codec other than the batch's,
the records part is decompressed and compressed again, without decoding records. Control batches
(transaction markers) and the batches of aborted transactions are left out (the Fetch asks for
read_committed).

One batch per partition per Produce request (several partitions in one request; as Kafka's own
clients do, and Strata's broker checks the sequences of several batches of one producer in one
request all against the state before the request, refusing the second), up to five requests in
flight per target broker, acks=all (`--acks 1`: answered once written, not once fsynced). Fetches
ask for 2 MB per partition, read_committed, one in flight per source broker, on their own thread
and connection. Any Produce or Fetch error stops the copy with a resumable state (no retry
in-process: a retry of the same sequence would be a broker-side dedupe the state file makes
unnecessary).

Before a worker starts, the parent plans the range, reads the target's partition count,
`compression.type` and end offsets and gets one producer id per worker with bare requests too
(replay.plan_raw and the helpers here), so a batch copy starts no librdkafka client at all.

Resume without duplicates (the state file of `strata replay`, see replay.py):
the target offset the next batch will land at (`target_next`) is recorded per partition, with the
source offset it comes from (`next`), before the first Produce (the target's end then) and after
every acknowledged Produce (the acknowledged base offset plus the batch's records). A re-run reads
the target partition from its saved `target_next` to its end: every batch there must carry one of
the producer ids this replay was given (recorded in the state before they were used), else it
stops with an error (another producer wrote to the target after the checkpoint: no exact resume is
possible). Those are the batches a killed run sent after its last checkpoint; the copy then walks
the source from `next` exactly as the killed run did (same batches, same trimming) and skips as
many records as it found, then sends the rest with a new producer id. The mapping is exact
because the broker assigns a batch of k records exactly k offsets, a batch of one producer lands
in the order sent, and the source walk is deterministic from a given offset.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import crc32c

_HEADER = struct.Struct(">qiibIhiqqqhii")  # the 61-byte v2 batch header (see strata_broker.log.batch)
HEADER_SIZE = 61
_LOG_OVERHEAD = 12
_PREFIX = struct.Struct(">qi")
_MIDDLE = struct.Struct(">hiqqqhii")  # attributes .. record count: bytes 21..61, the start of the CRC's range
_ATTR_CODEC = 0x07
_ATTR_LOG_APPEND_TIME = 0x08
_ATTR_TRANSACTIONAL = 0x10
_ATTR_CONTROL = 0x20
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_FETCH_VERSION = 11
_PRODUCE_VERSION = 8
_METADATA_VERSION = 8
_INIT_PID_VERSION = 1
_IN_FLIGHT = 5  # Produce requests per connection (Kafka's max.in.flight for an idempotent producer)
_PRODUCE_BYTES = 8 << 20  # one request's records at most (still one batch per partition)
_FETCH_MAX_BYTES = 32 << 20
_PARTITION_FETCH_BYTES = 2 << 20  # smaller answers start the produce side sooner (a cold read waits for S3)


def preload() -> None:
    """Import the protocol codecs a batch copy uses (kafka-python builds them at import: about
    0.2 s), so that worker processes forked afterwards have them already."""
    import kafka.codec  # noqa: F401
    import kafka.errors  # noqa: F401
    import kafka.protocol.consumer  # noqa: F401
    import kafka.protocol.metadata  # noqa: F401
    import kafka.protocol.producer  # noqa: F401
    import kafka.record.default_records  # noqa: F401


class CopyError(Exception):
    """A broker answered with an error, or the target is not what a resume expects."""


def _error_name(code: int) -> str:
    from kafka.errors import for_code

    try:
        return f"{for_code(code).__name__} ({code})"
    except Exception:  # noqa: BLE001 - an unknown code is still reported
        return f"error code {code}"


class Conn:
    """One blocking connection to a broker: requests encoded with kafka.protocol, pipelined (each
    answer is read in the order the requests were sent). Only non-flexible request versions are
    used, whose response header is the correlation id alone."""

    def __init__(self, host: str, port: int, timeout: float, client_id: str = "strata-replay") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_id = client_id
        self.correlation = 0
        self.pending: deque[tuple[int, Any, int]] = deque()  # (correlation, response class, version)
        self.buf = bytearray(1 << 20)

    def send(self, request: Any) -> None:
        self.correlation += 1
        request.with_header(correlation_id=self.correlation, client_id=self.client_id)
        self.sock.sendall(request.encode(header=True, framed=True))
        self.pending.append((self.correlation, request.header.get_response_class(), request.version))

    def _read_exact(self, n: int) -> memoryview:
        if n > len(self.buf):
            self.buf = bytearray(n)
        view = memoryview(self.buf)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError("the broker closed the connection")
            got += k
        return view

    def receive(self) -> Any:
        """The answer to the oldest request in flight."""
        correlation, cls, version = self.pending.popleft()
        (size,) = struct.unpack(">i", self._read_exact(4))
        frame = self._read_exact(size)
        (answered,) = struct.unpack_from(">i", frame)
        if answered != correlation:
            raise CopyError(f"answer {answered} to request {correlation}")
        return cls.decode(bytes(frame[4:]), version=version)

    def call(self, request: Any) -> Any:
        self.send(request)
        return self.receive()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _split(hostport: str) -> tuple[str, int]:
    host, port = hostport.rsplit(":", 1)
    return host.strip("[]"), int(port)


@dataclass
class Cluster:
    """Broker addresses and the leader of each partition of the topics asked for."""

    brokers: dict[int, tuple[str, int]]
    leaders: dict[str, dict[int, int]]


class UnknownTopic(CopyError):
    """Metadata answered UNKNOWN_TOPIC_OR_PARTITION for a topic."""


def metadata(bootstrap: str, topics: list[str], timeout: float, create: bool = False) -> Cluster:
    """Brokers and leaders of `topics` (with `create`, a broker that auto-creates topics creates them)."""
    from kafka.protocol.metadata import MetadataRequest

    T = MetadataRequest.MetadataRequestTopic
    last: Exception | None = None
    for address in bootstrap.split(","):
        try:
            conn = Conn(*_split(address), timeout)
        except OSError as exc:
            last = exc
            continue
        try:
            resp = conn.call(MetadataRequest(version=_METADATA_VERSION, topics=[T(name=t) for t in topics],
                                             allow_auto_topic_creation=create,
                                             include_cluster_authorized_operations=False,
                                             include_topic_authorized_operations=False))
        finally:
            conn.close()
        brokers = {b.node_id: (b.host, b.port) for b in resp.brokers}
        leaders: dict[str, dict[int, int]] = {}
        for t in resp.topics:
            if t.error_code == 3:
                raise UnknownTopic(f"topic {t.name!r} does not exist")
            if t.error_code:
                raise CopyError(f"topic {t.name!r}: {_error_name(t.error_code)}")
            leaders[t.name] = {p.partition_index: p.leader_id for p in t.partitions}
        return Cluster(brokers, leaders)
    raise CopyError(f"cannot reach the broker: {last}")


def list_offsets(cluster: Cluster, topic: str, partitions: list[int], spec: int, timeout: float) -> dict[int, int]:
    """ListOffsets of every partition, one request per leader: spec -1 the end (high watermark),
    -2 the log start, else a timestamp (the first offset at or after it; -1 when there is none)."""
    from kafka.protocol.consumer import ListOffsetsRequest

    LT = ListOffsetsRequest.ListOffsetsTopic
    by_leader: dict[int, list[int]] = {}
    for p in partitions:
        by_leader.setdefault(cluster.leaders[topic][p], []).append(p)
    out: dict[int, int] = {}
    for leader, parts in by_leader.items():
        if leader not in cluster.brokers:
            raise CopyError(f"{topic}: partition {parts[0]} has no leader")
        conn = Conn(*cluster.brokers[leader], timeout)
        try:
            resp = conn.call(ListOffsetsRequest(version=5, replica_id=-1, isolation_level=0, topics=[
                LT(name=topic, partitions=[LT.ListOffsetsPartition(partition_index=p, current_leader_epoch=-1,
                                                                    timestamp=spec) for p in parts])]))
        finally:
            conn.close()
        for t in resp.topics:
            for part in t.partitions:
                if part.error_code:
                    raise CopyError(f"offsets of {topic}/{part.partition_index}: {_error_name(part.error_code)}")
                out[part.partition_index] = part.offset
    return out


def topic_config(bootstrap: str, topic: str, name: str, timeout: float) -> str | None:
    """One config value of a topic (DescribeConfigs), None when the broker gives none."""
    from kafka.protocol.admin import DescribeConfigsRequest

    conn = Conn(*_split(bootstrap.split(",")[0]), timeout)
    try:
        resp = conn.call(DescribeConfigsRequest(version=1, resources=[DescribeConfigsRequest.DescribeConfigsResource(
            resource_type=2, resource_name=topic, configuration_keys=[name])], include_synonyms=False))
    except Exception:  # noqa: BLE001 - a broker without DescribeConfigs: no value
        return None
    finally:
        conn.close()
    for result in resp.results:
        if result.error_code:
            return None
        for entry in result.configs:
            if entry.name == name:
                return entry.value  # type: ignore[no-any-return]
    return None


def init_producer_id(bootstrap: str, timeout: float) -> tuple[int, int]:
    """A new idempotent producer id and epoch (InitProducerId without a transactional id)."""
    from kafka.protocol.producer import InitProducerIdRequest

    conn = Conn(*_split(bootstrap.split(",")[0]), timeout)
    try:
        deadline = time.monotonic() + timeout
        while True:
            resp = conn.call(InitProducerIdRequest(version=_INIT_PID_VERSION, transactional_id=None,
                                                   transaction_timeout_ms=-1))
            if resp.error_code == 0:
                return resp.producer_id, resp.producer_epoch
            if resp.error_code != 15 or time.monotonic() > deadline:  # 15: COORDINATOR_NOT_AVAILABLE
                raise CopyError(f"InitProducerId: {_error_name(resp.error_code)}")
            time.sleep(0.2)
    finally:
        conn.close()


# ---- batches ------------------------------------------------------------------------------------

@dataclass
class Out:
    """One batch to send: its new header and body pieces, its record count, the source offset after
    it, and the (producer id, epoch, sequence) of the partition's next batch after it."""

    partition: int
    pieces: list[Any]
    records: int
    source_next: int
    nbytes: int
    producer: tuple[int, int, int] = (-1, -1, -1)


@dataclass
class Batcher:
    """Turns the source batches of one partition into batches for the target (see the module
    docstring): verbatim with a new header where possible, recompressed or rebuilt where not."""

    partition: int
    start: int
    end: int
    producer_id: int
    producer_epoch: int
    codec: int | None  # the target's codec, None: keep each batch's
    skip: int = 0  # records already in the target (a killed run's): walk past them
    sequence: int = 0
    aborted: list[tuple[int, int]] = field(default_factory=list)  # (first offset, producer id), sorted
    aborting: set[int] = field(default_factory=set)

    def position_after(self, source_next: int) -> None:
        self.start = max(self.start, source_next)

    def add_aborted(self, txns: list[Any] | None) -> None:
        for txn in txns or ():
            item = (txn.first_offset, txn.producer_id)
            if item not in self.aborted:
                self.aborted.append(item)
        self.aborted.sort()

    def take(self, records: bytes) -> tuple[list[Out], int, Out | None]:
        """The batches to send out of one fetched record set: (batches, next source offset to
        fetch, the records walked past as an Out of -count records or None). Stops before a
        partial batch at the end (a size-capped answer)."""
        view = memoryview(records)
        size = len(view)
        pos = 0
        out: list[Out] = []
        skipped = 0
        walked: Out | None = None
        position = self.start
        while pos + HEADER_SIZE <= size and position < self.end:
            base, length = _PREFIX.unpack_from(view, pos)
            total = length + _LOG_OVERHEAD
            if pos + total > size:
                break
            (_, _, _, magic, _, attrs, lod, _, _, pid, _, _, count) = _HEADER.unpack_from(view, pos)
            batch = view[pos:pos + total]
            pos += total
            nxt = base + lod + 1
            if nxt <= position:
                continue  # before the range (a fetch answers from the batch holding the offset)
            if magic != 2:
                raise CopyError(f"partition {self.partition}: a magic v{magic} batch at offset {base}; "
                                "copy it with --reencode")
            while self.aborted and self.aborted[0][0] <= base:
                self.aborting.add(self.aborted.pop(0)[1])
            if attrs & _ATTR_CONTROL:
                if pid in self.aborting and _control_type(batch) == 0:
                    self.aborting.discard(pid)  # the abort marker ends that transaction
                position = nxt
                continue
            if attrs & _ATTR_TRANSACTIONAL and pid in self.aborting:
                position = nxt
                continue
            new = self._convert(batch, base, lod, count, attrs, position)
            position = min(nxt, self.end)
            if new is None:
                continue
            pieces, n = new
            if self.skip > 0:
                self.skip -= n
                if self.skip < 0:
                    raise CopyError(f"partition {self.partition}: the target's records after the checkpoint do "
                                    "not end on a batch of this copy; cannot resume exactly (--restart)")
                skipped += n
                walked = Out(self.partition, [], -skipped, position, 0)
                continue
            self._stamp(pieces, n)
            out.append(Out(self.partition, pieces, n, position, sum(len(p) for p in pieces),
                           (self.producer_id, self.producer_epoch, self.sequence)))
        self.start = position
        return out, position, walked

    def _convert(self, batch: memoryview, base: int, lod: int, count: int, attrs: int,
                 position: int) -> tuple[list[Any], int] | None:
        """(header + body pieces with pid/epoch/sequence/CRC still to stamp, record count)."""
        codec = attrs & _ATTR_CODEC
        whole = base >= position and base + lod < self.end
        if whole and count == lod + 1 and not attrs & _ATTR_LOG_APPEND_TIME:
            target = codec if self.codec is None else self.codec
            body: Any = batch[HEADER_SIZE:]
            if target != codec:
                body = _recompress(bytes(body), codec, target)
            head = bytearray(batch[:HEADER_SIZE])
            struct.pack_into(">h", head, 21, (attrs & ~(_ATTR_CODEC | _ATTR_TRANSACTIONAL)) | target)
            struct.pack_into(">i", head, 8, HEADER_SIZE - _LOG_OVERHEAD + len(body))
            return [head, body], count
        return _rebuild(batch, position, self.end, codec if self.codec is None else self.codec)

    def _stamp(self, pieces: list[Any], n: int) -> None:
        head = pieces[0]
        struct.pack_into(">q", head, 0, 0)  # base offset: the broker's to assign
        struct.pack_into(">i", head, 12, -1)  # partition leader epoch: the broker's
        struct.pack_into(">qhi", head, 43, self.producer_id, self.producer_epoch, self.sequence)
        crc = crc32c.crc32c(head[21:HEADER_SIZE])
        for piece in pieces[1:]:
            crc = crc32c.crc32c(piece, crc)
        struct.pack_into(">I", head, 17, crc)
        self.sequence = (self.sequence + n) % (1 << 31)


def _control_type(batch: memoryview) -> int:
    """The type of a control batch's marker (0 abort, 1 commit; -1 unknown)."""
    from kafka.record.default_records import DefaultRecordBatch

    for record in DefaultRecordBatch(bytes(batch)):
        key = record.key or b""
        if len(key) >= 4:
            return int(struct.unpack(">hh", key[:4])[1])
    return -1


def _codecs() -> tuple[dict[int, Callable[[bytes], bytes]], dict[int, Callable[[bytes], bytes]]]:
    from kafka import codec as kc

    decode = {1: kc.gzip_decode, 2: kc.snappy_decode, 3: kc.lz4_decode, 4: kc.zstd_decode}
    encode = {1: kc.gzip_encode, 2: kc.snappy_encode, 3: kc.lz4_encode, 4: kc.zstd_encode}
    return decode, encode


def _recompress(body: bytes, codec: int, target: int) -> bytes:
    decode, encode = _codecs()
    raw = decode[codec](body) if codec else body
    return encode[target](raw) if target else bytes(raw)


def _rebuild(batch: memoryview, start: int, end: int, codec: int) -> tuple[list[Any], int] | None:
    """The records of `batch` in [start, end) as a new batch (offset deltas 0..n-1), or None if none."""
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 31)
    n = 0
    for record in DefaultRecordBatch(bytes(batch)):
        if start <= record.offset < end:
            builder.append(n, timestamp=record.timestamp, key=record.key, value=record.value,
                           headers=list(record.headers))
            n += 1
    if n == 0:
        return None
    built = builder.build()
    return [bytearray(built[:HEADER_SIZE]), bytes(built[HEADER_SIZE:])], n


# ---- the copy loop ------------------------------------------------------------------------------

@dataclass
class Progress:
    """What has been acknowledged since the last report."""

    records: int = 0
    nbytes: int = 0
    source_next: dict[int, int] = field(default_factory=dict)
    target_next: dict[int, int] = field(default_factory=dict)
    # partition -> (producer id, epoch, sequence) of its next batch: what a re-run continues
    producers: dict[int, tuple[int, int, int]] = field(default_factory=dict)


def _fetcher(conn: Conn, topic: str, batchers: dict[int, Batcher], ends: dict[int, int], out: queue.Queue,
             stop: threading.Event, idle_timeout: float) -> None:
    """Fetch every partition of `batchers` (one leader) until each reaches its end; put lists of
    Out (or an exception, then None) on `out`."""
    from kafka.protocol.consumer import FetchRequest, FetchResponse

    P = FetchRequest.FetchTopic.FetchPartition
    positions = {p: b.start for p, b in batchers.items() if b.start < ends[p]}
    last_data = time.monotonic()
    try:
        while positions and not stop.is_set():
            request = FetchRequest(
                version=_FETCH_VERSION, replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=_FETCH_MAX_BYTES,
                isolation_level=1, session_id=0, session_epoch=-1,
                topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                    P(partition=p, current_leader_epoch=-1, fetch_offset=o, log_start_offset=-1,
                      partition_max_bytes=_PARTITION_FETCH_BYTES) for p, o in sorted(positions.items())])],
                forgotten_topics_data=[], rack_id="")
            conn.correlation += 1
            request.with_header(correlation_id=conn.correlation, client_id=conn.client_id)
            conn.sock.sendall(request.encode(header=True, framed=True))
            (size,) = struct.unpack(">i", conn._read_exact(4))
            frame = conn._read_exact(size)
            # Not decode(header=True): that copies the whole frame to read four bytes.
            response = FetchResponse.decode(frame[4:], version=_FETCH_VERSION)
            if response.error_code:
                raise CopyError(f"fetch from {topic}: {_error_name(response.error_code)}")
            batch: list[Out] = []
            got = False
            for t in response.responses:
                for part in t.partitions:
                    p = part.partition_index
                    if p not in positions:
                        continue
                    if part.error_code:
                        raise CopyError(f"fetch from {topic}/{p}: {_error_name(part.error_code)}")
                    b = batchers[p]
                    b.add_aborted(part.aborted_transactions)
                    records = part.records or b""
                    if not records:
                        if positions[p] >= min(ends[p], part.high_watermark):
                            del positions[p]  # nothing more to come below the end
                        continue
                    items, nxt, walked = b.take(records)
                    if nxt > positions[p] or items or walked:
                        got = True
                    if walked is not None:
                        batch.append(walked)  # the walk past a killed run's records
                    batch.extend(items)
                    positions[p] = nxt
                    if nxt >= ends[p]:
                        del positions[p]
            if got:
                last_data = time.monotonic()
                if batch:
                    out.put(batch)
            elif time.monotonic() - last_data > idle_timeout:
                raise CopyError(f"no records for {idle_timeout:.0f}s from partition(s) "
                                f"{', '.join(map(str, sorted(positions)))} of {topic}")
        out.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the producing thread, which raises it
        out.put(exc)
        out.put(None)


class _Target:
    """A produce connection to one target broker and the requests in flight on it."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.in_flight: deque[list[Out]] = deque()


def copy_batches(bootstrap: str, topic: str, to_topic: str, ranges: list[tuple[int, int, int]],
                 producer: tuple[int, int], codec: str | None, skip: dict[int, tuple[int, int]],
                 stop: Any, report: Callable[[Progress], None], idle_timeout: float, timeout: float,
                 acks: int = -1, continued: dict[int, tuple[int, int, int]] | None = None) -> None:
    """Copy [start, end) of each (partition, start, end) of `topic` into the same partition of
    `to_topic`, batch by batch, as `producer` (id, epoch); `skip`: per partition, the records a
    killed run already put in the target after the checkpoint and the checkpoint's target offset;
    `continued`: per partition, the killed run's producer (id, epoch, next sequence) to go on with
    instead (so that a batch the killed run had sent and the broker takes only now is refused as a
    duplicate or as out of order, never appended twice: see resume_producers).
    `report` gets what was acknowledged, about every quarter second and at the end. Returns when
    done or when `stop` is set (after the requests in flight are answered). `acks`: -1 (all: the
    broker answers once the batch is on disk, fsync) or 1 (once written)."""
    from kafka.protocol.producer import ProduceRequest

    cluster = metadata(bootstrap, [topic, to_topic], timeout)
    codec_id = None if codec is None else CODEC_IDS[codec]
    continued = continued or {}
    batchers = {p: Batcher(p, start, end, *continued.get(p, (producer[0], producer[1], 0))[:2], codec_id,
                           skip=skip.get(p, (0, 0))[0], sequence=continued.get(p, (0, 0, 0))[2])
                for p, start, end in ranges if end > start}
    if not batchers:
        return
    ends = {p: end for p, _start, end in ranges}
    conns: dict[int, Conn] = {}

    def conn_to(node: int) -> Conn:
        if node not in conns:
            if node not in cluster.brokers:
                raise CopyError(f"no address for broker {node}")
            conns[node] = Conn(*cluster.brokers[node], timeout)
        return conns[node]

    halt = threading.Event()
    fetched: queue.Queue = queue.Queue(maxsize=8)
    threads = []
    try:
        by_leader: dict[int, dict[int, Batcher]] = {}
        for p, b in batchers.items():
            by_leader.setdefault(cluster.leaders[topic][p], {})[p] = b
        for leader, group in by_leader.items():
            # Fetches on their own connections (a Produce answer never waits behind a Fetch).
            fconn = Conn(*cluster.brokers[leader], timeout)
            conns[-1 - leader] = fconn
            thread = threading.Thread(target=_fetcher, args=(fconn, topic, group, ends, fetched, halt, idle_timeout),
                                      daemon=True, name=f"fetch-{leader}")
            thread.start()
            threads.append(thread)
        targets: dict[int, _Target] = {}
        pending: dict[int, deque[Out]] = {p: deque() for p in batchers}
        progress = Progress()
        last_report = time.monotonic()
        feeding = len(threads)
        walked = {p: t for p, (_n, t) in skip.items()}  # target offset reached by the walk past the tail
        PD = ProduceRequest.TopicProduceData
        PP = PD.PartitionProduceData

        def answer(target: _Target) -> None:
            sent = target.in_flight.popleft()
            resp = target.conn.receive()
            by_p = {r.index: r for t in resp.responses for r in t.partition_responses}
            for item in sent:
                r = by_p.get(item.partition)
                if r is None or r.error_code:
                    raise CopyError(f"produce to {to_topic}/{item.partition}: "
                                    f"{_error_name(r.error_code) if r is not None else 'no answer'}"
                                    f"{': ' + r.error_message if r is not None and r.error_message else ''}")
                progress.records += item.records
                progress.nbytes += item.nbytes
                progress.source_next[item.partition] = item.source_next
                progress.target_next[item.partition] = r.base_offset + item.records
                progress.producers[item.partition] = item.producer

        def send_round() -> bool:
            """One Produce per target broker holding the next batch of each partition that has one."""
            by_node: dict[int, list[Out]] = {}
            for p, q in pending.items():
                if q:
                    by_node.setdefault(cluster.leaders[to_topic][p], []).append(q.popleft())
            for node, items in by_node.items():
                target = targets.get(node)
                if target is None:
                    target = targets[node] = _Target(conn_to(node))
                while len(target.in_flight) >= _IN_FLIGHT:
                    answer(target)
                parts, size = [], 0
                for item in items:
                    if size and size + item.nbytes > _PRODUCE_BYTES:
                        pending[item.partition].appendleft(item)
                        continue
                    parts.append(PP(index=item.partition, records=b"".join(item.pieces)))
                    size += item.nbytes
                sent = [i for i in items if any(pp.index == i.partition for pp in parts)]
                target.conn.send(ProduceRequest(version=_PRODUCE_VERSION, transactional_id=None, acks=acks,
                                                timeout_ms=int(timeout * 1000),
                                                topic_data=[PD(name=to_topic, partition_data=parts)]))
                target.in_flight.append(sent)
            return bool(by_node)

        while True:
            if stop.is_set():
                halt.set()
                break
            try:
                got = fetched.get(timeout=0.05) if not any(pending.values()) else fetched.get_nowait()
            except queue.Empty:
                got = False
            if got is None:
                feeding -= 1
            elif isinstance(got, BaseException):
                raise got
            elif got:
                for item in got:
                    if item.records < 0:  # records walked past: already in the target
                        walked[item.partition] = walked.get(item.partition, 0) - item.records
                        progress.source_next[item.partition] = item.source_next
                        progress.target_next[item.partition] = walked[item.partition]
                        b = batchers[item.partition]
                        progress.producers[item.partition] = (b.producer_id, b.producer_epoch, b.sequence)
                    else:
                        pending[item.partition].append(item)
            if not send_round():
                for target in targets.values():
                    if target.in_flight:
                        answer(target)
                if feeding == 0 and fetched.empty() and not any(t.in_flight for t in targets.values()):
                    break
            if time.monotonic() - last_report >= 0.25:
                report(progress)
                progress = Progress()
                last_report = time.monotonic()
        for target in targets.values():  # everything sent is answered before the last report
            while target.in_flight:
                answer(target)
        report(progress)
    finally:
        halt.set()
        for c in conns.values():
            c.close()
        for thread in threads:
            thread.join(2)


def target_tail(bootstrap: str, topic: str, since: dict[int, int], producer_ids: set[int],
                timeout: float) -> dict[int, tuple[int, tuple[int, int, int] | None]]:
    """Records this copy (its producer ids) put in each target partition at or after `since[p]`
    (a killed run's, after its last checkpoint), with the (producer id, epoch, next sequence) that
    follows the last of them (None when there are none); raise if anything else is there."""
    from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest

    cluster = metadata(bootstrap, [topic], timeout)
    found: dict[int, tuple[int, tuple[int, int, int] | None]] = {}
    for p, mark in since.items():
        conn = Conn(*cluster.brokers[cluster.leaders[topic][p]], timeout)
        try:
            LT = ListOffsetsRequest.ListOffsetsTopic
            resp = conn.call(ListOffsetsRequest(version=5, replica_id=-1, isolation_level=0, topics=[
                LT(name=topic, partitions=[LT.ListOffsetsPartition(partition_index=p, current_leader_epoch=-1,
                                                                    timestamp=-1)])]))
            part = resp.topics[0].partitions[0]
            if part.error_code:
                raise CopyError(f"end offset of {topic}/{p}: {_error_name(part.error_code)}")
            end = part.offset
            if end < mark:
                raise CopyError(f"{topic}/{p} ends at {end}, before this copy's checkpoint {mark}: the target "
                                "lost records; --restart to copy again")
            position, count = mark, 0
            last: tuple[int, int, int] | None = None
            P = FetchRequest.FetchTopic.FetchPartition
            deadline = time.monotonic() + max(timeout, 60)
            while position < end:
                if time.monotonic() > deadline:
                    raise CopyError(f"could not read back {topic}/{p} to resume without duplicates")
                resp = conn.call(FetchRequest(
                    version=_FETCH_VERSION, replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=_FETCH_MAX_BYTES,
                    isolation_level=0, session_id=0, session_epoch=-1,
                    topics=[FetchRequest.FetchTopic(topic=topic, partitions=[P(
                        partition=p, current_leader_epoch=-1, fetch_offset=position, log_start_offset=-1,
                        partition_max_bytes=_PARTITION_FETCH_BYTES)])], forgotten_topics_data=[], rack_id=""))
                fpart = resp.responses[0].partitions[0]
                if fpart.error_code:
                    raise CopyError(f"fetch from {topic}/{p}: {_error_name(fpart.error_code)}")
                view = memoryview(fpart.records or b"")
                pos = 0
                while pos + HEADER_SIZE <= len(view) and position < end:
                    (base, length, _, _, _, _, lod, _, _, pid, epoch, seq, n) = _HEADER.unpack_from(view, pos)
                    pos += length + _LOG_OVERHEAD
                    if pos > len(view):
                        break
                    if base + lod < position:
                        continue
                    if base < mark or pid not in producer_ids:
                        raise CopyError(f"{topic}/{p} holds records of another producer at offset {base}, after "
                                        "this copy's checkpoint: cannot resume without duplicates (--restart)")
                    count += n
                    last = (pid, epoch, (seq + n) % (1 << 31))
                    position = base + lod + 1
            found[p] = (count, last)
        finally:
            conn.close()
    return found

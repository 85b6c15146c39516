"""`strata replay`: read a topic from any offset or timestamp and write it out, or re-produce it.

Records that only live in S3 are served by the broker like any others, so a replay from years back
is the same Kafka fetch as a replay from a second ago (it is just colder).

Speed: partitions are read in parallel by up to `--parallel N` worker processes (default: the CPU
count), each with its own librdkafka consumer, encoding whole fetched batches (orjson for JSON)
and writing them in blocks of about a megabyte. A partition belongs to one worker, so the records
of a partition come out in offset order; partitions interleave block by block. `--merge-by-timestamp`
instead reads every partition in one worker and writes one stream: a k-way merge that always takes
the earliest timestamp among the partitions' next records (ties: the lower partition), keeping each
partition's own order, so the stream is in timestamp order whenever each partition is. The progress
bar on stderr adds up every worker's records.

Output (`--output FILE|-`, `--format json`, the default): one JSON object per line::

    {"topic": "orders", "partition": 0, "offset": 42, "timestamp": 1700000000000,
     "timestamp_type": "CreateTime", "key": "order-1", "value": "{\"total\": 12}",
     "headers": [{"key": "trace", "value": "abc"}]}

A key, value or header value that is valid UTF-8 is written as a string under its own name
(`key`, `value`, `headers[].value`); anything else is written as standard base64 under
`key_b64`, `value_b64` or `headers[].value_b64` instead, so exactly one of the two names is
present, and a null stays `null` under the plain name. Text stays readable with `jq`, and no
byte is lost. Keys appear in the order above, no spaces, non-ASCII text as UTF-8, one `\\n` after
each object (the bytes `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))` writes).

`--format raw`: the values only, each framed as a 4-byte big-endian signed length followed by that
many bytes; a null value is the length -1 with no bytes (the framing Kafka itself uses for a
value). Nothing else: no key, header, offset or separator. Read it back with
`struct.unpack(">i", f.read(4))` and `f.read(n)`.

`--format csv`: a header row, then one row per record with the columns
`topic,partition,offset,timestamp,timestamp_type,key,key_b64,value,value_b64,headers`; as in
JSON, text goes to `key`/`value`, anything else to `key_b64`/`value_b64` (both empty for a null,
so a null and an empty text look alike in CSV), and `headers` holds the JSON array of the JSON
format. RFC 4180 quoting, `\\n` line ends.

Range: `[from, to)`, per partition. `--to-offset N` stops before offset N, `--to-timestamp T`
stops before the first record at or after T; without either, the replay stops at the end offset
(high watermark) each partition had when the replay started, so it always terminates. A start
by timestamp is looked up with ListOffsets, which the broker answers from the segments' time
indexes (the remote ones for data in S3), so it costs the same whatever the topic's size.

Re-produce (`--to-topic T2`): keys, values, headers and timestamps are preserved. When every
replayed partition has its namesake in the target (and neither `--reencode` nor
`--merge-by-timestamp` is given), the copy is by whole record batches (replay_copy.py): fetched
raw and produced verbatim to the same partition, only their header rewritten (this copy's
producer id, epoch and sequence, CRC-32C recomputed), so the target holds record for record what
the source holds, each batch in its own codec unless the target's `compression.type` (or
`--compression`) names another, which recompresses it. The client then does almost no work per
record, and the broker takes the batches as they come. `--acks 1` has each Produce answered once
written rather than once on disk. Otherwise (fewer partitions in the target, `--reencode`,
`--merge-by-timestamp`) records are re-produced one by one: the producer's partitioner chooses
from the key where the partition does not exist; the producers (one per worker) are idempotent,
batch up to 1 MB for up to 50 ms, and compress as the target topic's `compression.type` says
(none when it says `producer` or nothing; `--compression` overrides). Mind the target's
`retention.ms`: records keep their original timestamps, so old ones are due for deletion at once
in a topic with time-based retention.

Decode (`--decode --schema-registry URL`, replay_decode.py): Confluent-framed values (Avro, JSON
Schema, Protobuf) are written as JSON, the schema id beside them (`value_schema_id`, JSON format);
a framed value the registry cannot decode is a one-line error naming its partition and offset
(`--decode-errors raw` writes it undecoded instead).

Interrupting and resuming: Ctrl-C (or SIGTERM) stops every worker after the block it is writing
(`--to-topic`: after the producer has flushed what it sent) and saves a state file: the replay's
id (a hash of the bootstrap, topic, partitions, range and target), each partition's next offset,
and the output file's length. Running the same command again finds that file (under
`$XDG_STATE_HOME/strata/replay/`, or `--state FILE`) and continues where it stopped, so an
interrupted replay re-run with the same range never writes a record twice: an output file is cut
back to the length recorded and appended to; `--to-topic` records carry a header
`strata-replay` = `<replay id>:<partition>:<offset>` (after their own headers; `--no-replay-header`
leaves it out), and on a resume the target partitions are read from where they stood at the last
checkpoint (every 5 seconds) to their end, so records that landed after the checkpoint (a worker
killed hard) are skipped too. Without that header, resuming after a hard kill may duplicate the
records of the last checkpoint interval. A batch copy adds no header: its state holds, per
partition, the source offset and the target offset the next batch lands at (before the first
Produce, then after each acknowledged one, saved every second) and the producer ids it used; a
re-run reads the target from there to its end, checks that every batch there is this copy's, and
skips as many records in the source (replay_copy.py explains why that is exact). A finished
replay deletes its state file; `--restart` ignores one.

Exit codes: 0 done, 2 usage error, 1 broker or I/O error, 130 interrupted (state saved).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import heapq
import io
import json
import multiprocessing
import os
import queue
import signal
import stat
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

DEFAULT_BOOTSTRAP = os.environ.get("STRATA_BOOTSTRAP", "localhost:9092")
_QUIET_LIBRDKAFKA = {"log_level": 2}  # critical only: our own messages explain what went wrong
REPLAY_HEADER = "strata-replay"
FORMATS = ("json", "raw", "csv")
CSV_COLUMNS = ["topic", "partition", "offset", "timestamp", "timestamp_type", "key", "key_b64", "value",
               "value_b64", "headers"]
_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
_BLOCK_BYTES = 1 << 20  # write (and report progress) about every megabyte
_CLOSED = "the output was closed"  # e.g. `| head`: nothing to resume
_CHECKPOINT_SECONDS = 5.0  # --to-topic: flush and record the next offsets this often


# Records a worker takes from its consumer at once and writes as one block: Ctrl-C stops a worker
# between blocks, so this bounds what it still writes after the signal (a whole prefetched
# partition otherwise).
BLOCK_RECORDS = 1_000


class ReplayError(Exception):
    """A broker-side problem (unreachable, unknown topic, fetch error): exit code 1."""


def parse_timestamp(value: str) -> int:
    """ISO 8601 (a naive time is UTC) or integer milliseconds since the epoch -> epoch ms."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time or epoch milliseconds: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _bytes_field(out: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def record_to_json(topic: str, partition: int, offset: int, timestamp: int | None, timestamp_type: str | None,
                   key: bytes | None, value: bytes | None,
                   headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, Any]:
    """One record as the JSON object of the output format (the specification the encoders follow)."""
    out: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp,
                           "timestamp_type": timestamp_type}
    _bytes_field(out, "key", key)
    _bytes_field(out, "value", value)
    hdrs = []
    for name, hvalue in headers or ():
        entry: dict[str, Any] = {"key": name}
        _bytes_field(entry, "value", hvalue)
        hdrs.append(entry)
    out["headers"] = hdrs
    return out


def record_from_json(obj: dict[str, Any]) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """The inverse of record_to_json for key, value and headers (used by tests and tools)."""

    def get(d: dict[str, Any], name: str) -> bytes | None:
        if f"{name}_b64" in d:
            return base64.b64decode(d[f"{name}_b64"])
        return None if d.get(name) is None else d[name].encode("utf-8")

    return get(obj, "key"), get(obj, "value"), [(h["key"], get(h, "value")) for h in obj.get("headers", [])]


def read_raw(stream: Any) -> Iterable[bytes | None]:
    """The values of a `--format raw` stream, in order (None for a null value)."""
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) < 4:
            raise ValueError("truncated length prefix")
        (n,) = struct.unpack(">i", head)
        if n < 0:
            yield None
            continue
        data = stream.read(n)
        if len(data) < n:
            raise ValueError("truncated value")
        yield data


# ---- encoders: a list of confluent_kafka Messages -> bytes -----------------------------------

def _b64_encoder() -> Callable[[bytes], bytes]:
    """Standard base64 without a newline: pybase64's SIMD encoder (about ten times binascii's speed
    on 1 KiB, where base64 was the largest cost of a JSON line of a binary value), else binascii."""
    try:
        from pybase64 import b64encode

        return b64encode  # type: ignore[no-any-return]
    except ImportError:
        from binascii import b2a_base64

        return lambda data: b2a_base64(data, newline=False)


_TS_TYPES = {1: "CreateTime", 2: "LogAppendTime"}  # confluent_kafka.TIMESTAMP_CREATE_TIME / _LOG_APPEND_TIME


def _json_encoder(topic: str, decoder: Any = None) -> Callable[[list[Any]], tuple[bytes, int]]:
    """JSON lines, the bytes record_to_json + json.dumps(ensure_ascii=False, compact) + newline give.

    Each line is put together from pieces rather than a dict: orjson encodes only the text
    (key, value, headers), base64 goes in as bytes, so a record costs a few calls, not a dict.
    Returns (the block, key + value bytes in it). With a `decoder` (--decode, replay_decode.py), a
    value it decodes is written as its JSON under "value", followed by "value_schema_id"."""
    import orjson

    b64 = _b64_encoder()

    dumps = orjson.dumps
    # Each line goes out as pieces joined once per block: bytes %-formatting copies a 1 KiB value
    # about seven times slower than join does (1.5 vs 0.2 us a line, measured).
    head = b'{"topic":' + dumps(topic) + b',"partition":'
    starts: dict[int, bytes] = {}  # partition -> the line up to its offset
    with_ts = {t: b'%d,"timestamp":%d,"timestamp_type":' + dumps(name) + b"," for t, name in _TS_TYPES.items()}
    no_ts = b'%d,"timestamp":null,"timestamp_type":null,'
    decode = decoder.decode if decoder is not None else None

    def encode(msgs: list[Any]) -> tuple[bytes, int]:
        out: list[bytes] = []
        extend = out.extend
        size = 0
        for m in msgs:
            p = m.partition()
            first = starts.get(p)
            if first is None:
                first = starts[p] = head + b'%d,"offset":' % p
            ts_type, ts = m.timestamp()
            fmt = with_ts.get(ts_type)
            mid = fmt % (m.offset(), ts) if fmt is not None else no_ts % m.offset()
            k = m.key()
            if k is None:
                kf = b'"key":null'
            else:
                size += len(k)
                try:
                    kf = b'"key":' + dumps(k.decode("utf-8"))
                except UnicodeDecodeError:
                    kf = b'"key_b64":"' + b64(k) + b'"'
            h = m.headers()
            if h:
                hdrs = []
                for hk, hv in h:
                    e: dict[str, Any] = {"key": hk}
                    _bytes_field(e, "value", hv)
                    hdrs.append(e)
                hf = dumps(hdrs)
            else:
                hf = b"[]"
            v = m.value()
            if v is None:
                extend((first, mid, kf, b',"value":null,"headers":', hf, b"}\n"))
                continue
            size += len(v)
            if decode is not None and v[:1] == b"\x00":
                decoded = decode(v, p, m.offset())
                if decoded is not None:
                    extend((first, mid, kf, b',"value":', decoded[0], b',"value_schema_id":%d,"headers":' % decoded[1],
                            hf, b"}\n"))
                    continue
            try:
                extend((first, mid, kf, b',"value":', dumps(v.decode("utf-8")), b',"headers":', hf, b"}\n"))
            except UnicodeDecodeError:
                extend((first, mid, kf, b',"value_b64":"', b64(v), b'","headers":', hf, b"}\n"))
        return b"".join(out), size

    return encode


def _raw_encoder(_topic: str, decoder: Any = None) -> Callable[[list[Any]], tuple[bytes, int]]:
    pack = struct.Struct(">i").pack
    null = pack(-1)
    decode = decoder.decode if decoder is not None else None

    def encode(msgs: list[Any]) -> tuple[bytes, int]:
        out = []
        size = 0
        for m in msgs:
            v = m.value()
            size += len(m.key() or b"")
            if v is None:
                out.append(null)
            else:
                size += len(v)
                if decode is not None and v[:1] == b"\x00":
                    decoded = decode(v, m.partition(), m.offset())
                    if decoded is not None:
                        v = decoded[0]
                out.append(pack(len(v)))
                out.append(v)
        return b"".join(out), size

    return encode


def _csv_encoder(topic: str, decoder: Any = None) -> Callable[[list[Any]], tuple[bytes, int]]:
    import orjson

    decode = decoder.decode if decoder is not None else None
    b64 = _b64_encoder()

    def text_or_b64(data: bytes | None) -> tuple[str, str]:
        if data is None:
            return "", ""
        try:
            return data.decode("utf-8"), ""
        except UnicodeDecodeError:
            return "", b64(data).decode("ascii")

    def encode(msgs: list[Any]) -> tuple[bytes, int]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        size = 0
        for m in msgs:
            size += len(m.key() or b"") + len(m.value() or b"")
            ts_type, ts = m.timestamp()
            name = _TS_TYPES.get(ts_type)
            hdrs = []
            for hk, hv in m.headers() or ():
                e: dict[str, Any] = {"key": hk}
                _bytes_field(e, "value", hv)
                hdrs.append(e)
            v = m.value()
            if decode is not None and v is not None and v[:1] == b"\x00":
                decoded = decode(v, m.partition(), m.offset())
                if decoded is not None:
                    v = decoded[0]  # the JSON text of the value
            writer.writerow([topic, m.partition(), m.offset(), ts if name is not None else "", name or "",
                             *text_or_b64(m.key()), *text_or_b64(v), orjson.dumps(hdrs).decode()])
        return buf.getvalue().encode("utf-8"), size

    return encode


ENCODERS = {"json": _json_encoder, "raw": _raw_encoder, "csv": _csv_encoder}


# ---- planning ----------------------------------------------------------------------------------

@dataclass
class PartitionRange:
    partition: int
    start: int
    end: int  # exclusive
    low: int
    high: int

    @property
    def span(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class ReplayStats:
    records: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    per_partition: dict[int, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)


def plan(consumer: Any, topic: str, partitions: list[int] | None, from_offset: int | None, from_ts: int | None,
         to_offset: int | None, to_ts: int | None, timeout: float) -> list[PartitionRange]:
    """Resolve the [start, end) offsets of every partition to replay, before reading anything."""
    import confluent_kafka
    from confluent_kafka import TopicPartition

    try:
        meta = consumer.list_topics(timeout=timeout)  # all topics: never auto-creates the one we read
    except confluent_kafka.KafkaException as exc:
        raise ReplayError(f"cannot reach the broker: {exc}") from exc
    tmeta = meta.topics.get(topic)
    if tmeta is None:
        raise ReplayError(f"topic {topic!r} does not exist")
    if tmeta.error is not None:
        raise ReplayError(f"topic {topic!r}: {tmeta.error.str()}")
    available = sorted(tmeta.partitions)
    if partitions:
        missing = sorted(set(partitions) - set(available))
        if missing:
            raise ReplayError(f"topic {topic!r} has partitions {available[0]}..{available[-1]}, "
                              f"not {', '.join(map(str, missing))}")
        chosen = sorted(set(partitions))
    else:
        chosen = available

    def lookup(ts: int) -> dict[int, int]:
        try:
            found = consumer.offsets_for_times([TopicPartition(topic, p, ts) for p in chosen], timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"offset lookup by timestamp failed: {exc}") from exc
        out = {}
        for tp in found:
            if tp.error is not None:
                raise ReplayError(f"offset lookup by timestamp failed for partition {tp.partition}: {tp.error}")
            out[tp.partition] = tp.offset
        return out

    starts = lookup(from_ts) if from_ts is not None else {}
    ends_by_ts = lookup(to_ts) if to_ts is not None else {}
    marks = {}
    for p in chosen:
        try:
            marks[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"cannot read the offsets of {topic}/{p}: {exc}") from exc
    return _ranges(marks, starts, ends_by_ts, from_offset, to_offset, to_ts)


def plan_raw(bootstrap: str, topic: str, partitions: list[int] | None, from_offset: int | None, from_ts: int | None,
             to_offset: int | None, to_ts: int | None, timeout: float) -> list[PartitionRange]:
    """plan() with bare protocol requests (Metadata, one ListOffsets per leader and kind) instead of a
    librdkafka consumer: the same ranges in a few milliseconds instead of a few hundred (a --to-topic
    batch copy, whose own requests are bare too, needs no librdkafka at all)."""
    from .replay_copy import CopyError, UnknownTopic, list_offsets, metadata

    try:
        cluster = metadata(bootstrap, [topic], timeout)
    except UnknownTopic as exc:
        raise ReplayError(str(exc)) from exc
    except CopyError as exc:
        raise ReplayError(str(exc)) from exc
    except OSError as exc:
        raise ReplayError(f"cannot reach the broker: {exc}") from exc
    available = sorted(cluster.leaders[topic])
    if partitions:
        missing = sorted(set(partitions) - set(available))
        if missing:
            raise ReplayError(f"topic {topic!r} has partitions {available[0]}..{available[-1]}, "
                              f"not {', '.join(map(str, missing))}")
        chosen = sorted(set(partitions))
    else:
        chosen = available
    try:
        lows = list_offsets(cluster, topic, chosen, -2, timeout)
        highs = list_offsets(cluster, topic, chosen, -1, timeout)
        starts = list_offsets(cluster, topic, chosen, from_ts, timeout) if from_ts is not None else {}
        ends_by_ts = list_offsets(cluster, topic, chosen, to_ts, timeout) if to_ts is not None else {}
    except CopyError as exc:
        raise ReplayError(str(exc)) from exc
    except OSError as exc:
        raise ReplayError(f"cannot read the offsets of {topic}: {exc}") from exc
    return _ranges({p: (lows[p], highs[p]) for p in chosen}, starts, ends_by_ts, from_offset, to_offset, to_ts)


def _ranges(marks: dict[int, tuple[int, int]], starts: dict[int, int], ends_by_ts: dict[int, int],
            from_offset: int | None, to_offset: int | None, to_ts: int | None) -> list[PartitionRange]:
    """[start, end) of each partition from its (log start, end) and the offsets looked up by time."""
    ranges = []
    for p, (low, high) in sorted(marks.items()):
        if from_offset is not None:
            start = min(max(from_offset, low), high)
        else:
            start = starts[p] if starts[p] >= 0 else high  # -1: no record at or after that time
            start = min(max(start, low), high)
        end = high
        if to_offset is not None:
            end = min(end, to_offset)
        if to_ts is not None and ends_by_ts[p] >= 0:
            end = min(end, ends_by_ts[p])
        ranges.append(PartitionRange(p, start, max(start, end), low, high))
    return ranges


def split_among(ranges: list[PartitionRange], workers: int) -> list[list[PartitionRange]]:
    """Partitions with something to read, spread over at most `workers` lists by their offset spans."""
    todo = sorted((r for r in ranges if r.span > 0), key=lambda r: -r.span)
    bins: list[list[PartitionRange]] = [[] for _ in range(max(1, min(workers, len(todo))))]
    load = [0] * len(bins)
    for r in todo:
        i = load.index(min(load))
        bins[i].append(r)
        load[i] += r.span
    return [sorted(b, key=lambda r: r.partition) for b in bins if b]


# ---- the state file --------------------------------------------------------------------------

def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "strata" / "replay"


def replay_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ---- workers -----------------------------------------------------------------------------------

@dataclass
class Task:
    """What one worker process reads and where it puts it."""

    bootstrap: str
    topic: str
    ranges: list[tuple[int, int, int]]  # (partition, start, end)
    fmt: str = "json"
    merge: bool = False
    to_topic: str | None = None
    target_partitions: int = 0
    compression: str = "none"
    header_id: str | None = None  # --to-topic: the replay id written in the strata-replay header
    skip: dict[int, list[int]] = field(default_factory=dict)  # offsets already in the target
    idle_timeout: float = 60.0
    timeout: float = 30.0
    # --to-topic by whole batches (replay_copy.py): this worker's producer (id, epoch), the codec the
    # target asks for (None: keep each batch's), and per partition (records a killed run already
    # put in the target after the checkpoint, the checkpoint's target offset).
    producer: tuple[int, int] | None = None
    copy_codec: str | None = None
    copy_skip: dict[int, tuple[int, int]] = field(default_factory=dict)
    # per partition: a killed run's producer (id, epoch, next sequence) that this copy goes on with
    copy_continue: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    acks: int = -1
    registry: str | None = None  # --decode: the schema registry's URL
    decode_errors_raw: bool = False


def _consumer(bootstrap: str) -> Any:
    import confluent_kafka

    return confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"strata-replay-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "client.id": "strata-replay", "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 4 << 20, "fetch.queue.backoff.ms": 10, **_QUIET_LIBRDKAFKA})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _keep_freed_memory() -> None:
    """glibc malloc: keep freed memory in the process instead of handing it back to the kernel
    (and mapping large blocks afresh). A worker allocates and frees megabytes a second; where page
    faults are dear (a sandboxed kernel) orjson spent ten times longer faulting pages in than
    encoding. Linux with glibc only; elsewhere nothing happens."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def worker_main(wid: int, tasks: Any, events: Any, stop: Any, out_fd: int, lock: Any) -> None:
    """A worker process: wait for its Task (None = nothing to do), read it, report on `events`.

    Events: ("progress", wid, records, bytes, {partition: next offset}, file length or -1,
    {target partition: offset mark}, {partition: target offset the next batch lands at (batch
    copy)}, {partition: (producer id, epoch, sequence) of the next batch (batch copy)});
    ("data", wid, block) when the output has no file descriptor (the parent writes it);
    ("done", wid); ("error", wid, message).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent sets `stop`
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's last resort
    _keep_freed_memory()
    task = tasks.get()
    if task is None:
        return
    try:
        _run_task(wid, task, events, stop, out_fd, lock)
        events.put(("done", wid))
    except BrokenPipeError:
        events.put(("error", wid, _CLOSED))
    except ReplayError as exc:
        events.put(("error", wid, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits 1
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]  # an unexpected failure: say where, for a report
        events.put(("error", wid, f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"))


class _Output:
    """Where a worker puts encoded blocks: the shared output fd (under a lock) or a producer."""

    def __init__(self, wid: int, task: Task, events: Any, out_fd: int, lock: Any, consumer: Any) -> None:
        self.wid, self.task, self.events, self.fd, self.lock = wid, task, events, out_fd, lock
        self.consumer = consumer
        decoder = None
        if task.registry is not None:
            from .replay_decode import Decoder

            decoder = Decoder(task.registry, task.decode_errors_raw, task.timeout)
        self.encode = ENCODERS[task.fmt](task.topic, decoder) if task.to_topic is None else None
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.records = 0
        self.nbytes = 0
        self.next: dict[int, int] = {}
        self.last_checkpoint = time.monotonic()
        self.producer: Any = None
        self.errors: list[str] = []
        self.seekable = True
        if task.to_topic is not None:
            import confluent_kafka

            self.producer = confluent_kafka.Producer({
                "bootstrap.servers": task.bootstrap, "enable.idempotence": True, "acks": "all",
                "linger.ms": 50, "batch.size": 1_000_000, "batch.num.messages": 100_000,
                "queue.buffering.max.kbytes": 32 * 1024, "queue.buffering.max.messages": 100_000,
                "compression.type": task.compression, "client.id": "strata-replay",
                "delivery.report.only.error": True, "on_delivery": self._on_delivery, **_QUIET_LIBRDKAFKA})

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def add(self, msgs: list[Any], nxt: dict[int, int]) -> None:
        """Take a batch of records (in order per partition; `nxt`: the offset after each
        partition's last one): encode it, or produce it."""
        if self.producer is not None:
            self.nbytes += self._produce(msgs)
        else:
            block, size = self.encode(msgs)  # type: ignore[misc]
            self.pending.append(block)
            self.pending_bytes += len(block)
            self.nbytes += size
        self.records += len(msgs)
        self.next.update(nxt)
        if self.producer is not None:
            if time.monotonic() - self.last_checkpoint >= _CHECKPOINT_SECONDS:
                self.flush()
        elif self.pending_bytes >= _BLOCK_BYTES:
            self.flush()

    def _produce(self, msgs: list[Any]) -> int:
        produce, poll = self.producer.produce, self.producer.poll
        target, nparts = self.task.to_topic, self.task.target_partitions
        hid = self.task.header_id.encode() if self.task.header_id is not None else None
        ts_types = _TS_TYPES
        size = 0
        for m in msgs:
            p = m.partition()
            headers = m.headers()
            if hid is not None:
                tag = (REPLAY_HEADER, b"%b:%d:%d" % (hid, p, m.offset()))
                headers = [*headers, tag] if headers else [tag]
            ts_type, ts = m.timestamp()
            k, v = m.key(), m.value()
            size += len(k or b"") + len(v or b"")
            # Positional: topic, value, key, partition (-1: the partitioner's choice), callback,
            # on_delivery (its alias), timestamp (0: now), headers.
            args = (target, v, k, p if p < nparts else -1, None, None, ts if ts_type in ts_types else 0, headers)
            while True:
                try:
                    produce(*args)
                    break
                except BufferError:  # the queue is full: let the broker catch up a little
                    poll(0.005)
        poll(0)
        if self.errors:
            raise ReplayError(f"producing to {target!r} failed: {self.errors[0]}")
        return size

    def flush(self) -> None:
        """Write the pending block (or let the producer deliver everything) and report progress."""
        marks: dict[int, int] = {}
        length = -1
        if self.producer is not None:
            from confluent_kafka import TopicPartition

            if self.task.header_id is not None:  # where this checkpoint's later records can start, at the least
                for tp in range(self.task.target_partitions):
                    _, marks[tp] = self.consumer.get_watermark_offsets(TopicPartition(self.task.to_topic, tp),
                                                                       timeout=self.task.timeout, cached=False)
            if self.producer.flush(self.task.timeout):
                raise ReplayError(f"records not acknowledged by the broker within {self.task.timeout:.0f}s")
            if self.errors:
                raise ReplayError(f"producing to {self.task.to_topic!r} failed: {self.errors[0]}")
            self.last_checkpoint = time.monotonic()
        else:
            if not self.pending:
                return
            block = b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
            if self.fd < 0:  # an output without a file descriptor: the parent writes it
                self.events.put(("data", self.wid, block))
                self.seekable = False
            else:
                self.lock.acquire()
            try:
                if self.fd >= 0:
                    _write_all(self.fd, block)
                if self.seekable:
                    try:
                        length = os.lseek(self.fd, 0, os.SEEK_CUR)
                    except OSError:
                        self.seekable = False
            finally:
                if self.fd >= 0:
                    self.lock.release()
            self.pending, self.pending_bytes = [], 0
        records, nbytes = self.records, self.nbytes
        self.events.put(("progress", self.wid, records, nbytes, dict(self.next), length, marks, {}, {}))
        self.records = self.nbytes = 0


def _run_copy(wid: int, task: Task, events: Any, stop: Any) -> None:
    """--to-topic by whole record batches (replay_copy.py), reporting what is acknowledged."""
    from .replay_copy import CopyError, Progress, copy_batches

    def report(done: Progress) -> None:
        events.put(("progress", wid, done.records, done.nbytes, dict(done.source_next), -1, {},
                    dict(done.target_next), dict(done.producers)))

    assert task.to_topic is not None and task.producer is not None
    try:
        copy_batches(task.bootstrap, task.topic, task.to_topic, task.ranges, task.producer, task.copy_codec,
                     task.copy_skip, stop, report, task.idle_timeout, task.timeout, task.acks, task.copy_continue)
    except CopyError as exc:
        raise ReplayError(str(exc)) from exc
    except OSError as exc:
        raise ReplayError(f"connection to the broker failed: {exc}") from exc


def _run_task(wid: int, task: Task, events: Any, stop: Any, out_fd: int, lock: Any) -> None:
    from confluent_kafka import KafkaError, TopicPartition

    if task.producer is not None:
        _run_copy(wid, task, events, stop)
        return
    consumer = _consumer(task.bootstrap)
    try:
        output = _Output(wid, task, events, out_fd, lock, consumer)
        remaining = {p: end for p, start, end in task.ranges if end > start}
        skip = {p: set(offs) for p, offs in task.skip.items() if offs}
        if not remaining:
            return
        consumer.assign([TopicPartition(task.topic, p, start) for p, start, end in task.ranges if end > start])
        transient = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
                     KafkaError._TIMED_OUT}
        last_progress = time.monotonic()
        merger = _Merger(list(remaining), consumer, task.topic) if task.merge else None

        def done(partition: int) -> None:
            if remaining.pop(partition, None) is not None:
                consumer.pause([TopicPartition(task.topic, partition)])
                if merger is not None:
                    merger.finish(partition)

        while remaining and not stop.is_set():
            msgs = consumer.consume(BLOCK_RECORDS, 0) or consumer.consume(1, 0.2)
            if msgs:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > task.idle_timeout:
                raise ReplayError(f"no records for {task.idle_timeout:.0f}s from partition(s) "
                                  f"{', '.join(map(str, sorted(remaining)))}; is the broker up?")
            keep = []
            nxt: dict[int, int] = {}
            for msg in msgs:
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in remaining and msg.offset() >= remaining[p]:
                            done(p)
                        continue
                    if not err.fatal() and (err.retriable() or err.code() in transient):
                        continue  # librdkafka reconnects by itself; --idle-timeout bounds the wait
                    raise ReplayError(f"fetch from {task.topic}/{p} failed: {err.str()}")
                end = remaining.get(p)
                if end is None:
                    continue
                off = msg.offset()
                if off >= end:
                    done(p)
                    continue
                if skip and off in skip.get(p, ()):
                    if off + 1 >= end:
                        done(p)
                    continue
                keep.append(msg)
                nxt[p] = off + 1
                if off + 1 >= end:
                    done(p)
            if merger is not None:
                for msg in keep:
                    merger.push(msg)
                ready = merger.pop_ready()
                if ready:
                    output.add(ready, _next_of(ready))
            elif keep:
                output.add(keep, nxt)
        if merger is not None and not stop.is_set():
            rest = merger.pop_ready()
            if rest:
                output.add(rest, _next_of(rest))
        output.flush()
    finally:
        consumer.close()


def _next_of(msgs: list[Any]) -> dict[int, int]:
    return {m.partition(): m.offset() + 1 for m in msgs}


class _Merger:
    """--merge-by-timestamp: buffers per partition, releases records in (timestamp, partition, offset)
    order once every unfinished partition has a record buffered (so nothing earlier can still come)."""

    _HIGH = 50_000  # buffered records of one partition before it is paused

    def __init__(self, partitions: list[int], consumer: Any, topic: str) -> None:
        self.buffers: dict[int, deque[Any]] = {p: deque() for p in partitions}
        self.active = set(partitions)
        self.paused: set[int] = set()
        self.consumer, self.topic = consumer, topic

    def push(self, msg: Any) -> None:
        buf = self.buffers[msg.partition()]
        buf.append(msg)
        if len(buf) >= self._HIGH and msg.partition() not in self.paused:
            from confluent_kafka import TopicPartition

            self.paused.add(msg.partition())
            self.consumer.pause([TopicPartition(self.topic, msg.partition())])

    def finish(self, partition: int) -> None:
        self.active.discard(partition)

    def pop_ready(self) -> list[Any]:
        from confluent_kafka import TopicPartition

        heap = [(buf[0].timestamp()[1], p, buf[0].offset()) for p, buf in self.buffers.items() if buf]
        heapq.heapify(heap)
        out = []
        while heap:
            if any(not self.buffers[p] for p in self.active):
                break  # an unfinished partition has nothing buffered: it may still bring an earlier record
            _, p, _ = heapq.heappop(heap)
            buf = self.buffers[p]
            out.append(buf.popleft())
            if buf:
                heapq.heappush(heap, (buf[0].timestamp()[1], p, buf[0].offset()))
        for p in list(self.paused):
            if len(self.buffers[p]) < self._HIGH // 2 and p in self.active:
                self.paused.discard(p)
                self.consumer.resume([TopicPartition(self.topic, p)])
        return out


# ---- the parent: plan, resume, start workers, progress, state ----------------------------------

def _target_info(admin_conf: dict[str, Any], topic: str, timeout: float) -> tuple[int, str | None]:
    """(partition count, compression.type) of the target topic; asking by name lets a broker with
    auto-creation create it, as any producer would."""
    import confluent_kafka
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(admin_conf)
    try:
        meta = admin.list_topics(topic, timeout=timeout)
    except confluent_kafka.KafkaException as exc:
        raise ReplayError(f"cannot reach the broker for topic {topic!r}: {exc}") from exc
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None:
        reason = tmeta.error.str() if tmeta is not None and tmeta.error is not None else "not found"
        raise ReplayError(f"target topic {topic!r} is not available: {reason}")
    codec = None
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)],
                                         request_timeout=timeout)
        for fut in futures.values():
            entry = fut.result(timeout).get("compression.type")
            codec = entry.value if entry is not None else None
    except Exception:  # noqa: BLE001 - a broker without DescribeConfigs: no codec asked for
        codec = None
    return len(tmeta.partitions), codec


def _target_info_raw(bootstrap: str, topic: str, timeout: float) -> tuple[int, str | None]:
    """_target_info with bare requests (Metadata asking to create it, DescribeConfigs)."""
    from .replay_copy import CopyError, metadata, topic_config

    try:
        cluster = metadata(bootstrap, [topic], timeout, create=True)
    except CopyError as exc:
        raise ReplayError(f"target topic {topic!r} is not available: {exc}") from exc
    except OSError as exc:
        raise ReplayError(f"cannot reach the broker for topic {topic!r}: {exc}") from exc
    return len(cluster.leaders[topic]), topic_config(bootstrap, topic, "compression.type", timeout)


def _ends(bootstrap: str, topic: str, partitions: int, timeout: float) -> dict[int, int]:
    """The high watermark of every partition of a topic."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1]
                for p in range(partitions)}
    finally:
        consumer.close()


# A batch copy's re-run goes on with the killed run's producers only when the state was saved this
# recently (the state is saved every second while a copy runs: about when it was killed). Requests
# the killed run had sent are taken by the broker within seconds; the broker keeps a producer's
# sequence state far longer than this.
_CONTINUE_SECONDS = 600.0


def _continued(found: dict[int, tuple[int, tuple[int, int, int] | None]],
               saved: dict[int, tuple[int, int, int]], state_path: Path,
               todo: set[int]) -> dict[int, tuple[int, int, int]]:
    """Per partition, the killed run's producer (id, epoch, next sequence) a re-run goes on with:
    after the last of its batches found in the target past the checkpoint, else as of the
    checkpoint. A Produce the killed run had sent but the broker takes only after the re-run read
    the target (one still in the broker's socket buffer, or waiting for request memory behind an
    fsync) then carries a sequence the broker has seen (a duplicate, answered with where it landed)
    or one out of order (refused): never a second copy of its records, as it was with a new
    producer id."""
    try:
        age = time.time() - state_path.stat().st_mtime
    except OSError:
        return {}
    if age > _CONTINUE_SECONDS:
        return {}
    out: dict[int, tuple[int, int, int]] = {}
    for p in todo:
        n, last = found.get(p, (0, None))
        producer = last if n and last is not None else saved.get(p)
        if producer is not None:
            out[p] = producer
    return out


def _landed(bootstrap: str, topic: str, marks: dict[int, int], rid: str, timeout: float) -> dict[int, list[int]]:
    """Source offsets (by source partition) this replay id already put in the target at or after `marks`."""
    from confluent_kafka import KafkaError, TopicPartition

    consumer = _consumer(bootstrap)
    found: dict[int, list[int]] = {}
    prefix = f"{rid}:".encode()
    try:
        ends = {}
        for p, mark in marks.items():
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
            if high > mark:
                ends[p] = high
        if not ends:
            return found
        consumer.assign([TopicPartition(topic, p, marks[p]) for p in ends])
        deadline = time.monotonic() + max(timeout, 60)
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.2):
                p = msg.partition()
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= ends.get(p, 0):
                        ends.pop(p, None)
                    continue
                for name, value in msg.headers() or ():
                    if name == REPLAY_HEADER and value and value.startswith(prefix):
                        _, sp, so = value.decode().split(":")
                        found.setdefault(int(sp), []).append(int(so))
                if msg.offset() + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
        if ends:
            raise ReplayError(f"could not read back the end of {topic!r} to resume without duplicates")
        return found
    finally:
        consumer.close()


class _Progress:
    """records, MB, MB/s and ETA on stderr, driven by the offsets still to read (all workers)."""

    def __init__(self, console: Any, topic: str, enabled: bool) -> None:
        self.console = console
        self.topic = topic
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]replay {task.description}"), BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} records"),
            TextColumn("{task.fields[mb]:.1f} MB"), TextColumn("{task.fields[mbps]:.1f} MB/s"),
            TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
            console=self.console, transient=False, refresh_per_second=4)
        self.task = self.progress.add_task(self.topic, total=max(total, 0), mb=0.0, mbps=0.0)
        self.progress.start()

    def update(self, stats: ReplayStats) -> None:
        if self.progress is None:
            return
        self.progress.update(self.task, completed=stats.records, mb=stats.bytes / 1e6,
                             mbps=stats.bytes / 1e6 / stats.seconds)

    def stop(self) -> None:
        if self.progress is not None:
            task = self.progress.tasks[0]
            # Offsets are an upper bound on records (gaps, compaction): finish the bar at what was read.
            self.progress.update(self.task, total=task.completed)
            self.progress.stop()
            self.progress = None


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM while replaying: the state is saved, exit code 130."""


def _write_stdout(block: bytes) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    if stream is not None:
        stream.write(block)
    else:
        sys.stdout.write(block.decode("utf-8"))


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


@click.command("replay")
@click.option("--bootstrap", "-b", default=DEFAULT_BOOTSTRAP, show_default=True,
              help="HOST:PORT of a broker (env STRATA_BOOTSTRAP).")
@click.option("--topic", "-t", required=True, help="Topic to replay.")
@click.option("--from-offset", type=click.IntRange(min=0), default=None,
              help="Start at this offset in every replayed partition (clamped to what the log holds).")
@click.option("--from-timestamp", default=None, metavar="ISO8601",
              help="Start at the first record at or after this time (ISO 8601, naive = UTC; or epoch ms).")
@click.option("--to-offset", type=click.IntRange(min=0), default=None, help="Stop before this offset (exclusive).")
@click.option("--to-timestamp", default=None, metavar="ISO8601",
              help="Stop before the first record at or after this time (exclusive).")
@click.option("--partition", "-p", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Only this partition (repeatable). Default: all.")
@click.option("--output", "-o", default=None, metavar="FILE|-",
              help="Write here ('-' = stdout, the default unless --to-topic is given).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json: JSON lines; raw: length-prefixed values; csv: one row per record.")
@click.option("--to-topic", default=None, help="Re-produce the records into this topic instead of writing them out.")
@click.option("--parallel", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes reading partitions in parallel (default: the CPU count).")
@click.option("--merge-by-timestamp", is_flag=True,
              help="One stream ordered by timestamp across partitions (one worker) instead of per-partition order.")
@click.option("--compression", type=click.Choice(("topic", *_CODECS)), default="topic", show_default=True,
              help="--to-topic: the producer's codec ('topic': the target topic's compression.type).")
@click.option("--no-replay-header", is_flag=True,
              help="--to-topic --reencode: do not add the strata-replay header (resuming after a hard kill may "
                   "duplicate).")
@click.option("--reencode", is_flag=True,
              help="--to-topic: re-produce record by record (with the strata-replay header) instead of copying "
                   "whole batches.")
@click.option("--acks", type=click.Choice(("all", "1")), default="all", show_default=True,
              help="--to-topic batch copy: 'all' waits for each Produce to be on the target's disk (fsync), "
                   "'1' only for the write.")
@click.option("--decode", is_flag=True,
              help="Write Confluent-framed values (Avro, JSON Schema, Protobuf) as JSON, with --schema-registry.")
@click.option("--schema-registry", default=os.environ.get("STRATA_SCHEMA_REGISTRY"), metavar="URL",
              help="--decode: the schema registry (env STRATA_SCHEMA_REGISTRY).")
@click.option("--decode-errors", type=click.Choice(("fail", "raw")), default="fail", show_default=True,
              help="--decode: a framed value that does not decode (unknown schema id...) stops the replay (fail) "
                   "or is written undecoded (raw).")
@click.option("--state", "state_file", default=None, metavar="FILE",
              help="State file for interrupt and resume (default: one per replay under $XDG_STATE_HOME/strata/replay).")
@click.option("--restart", is_flag=True, help="Ignore a saved state of this replay and start from the beginning.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for metadata, offsets and final acknowledgements.")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Give up when no record arrives for this many seconds before the end is reached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary on stderr.")
def replay(bootstrap: str, topic: str, from_offset: int | None, from_timestamp: str | None, to_offset: int | None,
           to_timestamp: str | None, partitions: tuple[int, ...], output: str | None, fmt: str,
           to_topic: str | None, parallel: int | None, merge_by_timestamp: bool, compression: str,
           no_replay_header: bool, reencode: bool, acks: str, decode: bool, schema_registry: str | None,
           decode_errors: str, state_file: str | None, restart: bool, timeout: float,
           idle_timeout: float, quiet: bool) -> None:
    """Replay a topic from any offset or time (hot or in S3) as JSON lines, raw values or CSV, or into
    another topic, reading partitions in parallel.

    The range is [from, to) in each partition; without --to-*, it ends at the end offset each
    partition had when the replay started. Binary keys/values go to key_b64/value_b64. An
    interrupted replay (Ctrl-C) continues where it stopped when the same command is run again.
    """
    if (from_offset is None) == (from_timestamp is None):
        raise click.UsageError("give exactly one of --from-offset and --from-timestamp")
    if to_offset is not None and to_timestamp is not None:
        raise click.UsageError("give at most one of --to-offset and --to-timestamp")
    if to_topic is not None and output is not None:
        raise click.UsageError("--output and --to-topic are alternatives; give one")
    if to_topic is not None and fmt != "json":
        raise click.UsageError("--format applies to --output, not --to-topic")
    if to_topic == topic:
        raise click.UsageError("--to-topic must differ from --topic")
    if acks != "all" and (to_topic is None or reencode or merge_by_timestamp):
        raise click.UsageError("--acks applies to a --to-topic batch copy (the re-encoding producer is idempotent: "
                               "acks=all)")
    if decode and to_topic is not None:
        raise click.UsageError("--decode applies to --output, not --to-topic (a copy keeps the framed values)")
    if decode and not schema_registry:
        raise click.UsageError("--decode needs --schema-registry URL (or STRATA_SCHEMA_REGISTRY)")
    try:
        from_ts = parse_timestamp(from_timestamp) if from_timestamp is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from-timestamp") from exc
    try:
        to_ts = parse_timestamp(to_timestamp) if to_timestamp is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to-timestamp") from exc
    if from_offset is not None and to_offset is not None and from_offset > to_offset:
        raise click.UsageError(f"--from-offset {from_offset} is after --to-offset {to_offset}: an empty range")
    if from_ts is not None and to_ts is not None and from_ts > to_ts:
        raise click.UsageError(f"--from-timestamp {from_timestamp} is after --to-timestamp {to_timestamp}: "
                               "an empty range")

    from rich.console import Console

    err_console = Console(stderr=True)
    rid = replay_id(bootstrap, topic, sorted(set(partitions)), from_offset, from_ts, to_offset, to_ts,
                    to_topic, None if to_topic else os.path.abspath(output) if output not in (None, "-") else "-",
                    fmt, merge_by_timestamp, *(("reencode",) if reencode else ()),
                    *(("decode", schema_registry, decode_errors) if decode else ()))
    state_path = Path(state_file) if state_file else state_dir() / f"{rid}.json"
    saved: dict[str, Any] | None = None
    if state_path.exists() and not restart:
        try:
            saved = json.loads(state_path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved is not None and saved.get("id") != rid:
            raise click.UsageError(f"{state_path} holds the state of another replay ({saved.get('id')}, "
                                   f"this one is {rid}); give another --state or --restart")

    nworkers = 1 if merge_by_timestamp else (parallel or os.cpu_count() or 1)
    # Workers fork first, before this process starts any librdkafka instance (whose threads a fork
    # would not copy); each waits for its Task on its own queue.
    if to_topic is not None and not reencode and not merge_by_timestamp:
        from . import replay_copy

        replay_copy.preload()  # imported once here, not once per worker after the fork
    ctx = multiprocessing.get_context("fork")
    events: Any = ctx.Queue()
    stop = ctx.Event()
    lock = ctx.Lock()
    fd = -1
    close_fd = False
    if to_topic is None:
        if output in (None, "-"):
            sys.stdout.flush()
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                fd = -1  # e.g. captured in a test: blocks come back over `events`
        else:
            try:
                fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o666)
            except OSError as exc:
                raise click.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="--output") from exc
            close_fd = True
            if stat.S_ISREG(os.fstat(fd).st_mode):  # not /dev/null, a pipe or a terminal
                keep = int(saved.get("output_bytes", 0)) if saved else 0
                os.ftruncate(fd, keep)
                os.lseek(fd, keep, os.SEEK_SET)
    queues = [ctx.Queue() for _ in range(nworkers)]
    procs = [ctx.Process(target=worker_main, args=(i, queues[i], events, stop, fd, lock), daemon=True)
             for i in range(nworkers)]
    for proc in procs:
        proc.start()
    progress = _Progress(err_console, topic, enabled=not quiet)
    stats = ReplayStats()
    state: dict[str, Any] = {"id": rid, "topic": topic, "to_topic": to_topic, "output": output,
                             "next": {}, "marks": {}, "output_bytes": 0}
    ranges: list[PartitionRange] = []
    finished = False
    given: set[int] = set()  # workers that were sent their Task (or None)
    old_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            bare = to_topic is not None and not reencode and not merge_by_timestamp  # a batch copy, likely
            if bare:
                ranges = plan_raw(bootstrap, topic, list(partitions) or None, from_offset, from_ts, to_offset, to_ts,
                                  timeout)
            else:
                consumer = _consumer(bootstrap)
                try:
                    ranges = plan(consumer, topic, list(partitions) or None, from_offset, from_ts, to_offset,
                                  to_ts, timeout)
                finally:
                    consumer.close()
            for r in ranges:
                if quiet:
                    break
                if from_offset is not None and from_offset < r.low:
                    err_console.print(f"[yellow]partition {r.partition}: offsets below {r.low} are gone "
                                      f"(retention); starting at {r.low}[/]")
                elif from_ts is not None and r.start == r.low and r.low > 0 and r.span > 0:
                    err_console.print(f"[yellow]partition {r.partition}: records before offset {r.low} are gone "
                                      f"(retention), and the first one left is not before "
                                      f"{from_timestamp}; starting at {r.low}[/]")
                if to_offset is not None and to_offset > r.high and r.high > r.start:
                    err_console.print(f"[yellow]partition {r.partition}: ends at offset {r.high}, before "
                                      f"--to-offset {to_offset}[/]")
            nparts, codec = 0, "none"
            batch_copy, copy_codec = False, None
            if to_topic is not None:
                if bare:
                    nparts, topic_codec = _target_info_raw(bootstrap, to_topic, timeout)
                else:
                    nparts, topic_codec = _target_info({"bootstrap.servers": bootstrap, **_QUIET_LIBRDKAFKA},
                                                       to_topic, timeout)
                codec = compression if compression != "topic" else (
                    topic_codec if topic_codec in _CODECS else "none")
                # Whole batches when every partition has its namesake in the target (replay_copy.py).
                batch_copy = not reencode and not merge_by_timestamp and all(r.partition < nparts for r in ranges)
                copy_codec = compression if compression != "topic" else (
                    topic_codec if topic_codec in _CODECS else "none" if topic_codec == "uncompressed" else None)
                mode = "batches" if batch_copy else "records"
                if saved is not None and saved.get("mode", "records") != mode:
                    raise ReplayError(f"{state_path} was saved by a copy of {saved.get('mode', 'records')}, this "
                                      f"one copies {mode} (the target's partitions changed?); --restart")
                state["mode"] = mode
            skip: dict[int, list[int]] = {}
            if saved is not None:
                for r in ranges:
                    nxt = saved.get("next", {}).get(str(r.partition))
                    if nxt is not None:
                        r.start = min(max(r.start, int(nxt)), r.end)
                state["next"] = dict(saved.get("next", {}))
                state["output_bytes"] = int(saved.get("output_bytes", 0))
                if to_topic is not None and saved.get("marks") and not no_replay_header and not batch_copy:
                    skip = _landed(bootstrap, to_topic, {int(p): m for p, m in saved["marks"].items()}, rid,
                                   timeout)
                state["marks"] = dict(saved.get("marks", {}))
                if not quiet:
                    err_console.print(f"resuming replay {rid} from {state_path}", highlight=False)
            if to_topic is not None and not no_replay_header and not state["marks"] and not batch_copy:
                # Before the first record is sent: where a re-run looks for what a killed run produced.
                state["marks"] = {str(tp): m for tp, m in _ends(bootstrap, to_topic, nparts, timeout).items()}
            groups = [[r for r in ranges if r.span > 0]] if merge_by_timestamp else split_among(ranges, nworkers)
            if not any(groups):
                groups = []
            producers: list[tuple[int, int]] = []
            copy_skip: dict[int, tuple[int, int]] = {}
            copy_continue: dict[int, tuple[int, int, int]] = {}
            if batch_copy:
                assert to_topic is not None
                from .replay_copy import CopyError, init_producer_id, list_offsets, metadata, target_tail

                known = [int(x) for x in (saved or {}).get("producer_ids", [])]
                saved_next = {int(p): int(t) for p, t in (saved or {}).get("target_next", {}).items()}
                saved_producers = {int(p): (int(v[0]), int(v[1]), int(v[2]))
                                   for p, v in (saved or {}).get("producers", {}).items()}
                state["producers"] = {str(p): list(v) for p, v in saved_producers.items()}
                todo = {r.partition for r in ranges if r.span > 0}
                try:
                    if saved_next:
                        # A killed run may have put batches in the target after its last checkpoint.
                        found = target_tail(bootstrap, to_topic, {p: t for p, t in saved_next.items() if p in todo},
                                            set(known), timeout)
                        copy_skip = {p: (n, saved_next[p]) for p, (n, _last) in found.items() if n}
                        copy_continue = _continued(found, saved_producers, state_path, todo)
                        state["target_next"] = {str(p): t for p, t in saved_next.items()}
                    else:  # before the first batch is sent: where this copy's batches will start
                        ends = list_offsets(metadata(bootstrap, [to_topic], timeout), to_topic,
                                            [r.partition for r in ranges], -1, timeout)
                        state["target_next"] = {str(r.partition): ends[r.partition] for r in ranges}
                    producers = [init_producer_id(bootstrap, timeout) for _ in groups]
                except CopyError as exc:
                    raise ReplayError(str(exc)) from exc
                except OSError as exc:
                    raise ReplayError(f"connection to the broker failed: {exc}") from exc
                state["producer_ids"] = known + [pid for pid, _ in producers]
                for group, (pid, epoch) in zip(groups, producers, strict=True):
                    for r in group:  # where a re-run looks for this run's batches still on their way
                        if r.partition not in copy_continue:
                            state["producers"][str(r.partition)] = [pid, epoch, 0]
            if to_topic is not None:
                write_state(state_path, state)
            if fmt == "csv" and (saved is None or (close_fd and not state["output_bytes"])):
                header = (",".join(CSV_COLUMNS) + "\n").encode()
                if fd >= 0:
                    _write_all(fd, header)
                else:
                    _write_stdout(header)
            for i, q in enumerate(queues):
                given.add(i)
                if i < len(groups):
                    q.put(Task(bootstrap, topic, [(r.partition, r.start, r.end) for r in groups[i]], fmt,
                               merge_by_timestamp, to_topic, nparts, codec,
                               None if to_topic is None or no_replay_header else rid,
                               {r.partition: skip.get(r.partition, []) for r in groups[i]}, idle_timeout, timeout,
                               producer=producers[i] if batch_copy else None, copy_codec=copy_codec,
                               copy_skip={r.partition: copy_skip[r.partition] for r in groups[i]
                                          if r.partition in copy_skip},
                               copy_continue={r.partition: copy_continue[r.partition] for r in groups[i]
                                              if r.partition in copy_continue},
                               registry=schema_registry if decode else None,
                               decode_errors_raw=decode_errors == "raw", acks=-1 if acks == "all" else 1))
                else:
                    q.put(None)
            progress.start(sum(r.span for r in ranges))
            running = set(range(len(groups)))
            worker_marks: dict[int, dict[int, int]] = {}
            last_state = time.monotonic()
            while running:
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    dead = [i for i in running if not procs[i].is_alive() and procs[i].exitcode not in (0, None)]
                    if dead:
                        raise ReplayError(f"worker {dead[0]} died (exit code {procs[dead[0]].exitcode})") from None
                    continue
                kind, wid = event[0], event[1]
                if kind == "data":
                    _write_stdout(event[2])
                elif kind == "progress":
                    _, _, recs, nbytes, nxt, length, marks, targets, producing = event
                    stats.records += recs
                    stats.bytes += nbytes
                    state["next"].update({str(p): o for p, o in nxt.items()})
                    state.setdefault("target_next", {}).update({str(p): o for p, o in targets.items()})
                    state.setdefault("producers", {}).update({str(p): list(v) for p, v in producing.items()})
                    if length >= 0:
                        state["output_bytes"] = max(state["output_bytes"], length)
                    if marks:
                        worker_marks[wid] = marks
                        state["marks"] = {str(tp): min(m[tp] for m in worker_marks.values())
                                          for tp in marks}
                    progress.update(stats)
                    if to_topic is not None and time.monotonic() - last_state >= (
                            1.0 if batch_copy else _CHECKPOINT_SECONDS):
                        write_state(state_path, state)
                        last_state = time.monotonic()
                elif kind == "done":
                    running.discard(wid)
                else:
                    if event[2] == _CLOSED:
                        ranges = []  # no state: a reader that stopped reading is not an interruption
                    raise ReplayError(event[2])
            finished = True
        except KeyboardInterrupt:
            raise _Interrupted() from None
        finally:
            stop.set()
            progress.stop()
            for i, q in enumerate(queues):
                if i not in given:
                    q.put(None)  # planning failed: nothing to do
            if not finished:
                # Every worker finishes its block (or its producer's flush) and reports it; what a
                # worker queued before it exited is read too, so the state never lags the output.
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    try:
                        event = events.get(timeout=0.1)
                    except queue.Empty:
                        if any(p.is_alive() for p in procs):
                            continue
                        break  # every worker has exited and its queue is drained
                    except KeyboardInterrupt:
                        break
                    if event[0] == "data":
                        _write_stdout(event[2])
                    elif event[0] == "progress":
                        _, wid, recs, nbytes, nxt, length, marks, targets, producing = event
                        stats.records += recs
                        state["next"].update({str(p): o for p, o in nxt.items()})
                        state.setdefault("target_next", {}).update({str(p): o for p, o in targets.items()})
                        state.setdefault("producers", {}).update({str(p): list(v) for p, v in producing.items()})
                        if length >= 0:
                            state["output_bytes"] = max(state["output_bytes"], length)
            for proc in procs:
                proc.join(max(0.0, 1.0))
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            signal.signal(signal.SIGTERM, old_term)
            if close_fd:
                os.close(fd)
            if finished:
                state_path.unlink(missing_ok=True)
            elif ranges:
                write_state(state_path, state)
    except _Interrupted:
        err_console.print(f"interrupted after {stats.records:,} record(s); run the same command again to "
                          f"continue (state in {state_path})", highlight=False)
        sys.exit(130)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    if not quiet:
        target = f"topic {to_topic}" if to_topic else ("stdout" if output in (None, "-") else output)
        err_console.print(f"replayed {stats.records:,} record(s), {stats.bytes / 1e6:.1f} MB, from "
                          f"{len([r for r in ranges if r.span])} partition(s) of {topic} to {target} in "
                          f"{stats.seconds:.1f}s ({stats.bytes / 1e6 / stats.seconds:.1f} MB/s)", highlight=False)

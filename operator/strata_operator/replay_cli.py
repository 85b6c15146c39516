"""`strata replay`: read a topic from any offset or timestamp and write it out, or re-produce it.

Records that only live in S3 are served by the broker like any others, so a replay from years back
is the same Kafka fetch as a replay from a second ago (it is just colder).

Output (`--output FILE|-`): one JSON object per line::

    {"topic": "orders", "partition": 0, "offset": 42, "timestamp": 1700000000000,
     "timestamp_type": "CreateTime", "key": "order-1", "value": "{\"total\": 12}",
     "headers": [{"key": "trace", "value": "abc"}]}

A key, value or header value that is valid UTF-8 is written as a string under its own name
(`key`, `value`, `headers[].value`); anything else is written as standard base64 under
`key_b64`, `value_b64` or `headers[].value_b64` instead, so exactly one of the two names is
present, and a null stays `null` under the plain name. Text stays readable with `jq`, and no
byte is lost.

Range: `[from, to)`, per partition. `--to-offset N` stops before offset N, `--to-timestamp T`
stops before the first record at or after T; without either, the replay stops at the end offset
(high watermark) each partition had when the replay started, so it always terminates.

Re-produce (`--to-topic T2`): keys, values, headers and timestamps are preserved; a record goes to
the same partition number when the target topic has it (so per-partition order is preserved),
otherwise the producer's partitioner chooses from the key. The producer is idempotent. Mind the
target's `retention.ms`: records keep their original timestamps, so old ones are due for deletion
at once in a topic with time-based retention.

Exit codes: 0 done, 2 usage error, 1 broker or I/O error.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import click

DEFAULT_BOOTSTRAP = os.environ.get("STRATA_BOOTSTRAP", "localhost:9092")
_QUIET_LIBRDKAFKA = {"log_level": 2}  # critical only: our own messages explain what went wrong


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


def _timestamp_of(msg: Any) -> tuple[int | None, str | None]:
    import confluent_kafka

    ts_type, ts = msg.timestamp()
    if ts_type == confluent_kafka.TIMESTAMP_CREATE_TIME:
        return ts, "CreateTime"
    if ts_type == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME:
        return ts, "LogAppendTime"
    return None, None


class JsonLinesSink:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, msg: Any) -> None:
        ts, ts_type = _timestamp_of(msg)
        obj = record_to_json(msg.topic(), msg.partition(), msg.offset(), ts, ts_type, msg.key(), msg.value(),
                             msg.headers())
        self.stream.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        self.stream.write("\n")

    def close(self) -> None:
        self.stream.flush()


class ProduceSink:
    """Re-produce into another topic, preserving keys, values, headers, timestamps (and partitions where they exist)."""

    def __init__(self, bootstrap: str, topic: str, timeout: float) -> None:
        import confluent_kafka

        self.topic = topic
        self.timeout = timeout
        self.errors: list[str] = []
        self.producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                                 "linger.ms": 20, "batch.size": 512 * 1024,
                                                 "client.id": "strata-replay", **_QUIET_LIBRDKAFKA})
        try:
            # Asking for the topic by name lets a broker with auto-creation create it, as any producer would.
            meta = self.producer.list_topics(topic, timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"cannot reach the broker for topic {topic!r}: {exc}") from exc
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            reason = tmeta.error.str() if tmeta is not None and tmeta.error is not None else "not found"
            raise ReplayError(f"target topic {topic!r} is not available: {reason}")
        self.partitions = len(tmeta.partitions)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def write(self, msg: Any) -> None:
        ts, _ = _timestamp_of(msg)
        kwargs: dict[str, Any] = {"key": msg.key(), "value": msg.value(), "on_delivery": self._on_delivery}
        if msg.headers():
            kwargs["headers"] = msg.headers()
        if ts is not None:
            kwargs["timestamp"] = ts
        if msg.partition() < self.partitions:
            kwargs["partition"] = msg.partition()
        while True:
            try:
                self.producer.produce(self.topic, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        if self.errors:
            raise ReplayError(f"producing to {self.topic!r} failed: {self.errors[0]}")

    def close(self) -> None:
        remaining = self.producer.flush(self.timeout)
        if self.errors:
            raise ReplayError(f"producing to {self.topic!r} failed: {self.errors[0]}")
        if remaining:
            raise ReplayError(f"{remaining} record(s) not acknowledged by the broker within {self.timeout:.0f}s")


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
    ranges = []
    for p in chosen:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
        except confluent_kafka.KafkaException as exc:
            raise ReplayError(f"cannot read the offsets of {topic}/{p}: {exc}") from exc
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


def run_replay(bootstrap: str, topic: str, ranges_for: Callable[[Any], list[PartitionRange]], sink: Any,
               on_progress: Callable[[ReplayStats], None] | None = None, idle_timeout: float = 60.0) -> ReplayStats:
    """Read every planned partition from start to end into the sink."""
    import confluent_kafka
    from confluent_kafka import KafkaError, TopicPartition

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"strata-replay-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "client.id": "strata-replay", "fetch.max.bytes": 64 << 20,
        **_QUIET_LIBRDKAFKA})
    _TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TIMED_OUT}
    stats = ReplayStats()
    try:
        ranges = ranges_for(consumer)
        remaining = {r.partition: r.end for r in ranges if r.span > 0}
        if on_progress is not None:
            on_progress(stats)
        if not remaining:
            return stats
        consumer.assign([TopicPartition(topic, r.partition, r.start) for r in ranges if r.span > 0])
        last_progress = time.monotonic()

        def done(partition: int) -> None:
            if remaining.pop(partition, None) is not None:
                consumer.pause([TopicPartition(topic, partition)])

        while remaining:
            msgs = consumer.consume(1000, 0.5)
            if msgs:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > idle_timeout:
                raise ReplayError(f"no records for {idle_timeout:.0f}s from partition(s) "
                                  f"{', '.join(map(str, sorted(remaining)))}; is the broker up?")
            for msg in msgs:
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in remaining and msg.offset() >= remaining[p]:
                            done(p)
                        continue
                    if not err.fatal() and (err.retriable() or err.code() in _TRANSIENT):
                        continue  # librdkafka reconnects by itself; --idle-timeout bounds the wait
                    raise ReplayError(f"fetch from {topic}/{p} failed: {err.str()}")
                end = remaining.get(p)
                if end is None:
                    continue
                if msg.offset() >= end:
                    done(p)
                    continue
                sink.write(msg)
                stats.records += 1
                stats.bytes += len(msg.value() or b"") + len(msg.key() or b"")
                stats.per_partition[p] = stats.per_partition.get(p, 0) + 1
                if msg.offset() + 1 >= end:
                    done(p)
            if on_progress is not None:
                on_progress(stats)
        sink.close()
        return stats
    finally:
        consumer.close()


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
              help="Write JSON lines here ('-' = stdout, the default unless --to-topic is given).")
@click.option("--to-topic", default=None, help="Re-produce the records into this topic instead of writing JSON.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for metadata, offsets and final acknowledgements.")
@click.option("--idle-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Give up when no record arrives for this many seconds before the end is reached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary on stderr.")
def replay(bootstrap: str, topic: str, from_offset: int | None, from_timestamp: str | None, to_offset: int | None,
           to_timestamp: str | None, partitions: tuple[int, ...], output: str | None, to_topic: str | None,
           timeout: float, idle_timeout: float, quiet: bool) -> None:
    """Replay a topic from any offset or time (hot or in S3) as JSON lines, or into another topic.

    The range is [from, to) in each partition; without --to-*, it ends at the end offset each
    partition had when the replay started. Binary keys/values go to key_b64/value_b64.
    """
    if (from_offset is None) == (from_timestamp is None):
        raise click.UsageError("give exactly one of --from-offset and --from-timestamp")
    if to_offset is not None and to_timestamp is not None:
        raise click.UsageError("give at most one of --to-offset and --to-timestamp")
    if to_topic is not None and output is not None:
        raise click.UsageError("--output and --to-topic are alternatives; give one")
    if to_topic == topic:
        raise click.UsageError("--to-topic must differ from --topic")
    try:
        from_ts = parse_timestamp(from_timestamp) if from_timestamp is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from-timestamp") from exc
    try:
        to_ts = parse_timestamp(to_timestamp) if to_timestamp is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to-timestamp") from exc

    from rich.console import Console

    err_console = Console(stderr=True)
    stream: TextIO | None = None
    try:
        if to_topic is not None:
            sink: Any = ProduceSink(bootstrap, to_topic, timeout)
        else:
            if output in (None, "-"):
                stream = sys.stdout
            else:
                try:
                    stream = open(output, "w", encoding="utf-8", newline="\n")
                except OSError as exc:
                    raise click.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="--output") from exc
            sink = JsonLinesSink(stream)
        progress = _Progress(err_console, topic, enabled=not quiet)
        ranges: list[PartitionRange] = []

        def planned(consumer: Any) -> list[PartitionRange]:
            ranges.extend(plan(consumer, topic, list(partitions) or None, from_offset, from_ts, to_offset, to_ts,
                               timeout))
            for r in ranges:
                if from_offset is not None and from_offset < r.low and not quiet:
                    err_console.print(f"[yellow]partition {r.partition}: offsets below {r.low} are gone "
                                      f"(retention); starting at {r.low}[/]")
            progress.start(sum(r.span for r in ranges))
            return ranges

        try:
            stats = run_replay(bootstrap, topic, planned, sink, progress.update, idle_timeout)
        finally:
            progress.stop()
        if not quiet:
            target = f"topic {to_topic}" if to_topic else ("stdout" if stream is sys.stdout else output)
            err_console.print(f"replayed {stats.records:,} record(s), {stats.bytes / 1e6:.1f} MB, from "
                              f"{len([r for r in ranges if r.span])} partition(s) of {topic} to {target} in "
                              f"{stats.seconds:.1f}s ({stats.bytes / 1e6 / stats.seconds:.1f} MB/s)", highlight=False)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()


class _Progress:
    """records, MB, MB/s and ETA on stderr, driven by the offsets still to read."""

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

"""`strata replay` against a real tiered broker: most of the replayed data lives only in S3."""

from __future__ import annotations

import heapq
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from brokerproc import BrokerProcess
from click.testing import CliRunner
from kafka import KafkaAdminClient, TopicPartition
from kafka.protocol.consumer.offsets import OffsetSpec
from kafkaclients import create_topic
from s3server import CREDENTIALS
from strata_cli.main import main
from strata_cli.replay import parse_timestamp, record_from_json, record_to_json

TOPIC = "replay-src"
PARTITIONS = 2
N = 3000
TS0 = 1_600_000_000_000
STEP_MS = 1000


@dataclass(frozen=True)
class Sent:
    i: int
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...]


def make_record(i: int) -> Sent:
    key = None if i % 7 == 0 else f"key-{i % 50}".encode()
    body = f"record {i:06d} ".encode().ljust(900, b".")
    value = (b"\xff\xfe\x00" + body) if i % 10 == 0 else body  # every tenth is not UTF-8
    headers: tuple[tuple[str, bytes | None], ...] = ()
    if i % 3 == 0:
        headers = (("seq", str(i).encode()), ("bin", b"\x80\x81"), ("none", None))
    return Sent(i, i % PARTITIONS, i // PARTITIONS, TS0 + i * STEP_MS, key, value, headers)


def produce(bootstrap: str, topic: str, records: list[Sent]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                         "linger.ms": 10})
    errors: list[object] = []
    for r in records:
        while True:
            try:
                producer.produce(topic, key=r.key, value=r.value, partition=r.partition, timestamp=r.timestamp,
                                 headers=list(r.headers) or None,
                                 on_delivery=lambda err, _m: errors.append(err) if err else None)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]


def offsets(bootstrap: str, topic: str, spec: OffsetSpec) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        got = admin.list_partition_offsets({TopicPartition(topic, p): spec for p in range(PARTITIONS)})
    finally:
        admin.close()
    return {tp.partition: o.offset for tp, o in got.items()}


@dataclass
class Source:
    broker: BrokerProcess
    records: list[Sent]

    def expected(self, keep) -> list[Sent]:  # type: ignore[no-untyped-def]
        return sorted((r for r in self.records if keep(r)), key=lambda r: (r.partition, r.offset))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, s3_server) -> Iterator[Source]:
    """A tiered broker holding N records in two partitions, most of them in S3 only."""
    bucket = s3_server.new_bucket()
    settings = bucket.broker_settings(**{"segment.bytes": str(64 << 10), "tiered.upload.interval.ms": "300",
                                         "log.retention.check.interval.ms": "200"})
    broker = BrokerProcess(tmp_path_factory.mktemp("replay") / "broker", settings=settings, env=CREDENTIALS).start()
    try:
        create_topic(broker.bootstrap, TOPIC, PARTITIONS, {"local.retention.bytes": str(192 << 10),
                                                           "retention.ms": "-1"})
        records = [make_record(i) for i in range(N)]
        produce(broker.bootstrap, TOPIC, records)
        deadline = time.monotonic() + 60
        while min(offsets(broker.bootstrap, TOPIC, OffsetSpec.EARLIEST_LOCAL).values()) < N // PARTITIONS // 2:
            assert time.monotonic() < deadline, "data did not move to S3"
            time.sleep(0.3)
        yield Source(broker, records)
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted replays save their state under $XDG_STATE_HOME: each test has its own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def strata(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "strata_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_same(lines: list[dict], expected: list[Sent]) -> None:
    got = sorted(lines, key=lambda o: (o["partition"], o["offset"]))
    assert [(o["partition"], o["offset"]) for o in got] == [(r.partition, r.offset) for r in expected]
    for obj, r in zip(got, expected, strict=True):
        key, value, headers = record_from_json(obj)
        assert (key, value, tuple(headers)) == (r.key, r.value, r.headers), obj
        assert obj["timestamp"] == r.timestamp and obj["topic"] == TOPIC


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_replay_everything_from_offset_zero_reads_through_s3(source: Source, tmp_path: Path) -> None:
    cold = offsets(source.broker.bootstrap, TOPIC, OffsetSpec.EARLIEST_LOCAL)
    assert all(start > 0 for start in cold.values())  # offsets below these are served from S3 only
    out = tmp_path / "all.jsonl"
    result = strata("replay", "--bootstrap", source.broker.bootstrap, "--topic", TOPIC, "--from-offset", "0",
                    "--output", str(out))
    assert result.returncode == 0, result.stderr
    check_same(read_lines(out), source.expected(lambda r: True))
    assert f"replayed {N:,} record(s)" in result.stderr
    # The encoding documented in the module: text as text, binary under *_b64, headers in order.
    first = min(read_lines(out), key=lambda o: (o["partition"], o["offset"]))
    assert "value_b64" in first and "value" not in first and first["key"] is None
    assert first["headers"] == [{"key": "seq", "value": "0"}, {"key": "bin", "value_b64": "gIE="},
                                {"key": "none", "value": None}]


def test_replay_offset_range_of_one_partition(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "range.jsonl"
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--partition", "1",
                    "--from-offset", "100", "--to-offset", "1200", "-o", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_same(read_lines(out), source.expected(lambda r: r.partition == 1 and 100 <= r.offset < 1200))


def test_replay_by_timestamp_to_stdout(source: Source) -> None:
    lo, hi = TS0 + 250 * STEP_MS, TS0 + 2100 * STEP_MS + 500  # the upper bound falls between two records
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--from-timestamp", iso(lo),
                    "--to-timestamp", iso(hi))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    check_same(lines, source.expected(lambda r: lo <= r.timestamp < hi))


@pytest.mark.parametrize("mode", ["batches", "acks1", "reencode"])
def test_replay_into_another_topic_preserves_records(source: Source, mode: str) -> None:
    target = f"replay-copy-{mode}"
    # Preserved timestamps are from 2020: a target with time-based retention would drop them at once.
    create_topic(source.broker.bootstrap, target, PARTITIONS, {"retention.ms": "-1"})
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--from-offset", "0",
                    "--to-topic", target, "--to-offset", "1000",
                    *{"batches": [], "acks1": ["--acks", "1"], "reencode": ["--reencode"]}[mode])
    assert result.returncode == 0, result.stderr
    expected = source.expected(lambda r: r.offset < 1000)
    got = read_topic(source.broker.bootstrap, target, PARTITIONS, len(expected))
    assert len(got) == len(expected)
    for msg, r in zip(got, expected, strict=True):
        # The target has as many partitions: each record keeps its partition, hence its order.
        assert (msg.partition(), msg.offset()) == (r.partition, r.offset)
        assert (msg.key(), msg.value(), msg.timestamp()[1]) == (r.key, r.value, r.timestamp)
        if mode != "reencode":  # whole batches, verbatim: nothing added
            assert tuple(msg.headers() or ()) == r.headers
        else:
            *own, (name, value) = msg.headers()
            assert tuple(own) == r.headers  # the record's own headers, in order, then the replay's
            assert name == "strata-replay" and value.decode().endswith(f":{r.partition}:{r.offset}")


def read_topic(bootstrap: str, topic: str, partitions: int, n: int) -> list[confluent_kafka.Message]:
    """The first n records of a topic (every partition from 0), sorted by (partition, offset)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.monotonic_ns()}",
                                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    got = []
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
    finally:
        consumer.close()
    return sorted(got, key=lambda m: (m.partition(), m.offset()))


def test_usage_and_broker_errors_have_distinct_exit_codes(source: Source) -> None:
    runner = CliRunner()
    bootstrap = source.broker.bootstrap
    for args in (["-t", TOPIC],  # neither --from-*
                 ["-t", TOPIC, "--from-offset", "0", "--from-timestamp", "2020-01-01"],
                 ["-t", TOPIC, "--from-offset", "0", "--to-offset", "5", "--to-timestamp", "2020-01-01"],
                 ["-t", TOPIC, "--from-timestamp", "yesterday-ish"],
                 ["-t", TOPIC, "--from-offset", "-3"],
                 ["-t", TOPIC, "--from-offset", "0", "--to-topic", TOPIC],
                 ["-t", TOPIC, "--from-offset", "0", "--to-topic", "x", "--output", "-"]):
        result = runner.invoke(main, ["replay", "-b", bootstrap, *args])
        assert result.exit_code == 2, (args, result.output)
    result = runner.invoke(main, ["replay", "-b", bootstrap, "-t", "no-such-topic", "--from-offset", "0"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(main, ["replay", "-b", bootstrap, "-t", TOPIC, "--from-offset", "0", "-p", "9"])
    assert result.exit_code == 1 and "not 9" in result.output
    result = runner.invoke(main, ["replay", "-b", "127.0.0.1:1", "-t", TOPIC, "--from-offset", "0",
                                  "--timeout", "1"])
    assert result.exit_code == 1 and "cannot reach the broker" in result.output


def test_past_the_end_and_empty_ranges_finish_at_once(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "none.jsonl"
    for args in (["--from-offset", str(N)], ["--from-timestamp", iso(TS0 + 10 * N * STEP_MS)],
                 ["--from-offset", "500", "--to-offset", "500"]):
        result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "-o", str(out), *args)
        assert result.returncode == 0, result.stderr
        assert out.read_text() == ""


def test_json_encoding_round_trips() -> None:
    obj = record_to_json("t", 0, 5, 1, "CreateTime", b"\x00\xffkey", "välue".encode(),
                         [("h", b"\xc3\x28"), ("u", "ü".encode()), ("n", None)])
    assert obj["key_b64"] == "AP9rZXk=" and "key" not in obj and obj["value"] == "välue"
    assert obj["headers"] == [{"key": "h", "value_b64": "wyg="}, {"key": "u", "value": "ü"},
                              {"key": "n", "value": None}]
    assert record_from_json(json.loads(json.dumps(obj))) == (b"\x00\xffkey", "välue".encode(),
                                                             [("h", b"\xc3\x28"), ("u", "ü".encode()), ("n", None)])
    assert parse_timestamp("2020-09-13T12:26:40Z") == TS0
    assert parse_timestamp("2020-09-13T12:26:40") == TS0  # naive = UTC
    assert parse_timestamp("2020-09-13T14:26:40+02:00") == TS0
    assert parse_timestamp(str(TS0)) == TS0


# ---- the parallel rewrite: same bytes as a single consumer, formats, merge, interrupt and resume ----

CODEC_TOPIC = "replay-codecs"
CODEC_PARTITIONS = 3
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
TRICKY_TEXT = ["plain", "", "quote \" backslash \\ slash /", "ctrl \x00\x01\x1f\x7f \b\f\n\r\t", "\u2028\u2029",
               "emoji 🎉 ä 中文", "</script>", "\ufeffbom", "x" * 3000]
TRICKY_BYTES = [b"\xff\xfe\x00", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", bytes(range(256)), b"\xf4\x90\x80\x80"]


def codec_record(i: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None, int]:
    """(key, value, headers, timestamp) of the i-th record of the codecs topic: text, binary and nulls."""
    texts = [t.encode() for t in TRICKY_TEXT]
    pool = texts + TRICKY_BYTES
    key = None if i % 11 == 0 else pool[i % len(pool)] + str(i).encode()
    value = None if i % 13 == 0 else pool[(i * 7) % len(pool)]
    headers = None
    if i % 4 == 0:
        headers = [("t", pool[i % len(pool)]), ("n", None), ("ü-name", b"\x00\xff")]
    return key, value, headers, TS0 + (i * 7919) % 5000  # timestamps out of order within a partition too


@pytest.fixture(scope="module")
def codec_topic(source: Source) -> int:
    """A topic written by one producer per codec (none, gzip, snappy, lz4, zstd); returns the record count."""
    create_topic(source.broker.bootstrap, CODEC_TOPIC, CODEC_PARTITIONS, {"retention.ms": "-1"})
    n = 0
    errors: list[object] = []
    for c, codec in enumerate(CODECS):
        producer = confluent_kafka.Producer({"bootstrap.servers": source.broker.bootstrap, "compression.type": codec,
                                             "linger.ms": 20, "enable.idempotence": True})
        for j in range(300):
            key, value, headers, ts = codec_record(c * 300 + j)
            producer.produce(CODEC_TOPIC, key=key, value=value, headers=headers, timestamp=ts,
                             partition=(c + j) % CODEC_PARTITIONS,
                             on_delivery=lambda err, _m: errors.append(err) if err else None)
            n += 1
        assert producer.flush(60) == 0 and not errors, errors[:3]
    return n


def reference_lines(bootstrap: str, topic: str, partitions: int) -> dict[int, list[bytes]]:
    """The straightforward reading: one consumer, every partition from 0 to its end, each record as
    record_to_json + json.dumps(ensure_ascii=False, compact) + newline (the pre-parallel code path)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"ref-{time.monotonic_ns()}",
                                         "enable.auto.commit": False, "enable.partition.eof": True})
    lines: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    try:
        ends = {p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
        consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(partitions)])
        left = {p for p, e in ends.items() if e > 0}
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                ts_type, ts = msg.timestamp()
                name = {confluent_kafka.TIMESTAMP_CREATE_TIME: "CreateTime",
                        confluent_kafka.TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}.get(ts_type)
                obj = record_to_json(msg.topic(), msg.partition(), msg.offset(), ts if name else None, name,
                                     msg.key(), msg.value(), msg.headers())
                lines[msg.partition()].append(
                    (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
        assert not left, f"reference read incomplete: {left}"
    finally:
        consumer.close()
    return lines


def by_partition(data: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for line in data.splitlines(keepends=True):
        out.setdefault(json.loads(line)["partition"], []).append(line)
    return out


def test_parallel_json_is_byte_identical_to_a_single_consumer(source: Source, codec_topic: int,
                                                              tmp_path: Path) -> None:
    ref = reference_lines(source.broker.bootstrap, CODEC_TOPIC, CODEC_PARTITIONS)
    assert sum(map(len, ref.values())) == codec_topic
    for parallel in ("3", "1"):
        out = tmp_path / f"p{parallel}.jsonl"
        result = strata("replay", "-b", source.broker.bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0",
                        "--parallel", parallel, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert f"replayed {codec_topic:,} record(s)" in result.stderr
        got = by_partition(out.read_bytes())
        for p in range(CODEC_PARTITIONS):
            assert got.get(p, []) == ref[p], f"partition {p} differs with --parallel {parallel}"
    # And the big S3-backed topic, whose text and binary values come in both forms.
    out = tmp_path / "source.jsonl"
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--from-offset", "0", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert by_partition(out.read_bytes()) == reference_lines(source.broker.bootstrap, TOPIC, PARTITIONS)


class _Msg:
    """The accessors of a confluent_kafka.Message, over given fields (input for the encoder)."""

    def __init__(self, partition: int, offset: int, ts: tuple[int, int], key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes | None]] | None) -> None:
        self._f = (partition, offset, ts, key, value, headers)

    def partition(self) -> int:
        return self._f[0]

    def offset(self) -> int:
        return self._f[1]

    def timestamp(self) -> tuple[int, int]:
        return self._f[2]

    def key(self) -> bytes | None:
        return self._f[3]

    def value(self) -> bytes | None:
        return self._f[4]

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._f[5]


def test_json_encoder_follows_the_format_spec_byte_for_byte() -> None:
    from strata_cli.replay import ENCODERS

    pool = [t.encode() for t in TRICKY_TEXT] + TRICKY_BYTES + [None]
    msgs = []
    for i, data in enumerate(pool):
        ts = [(1, TS0 + i), (2, TS0 - i), (0, -1)][i % 3]  # CreateTime, LogAppendTime, none
        headers = [("h", data), ("é\u2028", pool[(i + 3) % len(pool)])] if i % 2 else None
        msgs.append(_Msg(i % 4, 10 ** 12 + i, ts, pool[(i + 5) % len(pool)], data, headers))
    block, size = ENCODERS["json"]("tö\"pic")(msgs)
    expected = b""
    for m in msgs:
        ts_type, ts = m.timestamp()
        name = {1: "CreateTime", 2: "LogAppendTime"}.get(ts_type)
        obj = record_to_json("tö\"pic", m.partition(), m.offset(), ts if name else None, name, m.key(), m.value(),
                             m.headers())
        expected += (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    assert block == expected
    assert size == sum(len(m.key() or b"") + len(m.value() or b"") for m in msgs)


def batch_codecs(bootstrap: str, topic: str, partition: int) -> list[tuple[int, int]]:
    """(codec, record count) of every record batch of a partition, read with a bare Fetch."""
    from kafka.protocol.consumer import FetchRequest
    from rawclient import RawConnection

    conn = RawConnection(bootstrap)
    out: list[tuple[int, int]] = []
    position = 0
    P = FetchRequest.FetchTopic.FetchPartition
    try:
        while True:
            resp = conn.request(FetchRequest(
                version=11, replica_id=-1, max_wait_ms=10, min_bytes=1, max_bytes=8 << 20, isolation_level=0,
                session_id=0, session_epoch=-1, topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                    P(partition=partition, current_leader_epoch=-1, fetch_offset=position, log_start_offset=-1,
                      partition_max_bytes=8 << 20)])], forgotten_topics_data=[], rack_id=""))
            records = resp.responses[0].partitions[0].records or b""
            if not records:
                return out
            pos = 0
            while pos + 61 <= len(records):
                base, length, _, _, _, attrs, lod = struct.unpack_from(">qiibIhi", records, pos)
                (count,) = struct.unpack_from(">i", records, pos + 57)
                pos += length + 12
                if pos > len(records):
                    break
                if base >= position:
                    out.append((attrs & 7, count))
                    position = base + lod + 1
    finally:
        conn.close()


def same_records(got: list[confluent_kafka.Message], want: list[confluent_kafka.Message], shift: int = 0) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.partition(), a.offset() + shift, a.key(), a.value(), a.headers(), a.timestamp()) == (
            b.partition(), b.offset(), b.key(), b.value(), b.headers(), b.timestamp())


def test_batch_copy_is_record_for_record_identical_for_every_codec(source: Source, codec_topic: int) -> None:
    """Batches of all five codecs, binary and null keys and values, headers (null ones too):
    the copy reads record for record as the source, each batch still in its own codec; a range
    inside batches, a target asking for another codec, and a target with fewer partitions too."""
    bootstrap = source.broker.bootstrap
    src = read_topic(bootstrap, CODEC_TOPIC, CODEC_PARTITIONS, codec_topic)
    assert len(src) == codec_topic
    whole = f"codecs-copy-{time.monotonic_ns()}"
    create_topic(bootstrap, whole, CODEC_PARTITIONS, {"retention.ms": "-1"})
    result = strata("replay", "-b", bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0", "--to-topic", whole)
    assert result.returncode == 0, result.stderr
    assert f"replayed {codec_topic:,} record(s)" in result.stderr
    same_records(read_topic(bootstrap, whole, CODEC_PARTITIONS, codec_topic), src)
    for p in range(CODEC_PARTITIONS):
        codecs = batch_codecs(bootstrap, CODEC_TOPIC, p)
        assert {c for c, _ in codecs} == {0, 1, 2, 3, 4}  # the source holds every codec
        assert batch_codecs(bootstrap, whole, p) == codecs  # verbatim: same batches, same codecs

    # A range that starts and ends inside batches: those two are rebuilt, the rest copied.
    part = f"codecs-part-{time.monotonic_ns()}"
    create_topic(bootstrap, part, CODEC_PARTITIONS, {"retention.ms": "-1"})
    result = strata("replay", "-b", bootstrap, "-t", CODEC_TOPIC, "--from-offset", "7", "--to-offset", "433",
                    "--to-topic", part, "-q")
    assert result.returncode == 0, result.stderr
    want = [m for m in src if 7 <= m.offset() < 433]
    same_records(read_topic(bootstrap, part, CODEC_PARTITIONS, len(want)), want, shift=7)

    # A target whose compression.type names a codec: every batch recompressed to it, records as they were.
    zstd = f"codecs-zstd-{time.monotonic_ns()}"
    create_topic(bootstrap, zstd, CODEC_PARTITIONS, {"retention.ms": "-1", "compression.type": "zstd"})
    result = strata("replay", "-b", bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0", "--to-topic", zstd, "-q")
    assert result.returncode == 0, result.stderr
    same_records(read_topic(bootstrap, zstd, CODEC_PARTITIONS, codec_topic), src)
    for p in range(CODEC_PARTITIONS):
        assert {c for c, _ in batch_codecs(bootstrap, zstd, p)} == {4}

    # Fewer partitions in the target: record by record (the partitioner chooses), the replay header added.
    one = f"codecs-one-{time.monotonic_ns()}"
    create_topic(bootstrap, one, 1, {"retention.ms": "-1"})
    result = strata("replay", "-b", bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0", "--to-topic", one, "-q")
    assert result.returncode == 0, result.stderr
    got = read_topic(bootstrap, one, 1, codec_topic)
    assert len(got) == codec_topic
    assert all(m.headers()[-1][0] == "strata-replay" for m in got)
    key = {(int(p), int(o)): m for m in got for _, p, o in [m.headers()[-1][1].decode().split(":")]}
    for m in src:
        copy = key[(m.partition(), m.offset())]
        assert (copy.key(), copy.value(), copy.headers()[:-1] or None, copy.timestamp()) == (
            m.key(), m.value(), m.headers(), m.timestamp())


def test_raw_and_csv_formats(source: Source, codec_topic: int, tmp_path: Path) -> None:
    from strata_cli.replay import read_raw

    ref = reference_lines(source.broker.bootstrap, CODEC_TOPIC, CODEC_PARTITIONS)
    raw = tmp_path / "p1.raw"
    result = strata("replay", "-b", source.broker.bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0", "-p", "1",
                    "--format", "raw", "-o", str(raw), "-q")
    assert result.returncode == 0, result.stderr
    with raw.open("rb") as f:
        values = list(read_raw(f))
    assert values == [record_from_json(json.loads(line))[1] for line in ref[1]]

    import csv

    out = tmp_path / "all.csv"
    result = strata("replay", "-b", source.broker.bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0",
                    "--format", "csv", "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == codec_topic
    by_p: dict[int, list[dict]] = {}
    for row in rows:
        by_p.setdefault(int(row["partition"]), []).append(row)
    for p, lines in ref.items():
        assert len(by_p[p]) == len(lines)
        for row, line in zip(by_p[p], lines, strict=True):
            obj = json.loads(line)
            assert int(row["offset"]) == obj["offset"] and int(row["timestamp"]) == obj["timestamp"]
            for name in ("key", "value"):
                want = obj.get(name)
                assert row[name] == (want if want is not None else "") and row[f"{name}_b64"] == obj.get(
                    f"{name}_b64", "")
            assert json.loads(row["headers"]) == obj["headers"]


def test_merge_by_timestamp_gives_one_ordered_stream(source: Source, codec_topic: int) -> None:
    result = strata("replay", "-b", source.broker.bootstrap, "-t", CODEC_TOPIC, "--from-offset", "0",
                    "--merge-by-timestamp", "-q")
    assert result.returncode == 0, result.stderr
    got = [line for line in result.stdout.split("\n") if line]  # not splitlines(): U+2028 stays raw in JSON
    objs = [json.loads(line) for line in got]
    assert len(objs) == codec_topic
    # A k-way merge: each partition keeps its order (its timestamps are not sorted here), and the next
    # record is always the earliest of the partitions' next ones (ties: lower partition first).
    per_partition = [[o for o in objs if o["partition"] == p] for p in range(CODEC_PARTITIONS)]
    for seq in per_partition:
        assert [o["offset"] for o in seq] == sorted(o["offset"] for o in seq)
    assert objs == list(heapq.merge(*per_partition, key=lambda o: (o["timestamp"], o["partition"])))
    ref = reference_lines(source.broker.bootstrap, CODEC_TOPIC, CODEC_PARTITIONS)
    assert sorted(line.encode() + b"\n" for line in got) == sorted(
        line for lines in ref.values() for line in lines)


def test_bad_ranges_get_one_line_errors(source: Source) -> None:
    runner = CliRunner()
    for args, words in ((["--from-offset", "10", "--to-offset", "5"], "is after --to-offset"),
                        (["--from-timestamp", "2021-01-01", "--to-timestamp", "2020-01-01"],
                         "is after --to-timestamp")):
        result = runner.invoke(main, ["replay", "-b", source.broker.bootstrap, "-t", TOPIC, *args])
        assert result.exit_code == 2 and words in result.output, result.output
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--from-offset", "0", "--to-offset",
                    str(N), "-p", "0", "-o", os.devnull)
    assert result.returncode == 0, result.stderr
    assert f"partition 0: ends at offset {N // PARTITIONS}, before --to-offset {N}" in result.stderr


def test_interrupted_replay_resumes_without_a_gap_or_a_duplicate(source: Source, tmp_path: Path) -> None:
    """Ctrl-C while the output (a pipe nobody reads) holds the workers back; the same command again
    writes the rest."""
    argv = [sys.executable, "-m", "strata_cli", "replay", "-b", source.broker.bootstrap, "-t", TOPIC,
            "--from-offset", "0", "--parallel", "2"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(300_000)  # then nobody reads: the workers block on the full pipe
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    first += proc.stdout.read()  # what the workers finish writing as they stop
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"run the same command again" in err
    states = list((tmp_path / "state" / "strata" / "replay").glob("*.json"))
    assert len(states) == 1
    done_first = len(first.splitlines())
    assert 0 < done_first < N
    second = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr.decode()
    assert b"resuming replay" in second.stderr
    assert not list((tmp_path / "state" / "strata" / "replay").glob("*.json"))  # done: the state is gone
    lines = [json.loads(line) for line in (first + second.stdout).splitlines()]
    assert len(lines) == N  # no duplicate, no gap
    check_same(lines, source.expected(lambda r: True))
    for p in range(PARTITIONS):  # and each partition in order across the two runs
        offsets_seen = [o["offset"] for o in lines if o["partition"] == p]
        assert offsets_seen == sorted(offsets_seen)


@pytest.mark.parametrize("mode", ["batches", "reencode", "batches-ctrl-c"])
def test_to_topic_killed_hard_then_rerun_never_duplicates(broker: BrokerProcess, tmp_path: Path, mode: str) -> None:
    """The whole process group SIGKILLed mid-copy (twice for batches), then run again: every record
    lands once. Batches: the re-run reads the target from the checkpoint's target offsets and walks
    past what the killed run sent after it; records: it skips the source offsets named by the
    strata-replay headers found there. batches-ctrl-c: SIGINT instead (exit 130, state saved after
    the requests in flight are answered), then the same command finishes the copy."""
    src, dst, n = f"big-{time.monotonic_ns()}", f"copy-{time.monotonic_ns()}", 40_000
    create_topic(broker.bootstrap, src, 2, {"retention.ms": "-1"})
    create_topic(broker.bootstrap, dst, 2, {"retention.ms": "-1"})
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20,
                                         "batch.size": 64_000})
    for i in range(n):
        while True:
            try:
                producer.produce(src, key=str(i).encode(), value=os.urandom(1000), partition=i % 2,
                                 headers=[("i", str(i).encode())])
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    argv = [sys.executable, "-m", "strata_cli", "replay", "-b", broker.bootstrap, "-t", src,
            "--from-offset", "0", "--to-topic", dst, "-q", *(["--reencode"] if mode == "reencode" else [])]
    probe = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe"})

    def landed() -> int:
        return sum(probe.get_watermark_offsets(confluent_kafka.TopicPartition(dst, p), timeout=10, cached=False)[1]
                   for p in range(2))

    def written() -> int:
        """Bytes in the target's segment files: read without asking the broker, whose answers wait
        behind the copy it is taking in (a ListOffsets poll could miss the whole 40 MB copy)."""
        total = 0
        for p in range(2):
            for path in (broker.data_dir / f"{dst}-{p}").glob("*.log"):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    def run_and_kill(beyond: int) -> int:
        before = written()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while written() <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if mode == "batches-ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 130, err.decode()
            assert b"run the same command again" in err
            got = landed()
            # The requests in flight are answered before it stops: on an idle machine they can be the rest.
            assert beyond < got <= n
            return got
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen at once; then killed without a chance to save anything
        assert proc.poll() is None, "the copy ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        got = landed()
        assert beyond < got < n
        return got

    try:
        partial = run_and_kill(0)
        if mode != "reencode":
            run_and_kill(partial)  # killed again while walking past, or after, the first run's tail
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert landed() == n  # every record once: nothing the killed runs produced was sent again
    finally:
        probe.close()
    seen: dict[int, list[int]] = {0: [], 1: []}
    for msg in read_topic(broker.bootstrap, dst, 2, n):
        headers = msg.headers()
        (_, i) = headers[0]
        if mode == "reencode":
            (name, tag) = headers[1]
            assert name == "strata-replay"
            _, sp, so = tag.decode().split(":")
            assert int(sp) == msg.partition() and int(i) == int(so) * 2 + int(sp)
        else:
            assert len(headers) == 1 and msg.offset() == int(i) // 2  # the same offsets as the source
        assert int(i) % 2 == msg.partition() and msg.key() == i
        seen[msg.partition()].append(int(i) // 2)
    for p in range(2):
        assert seen[p] == list(range(n // 2))  # in order, complete, once


def test_a_killed_copys_produce_taken_after_the_rerun_read_the_target_is_not_a_duplicate(
        broker: BrokerProcess) -> None:
    """The race behind a rare duplicate after a hard kill: a Produce the killed run had sent but the
    broker took only after the re-run read the target's tail (still in the broker's socket buffer,
    or waiting for request memory behind an fsync). The re-run goes on with the killed run's
    producer id and sequence, so that late batch and the re-run's own copy of it are one batch to
    the broker's idempotence: whichever comes second is answered as a duplicate. (With a new
    producer id, as before, both were appended.)"""
    from kafka.protocol.consumer import FetchRequest
    from kafka.protocol.producer import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder
    from strata_cli.replay_copy import Batcher, Conn, Progress, copy_batches, init_producer_id, target_tail

    src, dst = f"late-src-{time.monotonic_ns()}", f"late-dst-{time.monotonic_ns()}"
    create_topic(broker.bootstrap, src, 1, {"retention.ms": "-1"})
    create_topic(broker.bootstrap, dst, 1, {"retention.ms": "-1"})
    host, port = broker.bootstrap.rsplit(":", 1)
    conn = Conn(host, int(port), 30)
    PD = ProduceRequest.TopicProduceData

    def produce(topic: str, records: bytes) -> Any:
        resp = conn.call(ProduceRequest(version=8, transactional_id=None, acks=-1, timeout_ms=30_000, topic_data=[
            PD(name=topic, partition_data=[PD.PartitionProduceData(index=0, records=records)])]))
        return resp.responses[0].partition_responses[0]

    try:
        for b in range(6):  # six batches of ten records: offsets 0..59
            builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                                producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                                batch_size=1 << 20)
            for i in range(10):
                builder.append(i, timestamp=1_700_000_000_000 + b * 10 + i, key=b"%d" % (b * 10 + i),
                               value=b"v%d" % (b * 10 + i), headers=[])
            assert produce(src, bytes(builder.build())).error_code == 0
        killed = init_producer_id(broker.bootstrap, 30)
        done: list[Progress] = []
        # The killed run: its first three batches acknowledged (its checkpoint), then killed.
        copy_batches(broker.bootstrap, src, dst, [(0, 0, 30)], killed, None, {}, threading.Event(), done.append,
                     30, 30)
        checkpoint = [d.producers[0] for d in done if 0 in d.producers][-1]
        assert checkpoint == (killed[0], killed[1], 30)
        # Its fourth batch, sent before the kill, not yet taken by the broker.
        P = FetchRequest.FetchTopic.FetchPartition
        fetched = conn.call(FetchRequest(
            version=11, replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=1 << 20, isolation_level=1,
            session_id=0, session_epoch=-1, topics=[FetchRequest.FetchTopic(topic=src, partitions=[P(
                partition=0, current_leader_epoch=-1, fetch_offset=30, log_start_offset=-1,
                partition_max_bytes=1 << 20)])], forgotten_topics_data=[], rack_id=""))
        late, _, _ = Batcher(0, 30, 60, killed[0], killed[1], None, sequence=30).take(
            fetched.responses[0].partitions[0].records)
        # The re-run reads the target past the checkpoint: nothing of the killed run there yet.
        assert target_tail(broker.bootstrap, dst, {0: 30}, {killed[0]}, 30) == {0: (0, None)}
        # Now the broker takes the late batch...
        assert produce(dst, b"".join(late[0].pieces)).base_offset == 30
        # ...and the re-run copies from the checkpoint on, as the killed run's producer.
        copy_batches(broker.bootstrap, src, dst, [(0, 30, 60)], init_producer_id(broker.bootstrap, 30), None, {},
                     threading.Event(), done.append, 30, 30, continued={0: checkpoint})
    finally:
        conn.close()
    got = [int(m.key()) for m in read_topic(broker.bootstrap, dst, 1, 60)]
    assert got == list(range(60))  # once each, in order
    probe = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe-late"})
    try:
        assert probe.get_watermark_offsets(confluent_kafka.TopicPartition(dst, 0), timeout=10, cached=False)[1] == 60
    finally:
        probe.close()


def test_a_reader_that_stops_reading_ends_the_replay_without_a_state(source: Source, tmp_path: Path) -> None:
    """`strata replay ... | head -1`: the workers stop, no resumable state is left behind."""
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "replay", "-b", source.broker.bootstrap,
                             "-t", TOPIC, "--from-offset", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["offset"] == 0
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == 1 and b"the output was closed" in err, err
    assert not list((tmp_path / "state").rglob("*.json"))

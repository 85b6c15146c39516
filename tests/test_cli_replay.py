"""`strata replay` against a real tiered broker: most of the replayed data lives only in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
import pytest
from brokerproc import BrokerProcess
from click.testing import CliRunner
from kafka import KafkaAdminClient, TopicPartition
from kafka.protocol.consumer.offsets import OffsetSpec
from kafkaclients import create_topic
from s3server import CREDENTIALS
from strata_operator.cli import main
from strata_operator.replay_cli import parse_timestamp, record_from_json, record_to_json

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
    return subprocess.run([sys.executable, "-m", "strata_operator.cli", *args], capture_output=True, text=True,
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


def test_replay_into_another_topic_preserves_records(source: Source) -> None:
    target = "replay-copy"
    # Preserved timestamps are from 2020: a target with time-based retention would drop them at once.
    create_topic(source.broker.bootstrap, target, PARTITIONS, {"retention.ms": "-1"})
    result = strata("replay", "-b", source.broker.bootstrap, "-t", TOPIC, "--from-offset", "0",
                    "--to-topic", target, "--to-offset", "1000")
    assert result.returncode == 0, result.stderr
    expected = source.expected(lambda r: r.offset < 1000)
    consumer = confluent_kafka.Consumer({"bootstrap.servers": source.broker.bootstrap, "group.id": "check-copy",
                                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    got = []
    try:
        consumer.assign([confluent_kafka.TopicPartition(target, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 60
        while len(got) < len(expected) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
    finally:
        consumer.close()
    assert len(got) == len(expected)
    got.sort(key=lambda m: (m.partition(), m.offset()))
    for msg, r in zip(got, expected, strict=True):
        # The target has as many partitions: each record keeps its partition, hence its order.
        assert (msg.partition(), msg.offset()) == (r.partition, r.offset)
        assert (msg.key(), msg.value(), msg.timestamp()[1]) == (r.key, r.value, r.timestamp)
        *own, (name, value) = msg.headers()
        assert tuple(own) == r.headers  # the record's own headers, in order, then the replay's
        assert name == "strata-replay" and value.decode().endswith(f":{r.partition}:{r.offset}")


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

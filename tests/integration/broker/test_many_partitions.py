"""Many partitions on one broker: start-up opens only what was written, and nothing acknowledged is lost.

A clean restart reads no partition (each loads on first use, or in the background after start-up);
after SIGKILL only the partitions written since the last clean shutdown are recovered, before the
broker serves anything, and every acknowledged record of every partition reads back. A Fetch over
2,000 partitions with one record each returns exactly those records. Figures (how long start-up
takes with 50,000 partitions) come from bench/partitions.py, never from a timed test here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import confluent_kafka
from brokerproc import BrokerProcess
from confluent_kafka.admin import AdminClient, NewTopic
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def create(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(topics), 50):
        for future in admin.create_topics([NewTopic(t, partitions) for t in topics[i:i + 50]],
                                          operation_timeout=60, request_timeout=60).values():
            future.result(90)


def produce(bootstrap: str, targets: list[tuple[str, int]], tag: str) -> None:
    """One acks=all record `<tag>/<topic>/<partition>` to each target; all acknowledged."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                                         "message.timeout.ms": 120_000})
    failures: list[object] = []
    for topic, p in targets:
        producer.produce(topic, value=f"{tag}/{topic}/{p}".encode(), partition=p,
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(120) == 0
    assert failures == []


def read_all(bootstrap: str, targets: list[tuple[str, int]], expected: int) -> dict[tuple[str, int], list[bytes]]:
    """Every record of the targets from offset 0, in order per partition (until `expected` are read)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    consumer.assign([confluent_kafka.TopicPartition(t, p, 0) for t, p in targets])
    seen: dict[tuple[str, int], list[bytes]] = {}
    count = [0]

    def done() -> bool:
        for msg in consumer.consume(5000, timeout=0.5):
            if msg.error() is None:
                seen.setdefault((msg.topic(), msg.partition()), []).append(msg.value())
                count[0] += 1
        return count[0] >= expected

    try:
        wait_until(done, 180, f"{expected} records read back", every=0)
        # Nothing more than expected arrives either.
        for msg in consumer.consume(5000, timeout=1.0):
            if msg.error() is None:
                seen.setdefault((msg.topic(), msg.partition()), []).append(msg.value())
    finally:
        consumer.close()
    return seen


def last_open_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if "previous shutdown" in line]
    assert lines, "the broker logged no start-up summary"
    return lines[-1]


def test_restarts_recover_only_written_partitions_and_lose_nothing(tmp_path: Path) -> None:
    topics, partitions = [f"many-{i}" for i in range(40)], 10  # 400 partitions
    targets = [(t, p) for t in topics for p in range(partitions)]
    broker = BrokerProcess(tmp_path / "data", settings={"log.segment.handles.max": "64"}).start()
    try:
        create(broker.bootstrap, topics, partitions)
        produce(broker.bootstrap, targets, "a")
        broker.restart()
        assert "previous shutdown: clean" in last_open_line(broker.log_path)
        # Written after the clean restart: these, and only these, are recovered after the crash.
        written = [(t, p) for t in topics[:3] for p in range(partitions)]
        produce(broker.bootstrap, written, "b")
        broker.kill()
        broker.start(timeout=60)
        assert re.search(rf"crash, {len(written)} written partition\(s\) recovered", last_open_line(broker.log_path))
        seen = read_all(broker.bootstrap, targets, len(targets) + len(written))
        expected = {(t, p): [f"a/{t}/{p}".encode()] + ([f"b/{t}/{p}".encode()] if (t, p) in written else [])
                    for t, p in targets}
        assert seen == expected
        # Writable afterwards too, including partitions not loaded before this write; and a second
        # crash recovers what the first recovery left marked plus what was written since.
        produce(broker.bootstrap, [(topics[-1], 0), (topics[0], 0)], "c")
        broker.kill()
        broker.start(timeout=60)
        assert re.search(rf"crash, {len(written) + 1} written partition\(s\) recovered",
                         last_open_line(broker.log_path))
        seen = read_all(broker.bootstrap, [(topics[-1], 0), (topics[0], 0)], 5)
        assert seen[(topics[-1], 0)] == [f"a/{topics[-1]}/0".encode(), f"c/{topics[-1]}/0".encode()]
        assert seen[(topics[0], 0)] == [f"{tag}/{topics[0]}/0".encode() for tag in "abc"]
    finally:
        broker.stop(timeout=120)


def test_a_torn_tail_of_a_written_partition_is_cut_after_a_crash(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data").start()
    try:
        create(broker.bootstrap, ["torn", "idle"], 2)
        produce(broker.bootstrap, [("torn", 0), ("idle", 0), ("idle", 1)], "a")
        broker.restart()
        produce(broker.bootstrap, [("torn", 0)], "b")
        broker.kill()
        # Half a batch after the acknowledged ones, as a crash in the middle of a write leaves.
        (segment,) = (tmp_path / "data" / "torn-0").glob("*.log")
        with open(segment, "ab") as f:
            f.write(b"\x00" * 8 + (500).to_bytes(4, "big") + os.urandom(30))
        broker.start(timeout=60)
        seen = read_all(broker.bootstrap, [("torn", 0), ("idle", 0), ("idle", 1)], 4)
        assert seen == {("torn", 0): [b"a/torn/0", b"b/torn/0"], ("idle", 0): [b"a/idle/0"],
                        ("idle", 1): [b"a/idle/1"]}
        produce(broker.bootstrap, [("torn", 0)], "c")
        assert read_all(broker.bootstrap, [("torn", 0)], 3)[("torn", 0)][-1] == b"c/torn/0"
    finally:
        broker.stop()


LAZY = textwrap.dedent("""
    import sys
    from strata_broker.config import BrokerConfig
    from strata_broker.log.manager import LogManager

    data, step = sys.argv[1], sys.argv[2]
    logs = LogManager(data, BrokerConfig.from_overrides({}))
    logs.open()
    if step == "create":
        for i in range(50):
            logs.create_topic(f"t{i}", 4, {})
        logs.get_partition("t0", 0).append(bytes.fromhex(sys.argv[3]))
    else:
        unloaded = logs.unloaded_partitions()
        plog = logs.get_partition("t0", 0)
        print(unloaded, len(logs.handles), plog.log_end_offset, logs.unloaded_partitions())
    logs.close()
""")


def test_a_clean_start_opens_no_partition_until_it_is_used(tmp_path: Path) -> None:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(3):
        builder.append(i, timestamp=1000 + i, key=None, value=b"v", headers=[])
    batch = bytes(builder.build())
    data = str(tmp_path / "data")
    for argv in (["create", batch.hex()], ["open"]):
        proc = subprocess.run([sys.executable, "-c", LAZY, data, *argv], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    # 200 partitions, none opened by start-up (no segment open); the one used loads with its data.
    assert proc.stdout.split() == ["200", "0", "3", "199"]


def test_one_fetch_over_2000_partitions_returns_exactly_their_records(tmp_path: Path) -> None:
    topics, partitions = [f"wide-{i}" for i in range(200)], 10
    targets = [(t, p) for t in topics for p in range(partitions)]
    broker = BrokerProcess(tmp_path / "data").start()
    try:
        create(broker.bootstrap, topics, partitions)
        produce(broker.bootstrap, targets, "x")
        produce(broker.bootstrap, targets[::7], "y")
        seen = read_all(broker.bootstrap, targets, len(targets) + len(targets[::7]))
        sevenths = set(targets[::7])
        assert seen == {(t, p): [f"x/{t}/{p}".encode()] + ([f"y/{t}/{p}".encode()] if (t, p) in sevenths else [])
                        for t, p in targets}
    finally:
        broker.stop(timeout=120)  # a clean close fsyncs 2,000 written partitions: slow on a loaded machine


def test_an_offset_commit_larger_than_max_message_bytes_is_stored_whole(tmp_path: Path) -> None:
    """One OffsetCommit of 2,000 partitions (about 150 KB of offset records) with max.message.bytes
    at 64 KiB: stored (as several batches of the offsets topic) and read back after a restart."""
    broker = BrokerProcess(tmp_path / "data", settings={"max.message.bytes": "65536"}).start()
    try:
        create(broker.bootstrap, ["wide"], 2000)
        offsets = [confluent_kafka.TopicPartition("wide", p, p + 1) for p in range(2000)]
        asked = [confluent_kafka.TopicPartition("wide", p) for p in range(2000)]
        consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wide",
                                             "enable.auto.commit": False})

        def committed() -> bool:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except confluent_kafka.KafkaException as exc:  # the coordinator may still be starting
                assert exc.args[0].code() in (confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
                                              confluent_kafka.KafkaError.NOT_COORDINATOR), exc
                return False
            return True

        try:
            wait_until(committed, 60, "the offsets committed")
        finally:
            consumer.close()
        broker.restart()
        consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wide",
                                             "enable.auto.commit": False})
        try:
            assert [tp.offset for tp in consumer.committed(asked, timeout=60)] == [p + 1 for p in range(2000)]
        finally:
            consumer.close()
    finally:
        broker.stop(timeout=120)

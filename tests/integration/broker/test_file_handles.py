"""Descriptors do not grow with the partition count, and running out of them never half-creates a topic.

A broker started with `ulimit -n 256` serves far more partitions than 256 / 4 files; a CreateTopics
that cannot get its files is refused whole (KAFKA_STORAGE_ERROR, no partition directory left behind)
while the connections already open keep being served.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import confluent_kafka
import pytest
from brokerproc import BrokerProcess
from confluent_kafka.admin import AdminClient, NewTopic
from rawclient import RawConnection, create_topics, metadata
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
LIMIT = 256
KAFKA_STORAGE_ERROR = 56


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def produce_one_each(bootstrap: str, topics: list[str], partitions: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failures: list[object] = []
    for topic in topics:
        for p in range(partitions):
            producer.produce(topic, value=f"{topic}/{p}".encode(), partition=p,
                             on_delivery=lambda err, _msg: failures.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []


def read_one_each(bootstrap: str, topics: list[str], partitions: int) -> dict[tuple[str, int], bytes]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                         "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    seen: dict[tuple[str, int], bytes] = {}

    def all_read() -> bool:
        for msg in consumer.consume(500, timeout=0.5):
            if msg.error() is None:
                seen[(msg.topic(), msg.partition())] = msg.value()
        return len(seen) == len(topics) * partitions

    try:
        wait_until(all_read, 90, "every partition read back", every=0)
    finally:
        consumer.close()
    return seen


def test_more_partitions_than_the_descriptor_limit_has_files_for(tmp_path: Path) -> None:
    topics, partitions = [f"many-{i}" for i in range(32)], 10  # 320 partitions, 4 files each when open
    broker = BrokerProcess(tmp_path / "data", open_files=LIMIT).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_topics([NewTopic(t, partitions) for t in topics]).values():
            future.result(30)
        produce_one_each(broker.bootstrap, topics, partitions)
        assert open_descriptors(broker.pid) < LIMIT
        seen = read_one_each(broker.bootstrap, topics, partitions)
        assert seen == {(t, p): f"{t}/{p}".encode() for t in topics for p in range(partitions)}
        broker.restart()
        # A clean restart opens no more than it needs either, and every partition is still there.
        seen = read_one_each(broker.bootstrap, topics, partitions)
        assert len(seen) == len(topics) * partitions
        produce_one_each(broker.bootstrap, topics[:3], partitions)
        assert open_descriptors(broker.pid) < LIMIT
        assert "Too many open files" not in broker.log_path.read_text()
    finally:
        broker.stop()


def test_a_create_topics_without_descriptors_is_refused_whole_and_others_are_served(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data", open_files=LIMIT,
                           settings={"max.connections.per.ip": "100000"}).start()
    hogs: list[socket.socket] = []
    conn = RawConnection(broker.bootstrap)
    try:
        # Idle client connections take every descriptor the broker has left.
        for _ in range(LIMIT + 64):
            hogs.append(socket.create_connection(("127.0.0.1", broker.port)))
        wait_until(lambda: open_descriptors(broker.pid) >= LIMIT, 30, "the broker out of descriptors")

        response = conn.request(create_topics("starved", partitions=10))
        (result,) = response.topics
        assert result.error_code == KAFKA_STORAGE_ERROR, result
        assert "nothing was created" in (result.error_message or "")
        assert not list((tmp_path / "data").glob("starved-*")), "a refused topic left partition directories"
        # The connection that was open before is still served.
        (topic,) = conn.request(metadata(["starved"], allow_auto=False)).topics
        assert topic.error_code == 3  # UNKNOWN_TOPIC_OR_PARTITION: nothing half-created

        for hog in hogs:
            hog.close()
        hogs.clear()
        wait_until(lambda: open_descriptors(broker.pid) < LIMIT // 2, 30, "the idle connections closed")
        (result,) = conn.request(create_topics("starved", partitions=10)).topics
        assert result.error_code == 0, result
        produce_one_each(broker.bootstrap, ["starved"], 10)
        assert len(read_one_each(broker.bootstrap, ["starved"], 10)) == 10
    finally:
        for hog in hogs:
            hog.close()
        conn.close()
        broker.stop()


ROLLBACK = textwrap.dedent("""
    import os, resource, sys
    from strata_broker.config import BrokerConfig
    from strata_broker.errors import KafkaProtocolError
    from strata_broker.log.manager import LogManager

    data = sys.argv[1]
    config = BrokerConfig.from_overrides({"log.segment.handles.max": "100000"})
    logs = LogManager(data, config)
    logs.open()
    logs.create_topic("kept", 2, {})
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    while True:  # leave exactly 10 descriptors: enough for two partitions of the next topic, not ten
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    for fd in held[-10:]:
        os.close(fd)
    try:
        logs.create_topic("partial", 10, {})
    except KafkaProtocolError as exc:
        print("refused", int(exc.code), exc.message)
    try:
        logs.create_partitions("kept", 12)
    except KafkaProtocolError as exc:
        print("refused", int(exc.code), exc.message)
    print("topics", sorted(logs.topics), len(logs.topics["kept"].partitions))
""")


def test_partitions_that_cannot_all_be_made_are_all_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-c", ROLLBACK, str(data)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["refused", str(KAFKA_STORAGE_ERROR)]] * 2, proc.stdout
    assert lines[2] == "topics ['kept'] 2", proc.stdout
    assert not list(data.glob("partial-*")), sorted(p.name for p in data.iterdir())
    assert sorted(p.name for p in data.glob("kept-*")) == ["kept-0", "kept-1"]
    assert not (data / "__meta" / "topics" / "partial.json").exists()


@pytest.mark.parametrize("handles", ["2"])
def test_a_tiny_handle_cache_loses_nothing(tmp_path: Path, handles: str) -> None:
    """Every append, fsync and read reopens files: acknowledged data is all there after a crash."""
    topics, partitions = ["tiny-a", "tiny-b"], 6
    broker = BrokerProcess(tmp_path / "data", settings={"log.segment.handles.max": handles,
                                                        "segment.bytes": "4096"}).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_topics([NewTopic(t, partitions) for t in topics]).values():
            future.result(30)
        for _ in range(20):  # several segments per partition
            produce_one_each(broker.bootstrap, topics, partitions)
        broker.kill()
        broker.start()
        consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
        consumer.assign([confluent_kafka.TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
        counts: dict[tuple[str, int], int] = {}

        def all_read() -> bool:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    assert msg.value() == f"{msg.topic()}/{msg.partition()}".encode()
                    counts[(msg.topic(), msg.partition())] = counts.get((msg.topic(), msg.partition()), 0) + 1
            return sum(counts.values()) >= 20 * len(topics) * partitions

        try:
            wait_until(all_read, 90, "every acknowledged record read back", every=0)
        finally:
            consumer.close()
        assert counts == {(t, p): 20 for t in topics for p in range(partitions)}
    finally:
        broker.stop()

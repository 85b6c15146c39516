"""`strata tier ls|scrub` against a real tiered broker and a real S3 endpoint (moto server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import confluent_kafka
from kafka import KafkaAdminClient
from kafkaclients import create_topic
from s3server import CREDENTIALS

TIERED = {"segment.bytes": str(32 << 10), "tiered.upload.interval.ms": "300", "log.retention.check.interval.ms": "200"}


def strata(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "strata_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **CREDENTIALS, "COLUMNS": "250"})


def produce(bootstrap: str, topic: str, partitions: int, n: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 16384})
    for i in range(n):
        producer.produce(topic, key=str(i).encode(), value=b"x" * 500, partition=i % partitions)
        producer.poll(0)
    assert producer.flush(30) == 0


def topic_id(bootstrap: str, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    return str(described["topic_id"])


def wait_all_uploaded(bucket, bootstrap: str, topic: str, partitions: int) -> str:
    """Until every partition's manifest covers its whole log: no upload is in flight after that."""
    tid = topic_id(bootstrap, topic)
    root = f"clusters/strata-local/topics/{topic}-{tid}/"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        from kafka import TopicPartition
        from kafka.protocol.consumer.offsets import OffsetSpec

        latest = admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.LATEST
                                               for p in range(partitions)})
    finally:
        admin.close()
    deadline = time.monotonic() + 60
    while True:
        keys = bucket.objects(root)
        ends = {}
        for p in range(partitions):
            if f"{root}{p}/manifest.json" in keys:
                segments = json.loads(bucket.read(f"{root}{p}/manifest.json"))["segments"]
                ends[p] = segments[-1]["last_offset"] + 1 if segments else 0
        if all(ends.get(tp.partition) == o.offset for tp, o in latest.items()):
            return root
        assert time.monotonic() < deadline, f"uploads did not finish: {ends}"
        time.sleep(0.2)


def test_tier_ls_shows_objects_and_hot_vs_cold(broker_factory, topic_name, s3):
    broker = broker_factory(s3.broker_settings(**TIERED), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 2, {"local.retention.bytes": str(64 << 10), "retention.ms": "-1"})
    produce(broker.bootstrap, topic_name, 2, 2000)
    root = wait_all_uploaded(s3, broker.bootstrap, topic_name, 2)
    common = ["--bucket", s3.name, "--endpoint", s3.server.endpoint, "--region", "us-east-1"]

    result = strata("tier", "ls", *common, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = [r for r in data["partitions"] if r["topic"] == topic_name]
    assert [r["partition"] for r in rows] == [0, 1]
    objects = s3.objects(root)
    for r in rows:
        mine = {k: v for k, v in objects.items() if k.startswith(f"{root}{r['partition']}/")}
        assert r["objects"] == len(mine) and r["s3_bytes"] == sum(mine.values())
        assert r["segments"] == len([k for k in mine if k.endswith(".log")]) > 1
        assert (r["s3_start"], r["s3_end"]) == (0, 1000) and r["status"] == "unknown"

    # With the broker: live, and the offsets that only S3 holds now.
    deadline = time.monotonic() + 30
    while True:
        result = strata("tier", "ls", *common, "--bootstrap", broker.bootstrap, "--json")
        assert result.returncode == 0, result.stderr
        rows = [r for r in json.loads(result.stdout)["partitions"] if r["topic"] == topic_name]
        if all(r["s3_only_offsets"] > 0 for r in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.3)
    for r in rows:
        assert r["status"] == "live" and (r["earliest"], r["latest"]) == (0, 1000)
        assert r["pending_offsets"] == 0
        assert r["hot_offsets"] + r["s3_only_offsets"] == 1000

    table = strata("tier", "ls", *common, "--bootstrap", broker.bootstrap)
    assert table.returncode == 0, table.stderr
    assert topic_name in table.stdout and "live" in table.stdout and "S3 only" in table.stdout


def test_tier_scrub_finds_and_deletes_exactly_the_orphans(broker_factory, topic_name, s3):
    broker = broker_factory(s3.broker_settings(**TIERED), env=CREDENTIALS)
    create_topic(broker.bootstrap, topic_name, 2, {"retention.ms": "-1"})
    produce(broker.bootstrap, topic_name, 2, 600)
    root = wait_all_uploaded(s3, broker.bootstrap, topic_name, 2)
    topics_root = root.rsplit("/", 2)[0] + "/"
    live_objects = set(s3.objects())
    assert len(live_objects) > 6

    client = s3.server.client()
    stale_id, gone_id = uuid.uuid4(), uuid.uuid4()
    planted_in_live = [f"{root}1/{'9' * 20}-{'9' * 20}.log",  # a segment the manifest does not list
                       f"{root}1/{'9' * 20}-{'9' * 20}.index",
                       f"{root}5/00000000000000000000-00000000000000000009.log"]  # the topic has 2 partitions
    planted_dirs = [f"{topics_root}{topic_name}-{stale_id}/topic.json",  # the same name, an older incarnation
                    f"{topics_root}{topic_name}-{stale_id}/0/00000000000000000000-00000000000000000099.log",
                    f"{topics_root}{topic_name}-{stale_id}/0/manifest.json",
                    f"{topics_root}deleted-topic-{gone_id}/0/00000000000000000000-00000000000000000001.log",
                    f"{topics_root}not-a-topic-dir/junk"]
    for key in planted_in_live + planted_dirs:
        client.put_object(Bucket=s3.name, Key=key, Body=b"planted")
    common = ["--bucket", s3.name, "--endpoint", s3.server.endpoint, "--bootstrap", broker.bootstrap]

    # Default grace: the unreferenced segment in a live partition may be an upload in flight.
    result = strata("tier", "scrub", *common, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {o["key"] for o in report["orphans"]} == set(planted_dirs) | {planted_in_live[2]}
    assert set(report["within_grace"]) == set(planted_in_live[:2])
    reasons = {o["key"]: o["reason"] for o in report["orphans"]}
    assert "re-created" in reasons[planted_dirs[0]] and "does not exist" in reasons[planted_dirs[3]]

    # No grace: every planted object, nothing else; the table says so too.
    result = strata("tier", "scrub", *common, "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert "8 orphan(s)" in result.stdout and "--delete" in result.stdout
    result = strata("tier", "scrub", *common, "--grace", "0", "--json")
    assert {o["key"] for o in json.loads(result.stdout)["orphans"]} == set(planted_in_live + planted_dirs)
    assert set(s3.objects()) == live_objects | set(planted_in_live + planted_dirs)  # reporting deletes nothing

    result = strata("tier", "scrub", *common, "--grace", "0", "--delete")
    assert result.returncode == 0, result.stderr
    assert "deleted 8 object(s)" in result.stdout
    assert set(s3.objects()) == live_objects
    result = strata("tier", "scrub", *common, "--grace", "0", "--json")
    assert json.loads(result.stdout)["orphans"] == []

    # A broker of another cluster cannot vouch for this one's objects.
    result = strata("tier", "scrub", *common, "--cluster", "elsewhere", "--delete")
    assert result.returncode == 2 and "strata-local" in result.stderr
    assert set(s3.objects()) == live_objects

"""Debian's kcat (librdkafka 2.0) lists, produces and consumes against the broker."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from kafkaclients import create_topic

KCAT = shutil.which("kcat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not on PATH (Debian package kcat; `make tools` installs it)")


def kcat(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([KCAT, *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kcat_lists_metadata(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, 3)
    meta = json.loads(kcat("-b", broker.bootstrap, "-L", "-J", "-t", topic_name))
    assert [b["id"] for b in meta["brokers"]] == [0]
    (topic,) = [t for t in meta["topics"] if t["topic"] == topic_name]
    assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1, 2]
    assert all(p["leader"] == 0 for p in topic["partitions"])


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_consume(broker, topic_name, codec):
    create_topic(broker.bootstrap, topic_name, 1)
    lines = [f"k{i}:value number {i}" for i in range(200)]
    kcat("-b", broker.bootstrap, "-P", "-t", topic_name, "-K:", "-z", codec, stdin="\n".join(lines) + "\n")
    out = kcat("-b", broker.bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e", "-q", "-f", "%k:%s\\n")
    assert out.splitlines() == lines

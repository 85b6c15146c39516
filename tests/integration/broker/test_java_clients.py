"""Kafka's own Java clients (kafka-clients 4.x) against Strata, and the same program against Kafka.

tests/support/java-clients/ is a small Maven project (admin, idempotent producer, consumer group, committed
offsets); tests/support/kafkaref.py builds it once per source content into ~/.cache/strata. Its observations
must be the same on both brokers.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from kafkaref import build_java_program, missing_tools

PROJECT = Path(__file__).resolve().parents[2] / "support" / "java-clients"


@pytest.fixture(scope="module")
def java_classpath() -> str:
    missing = missing_tools()
    if missing:
        pytest.skip(missing)
    return build_java_program(PROJECT)


def run_clients_check(classpath: str, bootstrap: str, *group_protocol: str) -> dict[str, str]:
    name = f"java-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(["java", "-Xmx256m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath,
                           "strata.ClientsCheck", bootstrap, name, f"g-{name}", *group_protocol],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"ClientsCheck exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return dict(line.removeprefix("RESULT ").split("=", 1) for line in proc.stdout.splitlines()
                if line.startswith("RESULT "))


def test_java_clients_against_strata_and_kafka(java_classpath, broker, kafka_ref):
    strata = run_clients_check(java_classpath, broker.bootstrap)
    assert strata == {
        "create": "ok", "create again": "TopicExistsException", "describe partitions": "3",
        "describe replicas": "3", "describe internal": "false", "describe unknown": "UnknownTopicOrPartitionException",
        "listed": "true", "cluster nodes": "1", "produced per partition": "[10, 10, 10]",
        "consumer assignment": "3", "committed total": "30", "consumed": "30", "consumed distinct": "30",
        "group offsets": "{0=10, 1=10, 2=10}", "delete": "ok",
    }
    assert run_clients_check(java_classpath, kafka_ref.bootstrap) == strata


def test_java_consumer_with_the_consumer_group_protocol(java_classpath, broker, kafka_ref):
    """The same program with group.protocol=consumer (KIP-848: ConsumerGroupHeartbeat, server-side assignment)."""
    strata = run_clients_check(java_classpath, broker.bootstrap, "consumer")
    assert strata["consumer assignment"] == "3" and strata["consumed distinct"] == "30", strata
    assert strata["group offsets"] == "{0=10, 1=10, 2=10}", strata
    assert run_clients_check(java_classpath, kafka_ref.bootstrap, "consumer") == strata

"""Kafka's own Java clients (kafka-clients 4.x) against Strata, and the same program against Kafka.

tests/support/java-clients/ is a small Maven project (ClientsCheck: admin, idempotent producer, consumer
group, committed offsets; TxnCheck: a transactional producer); tests/support/kafkaref.py builds it once per
source content into ~/.cache/strata. Their observations must be the same on both brokers.
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


def run_clients_check(classpath: str, bootstrap: str, *group_protocol: str, program: str = "ClientsCheck"
                      ) -> dict[str, str]:
    name = f"java-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(["java", "-Xmx256m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath,
                           f"strata.{program}", bootstrap, name, f"g-{name}", *group_protocol],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{program} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
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


def test_java_transactional_producer_with_transaction_version_2(java_classpath, broker, kafka_ref):
    """kafka-clients 4.x sees transaction.version 2 finalized and runs it (the epoch bumps at each
    commit and abort; the broker adds the partitions and the group's offsets partition itself):
    read_committed sees the two committed transactions only, the same as on Kafka."""
    strata = run_clients_check(java_classpath, broker.bootstrap, program="TxnCheck")
    assert strata == {
        "finalized transaction.version": "2", "epoch bumps over three transactions": "3", "group offset": "42",
        "read_committed": "[t0-0, t0-1, t0-2, t2-0, t2-1, t2-2]",
    }
    assert run_clients_check(java_classpath, kafka_ref.bootstrap, program="TxnCheck") == strata

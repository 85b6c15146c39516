"""`strata local`: broker + embedded S3 endpoint as one command; clients work; SIGTERM stops both."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import confluent_kafka
from brokerproc import free_port
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

ORDER_SCHEMA = '{"type":"record","name":"Order","fields":[{"name":"total","type":"int"}]}'


class LocalStack:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port, self.s3_port, self.registry_port = free_port(), free_port(), free_port()
        self.data_dir = data_dir
        self.output = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strata_cli", "local", "--data-dir", str(data_dir), "--port",
             str(self.port), "--s3-port", str(self.s3_port), "--registry-port", str(self.registry_port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while "tier ls" not in self.output:
            assert time.monotonic() < deadline, f"strata local did not start:\n{self.output}"
            assert self.proc.poll() is None, f"strata local exited {self.proc.returncode}:\n{self.output}"
            if sel.select(0.2):
                self.output += (self.proc.stdout.read() or b"").decode(errors="replace")
        sel.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.output += (out or b"").decode(errors="replace")
        return self.proc.returncode

    def s3(self):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}", region_name="us-east-1",
                            aws_access_key_id="x", aws_secret_access_key="x")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 60) -> list:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{time.time_ns()}",
                                         "enable.auto.commit": False})
    out = []
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return sorted(out)


def test_local_stack_serves_clients_offloads_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Faster than the defaults a person gets, so the test sees offload in seconds.
    fast = ["--local-retention-bytes", str(32 << 10), "--set", "segment.bytes=16384",
            "--set", "tiered.upload.interval.ms=300", "--set", "log.retention.check.interval.ms=200"]
    stack = LocalStack(data, *fast)
    try:
        stack.wait_ready()
        assert f"--bucket strata-local --endpoint http://127.0.0.1:{stack.s3_port} --bootstrap {stack.bootstrap}" \
            in stack.output
        producer = confluent_kafka.Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5,
                                             "batch.size": 4096, "enable.idempotence": True})
        sent = [(f"k{i}".encode(), f"value-{i:05d}".encode().ljust(300, b"~")) for i in range(1500)]
        for key, value in sent:
            producer.produce("orders", key=key, value=value)  # auto-created, 6 partitions
            producer.poll(0)
        assert producer.flush(30) == 0
        got = consume_all(stack.bootstrap, "orders", 6, len(sent))
        assert sorted((k, v) for _, _, k, v in got) == sorted(sent)
        assert len({p for p, _, _, _ in got}) == 6
        # The schema registry beside the broker (Confluent's API), its schemas kept in _schemas.
        assert f"schema registry  http://127.0.0.1:{stack.registry_port}" in stack.output
        registry = SchemaRegistryClient({"url": f"http://127.0.0.1:{stack.registry_port}"})
        schema_id = registry.register_schema("orders-value", Schema(ORDER_SCHEMA, "AVRO"))

        def log_keys() -> list[str]:
            objects = stack.s3().list_objects_v2(Bucket="strata-local").get("Contents", [])
            return [o["Key"] for o in objects if o["Key"].endswith(".log")]

        deadline = time.monotonic() + 30
        while not log_keys():
            assert time.monotonic() < deadline, "nothing was offloaded"
            time.sleep(0.3)

        def cold_only() -> bool:  # local retention dropped offloaded segments: S3 alone holds their records
            return any(min((int(f.stem) for f in d.glob("*.log")), default=0) > 0
                       for d in (data / "broker-0").glob("orders-*"))

        while not cold_only():
            assert time.monotonic() < deadline, "no segment left the disk"
            time.sleep(0.3)
    finally:
        code = stack.stop()
    assert code == 0, stack.output
    assert "strata local: stopped" in stack.output
    assert not listening(stack.port) and not listening(stack.s3_port) and not listening(stack.registry_port)
    mirrored = list((data / "s3" / "strata-local").rglob("*.log"))
    assert mirrored, "the bucket was not mirrored to disk"

    # Start again: the bucket comes back from the mirror and every record is readable, cold ones included.
    again = LocalStack(data)
    try:
        again.wait_ready()
        assert "object(s) restored" in again.output
        assert sorted((k, v) for _, _, k, v in consume_all(again.bootstrap, "orders", 6, len(sent))) == sorted(sent)
        again_registry = SchemaRegistryClient({"url": f"http://127.0.0.1:{again.registry_port}"})
        assert again_registry.get_schema(schema_id).schema_str == ORDER_SCHEMA
    finally:
        assert again.stop(signal.SIGINT) == 0, again.output
    assert not listening(again.port) and not listening(again.s3_port)


def test_local_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "strata_cli", "local", "--data-dir",
                                 str(tmp_path / "d"), "--port", str(port), "--s3-port", str(free_port())],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "in use" in result.stderr

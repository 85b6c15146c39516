"""Compaction throughput, local and in S3, beside the raw disk and raw S3 GET rates of the same run.

    python bench/compaction.py [--records 400000] [--keys 5000] [--value-bytes 200]

Starts its own moto S3 server and broker on loopback. Figures come from the broker's
/metrics (bytes read by compaction / seconds spent), so they are the cleaner's own rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import confluent_kafka
from _common import HOST, create_topic, free_port, strata_broker, wait_for_port
from metrics import samples, scrape
from rich.console import Console
from rich.table import Table

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def raw_disk_rate(directory: str, total: int = 64 << 20) -> tuple[float, float]:
    """(write+fsync MB/s, read MB/s) of one sequential file in directory."""
    path = os.path.join(directory, "raw.bin")
    block = os.urandom(1 << 20)
    started = time.monotonic()
    with open(path, "wb") as f:
        for _ in range(total >> 20):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    write = total / (time.monotonic() - started) / 1e6
    started = time.monotonic()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    read = total / (time.monotonic() - started) / 1e6
    os.unlink(path)
    return write, read


def raw_s3_get_rate(s3, bucket: str, total: int = 64 << 20) -> float:  # type: ignore[no-untyped-def]
    body = os.urandom(total)
    s3.put_object(Bucket=bucket, Key="bench/raw.bin", Body=body)
    started = time.monotonic()
    for start in range(0, total, 4 << 20):
        s3.get_object(Bucket=bucket, Key="bench/raw.bin", Range=f"bytes={start}-{start + (4 << 20) - 1}")["Body"].read()
    rate = total / (time.monotonic() - started) / 1e6
    s3.delete_object(Bucket=bucket, Key="bench/raw.bin")
    return rate


def produce(bootstrap: str, topic: str, records: int, keys: int, value_bytes: int) -> int:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    payload = b"v" * value_bytes
    for i in range(records):
        while True:
            try:
                producer.produce(topic, key=f"k{i % keys}".encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return records * (value_bytes + 8)


def metric(port: int, name: str) -> float:
    """A counter or gauge of the broker's /metrics (tests/support/metrics.py), 0 when not exported."""
    values = samples(scrape(port))
    return values.get(name, values.get(name + "_total", 0.0))


def wait_settled(port: int, prefix: str, timeout: float) -> tuple[float, float]:
    """Wait until compaction has run and stopped making progress; (bytes read, seconds)."""
    deadline = time.monotonic() + timeout
    last, quiet_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        read = metric(port, f"strata_compaction_{prefix}_bytes_read")
        if read != last:
            last, quiet_since = read, time.monotonic()
        elif read > 0 and time.monotonic() - quiet_since > 4:
            break
        time.sleep(0.5)
    return metric(port, f"strata_compaction_{prefix}_bytes_read"), metric(port, f"strata_compaction_{prefix}_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=5_000)
    parser.add_argument("--value-bytes", type=int, default=200)
    args = parser.parse_args()
    console = Console()
    work = tempfile.mkdtemp(prefix="strata-bench-compaction-")
    s3_port, broker_port, metrics_port = free_port(), free_port(), free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(s3_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = None
    try:
        wait_for_port(s3_port, 30, moto)
        endpoint = f"http://{HOST}:{s3_port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        disk_write, disk_read = raw_disk_rate(work)
        s3_get = raw_s3_get_rate(s3, "bench")
        os.environ.update(CREDENTIALS)
        broker = strata_broker(Path(work) / "data", broker_port, Path(work) / "broker.log",
                               "tiered.s3.bucket=bench", f"tiered.s3.endpoint={endpoint}",
                               "tiered.upload.interval.ms=2000", "log.cleaner.backoff.ms=500",
                               "log.retention.check.interval.ms=500", "tiered.compaction.delete.delay.ms=0",
                               f"log.cleaner.io.max.bytes.per.second={1 << 30}",
                               f"metrics.listen={HOST}:{metrics_port}")
        broker.start()
        common = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.5", "segment.bytes": str(8 << 20),
                  "segment.ms": "2000", "delete.retention.ms": "0"}
        create_topic(broker.bootstrap, "local-entities", 1, config={**common, "remote.storage.enable": "false"})
        create_topic(broker.bootstrap, "s3-entities", 1, config={**common, "local.retention.bytes": "0"})
        written_local = produce(broker.bootstrap, "local-entities", args.records, args.keys, args.value_bytes)
        time.sleep(2.2)
        produce(broker.bootstrap, "local-entities", 1, 1, 1)  # rolls the active segment
        local_read, local_seconds = wait_settled(metrics_port, "local", 180)
        s3_read0, s3_seconds0 = (metric(metrics_port, "strata_compaction_s3_bytes_read"),
                                 metric(metrics_port, "strata_compaction_s3_seconds"))
        written_s3 = produce(broker.bootstrap, "s3-entities", args.records, args.keys, args.value_bytes)
        s3_read, s3_seconds = wait_settled(metrics_port, "s3", 300)
        s3_read, s3_seconds = s3_read - s3_read0, s3_seconds - s3_seconds0
        console.print(f"local: {local_read:,.0f} B in {local_seconds:.2f}s; s3: {s3_read:,.0f} B in {s3_seconds:.2f}s")
    finally:
        if broker is not None:
            broker.stop()
        moto.terminate()
        moto.wait(10)
    table = Table(title=f"compaction: {args.records:,} records over {args.keys:,} keys, {args.value_bytes} B values")
    for column in ("measurement", "MB/s", "vs reference"):
        table.add_column(column)
    table.add_row("raw disk write+fsync (reference)", f"{disk_write:,.1f}", "")
    table.add_row("raw disk read (reference)", f"{disk_read:,.1f}", "")
    table.add_row("raw S3 GET, 4 MiB ranges (reference)", f"{s3_get:,.1f}", "")
    local_rate = local_read / local_seconds / 1e6 if local_seconds else 0.0
    s3_rate = s3_read / s3_seconds / 1e6 if s3_seconds else 0.0
    table.add_row(f"local compaction ({local_read / 1e6:,.1f} MB cleaned of {written_local / 1e6:,.1f} produced)",
                  f"{local_rate:,.1f}", f"{local_rate / disk_read:.3f}x disk read" if disk_read else "")
    table.add_row(f"S3 compaction ({s3_read / 1e6:,.1f} MB cleaned of {written_s3 / 1e6:,.1f} produced)",
                  f"{s3_rate:,.1f}", f"{s3_rate / s3_get:.2f}x S3 GET" if s3_get else "")
    console.print(table)


if __name__ == "__main__":
    main()

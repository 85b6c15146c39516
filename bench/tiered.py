"""Tiered storage benchmark: S3 replay, S3-durable produce and restore time, beside same-run references.

Starts a moto S3 server (`python -m moto.server`) and strata-brokers as subprocesses, all on
127.0.0.1 with free ports and temp dirs, and prints one table:

* replay throughput (confluent-kafka, assign() from offset 0, no group) of a topic whose data is
  all in S3, with an empty chunk cache (broker restarted: `<data-dir>/__remote-cache` is cleared
  on start), for the default tiered.chunk.bytes / tiered.prefetch.chunks and a few variants. After
  each restart a small other cold topic is read first and the broker's chunk downloader (a child
  process started by the first cold read) is waited for, so a run measures the broker as it runs,
  not its first second; the bare rows say how many chunks the downloader and the broker itself
  received, how many GETs that took, and how the broker's CPU splits between the two processes;
* the same data replayed hot from local disk (a topic with remote storage off, same broker);
* cold and hot replay again, default settings only, with a bare Fetch loop (bench/fetcher.py: one
  Fetch in flight, only batch headers read) instead of confluent-kafka: on a small machine the
  consumer costs about as much CPU per byte as the broker, so its figure is the client's limit;
  the bare loop's is the broker's (and S3's). A bare run that does not fetch exactly the bytes
  in S3 (or on disk) fails the benchmark rather than printing a rate;
* the reference: a raw aiobotocore GET loop over the same segment objects, same endpoint,
  sequential (4 MiB ranged GETs, and whole objects) -- the target is checked on cold replay with
  the bare Fetch loop / the best raw whole-object GET (>= 0.8x); the confluent-kafka rows are the
  end-to-end client view;
* produce throughput, acks=all, strata.durability=s3 vs strata.durability=disk (alternating runs);
* after wiping the data dir: broker start-up time (process start until it listens) and time to
  first fetch (process start until a consumer has the record at offset 0), for a small and a
  large bucket (an order of magnitude apart), alternating, several times each; beside the
  start-up time of the same broker with an empty bucket (nothing to restore).

Each round alternates: raw GET (ranges), the cold runs (a broker restart before each), the hot
runs, raw GET (whole objects); the bare loop and confluent-kafka swap order every round.

Everything listens on 127.0.0.1; every loop is bounded.

    .venv/bin/python bench/tiered.py [--mb 1500] [--small-mb 150] [--segment-mb 16] [--produce-seconds 5]
        [--variant prefetch=8,chunk=8,cache=0 ...] [--broker-pythonpath DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))  # metrics, rawclient

import metrics  # noqa: E402  (tests/support/metrics.py)
from _common import HOST, Broker, checkout_broker, create_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from fetcher import fetch_all  # noqa: E402
from produce_consume import CpuMeter, cpu_seconds, produce_throughput, settle  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
RECORD_SIZE = 1024
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
console = Console(width=max(150, Console().width))


def note(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(msg)}", highlight=False)


# ---- moto S3 server ----------------------------------------------------------------------

class OtherCpu:
    """CPU% of the S3 server and of this process over a block (the machine has few cores)."""

    def __init__(self, s3_pid: int) -> None:
        self.s3_pid = s3_pid

    def __enter__(self) -> OtherCpu:
        self.s0, self.c0, self.t0 = cpu_seconds(self.s3_pid), _own_cpu(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-9, time.monotonic() - self.t0)
        self.s3 = 100.0 * (cpu_seconds(self.s3_pid) - self.s0) / wall
        self.client = 100.0 * (_own_cpu() - self.c0) / wall


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> MotoServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self, label: str) -> str:
        name = f"strata-bench-{label}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name


def tiered_settings(s3: MotoServer, bucket: str, args: argparse.Namespace, *extra: str) -> list[str]:
    return [f"tiered.s3.bucket={bucket}", f"tiered.s3.endpoint={s3.endpoint}", "tiered.s3.region=us-east-1",
            f"segment.bytes={int(args.segment_mb * MiB)}", "tiered.upload.interval.ms=1000",
            "log.retention.check.interval.ms=500", *args.broker_set, *extra]


def remote_manifests(s3: MotoServer, bucket: str, topic: str) -> dict[int, dict]:
    """partition -> manifest, for the topic's (only) id in the bucket."""
    client = s3.client()
    out: dict[int, dict] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            parts = key.split("/")
            # clusters/<c>/topics/<topic>-<uuid>/<p>/manifest.json
            if key.endswith("/manifest.json") and len(parts) >= 3 and parts[-3][:-37] == topic:
                out[int(parts[-2])] = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                out[int(parts[-2])]["_prefix"] = key[: -len("manifest.json")]
    return out


def remote_end(manifests: dict[int, dict]) -> dict[int, int]:
    return {p: (m["segments"][-1]["last_offset"] + 1 if m["segments"] else 0) for p, m in manifests.items()}


def segment_keys(manifests: dict[int, dict]) -> list[tuple[str, int]]:
    keys = []
    for p in sorted(manifests):
        m = manifests[p]
        for s in m["segments"]:
            keys.append((f"{m['_prefix']}{s['base_offset']:020d}-{s['last_offset']:020d}.log", s["size"]))
    return keys


def local_log_bytes(data_dir: str, topic: str, partitions: int) -> int:
    total = 0
    for p in range(partitions):
        d = Path(data_dir) / f"{topic}-{p}"
        total += sum(f.stat().st_size for f in d.glob("*.log"))
    return total


# ---- load --------------------------------------------------------------------------------

def load(bootstrap: str, topic: str, partitions: int, nbytes: int) -> int:
    """Produce nbytes of 1 KiB incompressible records round-robin over the partitions (acks=1)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "batch.size": 1_000_000,
                         "queue.buffering.max.kbytes": 512 * 1024, "compression.type": "none",
                         "enable.idempotence": False, "message.timeout.ms": 120_000})
    errors = [0]

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    payloads = [os.urandom(RECORD_SIZE) for _ in range(64)]
    n = nbytes // RECORD_SIZE
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payloads[i & 63], partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(180) != 0 or errors[0]:
        raise RuntimeError(f"loading {topic}: {errors[0]} failed deliveries")
    return n


def wait_until(condition, timeout: float, what: str, every: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out ({timeout:.0f}s) waiting for {what}")


# ---- measurements ------------------------------------------------------------------------

@dataclass
class Rate:
    nbytes: int
    seconds: float
    records: int = 0
    broker_cpu: float = float("nan")
    detail: str = ""
    s3_cpu: float = float("nan")  # the moto server process, 100% = one core
    client_cpu: float = float("nan")  # this process (consumer or raw GET loop)

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds > 0 else 0.0


def replay(broker: Broker, topic: str, ends: dict[int, int], log_bytes: int, timeout: float, s3_pid: int = -1) -> Rate:
    """Consume every partition from offset 0 up to ends[p]; rate in log bytes (what S3/disk serve)."""
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",  # never joined: assign() only, no commits
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 50 * MiB,
        "max.partition.fetch.bytes": 4 * MiB,
        # librdkafka pauses a partition's fetching for this long once its local queue passes
        # queued.min.messages (100,000 = 100 MB of these records); the default 1000 ms showed up as
        # one-second stalls with the broker idle, a client-side pause that measures nothing here.
        "fetch.queue.backoff.ms": 10,
    })
    # Connection, metadata and group coordinator before the clock starts (librdkafka looks the
    # coordinator up even for assign(); the first FindCoordinator creates __consumer_offsets).
    consumer.list_topics(topic, timeout=10)
    consumer.committed([TopicPartition(topic, 0)], timeout=10)
    remaining = {p: e for p, e in ends.items() if e > 0}
    records = errors = 0
    with CpuMeter(broker) as cpu, OtherCpu(s3_pid) as other:
        t0 = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        deadline = t0 + timeout
        while remaining and time.perf_counter() < deadline:
            # consume(n, timeout) waits for n messages or the timeout: take what is queued, and wait
            # only briefly (for one message) when nothing is, so the tail adds no idle time.
            batch = consumer.consume(num_messages=10_000, timeout=0) or consumer.consume(num_messages=1,
                                                                                          timeout=0.05)
            for msg in batch:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        errors += 1
                    continue
                records += 1
                p = msg.partition()
                if p in remaining and msg.offset() >= remaining[p] - 1:
                    del remaining[p]
        elapsed = time.perf_counter() - t0
    consumer.close()
    detail = "" if not remaining else f"INCOMPLETE after {timeout:.0f}s ({records:,} records)"
    if errors:
        detail += f" {errors} errors"
    return Rate(log_bytes, elapsed, records, cpu.percent, detail.strip(), other.s3, other.client)


def replay_bare(broker: Broker, topic: str, ends: dict[int, int], log_bytes: int, timeout: float,
                s3_pid: int = -1) -> Rate:
    """The same replay with the bare Fetch loop (bench/fetcher.py); raises unless exactly log_bytes arrive."""
    # Metadata before the clock starts (as replay() does): the restarted broker serves the topic.
    probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}"})
    try:
        meta = probe.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or len(meta.partitions) < len(ends):
            raise RuntimeError(f"bare replay: no metadata for {topic} ({meta.error if meta else 'absent'})")
    finally:
        probe.close()
    main0 = cpu_seconds(broker.proc.pid)
    with CpuMeter(broker) as cpu, OtherCpu(s3_pid) as other:
        nbytes, elapsed = fetch_all(broker.bootstrap, topic, ends, timeout)
    main = 100.0 * (cpu_seconds(broker.proc.pid) - main0) / cpu.wall
    if nbytes != log_bytes:
        raise RuntimeError(f"bare replay of {topic}: fetched {nbytes:,} bytes, the log holds {log_bytes:,}; "
                           "not a rate of a complete replay")
    # The broker's CPU column counts its chunk downloader (a child process) too; the split:
    split = f"broker process {main:.0f}%, downloader {cpu.percent - main:.0f}%" if cpu.percent - main >= 1 else ""
    return Rate(nbytes, elapsed, 0, cpu.percent, split, other.s3, other.client)


async def _raw_get_loop(endpoint: str, bucket: str, keys: list[tuple[str, int]], range_bytes: int | None) -> float:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(connect_timeout=5, read_timeout=15, retries={"max_attempts": 1, "mode": "standard"},
                       max_pool_connections=32)
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           config=config) as client:
        await client.head_bucket(Bucket=bucket)  # connection before the clock starts
        total = 0
        t0 = time.perf_counter()
        for key, size in keys:
            if range_bytes is None:
                ranges: list[str | None] = [None]
            else:
                ranges = [f"bytes={s}-{min(size, s + range_bytes) - 1}" for s in range(0, size, range_bytes)]
            for r in ranges:
                kwargs = {"Bucket": bucket, "Key": key}
                if r is not None:
                    kwargs["Range"] = r
                response = await client.get_object(**kwargs)
                async with response["Body"] as stream:
                    total += len(await stream.read())
        return total / (time.perf_counter() - t0)


def raw_get(s3: MotoServer, bucket: str, keys: list[tuple[str, int]], range_bytes: int | None) -> Rate:
    total = sum(size for _, size in keys)
    with OtherCpu(s3.proc.pid) as other:  # includes the client's set-up; the rate does not
        rate = asyncio.run(_raw_get_loop(s3.endpoint, bucket, keys, range_bytes))
    return Rate(total, total / rate, s3_cpu=other.s3, client_cpu=other.client)


def first_fetch_after_restore(broker: Broker, data_dir: str, topic: str, timeout: float) -> tuple[float, float]:
    """Wipe the data dir, start the broker: (seconds until it listens, seconds until offset 0 arrives)."""
    broker.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    t0 = time.perf_counter()
    broker.start(timeout=timeout)
    listening = time.perf_counter() - t0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "error",
                         "topic.metadata.refresh.interval.ms": 200})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                # UNKNOWN_TOPIC etc. while the broker settles: keep polling, the clock keeps running
                continue
            if msg.offset() == 0:
                return listening, time.perf_counter() - t0
            raise RuntimeError(f"first record after restore has offset {msg.offset()}, not 0")
    finally:
        consumer.close()
    raise RuntimeError(f"no record at offset 0 within {timeout:.0f}s of the restart")


# ---- the run -----------------------------------------------------------------------------

@dataclass
class Results:
    cold: dict[str, list[Rate]] = field(default_factory=dict)
    hot: list[Rate] = field(default_factory=list)
    cold_bare: list[Rate] = field(default_factory=list)  # default settings, bare Fetch loop (fetcher.py)
    cold_bare_variants: dict[str, list[Rate]] = field(default_factory=dict)  # --bare-variant, bare Fetch loop
    hot_bare: list[Rate] = field(default_factory=list)
    raw_ranged: list[Rate] = field(default_factory=list)
    raw_whole: list[Rate] = field(default_factory=list)
    produce: dict[str, list] = field(default_factory=dict)
    restore: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    restore_sizes: dict[str, int] = field(default_factory=dict)
    restore_segments: dict[str, int] = field(default_factory=dict)
    replay_bytes: int = 0
    replay_segments: int = 0


def variant_settings(spec: str) -> list[str]:
    """'prefetch=8,chunk=8,cache=0' -> broker --set values (chunk and cache in MiB; admit=N: the
    download of a chunk on which it is written to the disk cache)."""
    out = []
    for item in filter(None, spec.split(",")):
        name, value = item.split("=")
        if name == "prefetch":
            out.append(f"tiered.prefetch.chunks={int(value)}")
        elif name == "chunk":
            out.append(f"tiered.chunk.bytes={int(float(value) * MiB)}")
        elif name == "cache":
            out.append(f"tiered.cache.bytes={int(float(value) * MiB)}")
        elif name == "process":
            out.append(f"tiered.download.process={'true' if int(value) else 'false'}")
        elif name == "admit":
            out.append(f"tiered.cache.admit.downloads={int(value)}")
        else:
            raise SystemExit(f"unknown variant setting {name!r} "
                             "(prefetch=N, chunk=MiB, cache=MiB, process=0|1, admit=N)")
    return out


def scrape(metrics_port: int) -> dict[str, float]:
    """The broker's /metrics as {sample name with labels: value} ({} while it does not answer yet)."""
    try:
        return metrics.samples(metrics.scrape(metrics_port))
    except OSError:
        return {}


def start_ready(broker: Broker, metrics_port: int, settings: list[str], warm: str, warm_ends: dict[int, int],
                timeout: float) -> None:
    """Start a broker and make it ready for cold reads: a cold read of another topic starts its chunk
    downloader (a child process that takes about a second to import aiobotocore; until then the broker
    downloads itself), and the downloader is waited for. A replay then measures the broker as it
    runs, not its first second; the replayed topic's chunks are not in its cache."""
    broker.start()
    if "tiered.download.process=false" not in settings:
        fetch_all(broker.bootstrap, warm, warm_ends, timeout)
        wait_until(lambda: scrape(metrics_port).get("strata_tier_downloader_ready") == 1.0, 30,
                   "the broker's cold chunk downloader")


_COUNTS = ('strata_tier_cold_chunks_total{by="downloader"}', 'strata_tier_cold_chunks_total{by="broker"}',
           'strata_s3_requests_total{operation="get_object"}')


def counts(metrics_port: int) -> list[float]:
    """Cold chunks the downloader received, those the broker downloaded itself, and S3 GETs, so far."""
    samples = scrape(metrics_port)
    return [samples.get(name, 0.0) for name in _COUNTS]


def chunks_by(before: list[float], after: list[float]) -> str:
    child, own, gets = (b - a for a, b in zip(before, after, strict=True))
    return f"chunks: {child:.0f} by the downloader, {own:.0f} by the broker; {gets:.0f} GETs"


def run(args: argparse.Namespace, tmp: str, res: Results, cleanup: list) -> None:  # type: ignore[type-arg]
    s3 = MotoServer(Path(tmp) / "moto.log").start()
    cleanup.append(s3.stop)
    note(f"moto S3 server pid {s3.proc.pid} on {s3.endpoint}")
    tag = uuid.uuid4().hex[:6]

    # ---- replay: load a cold topic (all in S3) and a hot one (local only) ----
    bucket = s3.new_bucket("replay")
    data_dir = os.path.join(tmp, "replay-data")
    os.makedirs(data_dir)
    port = free_port()
    log_path = Path(tmp) / "broker-replay.log"
    metrics_port = free_port()

    def replay_broker(*extra: str) -> Broker:
        return strata_broker(data_dir, port, log_path, *tiered_settings(s3, bucket, args, *extra),
                             f"metrics.listen=127.0.0.1:{metrics_port}")

    broker = replay_broker()
    cleanup.append(lambda: broker.stop())
    broker.start()
    note(f"strata-broker pid {broker.proc.pid} on {broker.bootstrap} (bucket {bucket})")
    cold, hot, warm = f"cold-{tag}", f"hot-{tag}", f"warm-{tag}"
    parts = args.partitions
    all_remote = {"retention.ms": "-1", "local.retention.bytes": "0", "local.retention.ms": "-1"}
    create_topic(broker.bootstrap, cold, parts, config=all_remote)
    create_topic(broker.bootstrap, warm, 1, config=all_remote)  # only there to start the chunk downloader
    create_topic(broker.bootstrap, hot, parts, config={"retention.ms": "-1", "remote.storage.enable": "false"})
    nbytes = int(args.mb * MB)
    t0 = time.perf_counter()
    n = load(broker.bootstrap, cold, parts, nbytes)
    note(f"loaded {n:,} records into {cold} in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    load(broker.bootstrap, hot, parts, nbytes)
    note(f"loaded {n:,} records into {hot} in {time.perf_counter() - t0:.1f}s")
    warm_n = load(broker.bootstrap, warm, 1, MB)
    wait_until(lambda: remote_end(remote_manifests(s3, bucket, warm)) == {0: warm_n}, 180, "uploads of the warm topic")
    wait_until(lambda: local_log_bytes(data_dir, warm, 1) == 0, 60, "local deletion of the warm topic", 0.25)
    per_part = {p: n // parts + (1 if p < n % parts else 0) for p in range(parts)}
    wait_until(lambda: remote_end(remote_manifests(s3, bucket, cold)) == per_part, 180, "uploads of the cold topic")
    wait_until(lambda: local_log_bytes(data_dir, cold, parts) == 0, 60, "local deletion of the cold topic", 0.25)
    manifests = remote_manifests(s3, bucket, cold)
    keys = segment_keys(manifests)
    res.replay_bytes = sum(size for _, size in keys)
    res.replay_segments = len(keys)
    hot_bytes = local_log_bytes(data_dir, hot, parts)
    ends = remote_end(manifests)
    note(f"cold topic: {len(keys)} segment(s), {res.replay_bytes / MB:.1f} MB in S3, 0 bytes local; "
         f"hot topic: {hot_bytes / MB:.1f} MB local")

    variants = [""] + [v for v in args.variant if v]
    for round_no in range(args.rounds):
        r = raw_get(s3, bucket, keys, 4 * MiB)
        res.raw_ranged.append(r)
        note(f"round {round_no + 1}: raw GET 4 MiB ranges: {r.mb_s:.1f} MB/s ({r.seconds:.1f}s, S3 CPU "
             f"{r.s3_cpu:.0f}%, client CPU {r.client_cpu:.0f}%)")
        # The bare Fetch loop (default settings only) goes first in even rounds, after the default
        # confluent-kafka run in odd ones.
        bare_first = round_no % 2 == 0
        cold_runs = [(spec, False) for spec in variants]
        cold_runs.insert(0 if bare_first else 1, ("", True))
        cold_runs += [(spec, True) for spec in args.bare_variant if spec]
        for spec, bare in cold_runs:
            broker.stop()
            settings = variant_settings(spec)
            broker = replay_broker(*settings)
            # The chunk cache is cleared on start: cold.
            start_ready(broker, metrics_port, settings, warm, {0: warm_n}, args.timeout)
            if bare:
                before = counts(metrics_port)
                r = replay_bare(broker, cold, ends, res.replay_bytes, args.timeout, s3.proc.pid)
                r.detail = "; ".join(filter(None, [chunks_by(before, counts(metrics_port)), r.detail]))
                if spec:
                    res.cold_bare_variants.setdefault(spec, []).append(r)
                else:
                    res.cold_bare.append(r)
            else:
                r = replay(broker, cold, ends, res.replay_bytes, args.timeout, s3.proc.pid)
                res.cold.setdefault(spec or "default", []).append(r)
            note(f"round {round_no + 1}: cold replay [{spec or 'default'}{', bare Fetch loop' if bare else ''}]: "
                 f"{r.mb_s:.1f} MB/s ({r.seconds:.1f}s, broker CPU {r.broker_cpu:.0f}%, S3 CPU {r.s3_cpu:.0f}%, "
                 f"{'fetcher' if bare else 'consumer'} CPU {r.client_cpu:.0f}%) {r.detail}")
        hot_ends = {p: per_part[p] for p in range(parts)}
        for bare in ((True, False) if bare_first else (False, True)):
            if bare:
                r = replay_bare(broker, hot, hot_ends, hot_bytes, args.timeout, s3.proc.pid)
                res.hot_bare.append(r)
            else:
                r = replay(broker, hot, hot_ends, hot_bytes, args.timeout, s3.proc.pid)
                res.hot.append(r)
            note(f"round {round_no + 1}: hot replay{', bare Fetch loop' if bare else ''}: {r.mb_s:.1f} MB/s "
                 f"({r.seconds:.1f}s, broker CPU {r.broker_cpu:.0f}%, {'fetcher' if bare else 'consumer'} CPU "
                 f"{r.client_cpu:.0f}%) {r.detail}")
        r = raw_get(s3, bucket, keys, None)
        res.raw_whole.append(r)
        note(f"round {round_no + 1}: raw GET whole objects: {r.mb_s:.1f} MB/s ({r.seconds:.1f}s, S3 CPU "
             f"{r.s3_cpu:.0f}%, client CPU {r.client_cpu:.0f}%)")

    # ---- restore: the big bucket is the one above; a small one beside it ----
    broker.stop()
    broker = replay_broker()
    small_bucket = s3.new_bucket("small")
    small_dir = os.path.join(tmp, "small-data")
    os.makedirs(small_dir)
    small = strata_broker(small_dir, free_port(), Path(tmp) / "broker-small.log",
                          *tiered_settings(s3, small_bucket, args))
    cleanup.append(lambda: small.stop())
    small.start()
    create_topic(small.bootstrap, cold, parts,
                 config={"retention.ms": "-1", "local.retention.bytes": "0", "local.retention.ms": "-1"})
    n_small = load(small.bootstrap, cold, parts, int(args.small_mb * MB))
    per_small = {p: n_small // parts + (1 if p < n_small % parts else 0) for p in range(parts)}
    wait_until(lambda: remote_end(remote_manifests(s3, small_bucket, cold)) == per_small, 120,
               "uploads of the small topic")
    small_keys = segment_keys(remote_manifests(s3, small_bucket, cold))
    res.restore_sizes = {"small": sum(s for _, s in small_keys), "large": res.replay_bytes}
    res.restore_segments = {"small": len(small_keys), "large": len(keys)}
    # Reference: the same broker with an empty bucket (nothing to restore).
    empty_bucket = s3.new_bucket("empty")
    empty_dir = os.path.join(tmp, "empty-data")
    os.makedirs(empty_dir)
    empty = strata_broker(empty_dir, free_port(), Path(tmp) / "broker-empty.log",
                          *tiered_settings(s3, empty_bucket, args))
    cleanup.append(lambda: empty.stop())
    empty.start()
    res.restore_sizes["empty"] = 0
    res.restore_segments["empty"] = 0
    which = {"small": (small, small_dir), "large": (broker, data_dir), "empty": (empty, empty_dir)}
    for i in range(args.restores):
        for label in (("empty", "small", "large") if i % 2 == 0 else ("large", "small", "empty")):
            if label == "empty":
                # Nothing in the bucket: the start-up floor; the clock stops at its listening.
                empty.stop()
                shutil.rmtree(empty_dir, ignore_errors=True)
                os.makedirs(empty_dir)
                t0 = time.perf_counter()
                empty.start(timeout=args.timeout)
                listen = time.perf_counter() - t0
                res.restore.setdefault(label, []).append((listen, float("nan")))
                note(f"start with an empty bucket and data dir: listening after {listen:.2f}s")
                continue
            b, d = which[label]
            listen, first = first_fetch_after_restore(b, d, cold, args.timeout)
            res.restore.setdefault(label, []).append((listen, first))
            note(f"restore {label} ({res.restore_sizes[label] / MB:.1f} MB in S3): listening after {listen:.2f}s, "
                 f"offset 0 after {first:.2f}s")
    small.stop()
    broker.stop()
    empty.stop()

    # ---- produce: acks=all, durability=s3 vs disk (own bucket, fresh broker) ----
    prod_bucket = s3.new_bucket("produce")
    prod_dir = os.path.join(tmp, "produce-data")
    os.makedirs(prod_dir)
    prod = strata_broker(prod_dir, free_port(), Path(tmp) / "broker-produce.log",
                         *tiered_settings(s3, prod_bucket, args))
    cleanup.append(lambda: prod.stop())
    prod.start()
    for i in range(args.rounds):
        for durability in (("disk", "s3") if i % 2 == 0 else ("s3", "disk")):
            topic = f"prod-{durability}-{tag}-{i}"
            create_topic(prod.bootstrap, topic, args.produce_partitions,
                         config={"strata.durability": durability, "retention.ms": "-1"})
            r = produce_throughput(prod, topic, "all", args.produce_seconds, 2_000_000)
            res.produce.setdefault(durability, []).append(r)
            note(f"produce acks=all durability={durability}: {r.mb_s:.1f} MB/s {r.rec_s:,.0f} rec/s "
                 f"({r.records:,} records, {r.errors} failed, broker CPU {r.broker_cpu:.0f}%)")
            settle(prod, topic)  # the next run does not pay for this one's writeback
    prod.stop()
    for path in Path(tmp).glob("broker-*.log"):
        problems = [line for line in path.read_text(errors="replace").splitlines()
                    if " ERROR " in line or "Traceback" in line]
        if problems:
            note(f"{path.name}: {len(problems)} error line(s)" + "".join(f"\n    {x[:200]}" for x in problems[:5]))


# ---- report ------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def pct(value: float) -> str:
    return "" if value != value else f"{value:.0f}%"


def report(res: Results, args: argparse.Namespace) -> None:
    table = Table(title=f"Strata tiered storage ({RECORD_SIZE} B records, {args.partitions} partition(s), "
                        f"segment.bytes {args.segment_mb:g} MiB, moto S3 on loopback, {os.cpu_count()} CPUs, "
                        f"{args.rounds} round(s))")
    for col, justify in (("measurement", "left"), ("best", "right"), ("runs", "right"), ("vs raw GET", "right"),
                         ("broker CPU", "right"), ("S3 CPU", "right"), ("client CPU", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    raw_best = max((r.mb_s for r in res.raw_ranged + res.raw_whole), default=float("nan"))
    raw_ranged = max((r.mb_s for r in res.raw_ranged), default=float("nan"))
    raw_whole = max((r.mb_s for r in res.raw_whole), default=float("nan"))

    def rates(label: str, runs: list[Rate], ref: float | None = None) -> None:
        if not runs:
            return
        best = max(runs, key=lambda r: r.mb_s)
        # The best run's notes, and any other run's errors.
        extra = "".join(f" ({r.detail})" for r in runs if r.detail and (r is best or "error" in r.detail))
        table.add_row(escape(label + extra), fmt(best.mb_s), " / ".join(fmt(r.mb_s) for r in runs),
                      f"{best.mb_s / ref:.2f}x" if ref else "", pct(best.broker_cpu), pct(best.s3_cpu),
                      pct(best.client_cpu))

    size = f"{res.replay_bytes / MB:.0f} MB, {res.replay_segments} segments"
    rates(f"raw aiobotocore GET, 4 MiB ranges, sequential ({size}) (MB/s)", res.raw_ranged)
    rates("raw aiobotocore GET, whole objects, sequential (MB/s)", res.raw_whole)
    rates("cold replay from S3, empty cache, bare Fetch loop (MB/s)", res.cold_bare, raw_best)
    for spec, runs in res.cold_bare_variants.items():
        rates(f"cold replay from S3, empty cache, {spec}, bare Fetch loop (MB/s)", runs, raw_best)
    rates("hot replay from local disk, bare Fetch loop (MB/s)", res.hot_bare, raw_best)
    for spec, runs in res.cold.items():
        rates(f"cold replay from S3, empty cache, {spec}, confluent-kafka (MB/s)", runs, raw_best)
    rates("hot replay from local disk, confluent-kafka (MB/s)", res.hot, raw_best)
    table.add_section()
    for durability in ("disk", "s3"):
        runs = res.produce.get(durability, [])
        if runs:
            best = max(runs, key=lambda r: r.mb_s)
            ref = max((r.mb_s for r in res.produce.get("disk", [])), default=0.0)
            table.add_row(f"produce acks=all, strata.durability={durability}, {args.produce_partitions} partitions "
                          f"(MB/s)" + ("".join(f" ({r.errors} failed)" for r in runs if r.errors)),
                          fmt(best.mb_s), " / ".join(fmt(r.mb_s) for r in runs),
                          f"{best.mb_s / ref:.2f}x of disk" if durability == "s3" and ref else "",
                          fmt(best.broker_cpu, 0) + "%", "", "")
    table.add_section()
    for label in ("empty", "small", "large"):
        runs = res.restore.get(label, [])
        if not runs:
            continue
        what = f"{res.restore_sizes[label] / MB:.1f} MB, {res.restore_segments[label]} segments in S3"
        if label == "empty":
            table.add_row("reference: start with an empty bucket and data dir, until listening (s)",
                          fmt(statistics.median(r[0] for r in runs), 2) + " med",
                          " / ".join(fmt(r[0], 2) for r in runs), "", "", "", "")
            continue
        table.add_row(f"restore, empty disk ({what}): start until listening (s)",
                      fmt(statistics.median(r[0] for r in runs), 2) + " med",
                      " / ".join(fmt(r[0], 2) for r in runs), "", "", "", "")
        table.add_row(f"restore, empty disk ({what}): start until offset 0 consumed (s)",
                      fmt(statistics.median(r[1] for r in runs), 2) + " med",
                      " / ".join(fmt(r[1], 2) for r in runs), "", "", "", "")
    if res.restore.get("small") and res.restore.get("large"):
        s = statistics.median(r[1] for r in res.restore["small"])
        big = statistics.median(r[1] for r in res.restore["large"])
        table.add_row("time to first fetch, large / small (target: flat, ~1.0x)", f"{big / s:.2f}x", "", "", "", "", "")
    console.print(table)
    cold_bare = max((r.mb_s for r in res.cold_bare), default=float("nan"))
    if res.cold_bare and res.raw_whole:
        verdict = "met" if cold_bare / raw_whole >= 0.8 else "NOT met"
        # For information beside the target's best-of-each: each round's cold run over the same
        # round's raw run, which cancels the machine's slower drifts but not its second-to-second swings.
        paired = [c.mb_s / r.mb_s for c, r in zip(res.cold_bare, res.raw_whole, strict=False)]
        target = (f"TARGET (checked on the bare Fetch loop row): cold replay, bare Fetch loop / best raw "
                  f"whole-object GET = {fmt(cold_bare)} / {fmt(raw_whole)} = {cold_bare / raw_whole:.3f}x, "
                  f"target >= 0.8x: {verdict}. Round by round: "
                  + " / ".join(f"{x:.2f}x" for x in paired)
                  + (f" (median {statistics.median(paired):.2f}x)." if paired else "."))
    else:
        target = "TARGET (cold replay, bare Fetch loop / best raw whole-object GET >= 0.8x): not measured."
    console.print(target, highlight=False)
    console.print(f"MB/s = segment (log) bytes per second; raw GET over the same .log objects and endpoint; "
                  f"vs raw GET = best of that row / best raw GET of either kind ({fmt(raw_best)} MB/s; whole "
                  f"objects best {fmt(raw_whole)}, 4 MiB ranged best {fmt(raw_ranged)}). Cold = broker restarted "
                  "(cache cleared) before each run, then a small other cold topic read and the chunk downloader waited "
                  "for. Bare Fetch loop (bench/fetcher.py; default settings and --bare-variant ones): one "
                  "Fetch v11 in flight, all partitions per request, max_bytes 50 MiB, 4 MiB per partition, only "
                  "batch headers read -- the broker's rate, the target's row; a run that does not fetch exactly "
                  "the log's bytes aborts the benchmark. confluent-kafka rows: assign() from 0, fetch.max.bytes "
                  "50 MiB, max.partition.fetch.bytes 4 MiB, fetch.queue.backoff.ms 10 -- the end-to-end client "
                  "view, on this machine limited by the consumer's own CPU. Hot topic has "
                  "remote.storage.enable=false (local only). "
                  "Produce: confluent-kafka, linger.ms=5, batch.size=1MB, idempotence off, "
                  f"{args.produce_seconds:g}s per run, alternating order. CPU columns (100% = one core) for the best "
                  "run: the broker, the moto S3 server, this process (consumer / Fetch loop / GET loop).",
                  highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 1500 MB: at 200 a cold run lasted 0.3-0.5 s and its first chunk's latency was a tenth of it; at
    # 600 a run (and the raw GET loop) lasted about a second, and the best of three swung by 10-15%.
    parser.add_argument("--mb", type=float, default=1500, help="MB (1e6) loaded into the replay topic (large bucket)")
    parser.add_argument("--small-mb", type=float, default=None, help="MB in the small restore bucket (default mb/10)")
    parser.add_argument("--segment-mb", type=float, default=16, help="segment.bytes in MiB")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the replay topics")
    parser.add_argument("--variant", action="append", default=None, metavar="prefetch=N,chunk=MiB,cache=MiB",
                        help="extra cold-replay broker settings to try (repeatable; default: prefetch=8, "
                             "chunk=16,prefetch=2 and cache=0); pass --variant '' for none")
    parser.add_argument("--bare-variant", action="append", default=None, metavar="SPEC",
                        help="cold-replay broker settings also measured with the bare Fetch loop (repeatable; "
                             "default: process=0, the broker downloading without its child process, and "
                             "admit=1, every downloaded chunk written to the disk cache)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of replay and produce measurements")
    parser.add_argument("--restores", type=int, default=3, help="restores per bucket size")
    parser.add_argument("--produce-seconds", type=float, default=5.0)
    parser.add_argument("--produce-partitions", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="cap on one replay / one restore")
    parser.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for every strata-broker (repeatable)")
    parser.add_argument("--broker-pythonpath", metavar="DIR",
                        help="run the broker from this source tree (PYTHONPATH), e.g. a patched copy for an A/B")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="A/B: run everything again with the broker as of this git ref (e.g. HEAD~1) and "
                             "print both, with their ratios")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, broker and moto logs)")
    args = parser.parse_args()
    if args.small_mb is None:
        args.small_mb = args.mb / 10
    if args.variant is None:
        args.variant = ["prefetch=8", "chunk=16,prefetch=2", "cache=0"]
    if args.bare_variant is None:
        args.bare_variant = ["process=0", "admit=1"]
    os.environ.update(CREDENTIALS)  # the brokers inherit them (standard AWS chain)

    if args.broker_pythonpath:
        os.environ["PYTHONPATH"] = os.path.abspath(args.broker_pythonpath)
    started = time.monotonic()
    if not args.baseline:
        res = measure(args, "this code")
        if res is None:
            return 1
        report(res, args)
        note(f"total {time.monotonic() - started:.0f}s")
        return 0
    source = checkout_broker(args.baseline, Path(tempfile.mkdtemp(prefix="strata-bench-baseline-")))
    sides: dict[str, Results] = {}
    for name, pythonpath in (("this code", os.environ.get("PYTHONPATH")), (f"previous ({args.baseline})", str(source))):
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        else:
            os.environ.pop("PYTHONPATH", None)
        res = measure(args, name)
        if res is None:
            return 1
        note(f"---- {name} ----")
        report(res, args)
        sides[name] = res
    report_ab(*sides.items())
    note(f"total {time.monotonic() - started:.0f}s")
    return 0


def measure(args: argparse.Namespace, name: str) -> Results | None:
    """Every measurement against one broker code (the PYTHONPATH the brokers inherit)."""
    tmp = tempfile.mkdtemp(prefix="strata-bench-tiered-")
    note(f"{name}: temp dir {tmp}")
    res = Results()
    cleanup: list = []  # type: ignore[type-arg]
    try:
        run(args, tmp, res, cleanup)
    except Exception as exc:
        note(f"FAILED: {exc!r} (figures so far below; logs in {tmp})")
        args.keep = True
        report(res, args)
        return None
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception:  # noqa: BLE001 - best effort
                pass
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def report_ab(this: tuple[str, Results], previous: tuple[str, Results]) -> None:
    """The headline figures of both codes side by side (best run of each, MB/s; restore: median s)."""
    (this_name, a), (prev_name, b) = this, previous
    table = Table(title="A/B: tiered storage, this code beside the previous code (run one after the other)")
    for col in ("measurement", this_name, prev_name, "this / previous"):
        table.add_column(col, justify="left" if col == "measurement" else "right")

    def best(runs: list[Rate]) -> float:
        return max((r.mb_s for r in runs), default=float("nan"))

    rows = [("raw S3 GET, ranged (MB/s)", a.raw_ranged, b.raw_ranged), ("raw S3 GET, whole (MB/s)", a.raw_whole,
                                                                          b.raw_whole),
            ("cold replay, bare Fetch loop (MB/s)", a.cold_bare, b.cold_bare),
            ("hot replay, bare Fetch loop (MB/s)", a.hot_bare, b.hot_bare), ("hot replay (MB/s)", a.hot, b.hot)]
    rows += [(f"cold replay {variant} (MB/s)", a.cold[variant], b.cold.get(variant, [])) for variant in a.cold]
    rows += [(f"produce durability={d} (MB/s)", a.produce[d], b.produce.get(d, [])) for d in a.produce]
    for label, x, y in rows:
        table.add_row(label, f"{best(x):,.1f}", f"{best(y):,.1f}", f"{best(x) / best(y):.2f}x" if y else "")
    for size in a.restore:
        x = statistics.median(r[1] for r in a.restore[size])
        y = statistics.median(r[1] for r in b.restore.get(size, [(0.0, float("nan"))]))
        table.add_row(f"restore {size} bucket onto an empty disk (s, median)", f"{x:.2f}", f"{y:.2f}", f"{x / y:.2f}x")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())

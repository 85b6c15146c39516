"""Cluster benchmark (issue 10): partition moves through S3, produce throughput over 1-3 brokers,
and what a lost node loses -- beside references measured in the same run.

Starts a moto S3 server, strata-broker processes in cluster mode (`--broker-id N`, one shared
bucket, `cluster.placement.file`) and the real controller (`python -m
strata_operator.cluster.controller`, membership from a `--members-file`) as subprocesses, all on
127.0.0.1 with free ports and temp dirs, and prints three tables (figures only, no thresholds):

* moves: one 1-partition topic (strata.durability=disk) loaded with --sizes MB of 1 KiB records
  (confluent-kafka, acks=1) on a fresh 2-broker cluster; once the S3 manifest covers the log end
  (ListOffsets latest), the members file drops the leader (scale in), which moves exactly that
  partition (nothing else exists on the cluster). Timed from the placement file's change (its
  mtime) to (a) the new leader's log line "leading <topic>-0 at epoch N ..." and (b) a
  confluent-kafka produce acknowledged by the new leader plus a kafka-python fetch (no group) of
  the last offset written before the move, which the new leader reads from S3. --moves moves per
  size, back and forth (both brokers members again before each). Reference: a raw sequential
  aiobotocore GET of the partition's segment objects (what copying the data would at least cost);
* throughput: a fresh cluster of 1, 2, 3 brokers, a 12-partition topic, one confluent-kafka
  producer process per broker (1 KiB records, acks=1, all partitions), --seconds each; beside the
  raw sequential write rate of the same disk. CPU of brokers, moto and producers is shown: on a
  machine with few cores they all share them;
* loss: a 3-broker cluster, tiered.upload.interval.ms=U; a paced acks=1 producer into a
  strata.durability=disk topic and a paced acks=all (idempotent) producer into a
  strata.durability=s3 topic; one broker is SIGKILLed, and after fail-over every partition is read
  back: acknowledged records missing at their (partition, offset) or carrying another value there
  are lost; printed with how long before the kill they had been acknowledged, beside U.

    .venv/bin/python bench/cluster.py [--sizes 100,1000] [--moves 3] [--seconds 10] [--only moves,throughput,loss]
    .venv/bin/python bench/cluster.py --sizes 20,100 --moves 2 --seconds 3 --loss-seconds 3   # quick
"""

from __future__ import annotations

import argparse
import json
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HOST, Broker, create_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from produce_consume import cpu_seconds, produce_until, raw_disk_rate  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402
from strata_contract.placement import Placement, read_placement  # noqa: E402
from tiered import CREDENTIALS, MotoServer, load, raw_get, remote_end, remote_manifests, segment_keys  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
RECORD_SIZE = 1024
console = Console(width=max(150, Console().width))


def note(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(msg)}", highlight=False)


def wait_for(condition, timeout: float, what: str, every: float = 0.25):  # type: ignore[no-untyped-def]
    """Poll until condition() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out ({timeout:.0f}s) waiting for {what}")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU the whole machine used between two machine_cpu() readings, 100% = one core."""
    total = after[1] - before[1]
    return 100.0 * (os.cpu_count() or 1) * (after[0] - before[0]) / total if total > 0 else float("nan")


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# ---- a cluster: brokers in cluster mode + the controller, sharing one bucket ----------------

LEADING = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+: leading (\S+)-(\d+) at epoch (\d+) "
                     r"from offset (\d+)\.\.(\d+) \(([^,]+), ([\d.]+)s\)")
HANDED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+: handed over (\S+)-(\d+) at offset (\d+) "
                    r"\(sealed in ([\d.]+)s\)")


def log_time(stamp: str) -> float:
    """The brokers' logging asctime (local time, ms) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Leading:
    at: float  # Unix time of the log line
    epoch: int
    start: int
    end: int
    how: str
    seconds: float  # the broker's own figure: placement seen -> leading


class ClusterRig:
    """n strata-brokers (ids 0..n-1) + the controller process; placement and members files in root."""

    def __init__(self, root: Path, s3: MotoServer, brokers: int, args: argparse.Namespace, label: str,
                 *extra: str) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self.s3 = s3
        self.bucket = s3.new_bucket(label)
        self.placement_file = root / "placement.json"
        self.members_file = root / "members"
        self.grace_ms = args.grace_ms
        self.lease_ms = args.lease_ms
        settings = [f"tiered.s3.bucket={self.bucket}", f"tiered.s3.endpoint={s3.endpoint}",
                    "tiered.s3.region=us-east-1", f"cluster.placement.file={self.placement_file}",
                    f"cluster.lease.ms={args.lease_ms}", f"tiered.upload.interval.ms={args.upload_ms}",
                    f"segment.bytes={int(args.segment_mb * MiB)}", "offsets.topic.num.partitions=6",
                    "group.initial.rebalance.delay.ms=0",
                    # Topics are created explicitly: an auto-create on a broker that has not seen a new
                    # topic's topic.json yet would race the CreateTopics (two directories, one kept).
                    "auto.create.topics.enable=false", *args.broker_set, *extra]
        self.brokers: list[Broker] = []
        for i in range(brokers):
            data = root / f"broker-{i}"
            data.mkdir()
            # Same command line as every bench broker, plus an id and INFO logs (the take-over lines).
            broker = strata_broker(data, free_port(), root / f"broker-{i}.log", *settings, broker_id=i,
                                   log_level="INFO")
            self.brokers.append(broker)
        self.controller: subprocess.Popen[bytes] | None = None
        self.controller_log = root / "controller.log"

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers if b.alive())

    def set_members(self, ids: list[int]) -> None:
        tmp = self.members_file.with_suffix(".tmp")
        tmp.write_text(",".join(str(i) for i in ids))
        os.replace(tmp, self.members_file)

    def start(self) -> ClusterRig:
        self.set_members(list(range(len(self.brokers))))
        log = open(self.controller_log, "ab")  # noqa: SIM115 - handed to the child
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "strata_operator.cluster.controller", "--endpoint", self.s3.endpoint,
             "--bucket", self.bucket, "--placement", str(self.placement_file), "--members-file",
             str(self.members_file), "--grace-ms", str(self.grace_ms), "--interval", "0.25"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        for broker in self.brokers:
            broker.start()
        wanted = set(range(len(self.brokers)))
        self.wait(lambda p: {b.id for b in p.brokers} == wanted, 30, "every broker in the placement")
        return self

    def placement(self) -> Placement:
        return read_placement(str(self.placement_file)) or Placement()

    def wait(self, condition, timeout: float, what: str, every: float = 0.05) -> Placement:  # type: ignore[no-untyped-def]
        def check() -> Placement | None:
            placement = self.placement()
            return placement if condition(placement) else None

        return wait_for(check, timeout, what, every)

    def leaders(self, topic: str) -> list[int]:
        placed = self.placement().topics.get(topic)
        return [a.leader for a in placed.partitions] if placed else []

    def wait_placed(self, topic: str, partitions: int, timeout: float = 30.0) -> list[int]:
        self.wait(lambda p: topic in p.topics and len(p.topics[topic].partitions) == partitions, timeout,
                  f"{topic} placed")
        return self.leaders(topic)

    def log_lines(self, broker: int) -> list[str]:
        try:
            return self.brokers[broker].log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def leading(self, broker: int, topic: str, partition: int, epoch: int) -> Leading | None:
        for line in self.log_lines(broker):
            m = LEADING.match(line)
            if m and m[2] == topic and int(m[3]) == partition and int(m[4]) == epoch:
                return Leading(log_time(m[1]), epoch, int(m[5]), int(m[6]), m[7], float(m[8]))
        return None

    def sealed_in(self, broker: int, topic: str, partition: int, after: float) -> float | None:
        for line in self.log_lines(broker):
            m = HANDED.match(line)
            if m and m[2] == topic and int(m[3]) == partition and log_time(m[1]) >= after - 1.0:
                return float(m[5])
        return None

    def problems(self) -> list[str]:
        out = []
        for i in range(len(self.brokers)):
            out += [f"broker {i}: {line[:180]}" for line in self.log_lines(i)
                    if " ERROR " in line or "Traceback" in line]
        return out

    def drop_data(self) -> None:
        """Remove the brokers' data dirs (gigabytes of dirty pages would slow what runs next); logs stay."""
        for i in range(len(self.brokers)):
            shutil.rmtree(self.root / f"broker-{i}", ignore_errors=True)

    def stop(self) -> None:
        # The data is thrown away: no clean hand-over needed.
        for broker in self.brokers:
            broker.kill()
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(10)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()


def latest_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                                 request_timeout=15)
    return {tp.partition: f.result(20).offset for tp, f in futures.items()}


def probe_producer(bootstrap: str, acks: str = "1") -> Producer:
    """A producer that notices a leader change quickly (short retry back-off and metadata refresh),
    connected to every broker as a busy client would be: librdkafka's thread for a broker it has no
    connection to only looks at its queue once a second, which would add up to 1 s to a move."""
    return Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0, "enable.idempotence": False,
                     "retry.backoff.ms": 10, "retry.backoff.max.ms": 50, "enable.sparse.connections": False,
                     "topic.metadata.refresh.fast.interval.ms": 20, "message.timeout.ms": 60_000})


# ---- 1. moves ----------------------------------------------------------------------------------

@dataclass
class Move:
    source: int
    target: int
    end: int  # log end before the move
    leading: float  # placement change -> the new leader's "leading" log line (s)
    reported: float  # the new leader's own figure (placement seen -> leading)
    produced: float  # placement change -> a produce acknowledged by the new leader
    fetched: float  # placement change -> that and a fetch of offset end-1 (from S3) done
    sealed: float  # the old leader's "sealed in" figure
    how: str


@dataclass
class SizeResult:
    mb: float
    s3_bytes: int = 0
    segments: int = 0
    records: int = 0
    load_s: float = float("nan")
    upload_wait_s: float = float("nan")
    moves: list[Move] = field(default_factory=list)
    raw_get_s: float = float("nan")
    raw_get_mb_s: float = float("nan")
    problems: list[str] = field(default_factory=list)


def kafka_python_consumer(bootstrap: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                         retry_backoff_ms=20, fetch_max_wait_ms=100, reconnect_backoff_ms=20,
                         reconnect_backoff_max_ms=200, request_timeout_ms=30_000)


def fetch_at(consumer, topic: str, offset: int, timeout: float) -> bytes:  # type: ignore[no-untyped-def]
    from kafka import TopicPartition as KTopicPartition

    tp = KTopicPartition(topic, 0)
    if consumer.assignment() != {tp}:
        consumer.assign([tp])
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=50, max_records=1).values():
            for record in records:
                if record.offset == offset:
                    return record.value
                consumer.seek(tp, offset)
    raise RuntimeError(f"no record at {topic}/0@{offset} within {timeout:.0f}s")


def move_once(rig: ClusterRig, topic: str, target: int, timeout: float) -> Move:
    """Move topic-0 to `target` by dropping every other broker from the members file."""
    # Every broker a member again first (no partition moves: one partition, two brokers), so the
    # clients below know the target broker; then fresh, warmed-up clients.
    everyone = set(range(len(rig.brokers)))
    rig.set_members(sorted(everyone))
    before = rig.wait(lambda p: {b.id for b in p.brokers} == everyone, 30, "every broker a member again")
    source = before.topics[topic].partitions[0].leader
    assert source != target, (source, target)
    producer = probe_producer(rig.bootstrap)
    consumer = kafka_python_consumer(rig.bootstrap)
    try:
        producer.produce(topic, b"warm-up", partition=0)
        if producer.flush(30):
            raise RuntimeError("warm-up produce failed")
        time.sleep(0.2)  # connections to every broker (enable.sparse.connections=false)
        end = latest_offsets(rig.bootstrap, topic, 1)[0]
        wait_for(lambda: manifest_end(rig, topic) == end, 120, f"the manifest of {topic}-0 to reach offset {end}",
                 0.2)
        expected = fetch_at(consumer, topic, end - 1, 30)  # from the old leader, before the move
        return _move(rig, topic, source, target, end, expected, producer, consumer, timeout)
    finally:
        consumer.close()
        producer.flush(10)


def _move(rig: ClusterRig, topic: str, source: int, target: int, end: int, expected: bytes, producer: Producer,  # type: ignore[no-untyped-def]
          consumer, timeout: float) -> Move:
    rig.set_members([target])
    placement = rig.wait(lambda p: p.topics[topic].partitions[0].leader == target, 30,
                         f"{topic}-0 placed on broker {target}", every=0.002)
    changed = os.stat(rig.placement_file).st_mtime
    epoch = placement.topics[topic].partitions[0].epoch
    # (b) the client's view: produce until the new leader acknowledges (offset at or past where it
    # took over), then fetch the last record written before the move.
    acks: list[tuple[float, int]] = []

    def on_delivery(err: KafkaError | None, msg) -> None:  # type: ignore[no-untyped-def]
        acks.append((time.time(), -1 if err is not None else msg.offset()))

    produced = float("nan")
    lead: Leading | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        producer.produce(topic, b"move-probe", partition=0, on_delivery=on_delivery)
        producer.flush(timeout)
        lead = lead or rig.leading(target, topic, 0, epoch)
        at, offset = acks[-1]
        if lead is not None and offset >= lead.end:
            produced = at
            break
        if offset < 0:
            time.sleep(0.01)
    if produced != produced:
        raise RuntimeError(f"no produce acknowledged by broker {target} within {timeout:.0f}s")
    value = fetch_at(consumer, topic, end - 1, timeout)
    fetched = time.time()
    if value != expected:
        raise RuntimeError(f"{topic}/0@{end - 1} changed over the move")
    assert lead is not None
    sealed = wait_for(lambda: rig.sealed_in(source, topic, 0, changed), 10, "the old leader's seal line", 0.1)
    return Move(source, target, end, lead.at - changed, lead.seconds, produced - changed, fetched - changed,
                sealed, lead.how)


def manifest_end(rig: ClusterRig, topic: str) -> int | None:
    return remote_end(remote_manifests(rig.s3, rig.bucket, topic)).get(0)


def run_moves(args: argparse.Namespace, tmp: Path, s3: MotoServer, results: list[SizeResult]) -> None:
    for n, mb in enumerate(args.sizes):
        res = SizeResult(mb)
        results.append(res)
        rig = ClusterRig(tmp / f"moves-{n}", s3, 2, args, "moves")
        try:
            rig.start()
            measure_size(args, rig, res)
        finally:
            rig.stop()
            rig.drop_data()


def measure_size(args: argparse.Namespace, rig: ClusterRig, res: SizeResult) -> None:
    topic = f"move-{res.mb:g}mb"
    create_topic(rig.bootstrap, topic, 1, config={"strata.durability": "disk", "retention.ms": "-1"})
    source = rig.wait_placed(topic, 1)[0]
    t0 = time.perf_counter()
    res.records = load(rig.bootstrap, topic, 1, int(res.mb * MB))
    res.load_s = time.perf_counter() - t0
    end = latest_offsets(rig.bootstrap, topic, 1)[0]
    t0 = time.perf_counter()
    wait_for(lambda: manifest_end(rig, topic) == end, 300, f"uploads of {topic}", 0.2)
    res.upload_wait_s = time.perf_counter() - t0
    keys = segment_keys(remote_manifests(rig.s3, rig.bucket, topic))
    res.s3_bytes = sum(size for _, size in keys)
    res.segments = len(keys)
    note(f"{topic}: {res.records:,} records loaded in {res.load_s:.1f}s "
         f"({res.records * RECORD_SIZE / MB / res.load_s:.0f} MB/s, acks=1); {res.segments} segments, "
         f"{res.s3_bytes / MB:.0f} MB in S3 {res.upload_wait_s:.1f}s after the last ack")
    target = 1 - source
    for i in range(args.moves):
        move = move_once(rig, topic, target, args.timeout)
        res.moves.append(move)
        note(f"{topic} move {i + 1}: broker {move.source} -> {move.target} at offset {move.end:,}: leading after "
             f"{move.leading:.2f}s (broker's figure {move.reported:.2f}s, {move.how}), produce acked "
             f"{move.produced:.2f}s, + fetch of the last offset from S3 {move.fetched:.2f}s; old leader "
             f"sealed in {move.sealed:.2f}s")
        target = move.source
    r = raw_get(rig.s3, rig.bucket, keys, None)
    res.raw_get_s, res.raw_get_mb_s = r.seconds, r.mb_s
    note(f"{topic}: raw GET of its {len(keys)} segment objects: {r.seconds:.1f}s ({r.mb_s:.0f} MB/s, "
         f"S3 CPU {r.s3_cpu:.0f}%)")
    res.problems = rig.problems()


# ---- 2. throughput -----------------------------------------------------------------------------

def produce_worker(bootstrap: str, topic: str, partitions: int, seconds: float, start_at: float) -> int:
    """One producer process (--worker): as fast as it can from start_at for `seconds`; JSON on stdout."""
    errors = [0]

    def on_error(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 50_000, "queue.buffering.max.kbytes": 64 * 1024,
                         "compression.type": "none", "enable.idempotence": False,
                         "delivery.report.only.error": True, "on_delivery": on_error,
                         "message.timeout.ms": 60_000})
    payload = os.urandom(RECORD_SIZE)
    for p in range(partitions):  # connections to every leader before the clock starts
        producer.produce(topic, payload, partition=p)
    producer.flush(30)
    warm = errors[0]
    late = time.time() - start_at
    time.sleep(max(0.0, start_at - time.time()))
    c0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    sent = produce_until(producer, topic, payload, t0 + seconds)
    remaining = producer.flush(90)
    elapsed = time.perf_counter() - t0
    failed = remaining + errors[0] - warm
    print(json.dumps({"records": sent - failed, "failed": failed, "elapsed": elapsed,
                      "cpu": sum(os.times()[:2]) - c0, "late": late}), flush=True)
    return 0


@dataclass
class Throughput:
    brokers: int
    records: int = 0
    failed: int = 0
    seconds: float = float("nan")
    per_broker: list[int] = field(default_factory=list)  # partitions led
    broker_cpu: list[float] = field(default_factory=list)  # % of one core each
    s3_cpu: float = float("nan")
    producer_cpu: float = float("nan")
    machine_cpu: float = float("nan")  # every process on the machine, ours and others'
    late: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        return self.records * RECORD_SIZE / MB / self.seconds if self.seconds > 0 else 0.0


def run_throughput(args: argparse.Namespace, tmp: Path, s3: MotoServer, results: list[Throughput],
                   disk: dict[str, float]) -> None:
    disk_dir = tmp / "disk"
    disk_dir.mkdir()
    for _ in range(2):  # best of two: a shared machine
        disk["periodic"] = max(disk.get("periodic", 0.0), raw_disk_rate(str(disk_dir), 2.0, 2048 * MiB, 16 * MiB))
    note(f"raw disk: {disk['periodic']:.0f} MB/s (1 MiB writes, fsync every 16 MiB)")
    partitions = 12
    for n in args.brokers:
        res = Throughput(n)
        results.append(res)
        rig = ClusterRig(tmp / f"throughput-{n}", s3, n, args, "throughput")
        try:
            rig.start()
            topic = f"throughput-{n}"
            create_topic(rig.bootstrap, topic, partitions, config={"strata.durability": "disk"})
            leaders = rig.wait_placed(topic, partitions)
            res.per_broker = [leaders.count(i) for i in range(n)]
            start_at = time.time() + 3.0 + n
            workers = [subprocess.Popen([sys.executable, __file__, "--worker", rig.bootstrap, topic, str(partitions),
                                         str(args.seconds), repr(start_at)], stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL) for _ in range(n)]
            time.sleep(max(0.0, start_at - time.time()))
            b0 = [cpu_seconds(b.proc.pid) for b in rig.brokers]
            s0, w0, m0 = cpu_seconds(s3.proc.pid), time.monotonic(), machine_cpu()
            outs = [json.loads(w.communicate(timeout=args.seconds + 120)[0]) for w in workers]
            wall = time.monotonic() - w0
            res.machine_cpu = busy_percent(m0, machine_cpu())
            res.broker_cpu = [100 * (cpu_seconds(b.proc.pid) - c) / wall for b, c in zip(rig.brokers, b0, strict=True)]
            res.s3_cpu = 100 * (cpu_seconds(s3.proc.pid) - s0) / wall
            res.records = sum(o["records"] for o in outs)
            res.failed = sum(o["failed"] for o in outs)
            res.seconds = max(o["elapsed"] for o in outs)
            res.producer_cpu = 100 * sum(o["cpu"] for o in outs) / res.seconds
            res.late = max(o["late"] for o in outs)
            note(f"{n} broker(s), {n} producer(s): {res.mb_s:.1f} MB/s ({res.records:,} records in "
                 f"{res.seconds:.1f}s, {res.failed} failed; brokers CPU "
                 f"{' / '.join(f'{c:.0f}%' for c in res.broker_cpu)}, S3 {res.s3_cpu:.0f}%, producers "
                 f"{res.producer_cpu:.0f}%, whole machine {res.machine_cpu:.0f}%, load average {load_average()})"
                 + (f" [a producer was ready {res.late:.1f}s late]" if res.late > 0 else ""))
            res.problems = rig.problems()
        finally:
            rig.stop()
            rig.drop_data()


# ---- 3. loss on node loss ---------------------------------------------------------------------

class PacedProducer(threading.Thread):
    """rate records/s, partition = seq % partitions, value = '<topic>:<seq>' padded to 1 KiB."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, acks: str, idempotent: bool, rate: int) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "enable.idempotence": idempotent,
                                  "linger.ms": 5, "compression.type": "none", "message.timeout.ms": 120_000,
                                  "retry.backoff.ms": 20, "retry.backoff.max.ms": 200})
        self.acked: list[tuple[int, int, int, float]] = []  # (partition, offset, seq, ack time)
        self.failed = 0
        self.sent = 0
        self._halt = threading.Event()

    def value(self, seq: int) -> bytes:
        return f"{self.topic}:{seq:012d}:".encode().ljust(RECORD_SIZE, b".")

    def _on_delivery(self, err: KafkaError | None, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self.failed += 1
        else:
            self.acked.append((msg.partition(), msg.offset(), int(msg.value().split(b":")[1]), time.time()))

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._halt.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                try:
                    self.producer.produce(self.topic, self.value(self.sent), partition=self.sent % self.partitions,
                                          on_delivery=self._on_delivery)
                except BufferError:
                    break
                self.sent += 1
            self.producer.poll(0.005)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.producer.flush(120)


def read_back(bootstrap: str, topic: str, ends: dict[int, int], timeout: float) -> dict[tuple[int, int], int]:
    """(partition, offset) -> seq of every record up to ends."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 50 * MiB})
    consumer.assign([TopicPartition(topic, p, 0) for p, e in ends.items() if e > 0])
    remaining = {p: e for p, e in ends.items() if e > 0}
    out: dict[tuple[int, int], int] = {}
    deadline = time.monotonic() + timeout
    try:
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.2):
                if msg.error():
                    continue
                p, o = msg.partition(), msg.offset()
                out[(p, o)] = int(msg.value().split(b":")[1])
                if p in remaining and o >= remaining[p] - 1:
                    del remaining[p]
    finally:
        consumer.close()
    if remaining:
        raise RuntimeError(f"{topic}: partitions {sorted(remaining)} not read to their end within {timeout:.0f}s")
    return out


@dataclass
class Loss:
    topic: str
    durability: str
    acks: str
    rate: int
    acked: int = 0
    failed: int = 0
    lost: int = 0
    lost_partitions: list[int] = field(default_factory=list)
    victim_partitions: list[int] = field(default_factory=list)
    oldest_before_kill: float = float("nan")  # the oldest lost record was acknowledged this long before the kill
    newest_before_kill: float = float("nan")
    doubled: int = 0  # one record readable at two offsets (acks=1 retries may do that)


@dataclass
class LossRun:
    victim: int = -1
    placed_after: float = float("nan")  # kill -> placement without the victim
    resumed_after: float = float("nan")  # kill -> every producer acked again on every moved partition
    topics: list[Loss] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)  # epoch rises of the victim's partitions (1 = one move)
    controller_moves: int = 0  # moves of those partitions the controller logged
    problems: list[str] = field(default_factory=list)


def run_loss(args: argparse.Namespace, tmp: Path, s3: MotoServer, res: LossRun) -> None:
    rig = ClusterRig(tmp / "loss", s3, 3, args, "loss")
    producers: list[PacedProducer] = []
    try:
        rig.start()
        partitions = 6
        specs = [Loss("loss-disk", "disk", "1", args.loss_rate), Loss("loss-s3", "s3", "all", args.loss_s3_rate)]
        for spec in specs:
            create_topic(rig.bootstrap, spec.topic, partitions, config={"strata.durability": spec.durability})
        for spec in specs:
            rig.wait_placed(spec.topic, partitions)
        placement = rig.placement()
        # The victim: the broker leading the most partitions of both topics (at least one of each).
        counts = {b.id: [sum(1 for a in placement.topics[s.topic].partitions if a.leader == b.id) for s in specs]
                  for b in placement.brokers}
        res.victim = max((i for i in counts if min(counts[i]) > 0), key=lambda i: (sum(counts[i]), i))
        for spec in specs:
            spec.victim_partitions = [p for p, a in enumerate(placement.topics[spec.topic].partitions)
                                      if a.leader == res.victim]
        producers = [PacedProducer(rig.bootstrap, s.topic, partitions, s.acks, s.acks == "all", s.rate) for s in specs]
        for producer in producers:
            producer.start()
        time.sleep(args.loss_seconds)
        rig.brokers[res.victim].kill()
        killed = time.time()  # after the SIGKILL was reaped: every acknowledgement before it is the victim's
        note(f"SIGKILL broker {res.victim} (leads {specs[0].topic} {specs[0].victim_partitions}, "
             f"{specs[1].topic} {specs[1].victim_partitions})")
        rig.wait(lambda p: all(a.leader != res.victim for s in specs for a in p.topics[s.topic].partitions),
                 60 + (args.lease_ms + args.grace_ms) / 1000, "the victim's partitions placed elsewhere", 0.02)
        res.placed_after = time.time() - killed

        def resumed() -> bool:
            return all({r[0] for r in list(prod.acked) if r[3] > killed} >= set(spec.victim_partitions)
                       for prod, spec in zip(producers, specs, strict=True))

        wait_for(resumed, 90, "acknowledgements on every moved partition", 0.02)
        res.resumed_after = time.time() - killed
        first = {(s.topic, p): placement.topics[s.topic].partitions[p].epoch
                 for s in specs for p in s.victim_partitions}
        note(f"placement without broker {res.victim} after {res.placed_after:.1f}s, both producers acked on "
             f"every moved partition after {res.resumed_after:.1f}s")
        time.sleep(args.loss_after)
        for producer, spec in zip(producers, specs, strict=True):
            remaining = producer.stop()
            spec.failed = producer.failed + remaining
        for producer, spec in zip(producers, specs, strict=True):
            ends = latest_offsets(rig.bootstrap, spec.topic, partitions)
            seen = read_back(rig.bootstrap, spec.topic, ends, args.timeout)
            spec.acked = len(producer.acked)
            lost = [r for r in producer.acked if seen.get((r[0], r[1])) != r[2]]
            spec.lost = len(lost)
            spec.lost_partitions = sorted({r[0] for r in lost})
            if lost:
                spec.oldest_before_kill = killed - min(r[3] for r in lost)
                spec.newest_before_kill = killed - max(r[3] for r in lost)
            where: dict[int, int] = {}
            for seq in seen.values():
                where[seq] = where.get(seq, 0) + 1
            spec.doubled = sum(1 for n in where.values() if n > 1)
            res.topics.append(spec)
            note(f"{spec.topic} (durability={spec.durability}, acks={spec.acks}): {spec.acked:,} acked, "
                 f"{spec.lost:,} lost on partitions {spec.lost_partitions}"
                 + (f", acknowledged {spec.oldest_before_kill:.2f}s..{spec.newest_before_kill:.2f}s before the kill"
                    if lost else ""))
        final = rig.placement()
        res.epochs = sorted({final.topics[t].partitions[p].epoch - e for (t, p), e in first.items()})
        res.controller_moves = sum(1 for line in rig.controller_log.read_text(errors="replace").splitlines()
                                   if " move loss-" in line and "(new)" not in line)
        res.problems = rig.problems()
    finally:
        for producer in producers:
            producer._halt.set()
        rig.stop()
        rig.drop_data()


# ---- report ------------------------------------------------------------------------------------

def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def runs(values: list[float]) -> str:
    return " / ".join(fmt(v) for v in values)


def report_moves(results: list[SizeResult], args: argparse.Namespace) -> None:
    if not results:
        return
    table = Table(title=f"Moving one partition through S3 (2 brokers, strata.durability=disk, segment.bytes "
                        f"{args.segment_mb:g} MiB, tiered.upload.interval.ms {args.upload_ms}, moto S3 on loopback, "
                        f"{os.cpu_count()} CPUs; median of {args.moves} move(s), all runs in brackets)")
    table.add_column("measurement")
    for res in results:
        table.add_column(f"{res.mb:g} MB", justify="right")
    if len(results) > 1:
        table.add_column(f"{results[-1].mb:g} MB / {results[0].mb:g} MB", justify="right")

    def row(label: str, pick, digits: int = 2, ratio: bool = True, bracket: bool = True) -> None:  # type: ignore[no-untyped-def]
        cells, meds = [], []
        for res in results:
            values = pick(res)
            if isinstance(values, list):
                m = median(values)
                cells.append(fmt(m, digits) + (f" ({runs(values)})" if bracket and len(values) > 1 else ""))
            else:
                m = values
                cells.append(fmt(m, digits))
            meds.append(m)
        if len(results) > 1:
            cells.append(f"{meds[-1] / meds[0]:.2f}x" if ratio and meds[0] and meds[0] == meds[0] else "")
        table.add_row(label, *cells)

    row("data in the partition, all in S3 (MB)", lambda r: r.s3_bytes / MB, 0)
    row("segments in S3", lambda r: float(r.segments), 0)
    row("load, confluent-kafka acks=1 (MB/s)", lambda r: r.records * RECORD_SIZE / MB / r.load_s, 1, ratio=False)
    row("last ack -> manifest covers the log end (s)", lambda r: r.upload_wait_s, 1, ratio=False)
    table.add_section()
    row("placement change -> new leader logs 'leading' (s)", lambda r: [m.leading for m in r.moves])
    row("  new leader's own figure: placement seen -> leading (s)", lambda r: [m.reported for m in r.moves])
    row("  old leader: stop writes, roll, upload tail, seal (s)", lambda r: [m.sealed for m in r.moves])
    row("placement change -> produce acked by the new leader (s)", lambda r: [m.produced for m in r.moves])
    row("placement change -> that + fetch of last pre-move offset (s)", lambda r: [m.fetched for m in r.moves])
    table.add_section()
    row("reference: raw aiobotocore GET of the segment objects (s)", lambda r: r.raw_get_s)
    row("reference: raw GET rate, sequential whole objects (MB/s)", lambda r: r.raw_get_mb_s, 0, ratio=False)
    row("move (produce+fetch) / raw GET of the data", lambda r: median([m.fetched for m in r.moves]) / r.raw_get_s,
        3, ratio=False)
    console.print(table)
    hows = sorted({m.how for r in results for m in r.moves})
    console.print("Placement change = mtime of the placement file the controller rewrote after the members file "
                  "dropped the leader (scale in; the partition is the only one on the cluster). 'leading' = the "
                  "new leader's log line (its timestamp, ms); the old leader stops writes, rolls and uploads its "
                  "tail and seals the manifest; the new one lays out an empty directory from the manifest (no "
                  "data copied). Client: confluent-kafka produce (retry.backoff.ms 10, connected to both brokers) "
                  "until acknowledged at an "
                  "offset >= where the new leader took over, then kafka-python (no group) fetches the last offset "
                  f"written before the move, which the new leader reads from S3. Take-over kinds: {', '.join(hows)}. "
                  "The raw GET is what a copy of the data would at least cost on this S3.", highlight=False)


def report_throughput(results: list[Throughput], disk: dict[str, float], args: argparse.Namespace) -> None:
    if not results:
        return
    cores = os.cpu_count() or 1
    table = Table(title=f"Aggregate produce throughput over 1..{max(r.brokers for r in results)} brokers "
                        f"(12 partitions, 1 KiB records, acks=1, strata.durability=disk, one confluent-kafka "
                        f"producer process per broker, {args.seconds:g}s each, {cores} CPUs on this machine)")
    for col in ("brokers", "partitions per broker", "MB/s", "records/s", "vs 1 broker", "vs raw disk",
                "broker CPU (each)", "moto S3 CPU", "producers CPU", "other processes CPU", "machine busy"):
        table.add_column(col, justify="left" if col == "brokers" else "right")
    base = results[0].mb_s if results else float("nan")
    raw = disk.get("periodic", float("nan"))
    for r in results:
        ours = sum(r.broker_cpu) + r.s3_cpu + r.producer_cpu
        table.add_row(f"{r.brokers}" + (f" ({r.failed} failed)" if r.failed else ""),
                      " / ".join(map(str, r.per_broker)),
                      fmt(r.mb_s, 1), f"{r.records / r.seconds:,.0f}", f"{r.mb_s / base:.2f}x" if base else "",
                      f"{r.mb_s / raw:.2f}x" if raw == raw else "",
                      " / ".join(f"{c:.0f}%" for c in r.broker_cpu), f"{r.s3_cpu:.0f}%", f"{r.producer_cpu:.0f}%",
                      f"{max(0.0, r.machine_cpu - ours):.0f}%", f"{r.machine_cpu / cores:.0f}%")
    table.add_section()
    table.add_row("reference: raw disk", "", fmt(raw, 1), "", "", "1.00x", "", "", "", "", "")
    console.print(table)
    console.print("Raw disk = sequential 1 MiB writes, fsync every 16 MiB, same filesystem, best of two 2 s runs. "
                  "MB/s = records acknowledged / (producing time + flush). CPU: 100% = one core, over the "
                  "producing window; 'other processes' = the whole machine (/proc/stat) minus brokers, moto and "
                  "producers; 'machine busy' = the whole machine / its cores. Near 100% the machine is saturated "
                  "and more brokers cannot add throughput here: brokers, producers and the moto S3 server (every "
                  "segment is uploaded) and anything else running share the same cores.", highlight=False)


def report_loss(res: LossRun, args: argparse.Namespace) -> None:
    if not res.topics:
        return
    table = Table(title=f"Acknowledged records lost when a broker is SIGKILLed (3 brokers, tiered.upload.interval.ms "
                        f"U = {args.upload_ms}, cluster.lease.ms {args.lease_ms}, controller grace "
                        f"{args.grace_ms} ms, 6 partitions per topic)")
    for col, justify in (("topic", "left"), ("durability / acks", "left"), ("rate (rec/s)", "right"),
                         ("acked", "right"), ("lost", "right"), ("lost on partitions (victim led)", "left"),
                         ("oldest lost: acked before kill (s)", "right"),
                         ("newest lost: acked before kill (s)", "right"),
                         ("loss window (s)", "right"), ("U (s)", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in res.topics:
        window = t.oldest_before_kill - t.newest_before_kill
        table.add_row(t.topic, f"{t.durability} / acks={t.acks}", f"{t.rate:,}", f"{t.acked:,}"
                      + (f" ({t.failed} failed)" if t.failed else ""), f"{t.lost:,}",
                      f"{t.lost_partitions} ({t.victim_partitions})", fmt(t.oldest_before_kill),
                      fmt(t.newest_before_kill), fmt(window), fmt(args.upload_ms / 1000))
    console.print(table)
    doubled = ", ".join(f"{t.topic} {t.doubled}" for t in res.topics)
    flaps = "" if res.epochs == [1] else (f" The victim's partitions changed leader {res.epochs} time(s) (epoch rises; "
                                          f"{res.controller_moves} controller moves): the controller moved them "
                                          "more than once.")
    console.print(f"Victim broker {res.victim}. Kill -> placement without it: {res.placed_after:.1f}s; kill -> both "
                  f"producers acknowledged again on every moved partition: {res.resumed_after:.1f}s.{flaps} Lost = "
                  "acknowledged, but at its (partition, offset) the read-back finds nothing or another record "
                  "(the new leader reused the offset). Oldest lost record's age at the kill is the loss window "
                  "to set against U (a partial segment is rolled once older than U, checked every U/4, then "
                  f"uploaded). Records readable at two offsets (acks=1 retries): {doubled}.", highlight=False)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        bootstrap, topic, partitions, seconds, start_at = sys.argv[2:7]
        return produce_worker(bootstrap, topic, int(partitions), float(seconds), float(start_at))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="moves,throughput,loss", help="comma-separated parts to run")
    parser.add_argument("--sizes", default="100,1000", help="MB (1e6) in the moved partition, comma-separated")
    parser.add_argument("--moves", type=int, default=3, help="moves per size (back and forth)")
    parser.add_argument("--segment-mb", type=float, default=64, help="segment.bytes in MiB")
    parser.add_argument("--upload-ms", type=int, default=1000, help="tiered.upload.interval.ms (U)")
    parser.add_argument("--lease-ms", type=int, default=3000, help="cluster.lease.ms")
    parser.add_argument("--grace-ms", type=int, default=3000, help="the controller's --grace-ms")
    parser.add_argument("--brokers", default="1,2,3", help="cluster sizes for the throughput runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--loss-rate", type=int, default=4000, help="records/s into the disk topic (acks=1)")
    parser.add_argument("--loss-s3-rate", type=int, default=1000, help="records/s into the s3 topic (acks=all)")
    parser.add_argument("--loss-seconds", type=float, default=5.0, help="producing before the kill")
    parser.add_argument("--loss-after", type=float, default=2.0, help="producing after the fail-over")
    parser.add_argument("--timeout", type=float, default=60.0, help="cap on one move / one read-back")
    parser.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for every strata-broker (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs; data dirs are removed)")
    args = parser.parse_args()
    args.sizes = [float(s) for s in args.sizes.split(",") if s]
    args.brokers = [int(s) for s in args.brokers.split(",") if s]
    parts = set(args.only.split(","))
    os.environ.update(CREDENTIALS)  # brokers, controller and moto clients inherit them

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="strata-bench-cluster-"))
    note(f"temp dir {tmp}; {os.cpu_count()} CPUs; brokers on {HOST}")
    moves: list[SizeResult] = []
    throughput: list[Throughput] = []
    disk: dict[str, float] = {}
    loss = LossRun()
    s3 = MotoServer(tmp / "moto.log")
    failed = False
    try:
        s3.start()
        note(f"moto S3 server pid {s3.proc.pid} on {s3.endpoint}")
        if "moves" in parts:
            run_moves(args, tmp, s3, moves)
        if "throughput" in parts:
            run_throughput(args, tmp, s3, throughput, disk)
        if "loss" in parts:
            run_loss(args, tmp, s3, loss)
    except Exception as exc:
        note(f"FAILED: {exc!r} (figures so far below; logs kept in {tmp})")
        args.keep = failed = True
    finally:
        s3.stop()
    problems = [p for r in moves for p in r.problems] + [p for r in throughput for p in r.problems] + loss.problems
    if problems:
        note(f"{len(problems)} ERROR/Traceback line(s) in broker logs" + "".join(f"\n    {p}" for p in problems[:8]))
    report_moves(moves, args)
    report_throughput(throughput, disk, args)
    report_loss(loss, args)
    if args.keep:
        note(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    note(f"total {time.monotonic() - started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

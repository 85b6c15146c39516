"""Many partitions on one broker: Strata (this code, and optionally a previous git ref) beside Tansu.

For each partition count (1; 2,000 = 200 topics x 10; 50,000 = 5,000 topics x 10 by default) and
each broker, in one invocation:

* time to create the topics (CreateTopics, 100 topics a request), broker RSS above the empty broker,
  open descriptors (Strata: `strata_open_file_descriptors` from /metrics);
* Metadata for all topics (confluent-kafka list_topics, best of 3); ListOffsets (latest) of every
  partition in one request and an OffsetCommit of every partition in one request (best of 3 each);
* produce throughput with confluent-kafka: 1 KiB incompressible records, linger.ms=20, records
  spread round robin over every partition (each produce() names its partition), --acks;
* consume throughput of what was produced (assign() of every partition from offset 0, no group);
* Strata only: start-up time (process start to a served Metadata for every topic) after a clean
  stop (SIGTERM) and after SIGKILL; then one record written to and read back from every
  partition (delivery offset, then a fetch at that offset).

With --baseline REF the previous code runs too, alternating rounds with this code (--rounds each).
--profile writes a py-spy flame graph (SVG) of this code's broker during the produce run at the
count given (default 2,000). Run under the shared lock:

    flock /work/wt/bench.lock .venv/bin/python bench/partitions.py --baseline 0d9b6ad
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    Broker,
    checkout_broker,
    find_tansu,
    free_port,
    strata_broker,
    tansu_broker,
)
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # noqa: E402

MB = 1_000_000
RECORD = 1024
PER_TOPIC = 10
LINGER_MS = [20]  # --linger-ms (a list: the producer processes get it with their arguments)


def note(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def metrics_fds(port: int) -> int:
    """strata_open_file_descriptors from /metrics (-1 when not served)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=60) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("strata_open_file_descriptors "):
                    return int(float(line.split()[1]))
    except OSError:
        pass
    return -1


def layout(partitions: int) -> list[tuple[str, int]]:
    """(topic, partitions) pairs: one topic of up to 10 partitions, or topics of 10 partitions."""
    if partitions <= PER_TOPIC:
        return [(f"p{partitions}-t0", partitions)]
    return [(f"p{partitions}-t{i}", PER_TOPIC) for i in range(partitions // PER_TOPIC)]


def create_all(bootstrap: str, topics: list[tuple[str, int]], timeout: float) -> float:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    t0 = time.perf_counter()
    for i in range(0, len(topics), 100):
        chunk = [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics[i:i + 100]]
        for fut in admin.create_topics(chunk, operation_timeout=timeout, request_timeout=timeout).values():
            fut.result(timeout)
    return time.perf_counter() - t0


def metadata_all(bootstrap: str, expected: int, timeout: float = 120.0) -> float:
    """Seconds for one Metadata of every topic (best of 3), once all `expected` partitions show."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    best = float("inf")
    while True:
        t0 = time.perf_counter()
        md = admin.list_topics(timeout=60)
        elapsed = time.perf_counter() - t0
        count = sum(len(t.partitions) for name, t in md.topics.items() if not name.startswith("_"))
        if count >= expected:
            best = min(best, elapsed)
            for _ in range(2):
                t0 = time.perf_counter()
                admin.list_topics(timeout=60)
                best = min(best, time.perf_counter() - t0)
            return best
        if time.monotonic() > deadline:
            raise RuntimeError(f"metadata shows {count}/{expected} partitions")
        time.sleep(0.2)


def list_offsets_all(bootstrap: str, parts: list[tuple[str, int]]) -> float:
    """Seconds for ListOffsets (latest) of every partition, one request (best of 3)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.list_topics(timeout=60)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for fut in admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in parts},
                                      request_timeout=120).values():
            fut.result()
        best = min(best, time.perf_counter() - t0)
    return best


def commit_all(bootstrap: str, parts: list[tuple[str, int]]) -> float:
    """Seconds for an OffsetCommit of every partition, one request (best of 3)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-commit", "enable.auto.commit": False})
    best = float("inf")
    try:
        # Untimed first commit, retried while the coordinator comes up (the offsets topic is created
        # on first use).
        deadline = time.monotonic() + 120
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(t, p, 0) for t, p in parts[:1]], asynchronous=False)
                break
            except KafkaException as exc:
                err = exc.args[0]
                waiting = err.retriable() or err.code() in (KafkaError.COORDINATOR_NOT_AVAILABLE,
                                                            KafkaError.NOT_COORDINATOR,
                                                            KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
                if time.monotonic() > deadline or not waiting:
                    raise
                time.sleep(0.5)
        for i in range(3):
            offsets = [TopicPartition(t, p, i) for t, p in parts]
            t0 = time.perf_counter()
            consumer.commit(offsets=offsets, asynchronous=False)
            best = min(best, time.perf_counter() - t0)
    finally:
        consumer.close()
    return best


def targets(topics: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(name, p) for name, n in topics for p in range(n)]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass
class ProduceRun:
    """One produce run: what was delivered, how long it took, and the CPU the client used."""

    delivered: int
    seconds: float
    failed: int
    client_cpu: float  # user + system seconds of the producer process(es)


def produce(bootstrap: str, parts: list[tuple[str, int]], acks: str, seconds: float, max_records: int,
            producers: int = 1) -> ProduceRun:
    """Round robin over parts. With several producers, each is a process of its own with the
    partitions p where p % producers is its number (every producer the same settings), started
    together; the run lasts until the last one has flushed."""
    if producers <= 1:
        before = resource.getrusage(resource.RUSAGE_SELF)
        got, secs, lost = produce_one(bootstrap, parts, acks, seconds, max_records)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return ProduceRun(got, secs, lost, cpu)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(producers) as pool:
        jobs = [pool.apply_async(_produce_child, (bootstrap, parts[i::producers], acks, seconds,
                                                  max_records // producers, LINGER_MS[0]))
                for i in range(producers)]
        outs = [job.get(seconds + 600) for job in jobs]
    return ProduceRun(sum(o[0] for o in outs), max(o[1] for o in outs), sum(o[2] for o in outs),
                      sum(o[3] for o in outs))


def _produce_child(bootstrap: str, parts: list[tuple[str, int]], acks: str, seconds: float,
                   max_records: int, linger_ms: int) -> tuple[int, float, int, float]:
    LINGER_MS[0] = linger_ms
    got, secs, lost = produce_one(bootstrap, parts, acks, seconds, max_records)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return got, secs, lost, usage.ru_utime + usage.ru_stime


def produce_one(bootstrap: str, parts: list[tuple[str, int]], acks: str, seconds: float,
                max_records: int) -> tuple[int, float, int]:
    """(records delivered, seconds, failed), round robin over parts."""
    errors = [0]

    def on_error(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": acks, "linger.ms": LINGER_MS[0], "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1024 * 1024,
        "compression.type": "none", "enable.idempotence": False, "delivery.report.only.error": True,
        "on_delivery": on_error, "message.timeout.ms": 120_000,
    })
    producer.list_topics(timeout=60)
    payload = os.urandom(RECORD)
    n = len(parts)
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while sent < max_records:
        if (sent & 1023) == 0 and time.perf_counter() >= deadline:
            break
        topic, p = parts[sent % n]
        try:
            producer.produce(topic, payload, partition=p)
            sent += 1
        except BufferError:
            producer.poll(0.005)
    left = producer.flush(180)
    elapsed = time.perf_counter() - t0
    lost = left + errors[0]
    return sent - lost, elapsed, lost


def consume(bootstrap: str, parts: list[tuple[str, int]], expected: int, timeout: float) -> tuple[int, float]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-partitions", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.max.bytes": 50 * MB, "max.partition.fetch.bytes": 1 * MB,
        "fetch.queue.backoff.ms": 10, "fetch.wait.max.ms": 100,
    })
    received = 0
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(t, p, 0) for t, p in parts])
    deadline = t0 + timeout
    while received < expected and time.perf_counter() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=0.05):
            if msg.error() is None:
                received += 1
    elapsed = time.perf_counter() - t0
    consumer.close()
    return received, elapsed


def write_read_each(bootstrap: str, parts: list[tuple[str, int]], timeout: float = 300.0) -> str:
    """One record to every partition (acks=all), then fetched back at its delivered offset."""
    offsets: dict[tuple[str, int], int] = {}
    failed = [0]

    def delivered(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            failed[0] += 1
        else:
            offsets[(msg.topic(), msg.partition())] = msg.offset()  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "enable.idempotence": False, "message.timeout.ms": int(timeout * 1000)})
    for t, p in parts:
        while True:
            try:
                producer.produce(t, f"check-{t}-{p}".encode(), partition=p, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(timeout)
    if failed[0] or len(offsets) != len(parts):
        return f"write FAILED: {failed[0]} errors, {len(offsets)}/{len(parts)} delivered"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-check", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, offsets[(t, p)]) for t, p in parts])
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < len(parts) and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=0.1):
            if msg.error() is None and msg.value() == f"check-{msg.topic()}-{msg.partition()}".encode():
                seen.add((msg.topic(), msg.partition()))
    consumer.close()
    if len(seen) != len(parts):
        return f"read FAILED: {len(seen)}/{len(parts)}"
    return f"ok ({len(parts)} written and read)"


@dataclass
class Result:
    create_s: float = float("nan")
    metadata_ms: float = float("nan")
    list_offsets_ms: float = float("nan")
    commit_ms: float = float("nan")
    rss_empty: float = float("nan")
    rss: float = float("nan")
    fds: int = -1
    produce: dict[str, tuple[float, int]] = field(default_factory=dict)  # acks -> (MB/s, failed)
    # acks -> (broker CPU %, of it system %, client CPU %) during the produce run (100 = one core)
    cpu: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    consume_mb_s: float = float("nan")
    restart_clean_s: float = float("nan")
    restart_kill_s: float = float("nan")
    check: str = ""


def restart_time(broker: Broker, expected: int, kill: bool) -> float:
    if kill:
        broker.kill()
    else:
        broker.stop(timeout=600)
    t0 = time.perf_counter()
    broker.start(timeout=600)
    metadata_all(broker.bootstrap, expected, timeout=600)
    return time.perf_counter() - t0


def measure(broker: Broker, count: int, args: argparse.Namespace, strata: bool, metrics_port: int = 0,
            profile: Path | None = None) -> Result:
    res = Result()
    broker.start(timeout=120)
    pid = broker.proc.pid  # type: ignore[union-attr]
    try:
        topics = layout(count)
        parts = targets(topics)
        time.sleep(0.5)
        res.rss_empty = rss_mib(pid)
        res.create_s = create_all(broker.bootstrap, topics, timeout=600)
        res.metadata_ms = metadata_all(broker.bootstrap, count) * 1000
        try:
            res.list_offsets_ms = list_offsets_all(broker.bootstrap, parts) * 1000
            res.commit_ms = commit_all(broker.bootstrap, parts) * 1000
        except Exception as exc:  # noqa: BLE001 - a broker without these APIs still gets the rest measured
            note(f"  {broker.name}: ListOffsets/OffsetCommit FAILED: {exc!r}")
        note(f"  {broker.name} {count} partitions: metadata {res.metadata_ms:.1f} ms, ListOffsets "
             f"{res.list_offsets_ms:.1f} ms, OffsetCommit {res.commit_ms:.1f} ms")
        for acks in args.acks.split(","):
            spy = None
            if profile is not None and not args.perf and acks == args.acks.split(",")[0]:
                spy = subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-o", str(profile), "-r", "200",
                                        "-d", str(int(args.seconds) + 3), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            perf = None
            if args.perf and profile is not None and acks == args.acks.split(",")[0]:
                perf = subprocess.Popen(["perf", "record", "-g", "-p", str(pid), "-o",
                                         str(profile.with_suffix(".perf")), "--", "sleep", str(int(args.seconds))],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            user0, sys0 = cpu_seconds(pid)
            run = produce(broker.bootstrap, parts, acks, args.seconds, args.records, args.producers)
            user1, sys1 = cpu_seconds(pid)
            if spy is not None:
                spy.wait(60)
            if perf is not None:
                perf.wait(60)
            got, secs, failed = run.delivered, run.seconds, run.failed
            res.produce[acks] = (got * RECORD / MB / secs, failed)
            res.cpu[acks] = ((user1 - user0 + sys1 - sys0) * 100 / secs, (sys1 - sys0) * 100 / secs,
                             run.client_cpu * 100 / secs)
            note(f"  {broker.name} {count} partitions produce acks={acks}: {got * RECORD / MB / secs:.1f} MB/s "
                 f"({got:,} records, {failed} failed; broker CPU {res.cpu[acks][0]:.0f}% (system "
                 f"{res.cpu[acks][1]:.0f}%), client CPU {res.cpu[acks][2]:.0f}%) load {load()}")
            if acks == args.acks.split(",")[-1]:
                total = got if len(args.acks.split(",")) == 1 else None
                if total is not None:
                    received, csecs = consume(broker.bootstrap, parts, total, timeout=max(60, 10 * args.seconds))
                    res.consume_mb_s = received * RECORD / MB / csecs
                    note(f"  {broker.name} consume: {res.consume_mb_s:.1f} MB/s ({received:,}/{total:,})")
        res.rss = rss_mib(pid)
        res.fds = metrics_fds(metrics_port) if strata else proc_fds(pid)
        if strata and not args.skip_restart:
            res.restart_clean_s = restart_time(broker, count, kill=False)
            res.restart_kill_s = restart_time(broker, count, kill=True)
            res.check = write_read_each(broker.bootstrap, parts)
            note(f"  {broker.name} restart clean {res.restart_clean_s:.2f}s, after SIGKILL "
                 f"{res.restart_kill_s:.2f}s; {res.check}")
    finally:
        broker.stop(timeout=600)
    return res


def fmt(v: float, digits: int = 1) -> str:
    return "-" if v != v else f"{v:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", default="1,2000,50000", help="comma-separated partition counts")
    parser.add_argument("--acks", default="1", help="produce runs per count, comma-separated (consume follows "
                                                    "the run only when one acks value is given)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--records", type=int, default=3_000_000)
    parser.add_argument("--linger-ms", type=int, default=20,
                        help="producer linger.ms (batches up to 1 MB: a large linger over few partitions "
                             "sends 1 MB batches, as `strata replay --to-topic` does)")
    parser.add_argument("--producers", type=int, default=1,
                        help="producer processes (each the same settings, partition p to producer p %% N)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per Strata side")
    parser.add_argument("--baseline", metavar="GIT_REF", help="also measure the broker at this git ref")
    parser.add_argument("--skip-tansu", action="store_true")
    parser.add_argument("--tansu-max", type=int, default=50_000, help="largest partition count run on Tansu")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="PARTITIONS",
                        help="py-spy flame graph of this code's first produce run at this count")
    parser.add_argument("--perf", action="store_true",
                        help="with --profile: a Linux perf profile (kernel call graphs) instead of py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")))
    parser.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / ".work"))
    args = parser.parse_args()
    LINGER_MS[0] = args.linger_ms
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(x) for x in args.partitions.split(",")]
    tansu_bin = None if args.skip_tansu else find_tansu()
    rows: list[tuple[int, str, Result]] = []
    with tempfile.TemporaryDirectory(prefix="strata-partitions-") as tmp:
        baseline_src = checkout_broker(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        for count in counts:
            sides: list[tuple[str, Path | None]] = [("this", None)]
            if baseline_src is not None:
                sides.append((f"before {args.baseline}", baseline_src))
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else list(reversed(sides))
                for name, src in order:
                    data = Path(tmp) / f"data-{count}-{rnd}-{name.split()[0]}"
                    port, mport = free_port(), free_port()
                    b = strata_broker(data, port, Path(tmp) / "strata.log", f"metrics.listen={HOST}:{mport}",
                                      *args.broker_set, source=src, name=f"strata {name}")
                    note(f"{b.name} at {count} partitions, round {rnd + 1} (load {load()})")
                    prof = out / f"partitions-{count}.svg" if (args.profile == count and src is None
                                                               and rnd == 0) else None
                    try:
                        rows.append((count, b.name, measure(b, count, args, True, mport, prof)))
                    except Exception as exc:  # noqa: BLE001 - the table says what failed
                        note(f"  {b.name} FAILED: {exc!r}\n{b.tail_log()}")
                        rows.append((count, b.name, Result(check=f"FAILED {exc!r}")))
                    shutil.rmtree(data, ignore_errors=True)
                    os.sync()
                if tansu_bin and count <= args.tansu_max and rnd < args.rounds:
                    t = tansu_broker(tansu_bin, free_port(), Path(tmp) / "tansu.log")
                    note(f"tansu at {count} partitions, round {rnd + 1} (load {load()})")
                    try:
                        rows.append((count, "tansu", measure(t, count, args, False)))
                    except Exception as exc:  # noqa: BLE001
                        note(f"  tansu FAILED: {exc!r}")
                        rows.append((count, "tansu", Result(check=f"FAILED {exc!r}")))
    acks_list = args.acks.split(",")
    header = (["partitions", "broker", "create s", "metadata ms", "ListOffsets ms", "OffsetCommit ms",
               "RSS MiB (empty)", "KiB/partition", "fds"]
              + [f"produce acks={a} MB/s" for a in acks_list]
              + ["broker CPU % (sys)", "client CPU %"]
              + ["consume MB/s", "restart clean s", "restart SIGKILL s", "check"])
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for count, name, r in rows:
        per = (r.rss - r.rss_empty) * 1024 / max(1, count)
        cells = [f"{count:,}", name, fmt(r.create_s, 2), fmt(r.metadata_ms), fmt(r.list_offsets_ms),
                 fmt(r.commit_ms), f"{fmt(r.rss)} ({fmt(r.rss_empty)})",
                 fmt(per), str(r.fds)]
        cells += [fmt(r.produce[a][0]) + (f" ({r.produce[a][1]} failed)" if r.produce[a][1] else "")
                  if a in r.produce else "-" for a in acks_list]
        first_cpu = r.cpu.get(acks_list[0])
        cells += [f"{first_cpu[0]:.0f} ({first_cpu[1]:.0f})", f"{first_cpu[2]:.0f}"] if first_cpu else ["-", "-"]
        cells += [fmt(r.consume_mb_s), fmt(r.restart_clean_s, 2), fmt(r.restart_kill_s, 2), r.check]
        print("| " + " | ".join(cells) + " |")
    print("\nmedians per broker and count (produce / consume MB/s):")
    for count in counts:
        for name in sorted({n for c, n, _ in rows if c == count}):
            rs = [r for c, n, r in rows if c == count and n == name]
            prod = [r.produce[acks_list[0]][0] for r in rs if acks_list[0] in r.produce]
            cons = [r.consume_mb_s for r in rs if r.consume_mb_s == r.consume_mb_s]
            print(f"  {count:>6} {name:<28} produce {fmt(statistics.median(prod)) if prod else '-':>8}"
                  f"  consume {fmt(statistics.median(cons)) if cons else '-':>8}")
    print(f"load average at the end: {load()}; cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

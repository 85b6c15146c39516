"""Transactional produce and read_committed consume throughput, beside the non-transactional figures
of the same run.

    flock /work/wt/bench.lock .venv/bin/python bench/transactions.py [--seconds 5] [--rounds 3]

Starts its own strata-broker (temp data dir, free loopback port). Each round, in alternating order:

* plain produce: confluent-kafka, 1 KiB incompressible records, acks=all with idempotence (what a
  transactional producer is underneath, so the comparison isolates the transactions), as fast as
  the client takes them for --seconds, into a fresh topic of --partitions partitions;
* transactional produce: the same producer with a transactional.id, committing every --commit-ms
  (begin, produce for 100 ms, commit_transaction, again); a record counts once its transaction
  committed;
* consume: each topic read from offset 0 to its end with assign() (no group): the plain topic at
  read_uncommitted (the reference), the transactional topic at read_committed, and also at
  read_uncommitted (what read_committed's own cost is).

Prints the median of the rounds for each figure and its ratio to the plain figure (target >= 0.8),
with the load average. Everything listens on 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import create_topic, delete_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

MiB = 1024 * 1024


@dataclass
class Rate:
    records: int
    seconds: float
    record_size: int
    errors: int = 0
    commits: list[float] | None = None  # seconds each commit_transaction took (transactional runs)

    @property
    def rec_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_s(self) -> float:
        return self.rec_s * self.record_size / MiB


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


QUEUE_KBYTES = 512 * 1024  # --queue-kbytes


def producer_config(bootstrap: str, transactional_id: str | None, queue_kbytes: int = QUEUE_KBYTES) -> dict:
    conf = {
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
        "batch.size": 1_000_000, "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": queue_kbytes, "compression.type": "none", "message.timeout.ms": 60_000,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
    return conf


def _produce_for(producer: Producer, topic: str, payload: bytes, until: float) -> int:
    """Produce as fast as the client takes records until `until` (perf_counter); the count."""
    sent = 0
    produce = producer.produce
    while True:
        if (sent & 255) == 0 and time.perf_counter() >= until:
            return sent
        try:
            produce(topic, payload)
            sent += 1
        except BufferError:
            producer.poll(0.002)


def produce_plain(bootstrap: str, topic: str, seconds: float, record_size: int, queue_kbytes: int) -> Rate:
    errors = [0]

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    producer = Producer({**producer_config(bootstrap, None, queue_kbytes), "delivery.report.only.error": True,
                         "on_delivery": on_delivery})
    payload = os.urandom(record_size)
    producer.poll(0)
    t0 = time.perf_counter()
    sent = _produce_for(producer, topic, payload, t0 + seconds)
    left = producer.flush(90)
    elapsed = time.perf_counter() - t0
    return Rate(sent - left - errors[0], elapsed, record_size, left + errors[0])


def produce_transactional(bootstrap: str, topic: str, seconds: float, record_size: int, commit_ms: int,
                          queue_kbytes: int) -> Rate:
    producer = Producer({**producer_config(bootstrap, f"bench-txn-{uuid.uuid4().hex[:8]}", queue_kbytes),
                         "delivery.report.only.error": True})
    producer.init_transactions(30)
    payload = os.urandom(record_size)
    committed = 0
    commits: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        producer.begin_transaction()
        sent = _produce_for(producer, topic, payload, min(end, time.perf_counter() + commit_ms / 1000.0))
        started = time.perf_counter()
        producer.commit_transaction(60)  # flushes what is queued, then EndTxn
        commits.append(time.perf_counter() - started)
        committed += sent
    elapsed = time.perf_counter() - t0
    return Rate(committed, elapsed, record_size, commits=commits)


def consume(bootstrap: str, topic: str, partitions: int, isolation: str, expected: int, record_size: int,
            timeout: float = 120.0) -> Rate:
    """Read the topic from offset 0 until `expected` records arrived (control records are not
    records to a consumer)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "isolation.level": isolation, "fetch.max.bytes": 50 * MiB,
        "max.partition.fetch.bytes": 4 * MiB, "fetch.queue.backoff.ms": 10,
    })
    received = errors = 0
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    deadline = t0 + timeout
    while received < expected and time.perf_counter() < deadline:
        batch = consumer.consume(num_messages=10_000, timeout=0) or consumer.consume(num_messages=1, timeout=0.05)
        for msg in batch:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    errors += 1
                continue
            received += 1
    elapsed = time.perf_counter() - t0
    consumer.close()
    return Rate(received, elapsed, record_size, errors + max(0, expected - received))


def settle() -> None:
    os.sync()
    time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="produce time per run")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating rounds (even: each kind runs first as often); medians are printed")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--record-size", type=int, default=1024)
    parser.add_argument("--commit-ms", type=int, default=100, help="transaction length")
    parser.add_argument("--queue-kbytes", type=int, default=QUEUE_KBYTES,
                        help="the producers' queue.buffering.max.kbytes: what a 'produce for 100 ms' can queue "
                             "(and its commit must flush)")
    parser.add_argument("--setting", action="append", default=[], help="broker KEY=VALUE (repeatable)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-txn-"))
    broker = strata_broker(work / "data", free_port(), work / "broker.log", *args.setting)
    broker.start(timeout=60)
    figures: dict[str, list[Rate]] = {}
    try:
        for r in range(args.rounds):
            order = ["plain", "txn"] if r % 2 == 0 else ["txn", "plain"]
            topics = {}
            for kind in order:
                topic = topics[kind] = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
                create_topic(broker.bootstrap, topic, args.partitions)
                settle()
                if kind == "plain":
                    rate = produce_plain(broker.bootstrap, topic, args.seconds, args.record_size, args.queue_kbytes)
                else:
                    rate = produce_transactional(broker.bootstrap, topic, args.seconds, args.record_size,
                                                 args.commit_ms, args.queue_kbytes)
                figures.setdefault(f"produce {kind}", []).append(rate)
                log(f"round {r + 1}: produce {kind}: {rate.rec_s:,.0f} rec/s {rate.mb_s:.1f} MB/s"
                    f" (load {os.getloadavg()[0]:.2f})")
            reads = [("consume plain read_uncommitted", "plain", "read_uncommitted"),
                     ("consume txn read_committed", "txn", "read_committed"),
                     ("consume txn read_uncommitted", "txn", "read_uncommitted")]
            if r % 2:
                reads.reverse()
            for name, kind, isolation in reads:
                expected = figures[f"produce {kind}"][-1].records
                rate = consume(broker.bootstrap, topics[kind], args.partitions, isolation, expected,
                               args.record_size)
                figures.setdefault(name, []).append(rate)
                log(f"round {r + 1}: {name}: {rate.rec_s:,.0f} rec/s {rate.mb_s:.1f} MB/s"
                    f"{f' ({rate.errors} missing/errors)' if rate.errors else ''}")
            for topic in topics.values():
                delete_topic(broker.bootstrap, topic)
    finally:
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str) -> float:
        return statistics.median(r.rec_s for r in figures[name])

    print()
    print(f"Strata, {args.partitions} partitions, {args.record_size} B records, {args.seconds:.0f}s produce runs, "
          f"transactions of {args.commit_ms} ms; median of {args.rounds} alternating rounds; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':34} {'rec/s':>10} {'MB/s':>8} {'vs plain':>9} {'per-round ratios (median)':>27}")
    rows = [("produce plain", "produce plain"), ("produce txn", "produce plain"),
            ("consume plain read_uncommitted", "consume plain read_uncommitted"),
            ("consume txn read_committed", "consume plain read_uncommitted"),
            ("consume txn read_uncommitted", "consume plain read_uncommitted")]
    failed = False
    for name, reference in rows:
        value = median(name)
        ratio = value / median(reference) if median(reference) else float("nan")
        # The same round's pair: steadier than the ratio of medians on a machine whose load drifts.
        pairs = [a.rec_s / b.rec_s for a, b in zip(figures[name], figures[reference], strict=True) if b.rec_s]
        per_round = " ".join(f"{x:.2f}" for x in pairs)
        paired = f"{per_round} ({statistics.median(pairs):.2f})" if pairs else ""
        errors = sum(r.errors for r in figures[name])
        print(f"{name:34} {value:>10,.0f} {value * args.record_size / MiB:>8.1f} {ratio:>8.2f}x {paired:>27}"
              f"{f'  ({errors} missing/errors)' if errors else ''}")
        failed |= errors > 0
    txn_runs = figures["produce txn"]
    commits = sorted(c for r in txn_runs for c in (r.commits or []))
    if commits:
        length = sum(r.seconds for r in txn_runs) / len(commits)
        print(f"transactions: {len(commits)}, {length * 1000:.0f} ms each on average (produce {args.commit_ms} ms, "
              f"then commit_transaction flushes the queue); commit_transaction p50 "
              f"{commits[len(commits) // 2] * 1000:.0f} ms, p99 {commits[int(len(commits) * 0.99)] * 1000:.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""SIGKILL loop: acks=all producers run while the broker is killed and restarted, N times.

    .venv/bin/python bench/kill_loop.py --cycles 50

One strata-broker (temp data dir, fixed free loopback port). Producer threads (confluent-kafka,
acks=all, enable.idempotence=true) send keyed records whose value carries
"<producer>:<sequence>"; every delivery report without error is remembered with its
partition and offset. The broker is SIGKILLed at random moments and restarted on the same
data dir and port. At the end the producers are flushed, the broker is killed and restarted
one last time, and every partition is read back from offset 0 to its high watermark.

Invariant checked (any violation exits non-zero):
  1. every acknowledged record is in the log at exactly the partition and offset its delivery
     report gave (so nothing acknowledged was lost, moved or overwritten);
  2. no record (producer, sequence) appears twice in the log -- idempotence is on, so even
     unacknowledged-then-retried sends must not duplicate; duplicates of acknowledged records
     and of unacknowledged ones are counted separately;
  3. per producer and partition, acknowledged records appear in sequence order, and every
     record of a key lands in one partition;
  4. offsets read back are contiguous from the log start (no holes, no going backwards).
Unacknowledged records may or may not be present.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import create_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class ProducerThread(threading.Thread):
    """Produces keyed records at a bounded rate until stopped; remembers every acknowledgement."""

    def __init__(self, index: int, bootstrap: str, topic: str, rate: int, value_size: int) -> None:
        super().__init__(name=f"producer-{index}", daemon=True)
        self.index = index
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.value_size = value_size
        self.stop_event = threading.Event()
        self.generation = 0
        self.sent = 0
        # (producer-name, seq) -> (partition, offset)
        self.acked: dict[tuple[str, int], tuple[int, int]] = {}
        self.key_of: dict[tuple[str, int], bytes] = {}
        self.errors: Counter[str] = Counter()
        self.fatal: list[str] = []
        self.flush_left = 0
        self.client_log_level = 0

    def _make_producer(self) -> tuple[Producer, str]:
        self.generation += 1
        name = f"p{self.index}g{self.generation}"
        fatal_flag = self._fatal_flag = threading.Event()

        def on_error(err: KafkaError) -> None:
            if err.fatal():
                self.fatal.append(f"{name}: {err}")
                fatal_flag.set()

        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
            "retry.backoff.ms": 50,
            "retry.backoff.max.ms": 500,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 200,
            "socket.connection.setup.timeout.ms": 5000,
            "error_cb": on_error,
            # Connection-refused noise while the broker is down; --client-logs shows it.
            "log_level": self.client_log_level,
        })
        return producer, name

    def run(self) -> None:
        producer, name = self._make_producer()
        pad = b"x" * max(0, self.value_size - 24)
        seq = 0
        t0 = time.perf_counter()
        n = 0

        def on_delivery(err: KafkaError | None, msg: object) -> None:
            ident = _ident(msg.value())  # type: ignore[attr-defined]
            if err is None:
                self.acked[ident] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]
            else:
                self.errors[err.name()] += 1

        while not self.stop_event.is_set():
            if self._fatal_flag.is_set():
                # A fatal idempotence error: the producer cannot continue; its in-flight records
                # fail. Start a fresh producer (new id, new sequence space), as an application would.
                producer.flush(5)
                producer, name = self._make_producer()
                seq = 0
            target = t0 + n / self.rate
            now = time.perf_counter()
            if now < target:
                producer.poll(min(target - now, 0.01))
                continue
            key = f"key-{self.index}-{seq % 97}".encode()
            value = f"{name}:{seq}:".encode() + pad
            try:
                producer.produce(self.topic, value, key=key, on_delivery=on_delivery)
            except BufferError:
                producer.poll(0.05)
                continue
            self.key_of[(name, seq)] = key
            seq += 1
            n += 1
            self.sent += 1
            producer.poll(0)
        self.flush_left = producer.flush(150)


def _ident(value: bytes) -> tuple[str, int]:
    name, seq, _ = value.split(b":", 2)
    return name.decode(), int(seq)


def read_back(bootstrap: str, topic: str, partitions: int, timeout: float) -> dict[int, list[tuple[int, bytes, bytes]]]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "kill-loop-verify",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    highs = {}
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        highs[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, list[tuple[int, bytes, bytes]]] = {p: [] for p in range(partitions)}
    done = {p for p in range(partitions) if highs[p] == 0}
    deadline = time.monotonic() + timeout
    while len(done) < partitions and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= highs[msg.partition()]:
                        done.add(msg.partition())
                    continue
                raise RuntimeError(f"consume error: {msg.error()}")
            out[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
            if msg.offset() + 1 >= highs[msg.partition()]:
                done.add(msg.partition())
    consumer.close()
    if len(done) < partitions:
        raise RuntimeError(f"read-back incomplete after {timeout:.0f}s: "
                           f"{ {p: (len(out[p]), highs[p]) for p in range(partitions)} }")
    return out


def verify(producers: list[ProducerThread],
           log_data: dict[int, list[tuple[int, bytes, bytes]]]) -> tuple[list[str], int]:
    """Returns (violations, number of acknowledged records found where acknowledged)."""
    violations: list[str] = []
    verified = 0
    acked: dict[tuple[str, int], tuple[int, int]] = {}
    key_of: dict[tuple[str, int], bytes] = {}
    for p in producers:
        acked.update(p.acked)
        key_of.update(p.key_of)

    at: dict[tuple[int, int], tuple[str, int]] = {}
    seen: Counter[tuple[str, int]] = Counter()
    key_partition: dict[bytes, int] = {}
    for partition, records in log_data.items():
        expected_offset = records[0][0] if records else 0
        for offset, key, value in records:
            if offset != expected_offset:
                violations.append(f"partition {partition}: offset {offset} follows {expected_offset - 1} (hole or "
                                  "going backwards)")
            expected_offset = offset + 1
            ident = _ident(value)
            at[(partition, offset)] = ident
            seen[ident] += 1
            if key_of.get(ident) not in (None, key):
                violations.append(f"{ident} read back with key {key!r}, sent with {key_of[ident]!r}")
            if key_partition.setdefault(key, partition) != partition:
                violations.append(f"key {key!r} in partitions {key_partition[key]} and {partition}")

    # 1. every acknowledged record is where its delivery report said.
    for ident, (partition, offset) in acked.items():
        found = at.get((partition, offset))
        if found == ident:
            verified += 1
        else:
            violations.append(f"acknowledged {ident} at {partition}@{offset} but the log has {found}")
    # 2. no duplicates.
    dup_acked = [i for i, c in seen.items() if c > 1 and i in acked]
    dup_unacked = [i for i, c in seen.items() if c > 1 and i not in acked]
    for ident in dup_acked[:20]:
        violations.append(f"acknowledged {ident} appears {seen[ident]} times")
    for ident in dup_unacked[:20]:
        violations.append(f"unacknowledged {ident} appears {seen[ident]} times (idempotence is on)")
    # 3. per producer and partition, acknowledged records in sequence order.
    by_stream: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for (name, seq), (partition, offset) in acked.items():
        by_stream[(name, partition)].append((seq, offset))
    for (name, partition), pairs in by_stream.items():
        pairs.sort()
        offsets = [o for _, o in pairs]
        if any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
            violations.append(f"{name} partition {partition}: acknowledged records out of order")
    if len(dup_acked) > 20 or len(dup_unacked) > 20:
        violations.append(f"... {len(dup_acked)} acknowledged and {len(dup_unacked)} unacknowledged duplicates")
    return violations, verified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=int, default=2000, help="records/s per producer")
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--min-up", type=float, default=0.3, help="shortest time the broker lives per cycle (s)")
    parser.add_argument("--max-up", type=float, default=1.5, help="longest time the broker lives per cycle (s)")
    parser.add_argument("--max-down", type=float, default=0.3, help="longest pause before restarting (s)")
    parser.add_argument("--segment-bytes", type=int, default=1 << 20, help="small, so kills hit segment rolls")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and broker log")
    parser.add_argument("--client-logs", action="store_true", help="show librdkafka's (noisy) connection logs")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="strata-kill-loop-")
    data_dir = os.path.join(tmp, "data")
    log_path = Path(tmp) / "broker.log"
    port = free_port()
    broker = strata_broker(data_dir, port, log_path, f"segment.bytes={args.segment_bytes}",
                           f"num.partitions={args.partitions}")
    topic = "kill-loop"
    log(f"seed {seed}; data {data_dir}; broker on {broker.bootstrap}; log {log_path}")
    producers: list[ProducerThread] = []
    violations: list[str] = []
    restart_times: list[float] = []
    verified = 0
    log_data: dict[int, list[tuple[int, bytes, bytes]]] = {}
    try:
        broker.start()
        create_topic(broker.bootstrap, topic, args.partitions)
        producers = [ProducerThread(i, broker.bootstrap, topic, args.rate, args.value_size)
                     for i in range(args.producers)]
        for p in producers:
            p.client_log_level = 6 if args.client_logs else 0
            p.start()
        for cycle in range(1, args.cycles + 1):
            time.sleep(rng.uniform(args.min_up, args.max_up))
            broker.kill()
            time.sleep(rng.uniform(0, args.max_down))
            t0 = time.monotonic()
            broker.start(timeout=60)
            restart_times.append(time.monotonic() - t0)
            acked = sum(len(p.acked) for p in producers)
            if cycle % 5 == 0 or cycle == args.cycles:
                log(f"cycle {cycle}/{args.cycles}: {acked:,} acknowledged so far, "
                    f"restart took {restart_times[-1] * 1000:.0f} ms")
            if any(not p.is_alive() for p in producers):
                violations.append("a producer thread died")
                break
        # Let the producers catch up, stop them, flush everything while the broker is up.
        time.sleep(1.0)
        for p in producers:
            p.stop_event.set()
        for p in producers:
            p.join(200)
        # One last crash: acknowledged after the last kill must survive one too.
        broker.kill()
        broker.start(timeout=60)
        log_data = read_back(broker.bootstrap, topic, args.partitions, timeout=120)
        found, verified = verify(producers, log_data)
        violations += found
        rc = broker.stop()
        if rc not in (0, None):
            violations.append(f"broker exited with {rc} on SIGTERM")
    except Exception as exc:
        violations.append(f"harness error: {exc!r}")
    finally:
        broker.kill()

    elapsed = time.monotonic() - started
    total_sent = sum(p.sent for p in producers)
    total_acked = sum(len(p.acked) for p in producers)
    in_log = sum(len(r) for r in log_data.values())
    errors: Counter[str] = Counter()
    for p in producers:
        errors.update(p.errors)
    fatal = [f for p in producers for f in p.fatal]
    unflushed = sum(p.flush_left for p in producers)
    broker_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    tracebacks = broker_log.count("Traceback")
    print()
    print(f"cycles:                     {min(len(restart_times), args.cycles)} of {args.cycles} (seed {seed})")
    print(f"records sent:               {total_sent:,}")
    print(f"records acknowledged:       {total_acked:,}")
    print(f"records in the log:         {in_log:,} (includes unacknowledged records that made it)")
    print(f"acknowledged verified:      {verified:,} of {total_acked:,}")
    print(f"delivery errors:            {dict(errors) or 'none'}; fatal producer errors: {len(fatal)}; "
          f"unflushed at end: {unflushed}")
    if restart_times:
        print(f"restart time:               median {sorted(restart_times)[len(restart_times) // 2] * 1000:.0f} ms, "
              f"max {max(restart_times) * 1000:.0f} ms")
    print(f"broker log tracebacks:      {tracebacks}")
    print(f"elapsed:                    {elapsed:.1f} s")
    print("invariant: every acked record at its acked partition/offset; no (producer, seq) twice; acked records in "
          "sequence order per producer and partition; keys stay in one partition; offsets contiguous")
    for f in fatal[:5]:
        print(f"fatal: {f}")
    if violations:
        print(f"VIOLATIONS ({len(violations)}):")
        for v in violations[:50]:
            print(f"  - {v}")
    else:
        print("OK: no violations")
    if args.keep or violations:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

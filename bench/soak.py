"""Soak: a steady producer and consumer beside 200 connections that churn (connect, produce, fetch,
disconnect abruptly) for 10 minutes against one broker. Printed per window: the steady pair's
throughput and p99 produce latency, the broker's RSS and its own count of open connections; then
start against end, and whether open connections returned to the steady pair's count.

    .venv/bin/python bench/soak.py [--minutes 10] [--churners 200] [--pause 1] [--rate 2000] [--window 60]

The steady producer offers a fixed load (--rate records/s of 1 KiB, acks=1, confluent-kafka), so its
throughput shows whether it keeps up and its latency what each record waited (client-side queueing
included, so it also shows the load generator's own share of 2 cores); the consumer reads the same
topic. A probe sends one acks=1 Produce every 20 ms on a raw connection of its own and times the
answer: the broker's service to a steady client, with little client in between. Churners run in a
process of their own (asyncio, raw sockets): each round connects, sends a Produce and a Fetch (32 KiB
from offset 0) pipelined, reads at most the first answer, and closes (half of the time with a reset),
then pauses about --pause seconds. Start against end: the median of the first three windows against
that of the last three, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

import rawclient as rc  # noqa: E402
from brokerproc import BrokerProcess, free_port  # noqa: E402
from fuzz_auth import proc_rss_kb  # noqa: E402
from metrics import open_connections  # noqa: E402

RECORD = b"x" * 1024


class Steady:
    """The producer (fixed offered rate) and consumer whose service must not degrade."""

    def __init__(self, bootstrap: str, topic: str, rate: int) -> None:
        from confluent_kafka import Consumer, Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5,
                                  "queue.buffering.max.messages": 1_000_000})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe([topic])
        self.topic, self.rate = topic, rate
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.produced = self.consumed = self.errors = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _delivered(self, sent: float):  # type: ignore[no-untyped-def]
        def callback(err, _msg) -> None:  # type: ignore[no-untyped-def]
            with self.lock:
                if err is not None:
                    self.errors += 1
                else:
                    self.produced += 1
                    self.latencies.append(time.monotonic() - sent)
        return callback

    def _produce(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                self.producer.poll(min(next_at - now, 0.01))
                continue
            try:
                self.producer.produce(self.topic, RECORD, on_delivery=self._delivered(now))
            except BufferError:
                self.producer.poll(0.05)
                continue
            next_at += interval
            self.producer.poll(0)
        self.producer.flush(30)

    def _consume(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(1000, 0.2):
                if message.error() is None:
                    with self.lock:
                        self.consumed += 1
        self.consumer.close()

    def take(self) -> tuple[int, int, list[float], int]:
        with self.lock:
            out = (self.produced, self.consumed, self.latencies, self.errors)
            self.produced = self.consumed = self.errors = 0
            self.latencies = []
        return out

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


async def _churn_one(port: int, topic: str, deadline: float, pause: float, rng: random.Random,
                     counts: list[int]) -> None:
    fetch = rc.fetch(topic, offset=0, max_wait_ms=500)
    fetch.max_bytes = fetch.topics[0].partitions[0].partition_max_bytes = 32 * 1024  # a modest fetch
    frames = rc.encode(rc.produce(topic, rc.record_batch(5)), correlation_id=1) + rc.encode(fetch, correlation_id=2)
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, TimeoutError):
            counts[1] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(frames)
            if rng.random() < 0.5:
                await asyncio.wait_for(reader.read(4096), 2)
            if rng.random() < 0.5:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
        counts[0] += 1
        await asyncio.sleep(rng.uniform(0.5 * pause, 1.5 * pause))


class Probe:
    """One small Produce every 20 ms on its own connection; the round trips, per window."""

    def __init__(self, port: int, topic: str) -> None:
        self.port, self.topic = port, topic
        self.lock = threading.Lock()
        self.round_trips: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with rc.connect(self.port, timeout=60) as sock:
            i = 0
            while not self.stop.is_set():
                i += 1
                t0 = time.monotonic()
                sock.sendall(rc.encode(rc.produce(self.topic, rc.record_batch(1, RECORD)), correlation_id=i))
                rc.outcome(sock, 1, deadline_s=60)
                with self.lock:
                    self.round_trips.append(time.monotonic() - t0)
                time.sleep(0.02)

    def take(self) -> list[float]:
        with self.lock:
            out, self.round_trips = self.round_trips, []
        return out


def churn(port: int, topic: str, churners: int, seconds: float, pause: float, out: multiprocessing.Queue) -> None:
    counts = [0, 0]  # rounds, refused connections

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_churn_one(port, topic, deadline, pause, random.Random(i), counts)
                               for i in range(churners)))

    asyncio.run(main())
    out.put(counts)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--churners", type=int, default=200)
    parser.add_argument("--rate", type=int, default=2000, help="steady producer's records/s (1 KiB each)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per printed window")
    parser.add_argument("--pause", type=float, default=1.0, help="mean seconds between one churner's rounds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="strata-soak-"))
    metrics = f"127.0.0.1:{free_port()}"
    broker = BrokerProcess(work / "broker", settings={"num.partitions": "1", "auto.create.topics.enable": "true",
                                                      "metrics.listen": metrics}).start()
    steady_topic, churn_topic = "soak-steady", "soak-churn"
    for topic in (steady_topic, churn_topic):
        with rc.connect(broker.port) as sock:
            sock.sendall(rc.encode(rc.metadata([topic])))
            rc.outcome(sock, 1)
    steady = Steady(broker.bootstrap, steady_topic, args.rate)
    steady.start()
    time.sleep(5)
    steady_connections = open_connections(metrics)
    probe = Probe(broker.port, steady_topic)
    time.sleep(1)
    steady.take()
    probe.take()
    seconds = args.minutes * 60
    results: multiprocessing.Queue = multiprocessing.Queue()
    churner = multiprocessing.Process(target=churn, args=(broker.port, churn_topic, args.churners, seconds, args.pause,
                                                            results))
    started = time.monotonic()
    churner.start()
    print(f"# soak: {args.churners} churning connections for {args.minutes:g} min beside a steady producer "
          f"({args.rate} records/s of 1 KiB, acks=1) and consumer; one broker, {multiprocessing.cpu_count()} cores")
    print(f"# the steady pair holds {steady_connections} connections")
    print(f"| {'window end':>10} | {'produced/s':>10} | {'p99 ms':>7} | {'consumed/s':>10} | {'errors':>6} | "
          f"{'probe p99 ms':>12} | {'RSS MiB':>7} | {'open conns':>10} |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 9}|{'-' * 12}|{'-' * 8}|{'-' * 14}|{'-' * 9}|{'-' * 12}|")
    rows = []
    while time.monotonic() - started < seconds:
        time.sleep(min(args.window, seconds - (time.monotonic() - started)) or 0.1)
        elapsed = time.monotonic() - started
        produced, consumed, latencies, errors = steady.take()
        window = elapsed - (rows[-1][0] if rows else 0.0)
        row = (elapsed, produced / window, p99(latencies) * 1000, consumed / window, errors,
               proc_rss_kb(broker.pid) / 1024, open_connections(metrics), p99(probe.take()) * 1000)
        rows.append(row)
        print(f"| {row[0]:>9.0f}s | {row[1]:>10.0f} | {row[2]:>7.1f} | {row[3]:>10.0f} | {row[4]:>6} | "
              f"{row[7]:>12.1f} | {row[5]:>7.1f} | {row[6]:>10} |", flush=True)
    churner.join(120)
    rounds, refused = results.get(timeout=30) if not results.empty() else (0, 0)
    time.sleep(5)
    probe.stop.set()
    probe.thread.join(60)
    settled = open_connections(metrics)  # the probe's connection is closed: the steady pair's remain
    steady.finish()
    alive = broker.alive()
    broker.kill()
    # Start and end: the median of the first and of the last three windows (one window is noisy here).
    head, tail = rows[:3], rows[-3:]
    print()
    print(f"churn rounds: {rounds} ({rounds / seconds:.0f}/s), refused: {refused}; broker alive: {alive}")
    print(f"| {'median of 3 windows':<22} | {'start':>12} | {'end':>12} | {'change':>8} |")
    print(f"|{'-' * 24}|{'-' * 14}|{'-' * 14}|{'-' * 10}|")
    for name, i in (("steady produced/s", 1), ("steady p99 latency ms", 2), ("steady consumed/s", 3),
                    ("probe p99 ms", 7), ("broker RSS MiB", 5)):
        first = statistics.median(r[i] for r in head)
        last = statistics.median(r[i] for r in tail)
        change = (last - first) / first * 100 if first else float("nan")
        print(f"| {name:<22} | {first:>12.1f} | {last:>12.1f} | {change:>+7.1f}% |")
    print(f"open connections 5 s after the churn: {settled} (the steady pair's: {steady_connections})")
    ok = alive and settled == steady_connections
    print("RESULT:", "open connections returned to the steady pair's count" if ok else "connections leaked")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Consumer group benchmark: rebalance time when a 4th member joins, and group vs manual-assignment consume.

Starts its own strata-broker (temp data dir, free loopback port) and prints one table:

* rebalance: 3 confluent-kafka members (threads, subscribe() with on_assign callbacks) consume a
  12-partition topic; a 4th subscribes. Measured from the 4th's subscribe() until every member's
  latest on_assign together covers the 12 partitions exactly once with nobody empty, and until
  DescribeGroups (AdminClient) first shows the group Stable with 4 members that all have an
  assignment. Fresh group each repetition; median and max, for each heartbeat.interval.ms given
  (librdkafka's default is 3000 ms: with the classic eager protocol the existing members learn
  of the rebalance from a heartbeat response, so that interval bounds the result from below);
* consume throughput of one consumer reading a whole topic from the start as the single member
  of a fresh group (subscribe(), auto commit on) vs with manual assignment (assign() from
  offset 0), alternating runs in the same broker.

Everything listens on 127.0.0.1; every loop is bounded.

    .venv/bin/python bench/groups.py [--reps 4] [--heartbeats 3000,500] [--mb 256]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Broker, create_topic, free_port, strata_broker  # noqa: E402
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from produce_consume import CpuMeter  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

MiB = 1024 * 1024
MB = 1_000_000
RECORD_SIZE = 1024
console = Console(width=max(150, Console().width))


def note(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(msg)}", highlight=False)


def load(bootstrap: str, topic: str, partitions: int, nbytes: int) -> dict[int, int]:
    """1 KiB incompressible records round-robin over the partitions; returns partition -> count."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "batch.size": 1_000_000,
                         "queue.buffering.max.kbytes": 512 * 1024, "enable.idempotence": False,
                         "message.timeout.ms": 120_000})
    errors = [0]

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors[0] += 1

    payloads = [os.urandom(RECORD_SIZE) for _ in range(64)]
    n = max(partitions, nbytes // RECORD_SIZE)
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payloads[i & 63], partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(120) != 0 or errors[0]:
        raise RuntimeError(f"loading {topic}: {errors[0]} failed deliveries")
    return {p: n // partitions + (1 if p < n % partitions else 0) for p in range(partitions)}


# ---- rebalance ---------------------------------------------------------------------------

class Group:
    """Shared state of one group's members: each member's latest assignment and when it came."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.lock = threading.Lock()
        self.assigned: dict[int, set[int]] = {}
        self.complete_at: float | None = None
        self.revoked_at: dict[int, float] = {}
        self.members = 0
        self.changed = threading.Condition(self.lock)

    def on_assign(self, member: int, parts: set[int]) -> None:
        now = time.perf_counter()
        with self.lock:
            self.assigned[member] = parts
            if self.balanced():
                self.complete_at = now
            self.changed.notify_all()

    def on_revoke(self, member: int) -> None:
        now = time.perf_counter()
        with self.lock:
            self.revoked_at[member] = now
            self.assigned[member] = set()
            self.complete_at = None
            self.changed.notify_all()

    def balanced(self) -> bool:
        """Every member has partitions, and together they own each partition exactly once."""
        if len(self.assigned) < self.members or any(not a for a in self.assigned.values()):
            return False
        owned = [p for a in self.assigned.values() for p in a]
        return len(owned) == self.partitions and set(owned) == set(range(self.partitions))

    def wait_balanced(self, members: int, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while time.monotonic() < deadline:
                if (len(self.assigned) == members and self.complete_at is not None and self.complete_at >= since
                        and self.balanced()):
                    return self.complete_at
                self.changed.wait(0.05)
        return None


class Member(threading.Thread):
    def __init__(self, index: int, bootstrap: str, topic: str, group_id: str, group: Group, heartbeat_ms: int,
                 strategy: str) -> None:
        super().__init__(daemon=True, name=f"member-{index}")
        self.index = index
        self.topic = topic
        self.group = group
        self.stop = threading.Event()
        self.subscribed_at: float | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group_id, "client.id": f"bench-m{index}",
            "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "heartbeat.interval.ms": heartbeat_ms, "session.timeout.ms": 45_000,
            "partition.assignment.strategy": strategy,
        })

    def run(self) -> None:
        c = self.consumer
        try:
            def on_assign(_c: Consumer, parts: list[TopicPartition]) -> None:
                self.group.on_assign(self.index, {tp.partition for tp in parts})

            def on_revoke(_c: Consumer, _parts: list[TopicPartition]) -> None:
                self.group.on_revoke(self.index)

            self.subscribed_at = time.perf_counter()
            c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
            self.ready.set()
            while not self.stop.is_set():
                c.consume(num_messages=500, timeout=0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ready.set()
        finally:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


def stable_with(admin: AdminClient, group_id: str, members: int) -> bool:
    try:
        desc = admin.describe_consumer_groups([group_id], request_timeout=5)[group_id].result(5)
    except Exception:  # noqa: BLE001 - not there yet / transient
        return False
    return (desc.state == ConsumerGroupState.STABLE and len(desc.members) == members
            and all(m.assignment and m.assignment.topic_partitions for m in desc.members))


@dataclass
class Rebalance:
    assigned: float | None  # seconds from the 4th's subscribe() until all 4 hold a balanced assignment
    stable: float | None  # ... until DescribeGroups shows Stable with 4 members
    initial: float  # seconds for the first 3 to settle (for context)
    # seconds from the last existing member's on_revoke (its heartbeat saw REBALANCE_IN_PROGRESS)
    # until balanced: the JoinGroup/SyncGroup round itself, without the heartbeat wait
    after_revoke: float | None = None


def one_rebalance(bootstrap: str, topic: str, partitions: int, heartbeat_ms: int, strategy: str,
                  timeout: float) -> Rebalance:
    group_id = f"bench-rb-{uuid.uuid4().hex[:8]}"
    group = Group(partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    members: list[Member] = []
    try:
        group.members = 3
        t0 = time.perf_counter()
        for i in range(3):
            m = Member(i, bootstrap, topic, group_id, group, heartbeat_ms, strategy)
            members.append(m)
            m.start()
        if group.wait_balanced(3, t0, timeout) is None:
            raise RuntimeError(f"3 members did not settle within {timeout:.0f}s: {group.assigned}")
        deadline = time.monotonic() + timeout
        while not stable_with(admin, group_id, 3):
            if time.monotonic() > deadline:
                raise RuntimeError("group not Stable with 3 members")
            time.sleep(0.05)
        initial = time.perf_counter() - t0
        # A steady group, consuming; the 4th joins at a random phase of the members' heartbeat timers
        # (they are aligned by the last sync, so a fixed delay would fix the measured wait).
        time.sleep(0.3 + random.uniform(0, heartbeat_ms / 1000.0))
        with group.lock:
            group.members = 4
        fourth = Member(3, bootstrap, topic, group_id, group, heartbeat_ms, strategy)
        members.append(fourth)
        fourth.start()
        fourth.ready.wait(10)
        if fourth.error is not None or fourth.subscribed_at is None:
            raise RuntimeError(f"4th member failed: {fourth.error!r}")
        start = fourth.subscribed_at
        stable_at = None
        deadline = time.monotonic() + timeout
        while stable_at is None and time.monotonic() < deadline:
            if stable_with(admin, group_id, 4):
                stable_at = time.perf_counter()
            else:
                time.sleep(0.02)
        done_at = group.wait_balanced(4, start, max(0.1, deadline - time.monotonic()))
        with group.lock:
            revokes = [t for m, t in group.revoked_at.items() if m < 3 and t >= start]
        after_revoke = done_at - max(revokes) if done_at is not None and len(revokes) == 3 else None
        return Rebalance(None if done_at is None else done_at - start, None if stable_at is None else stable_at - start,
                         initial, after_revoke)
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.join(30)


# ---- consume throughput ------------------------------------------------------------------

@dataclass
class Throughput:
    nbytes: int
    seconds: float
    first_record: float = float("nan")  # seconds until the first record arrived
    broker_cpu: float = float("nan")
    detail: str = ""

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_s_after_first(self) -> float:
        span = self.seconds - self.first_record
        return self.nbytes / MB / span if span > 0 else float("nan")


def consume_all(broker: Broker, topic: str, ends: dict[int, int], use_group: bool, timeout: float) -> Throughput:
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"bench-tp-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 50 * MiB,
        "max.partition.fetch.bytes": 4 * MiB,
        "enable.auto.commit": use_group,  # a group member commits as it goes (every 5 s, the default)
    }
    consumer = Consumer(conf)
    consumer.list_topics(topic, timeout=10)  # connection and metadata before the clock starts
    if not use_group:
        # librdkafka looks the coordinator up even for assign(): do it before the clock starts too
        consumer.committed([TopicPartition(topic, 0)], timeout=10)
    remaining = dict(ends)
    nbytes = errors = 0
    first = float("nan")
    with CpuMeter(broker) as cpu:
        t0 = time.perf_counter()
        if use_group:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = t0 + timeout
        while remaining and time.perf_counter() < deadline:
            # take what is queued; wait briefly only when nothing is, so the tail adds no idle time
            batch = consumer.consume(num_messages=10_000, timeout=0) or consumer.consume(num_messages=1,
                                                                                          timeout=0.05)
            for msg in batch:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        errors += 1
                    continue
                if first != first:
                    first = time.perf_counter() - t0
                nbytes += len(msg.value())
                p = msg.partition()
                if p in remaining and msg.offset() >= remaining[p] - 1:
                    del remaining[p]
        elapsed = time.perf_counter() - t0
    consumer.close()
    detail = "" if not remaining else f"INCOMPLETE after {timeout:.0f}s"
    if errors:
        detail += f" {errors} errors"
    return Throughput(nbytes, elapsed, first, cpu.percent, detail.strip())


# ---- run and report ----------------------------------------------------------------------

@dataclass
class Results:
    rebalance: dict[int, list[Rebalance]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    group: list[Throughput] = field(default_factory=list)
    manual: list[Throughput] = field(default_factory=list)
    consume_mb: float = 0.0


def run(args: argparse.Namespace, broker: Broker, res: Results) -> None:
    tag = uuid.uuid4().hex[:6]
    rb_topic = f"rebalance-{tag}"
    create_topic(broker.bootstrap, rb_topic, args.partitions)
    load(broker.bootstrap, rb_topic, args.partitions, int(args.rebalance_mb * MB))
    for hb in args.heartbeats:
        for i in range(args.reps):
            try:
                r = one_rebalance(broker.bootstrap, rb_topic, args.partitions, hb, args.strategy, args.timeout)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                res.failures.append(f"heartbeat {hb} ms rep {i + 1}: {exc}")
                note(f"rebalance failed: {exc}")
                continue
            res.rebalance.setdefault(hb, []).append(r)
            note(f"heartbeat.interval.ms={hb} rep {i + 1}: 4th joins -> balanced assignments "
                 f"{_s(r.assigned)}, Stable {_s(r.stable)}, last revoke -> balanced {_s(r.after_revoke)} "
                 f"(first 3 settled in {r.initial:.2f}s)")

    tp_topic = f"throughput-{tag}"
    create_topic(broker.bootstrap, tp_topic, args.consume_partitions)
    t0 = time.perf_counter()
    ends = load(broker.bootstrap, tp_topic, args.consume_partitions, int(args.mb * MB))
    res.consume_mb = sum(ends.values()) * RECORD_SIZE / MB
    note(f"loaded {res.consume_mb:.0f} MB into {tp_topic} in {time.perf_counter() - t0:.1f}s")
    for i in range(args.rounds):
        for use_group in ((False, True) if i % 2 == 0 else (True, False)):
            r = consume_all(broker, tp_topic, ends, use_group, args.timeout)
            (res.group if use_group else res.manual).append(r)
            note(f"consume {'group member' if use_group else 'manual assign'}: {r.mb_s:.1f} MB/s "
                 f"({r.seconds:.2f}s, first record after {r.first_record:.2f}s, broker CPU {r.broker_cpu:.0f}%) "
                 f"{r.detail}")


def _s(value: float | None) -> str:
    return "TIMEOUT" if value is None else f"{value:.3f}s"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def report(res: Results, args: argparse.Namespace) -> None:
    table = Table(title=f"Strata consumer groups (confluent-kafka, {args.strategy}, loopback, {os.cpu_count()} CPUs)")
    for col, justify in (("measurement", "left"), ("median", "right"), ("max", "right"), ("runs", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for hb, runs in res.rebalance.items():
        for label, values in (("all 4 hold a balanced assignment", [r.assigned for r in runs]),
                              ("DescribeGroups shows Stable, 4 members", [r.stable for r in runs]),
                              ("last old member's revoke until balanced", [r.after_revoke for r in runs])):
            done = [v for v in values if v is not None]
            table.add_row(f"4th joins 3 ({args.partitions} partitions), heartbeat.interval.ms={hb}:"
                          f" {label} (s)" + (f" ({len(values) - len(done)} missing)" if len(done) < len(values)
                                             else ""),
                          fmt(statistics.median(done), 3) if done else "-", fmt(max(done), 3) if done else "-",
                          " / ".join(_s(v) for v in values))
    table.add_section()
    for label, runs in ((f"consume, manual assign() ({args.consume_partitions} partitions, {res.consume_mb:.0f} MB)"
                         " (MB/s)", res.manual),
                        ("consume, group member subscribe(), from subscribe() (MB/s)", res.group)):
        if runs:
            mbs = [r.mb_s for r in runs]
            extra = "".join(f" [{r.detail}]" for r in runs if r.detail)
            table.add_row(escape(label + extra), fmt(statistics.median(mbs), 1), f"{max(mbs):,.1f}",
                          " / ".join(f"{v:,.1f}" for v in mbs))
    if res.group:
        after = [r.mb_s_after_first for r in res.group]
        table.add_row("consume, group member, from its first record (MB/s)", fmt(statistics.median(after), 1),
                      fmt(max(after), 1), " / ".join(fmt(v, 1) for v in after))
        joins = [r.first_record for r in res.group]
        table.add_row("group member: subscribe() until first record (s)", fmt(statistics.median(joins)),
                      fmt(max(joins)), " / ".join(fmt(v) for v in joins))
    if res.group and res.manual:
        g = statistics.median(r.mb_s for r in res.group)
        m = statistics.median(r.mb_s for r in res.manual)
        table.add_row("group member / manual assign (median MB/s)", f"{g / m:.2f}x", "", "")
    console.print(table)
    console.print("Rebalance: fresh group per run; members are threads of this process polling every 50 ms; the 4th "
                  "joins at a random phase of one heartbeat interval; "
                  "'balanced' = the members' latest on_assign cover every partition once, nobody empty. "
                  "Consume: 1 KiB records, MB/s of record values, fetch.max.bytes 50 MiB, max.partition.fetch.bytes "
                  "4 MiB, alternating runs; the group run includes the join (FindCoordinator, JoinGroup, SyncGroup, "
                  "OffsetFetch).", highlight=False)
    for failure in res.failures:
        console.print(f"[red]failure[/red]: {failure}", highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=4, help="rebalances per heartbeat interval")
    parser.add_argument("--heartbeats", default="3000,500", help="heartbeat.interval.ms values (comma separated)")
    parser.add_argument("--strategy", default="range,roundrobin", help="partition.assignment.strategy (eager)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the rebalance topic")
    parser.add_argument("--rebalance-mb", type=float, default=12, help="MB in the rebalance topic")
    parser.add_argument("--mb", type=float, default=512, help="MB in the throughput topic")
    parser.add_argument("--consume-partitions", type=int, default=6, help="partitions of the throughput topic")
    parser.add_argument("--rounds", type=int, default=3, help="alternating group/manual consume rounds")
    parser.add_argument("--timeout", type=float, default=60.0, help="cap on one rebalance / one consume run")
    parser.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra --set for strata-broker (repeatable)")
    parser.add_argument("--broker-pythonpath", metavar="DIR",
                        help="run the broker from this source tree (PYTHONPATH), e.g. a patched copy for an A/B")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (broker data and log)")
    args = parser.parse_args()
    args.heartbeats = [int(x) for x in args.heartbeats.split(",") if x.strip()]

    if args.broker_pythonpath:
        os.environ["PYTHONPATH"] = os.path.abspath(args.broker_pythonpath)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="strata-bench-groups-")
    note(f"temp dir {tmp}")
    broker = strata_broker(os.path.join(tmp, "data"), free_port(), Path(tmp) / "strata.log", *args.broker_set)
    res = Results()
    rc = 0
    try:
        broker.start()
        note(f"strata-broker pid {broker.proc.pid} on {broker.bootstrap}")
        run(args, broker, res)
    except Exception as exc:  # noqa: BLE001
        note(f"FAILED: {exc!r}; broker log tail:\n{broker.log_tail()}")
        args.keep = True
        rc = 1
    finally:
        broker.stop()
        problems = [line for line in broker.log_path.read_text(errors="replace").splitlines()
                    if " ERROR " in line or "Traceback" in line] if broker.log_path.exists() else []
        if problems:
            note(f"strata-broker log: {len(problems)} error line(s)"
                 + "".join(f"\n    {x[:200]}" for x in problems[:5]))
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(res, args)
    note(f"total {time.monotonic() - started:.0f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""The exactly-once SIGKILL loop: a consume-process-produce service (eos_worker.py, its own process)
killed with SIGKILL at random points and restarted, the broker SIGKILLed too in some rounds; then
the output must hold every input record exactly once and the group's offsets must match.

`run_kill_loop(broker, workdir, rounds=20)` drives it against a running `BrokerProcess` (it kills
and restarts that broker in place). Each round produces a chunk of new input (acks=all, idempotent),
starts a worker, waits until it has joined (and, in about half the rounds, committed a
transaction), then SIGKILLs it after a random delay, so the kill lands before, inside or between
transactions. In a broker round the broker is SIGKILLed too, either together with the worker or
while the worker runs on (it then rides out the restart or exits and is restarted next round).
Finally a worker runs until the group's committed offsets reach the end of the input, and stops.

Checked afterwards (read_committed, from offset 0):
- every output partition holds exactly the input partition's records in order (the worker copies
  partition p to partition p), so nothing is lost, duplicated or reordered;
- the group's committed offset of each input partition equals the partition's end offset.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from brokerproc import BrokerProcess
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

WORKER = Path(__file__).resolve().parent / "eos_worker.py"


class Worker:
    """One eos_worker.py process; its stdout events collected by a thread."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), *argv], stdout=subprocess.PIPE,
                                         stderr=log, stdin=subprocess.DEVNULL)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def count(self, name: str) -> int:
        with self.cond:
            return sum(1 for e in self.events if e["event"] == name)

    def wait_for(self, name: str, n: int = 1, timeout: float = 60.0) -> bool:
        """True once `n` events `name` arrived; False on a timeout or when the process ended first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(1 for e in self.events if e["event"] == name) < n:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.thread.is_alive()):
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join(5)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the worker finishes its transaction and closes), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        return self.proc.returncode


@dataclass
class KillLoopResult:
    rounds: int = 0
    broker_kills: int = 0
    worker_starts: int = 0
    worker_fatal_exits: int = 0
    commits: int = 0
    aborts: int = 0
    inputs: int = 0
    outputs: int = 0
    uncommitted_outputs: int = 0
    duplicates: int = 0
    missing: int = 0
    mismatched_partitions: list[int] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatched_partitions and self.committed == self.ends and self.outputs == self.inputs

    def summary(self) -> str:
        return (f"{self.rounds} rounds ({self.broker_kills} with a broker SIGKILL), {self.worker_starts} worker "
                f"starts ({self.worker_fatal_exits} exited on a fatal error), {self.commits} transactions committed "
                f"and {self.aborts} aborted by the worker seen; {self.inputs} inputs, {self.outputs} outputs "
                f"read_committed ({self.uncommitted_outputs} read_uncommitted: the difference is the records of "
                f"transactions killed open), {self.duplicates} duplicated, "
                f"{self.missing} missing, partitions not equal to their input: {self.mismatched_partitions}; "
                f"committed offsets {self.committed} vs ends {self.ends}; {self.seconds:.1f}s")


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)


def read_partitions(bootstrap: str, topic: str, partitions: int, isolation: str,
                     timeout: float = 60.0) -> dict[int, list[bytes]]:
    """Every record of each partition from offset 0 to its end, at `isolation`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": isolation,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {set(range(partitions)) - ended} never reached their end")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(msg.partition())
                continue
            values[msg.partition()].append(msg.value())
    finally:
        consumer.close()
    return values


def group_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (stable ones: read_committed makes OffsetFetch wait for
    pending transactional commits)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends", "isolation.level": "read_committed"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[1] for p in range(partitions)}
    finally:
        consumer.close()


def run_kill_loop(broker: BrokerProcess, workdir: Path, rounds: int = 20, broker_kill_rounds: int = 4,
                  per_round: int = 60, partitions: int = 3, batch: int = 8, process_ms: int = 30,
                  seed: int | None = None,
                  say: Callable[[str], None] = lambda _: None) -> KillLoopResult:
    """The loop against `broker` (running; killed and restarted in place in `broker_kill_rounds`
    of the rounds, spread evenly); the worker's transactions hold at most `batch` records, so a
    round's input is several transactions, each held open `process_ms` after its records are sent,
    so a kill often lands inside one. `say` receives one line per round."""
    rng = random.Random(seed)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    in_topic, out_topic, group, txn_id = f"eos-in-{tag}", f"eos-out-{tag}", f"eos-group-{tag}", f"eos-txn-{tag}"
    bootstrap = broker.bootstrap
    _create_topics(bootstrap, [in_topic, out_topic], partitions)
    result = KillLoopResult()
    kill_broker_in = {round(i * rounds / broker_kill_rounds) + rounds // (2 * broker_kill_rounds)
                      for i in range(broker_kill_rounds)} if broker_kill_rounds else set()
    seq = 0
    argv = [bootstrap, in_topic, out_topic, group, txn_id, str(batch), str(process_ms)]
    log_path = workdir / "eos-worker.log"

    def produce_chunk() -> None:
        nonlocal seq
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                             "linger.ms": 5})
        failed: list[object] = []
        for _ in range(per_round):
            p = seq % partitions
            producer.produce(in_topic, value=b"%d:%06d" % (p, seq), partition=p,
                             on_delivery=lambda err, _msg: failed.append(err) if err else None)
            seq += 1
        if producer.flush(60) != 0 or failed:
            raise RuntimeError(f"input not acknowledged: {failed[:3]}")
        result.inputs += per_round

    def start_worker() -> Worker:
        for _ in range(5):
            worker = Worker(argv, log_path)
            result.worker_starts += 1
            if worker.wait_for("ready", timeout=90):
                return worker
            worker.kill()
            result.worker_fatal_exits += 1
        raise RuntimeError(f"the worker never became ready; see {log_path}")

    def retire(worker: Worker) -> None:
        worker.kill()
        result.commits += worker.count("committed")
        result.aborts += worker.count("aborted")
        result.worker_fatal_exits += worker.count("fatal")

    for r in range(rounds):
        produce_chunk()
        worker = start_worker()
        what = []
        if rng.random() < 0.5:
            worker.wait_for("committed", timeout=30)
            what.append("after a commit")
        delay = rng.uniform(0.0, 0.3)
        time.sleep(delay)
        if r in kill_broker_in:
            result.broker_kills += 1
            if rng.random() < 0.5:
                broker.kill()
                retire(worker)
                broker.start(timeout=60)
                what.append("worker and broker")
            else:
                broker.kill()
                broker.start(timeout=60)
                worker.wait_for("committed", n=worker.count("committed") + 1, timeout=rng.uniform(0.5, 3.0))
                retire(worker)
                what.append("broker, then the worker")
        else:
            retire(worker)
        result.rounds += 1
        say(f"round {r + 1}/{rounds}: SIGKILL {' '.join(what) or 'worker'} after {delay:.2f}s "
            f"({result.commits} commits so far)")

    # The last worker runs until the group has committed the whole input.
    ends = end_offsets(bootstrap, in_topic, partitions)
    worker = start_worker()
    deadline = time.monotonic() + 180
    while True:
        try:
            committed = group_offsets(bootstrap, group, in_topic, partitions)
        except KafkaException:  # the coordinator not ready yet (a broker just restarted): ask again
            committed = {}
        if committed == ends:
            break
        if time.monotonic() > deadline:
            break
        if worker.proc.poll() is not None:
            retire(worker)
            worker = start_worker()
        time.sleep(0.3)
    worker.stop()
    result.commits += worker.count("committed")
    result.aborts += worker.count("aborted")

    inputs = read_partitions(bootstrap, in_topic, partitions, "read_committed")
    outputs = read_partitions(bootstrap, out_topic, partitions, "read_committed")
    everything = read_partitions(bootstrap, out_topic, partitions, "read_uncommitted")
    result.outputs = sum(len(v) for v in outputs.values())
    result.uncommitted_outputs = sum(len(v) for v in everything.values())
    wanted = Counter(v for vs in inputs.values() for v in vs)
    got = Counter(v for vs in outputs.values() for v in vs)
    result.duplicates = sum(n - 1 for n in got.values() if n > 1)
    result.missing = sum(1 for v in wanted if v not in got)
    result.mismatched_partitions = [p for p in range(partitions) if outputs[p] != inputs[p]]
    result.committed = group_offsets(bootstrap, group, in_topic, partitions)
    result.ends = end_offsets(bootstrap, in_topic, partitions)
    if sum(len(v) for v in inputs.values()) != result.inputs:
        raise AssertionError(f"the input topic holds {sum(len(v) for v in inputs.values())} records, "
                             f"{result.inputs} were acknowledged")
    result.seconds = time.monotonic() - started
    return result

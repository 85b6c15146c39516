"""Consumer groups with real clients in real processes: split, clean leave, crash, resume.

Each member runs in its own process (tests/support/group_worker.py) so a crash is a real SIGKILL:
the member never sends LeaveGroup and the coordinator must notice the silence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafkaclients import create_topic, produce_confluent

WORKER = str(Path(__file__).resolve().parents[2] / "support" / "group_worker.py")
CLIENTS = ["confluent", "kafka-python", "aiokafka"]
SESSION_S = 6.0


class Worker:
    def __init__(self, client: str, bootstrap: str, topic: str, group: str, instance: str | None = None) -> None:
        args = [sys.executable, WORKER, client, bootstrap, topic, group] + ([instance] if instance else [])
        # GROUP_WORKER_LOG=path keeps the clients' own logs for debugging.
        with open(os.environ.get("GROUP_WORKER_LOG", os.devnull), "a") as stderr:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.assigned: list[int] | None = None
        self.assigned_at = 0.0
        self.records: list[tuple[int, int, str]] = []
        self.commit_failures: list[str] = []
        self.closed = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if event["event"] == "assigned":
                    self.assigned = event["partitions"]
                    self.assigned_at = time.monotonic()
                elif event["event"] == "records":
                    self.records.extend((p, o, v) for p, o, v in event["records"])
                elif event["event"] == "commit_failed":
                    self.commit_failures.append(event["error"])
                elif event["event"] == "closed":
                    self.closed = True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the worker commits, leaves the group and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)

    def offsets(self) -> set[tuple[int, int]]:
        with self._lock:
            return {(p, o) for p, o, _ in self.records}


def wait_for(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def split_between(workers: list[Worker], partitions: int) -> bool:
    owned = [set(w.assigned or []) for w in workers]
    if any(not o for o in owned):
        return False
    union = set().union(*owned)
    return union == set(range(partitions)) and sum(len(o) for o in owned) == partitions


def produce(bootstrap: str, topic: str, start: int, count: int, partitions: int = 6) -> None:
    # Keys spread the records over every partition.
    produce_confluent(bootstrap, topic, [(f"k{i % partitions}-{i}".encode(), str(i).encode())
                                         for i in range(start, start + count)])


def consumed(workers: list[Worker]) -> set[tuple[int, int]]:
    return set().union(*(w.offsets() for w in workers))


@pytest.mark.parametrize("client", CLIENTS)
def test_group_split_leave_and_crash(broker, topic_name: str, client: str) -> None:
    """Two members split 6 partitions; a clean leave and a SIGKILL each hand partitions to the survivor."""
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 6)
    group = f"g-{topic_name}"
    produce(bootstrap, topic_name, 0, 300)

    a = Worker(client, bootstrap, topic_name, group)
    b = Worker(client, bootstrap, topic_name, group)
    workers = [a, b]
    try:
        wait_for(lambda: split_between([a, b], 6), 60, "two members to split 6 partitions")
        assert not set(a.assigned or []) & set(b.assigned or [])
        wait_for(lambda: len(consumed([a, b])) == 300, 60, "the first 300 records")

        # Clean handover: A leaves; B owns everything within the session timeout, nothing is processed twice.
        produce(bootstrap, topic_name, 300, 300)
        a.stop()
        assert a.closed
        left_at = time.monotonic()
        wait_for(lambda: b.assigned == list(range(6)), SESSION_S + 4, "the survivor to own all partitions")
        assert b.assigned_at - left_at < SESSION_S
        wait_for(lambda: len(consumed([a, b])) == 600, 60, "600 records")
        everything = Counter((p, o) for w in (a, b) for p, o, _ in w.records)
        twice = [k for k, n in everything.items() if n > 1]
        assert not twice, f"processed twice across a clean handover: {twice[:10]}"
        assert not a.commit_failures and not b.commit_failures, a.commit_failures + b.commit_failures

        # Crash: C joins, then dies without LeaveGroup; B takes its partitions back within the session timeout.
        c = Worker(client, bootstrap, topic_name, group)
        workers.append(c)
        wait_for(lambda: split_between([b, c], 6), 60, "B and C to split the partitions")
        produce(bootstrap, topic_name, 600, 300)
        wait_for(lambda: len(consumed([a, b, c])) == 900, 60, "900 records")
        c.kill()
        killed_at = time.monotonic()
        wait_for(lambda: b.assigned == list(range(6)), SESSION_S + 6, "the survivor to take the crashed member's share")
        assert b.assigned_at - killed_at < SESSION_S + 2.5
        produce(bootstrap, topic_name, 900, 60)
        wait_for(lambda: len(consumed([a, b, c])) == 960, 60, "all 960 records")
        values = {int(v) for w in workers for _, _, v in w.records}
        assert values == set(range(960)), "produced != consumed"
    finally:
        for w in workers:
            w.kill()


@pytest.mark.parametrize("client", CLIENTS)
def test_restarted_member_resumes_from_committed_offset(broker_factory, topic_name: str, client: str) -> None:
    """A member restarted with the same group id resumes where it committed; so after a broker SIGKILL."""
    broker = broker_factory()
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 6)
    group = f"g-{topic_name}"

    def run_until(expected_values: set[int]) -> Worker:
        worker = Worker(client, bootstrap, topic_name, group)
        try:
            wait_for(lambda: {int(v) for _, _, v in worker.records} >= expected_values, 30,
                     f"records {min(expected_values)}..{max(expected_values)} (got {len(worker.records)}, "
                     f"assigned {worker.assigned}, commit failures {worker.commit_failures})")
            time.sleep(0.5)  # anything more would be a replay of committed records
        finally:
            worker.stop()
        return worker

    produce(bootstrap, topic_name, 0, 120)
    first = run_until(set(range(120)))
    assert len(first.records) == 120

    produce(bootstrap, topic_name, 120, 60)
    second = run_until(set(range(120, 180)))
    assert sorted(int(v) for _, _, v in second.records) == list(range(120, 180))

    produce(bootstrap, topic_name, 180, 60)
    broker.kill()
    broker.start()
    third = run_until(set(range(180, 240)))
    assert sorted(int(v) for _, _, v in third.records) == list(range(180, 240))


def test_two_groups_each_receive_every_record(broker, topic_name: str) -> None:
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name, 6)
    produce(bootstrap, topic_name, 0, 200)
    g1 = Worker("kafka-python", bootstrap, topic_name, f"one-{topic_name}")
    g2 = Worker("confluent", bootstrap, topic_name, f"two-{topic_name}")
    try:
        wait_for(lambda: len(g1.offsets()) == 200 and len(g2.offsets()) == 200, 60, "both groups to read all")
        assert {int(v) for _, _, v in g1.records} == {int(v) for _, _, v in g2.records} == set(range(200))
    finally:
        g1.stop()
        g2.stop()

"""A Python stream-processing library in exactly-once mode against Strata: quixstreams.

tests/support/quix_wordcount.py is a stateful word count (split, group_by word through a
repartition topic, a RocksDB count backed by a compacted changelog topic, JSON counts out) run as
its own process under the quixstreams virtualenv (`make quixstreams`; quixstreams pins an older
confluent-kafka than the project, so it has its own). In exactly-once mode every commit is a
transaction over the repartition, changelog and output topics and the group's offsets.

Checked: on clean data exactly-once gives the same output as at-least-once; after SIGKILLs of the
app (one restart with its state directory wiped, so the state comes back from the changelog) the
read_committed output holds each word's counts 1..n exactly once, in order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from eos_killloop import read_partitions
from kafkaclients import create_topic, produce_confluent

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "tests" / "support" / "quix_wordcount.py"
QUIX_PYTHON = Path(os.environ.get("STRATA_QUIX_PYTHON", ROOT / ".venv-quix" / "bin" / "python"))
FAST = {"transaction.abort.timed.out.transaction.cleanup.interval.ms": "300",
        "transaction.state.log.num.partitions": "4", "offsets.topic.num.partitions": "4"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()

pytestmark = pytest.mark.skipif(not QUIX_PYTHON.exists(),
                                reason=f"no quixstreams virtualenv at {QUIX_PYTHON} (make quixstreams)")


def lines(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """`n` input records, each a line of 3-8 words drawn from WORDS."""
    rng = random.Random(seed)
    return [(b"line-%d" % i, " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).encode())
            for i in range(n)]


class App:
    """One quix_wordcount.py process."""

    def __init__(self, bootstrap: str, in_topic: str, out_topic: str, group: str, guarantee: str,
                 state_dir: Path, log_path: Path) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([str(QUIX_PYTHON), str(APP), bootstrap, in_topic, out_topic, group,
                                          guarantee, str(state_dir)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        self.log_path = log_path

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"the quixstreams app exited with {self.proc.returncode}:\n{tail}")


def outputs(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[dict]:
    found = read_partitions(bootstrap, topic, 2, isolation)
    return [json.loads(v) for p in sorted(found) for v in found[p]]


def wait_outputs(app: App, bootstrap: str, topic: str, at_least: int, timeout: float = 120.0) -> list[dict]:
    """The read_committed output once it holds `at_least` records."""
    deadline = time.monotonic() + timeout
    while True:
        app.check_alive()
        found = outputs(bootstrap, topic)
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def counts_by_word(found: list[dict]) -> dict[str, list[int]]:
    """Each word's counts in output order (a word is one key, so one partition: its order holds)."""
    by_word: dict[str, list[int]] = {}
    for item in found:
        by_word.setdefault(item["word"], []).append(item["count"])
    return by_word


def expected(records: list[tuple[bytes, bytes]]) -> dict[str, list[int]]:
    totals = Counter(w for _, line in records for w in line.decode().split())
    return {w: list(range(1, n + 1)) for w, n in totals.items()}


def test_exactly_once_matches_at_least_once_on_clean_data(broker_factory, tmp_path) -> None:
    broker = broker_factory(settings=FAST)
    tag = uuid.uuid4().hex[:6]
    source = f"lines-{tag}"
    create_topic(broker.bootstrap, source, 2)
    records = lines(80, seed=1)
    produce_confluent(broker.bootstrap, source, records)
    total = sum(len(line.split()) for _, line in records)
    results = {}
    for guarantee in ("exactly-once", "at-least-once"):
        sink = f"counts-{guarantee}-{tag}"
        create_topic(broker.bootstrap, sink, 2)
        app = App(broker.bootstrap, source, sink, f"wc-{guarantee}-{tag}", guarantee, tmp_path / guarantee,
                  tmp_path / f"{guarantee}.log")
        try:
            found = wait_outputs(app, broker.bootstrap, sink, total)
        finally:
            app.stop()
        assert len(found) == total, f"{guarantee}: {len(found)} of {total} outputs"
        results[guarantee] = counts_by_word(found)
    assert results["exactly-once"] == results["at-least-once"] == expected(records)


def test_exactly_once_no_duplicates_after_sigkill(broker_factory, tmp_path) -> None:
    broker = broker_factory(settings=FAST)
    tag = uuid.uuid4().hex[:6]
    source, sink, group = f"lines-{tag}", f"counts-{tag}", f"wc-{tag}"
    create_topic(broker.bootstrap, source, 2)
    create_topic(broker.bootstrap, sink, 2)
    rng = random.Random()
    state = tmp_path / "state"
    records: list[tuple[bytes, bytes]] = []
    kills = 3
    for round_ in range(kills):
        chunk = lines(40, seed=100 + round_)
        produce_confluent(broker.bootstrap, source, chunk)
        records += chunk
        before = len(outputs(broker.bootstrap, sink))
        if round_ == 1:
            shutil.rmtree(state, ignore_errors=True)  # a new machine: the state comes back from the changelog
        app = App(broker.bootstrap, source, sink, group, "exactly-once", state, tmp_path / "app.log")
        try:
            wait_outputs(app, broker.bootstrap, sink, before + 1)
            time.sleep(rng.uniform(0.0, 1.0))
        finally:
            app.kill()
    # After the last SIGKILL, a (read_uncommitted) reader may see the dead process's open
    # transaction; read_committed never does. A last run finishes the input.
    total = sum(len(line.split()) for _, line in records)
    app = App(broker.bootstrap, source, sink, group, "exactly-once", state, tmp_path / "app.log")
    try:
        found = wait_outputs(app, broker.bootstrap, sink, total)
        time.sleep(1.0)  # anything more (a duplicate) would be committed by now
        found = outputs(broker.bootstrap, sink)
    finally:
        app.stop()
    assert len(found) == total, f"{len(found)} outputs for {total} words"
    assert counts_by_word(found) == expected(records)

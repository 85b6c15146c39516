"""A well-behaved client beside abuse: the hostile-input tests and benchmarks check that it keeps working."""

from __future__ import annotations

import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


class Bystander:
    """A well-behaved kafka-python producer and consumer running in threads beside the abuse.

    The producer sends one record at a time and waits for its ack (so every ack's latency is
    measured); the consumer reads the same partition concurrently. `check()` asserts both keep
    making progress; `finish()` stops them and asserts every acked record was read, in order.
    """

    def __init__(self, bootstrap: str, topic: str, **client: object) -> None:
        self.topic = topic
        client = {"bootstrap_servers": bootstrap, **client}  # e.g. SASL settings
        self.producer = KafkaProducer(**client, acks=1, linger_ms=0, request_timeout_ms=10000,
                                      max_block_ms=10000)
        self.producer.send(topic, value=b"bystander-0").get(timeout=15)  # auto-creates the topic
        self.acked: list[bytes] = [b"bystander-0"]
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.consumed: list[bytes] = []
        self.consumer = KafkaConsumer(**client, enable_auto_commit=False,
                                      auto_offset_reset="earliest", request_timeout_ms=15000)
        self.consumer.assign([TopicPartition(topic, 0)])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._produce, daemon=True),
                         threading.Thread(target=self._consume, daemon=True)]
        for t in self._threads:
            t.start()

    def _produce(self) -> None:
        i = 1
        while not self._stop.is_set():
            value = f"bystander-{i}".encode()
            t0 = time.monotonic()
            try:
                self.producer.send(self.topic, value=value).get(timeout=15)
            except BaseException as exc:  # noqa: B036 - reported by check()
                self.errors.append(exc)
                return
            self.latencies.append(time.monotonic() - t0)
            self.acked.append(value)
            i += 1
            time.sleep(0.005)

    def _consume(self) -> None:
        while not self._stop.is_set() or len(self.consumed) < len(self.acked):
            try:
                batches = self.consumer.poll(timeout_ms=100)
            except BaseException as exc:  # noqa: B036 - reported by check()
                self.errors.append(exc)
                return
            for records in batches.values():
                self.consumed.extend(r.value for r in records)
            if self._stop.is_set() and not batches:
                return

    def progress(self) -> tuple[int, int]:
        return len(self.acked), len(self.consumed)

    def check(self, since: tuple[int, int], min_new: int = 3, timeout: float = 10.0) -> None:
        """Both clients made at least `min_new` more acks/reads since `since`, and nothing failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.errors:
            acked, consumed = self.progress()
            if acked >= since[0] + min_new and consumed >= since[1] + min_new:
                break
            time.sleep(0.02)
        assert not self.errors, f"the parallel client failed: {self.errors!r}"
        acked, consumed = self.progress()
        assert acked >= since[0] + min_new, f"producer stalled: {acked - since[0]} acks in {timeout}s"
        assert consumed >= since[1] + min_new, f"consumer stalled: {consumed - since[1]} reads in {timeout}s"

    def finish(self, max_latency: float = 5.0) -> None:
        self._stop.set()
        self._threads[0].join(20)
        deadline = time.monotonic() + 20
        while self._threads[1].is_alive() and time.monotonic() < deadline:
            self._threads[1].join(0.1)
        self.producer.close(5)
        self.consumer.close()
        assert not self.errors, f"the parallel client failed: {self.errors!r}"
        assert self.consumed == self.acked, (
            f"consumer read {len(self.consumed)} records, producer had {len(self.acked)} acked (or out of order)")
        assert max(self.latencies) < max_latency, f"a produce took {max(self.latencies):.2f}s to be acked"

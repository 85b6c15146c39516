"""acks=all survives SIGKILL: every acknowledged record is there after restart, in order, once."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import confluent_kafka
from kafkaclients import consume_confluent, create_topic

PARTITIONS = 3


class AckingProducer(threading.Thread):
    """Produces numbered records with acks=all until stopped; remembers what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = confluent_kafka.Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 2,
            "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 200, "message.timeout.ms": 120000,
        })
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.failed: list[str] = []
        self.sent = 0
        self._halt = threading.Event()

    def _on_delivery(self, err: object, msg: confluent_kafka.Message) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked[msg.value()] = (msg.partition(), msg.offset())

    def run(self) -> None:
        while not self._halt.is_set():
            value = f"{self.sent:09d}".encode()
            try:
                self.producer.produce(self.topic, key=str(self.sent % 97).encode(), value=value,
                                      on_delivery=self._on_delivery)
                self.sent += 1
            except BufferError:
                pass
            self.producer.poll(0.001 if self.sent % 50 else 0.01)

    def finish(self) -> None:
        self._halt.set()
        self.join()
        assert self.producer.flush(120) == 0


def test_acks_all_survives_sigkill(broker_factory, topic_name):
    rng = random.Random(2)
    broker = broker_factory({"segment.bytes": str(256 * 1024)})
    create_topic(broker.bootstrap, topic_name, PARTITIONS)
    producer = AckingProducer(broker.bootstrap, topic_name)
    producer.start()
    for _ in range(3):
        time.sleep(rng.uniform(0.7, 1.5))
        broker.kill()
        time.sleep(rng.uniform(0.05, 0.4))
        broker.start()
    time.sleep(0.5)
    producer.finish()
    assert not producer.failed, producer.failed[:5]
    assert len(producer.acked) > 500

    consumed = consume_confluent(broker.bootstrap, topic_name, PARTITIONS, expected=producer.sent, timeout=60)
    at = {(r.partition, r.offset): r.value for r in consumed}
    values = [r.value for r in consumed]
    assert len(values) == len(set(values)), "a record is stored twice"
    for value, position in producer.acked.items():
        assert at.get(position) == value, f"acknowledged {value!r} at {position} is gone"
    by_partition: dict[int, list[int]] = defaultdict(list)
    for r in sorted(consumed, key=lambda r: (r.partition, r.offset)):
        by_partition[r.partition].append(int(r.value))
    for partition, sequence in by_partition.items():
        assert sequence == sorted(sequence), f"partition {partition} out of order"
    # And the broker recovered after each crash (an unclean start was logged, then it served again).
    assert broker.log_tail(400).count("previous shutdown: crash") >= 3


def test_sigterm_shuts_down_cleanly_and_restart_skips_recovery(broker_factory, topic_name):
    from kafkaclients import consume_kafka_python, produce_kafka_python

    broker = broker_factory()
    create_topic(broker.bootstrap, topic_name, 2)
    produce_kafka_python(broker.bootstrap, topic_name, [(b"k%d" % i, b"v%d" % i) for i in range(100)])
    assert broker.stop() == 0
    assert "stopped cleanly" in broker.log_tail()
    broker.start()
    assert "previous shutdown: clean" in broker.log_tail(5)
    records = consume_kafka_python(broker.bootstrap, topic_name, 2, expected=100, timeout=20)
    assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(100))

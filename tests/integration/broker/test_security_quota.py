"""Client quotas: a producer capped at 1 MB/s is held to it, and sees throttle_time_ms."""

from __future__ import annotations

import json
import time

from brokerproc import BrokerProcess
from kafka.protocol.admin import AlterClientQuotasRequest, DescribeClientQuotasRequest
from rawclient import RawConnection

RATE = 1024 * 1024


def set_quota(bootstrap: str, entity: dict[str, str | None], key: str, value: float | None) -> None:
    E = AlterClientQuotasRequest.EntryData
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(AlterClientQuotasRequest(version=1, validate_only=False, entries=[E(
            entity=[E.EntityData(entity_type=t, entity_name=n) for t, n in entity.items()],
            ops=[E.OpData(key=key, value=value or 0.0, remove=value is None)])]))
        assert [e.error_code for e in response.entries] == [0], response
    finally:
        conn.close()


def describe_quotas(bootstrap: str) -> list[tuple[list[tuple[str, str | None]], dict[str, float]]]:
    C = DescribeClientQuotasRequest.ComponentData
    conn = RawConnection(bootstrap)
    try:
        response = conn.request(DescribeClientQuotasRequest(version=1, strict=False, components=[
            C(entity_type="client-id", match_type=2, match=None)]))
        assert response.error_code == 0
        return [([(e.entity_type, e.entity_name) for e in entry.entity], {v.key: v.value for v in entry.values})
                for entry in response.entries]
    finally:
        conn.close()


def test_producer_held_to_its_byte_rate(broker_factory, topic_name: str) -> None:  # type: ignore[no-untyped-def]
    from confluent_kafka import Producer

    proc: BrokerProcess = broker_factory({"num.partitions": "1"})
    set_quota(proc.bootstrap, {"client-id": "capped"}, "producer_byte_rate", RATE)
    assert describe_quotas(proc.bootstrap) == [([("client-id", "capped")], {"producer_byte_rate": float(RATE)})]
    throttles: list[int] = []

    def on_stats(text: str) -> None:
        stats = json.loads(text)
        for b in stats.get("brokers", {}).values():
            if b.get("nodeid", -1) >= 0:
                throttles.append(b["throttle"]["max"])

    producer = Producer({"bootstrap.servers": proc.bootstrap, "client.id": "capped", "linger.ms": 5,
                         "batch.size": 64 * 1024, "statistics.interval.ms": 500, "stats_cb": on_stats,
                         "queue.buffering.max.kbytes": 8192, "acks": 1})
    value = b"x" * 1000
    acked: list[float] = []

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is None:
            acked.append(time.monotonic())

    start = time.monotonic()
    while time.monotonic() - start < 12.5:
        try:
            producer.produce(topic_name, value, on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
    producer.flush(30)
    first = acked[0]
    in_window = sum(1 for t in acked if first <= t < first + 10.0)
    rate = in_window * len(value) / 10.0
    print(f"capped producer: {rate / RATE:.3f} MB/s over 10 s, max throttle {max(throttles, default=0)} ms")
    assert 0.8 * RATE <= rate <= 1.2 * RATE, f"{rate / RATE:.2f} MB/s over 10 s"
    assert max(throttles, default=0) > 0, "the client never saw throttle_time_ms"
    # An uncapped client is not slowed down by it.
    set_quota(proc.bootstrap, {"client-id": "capped"}, "producer_byte_rate", None)
    assert describe_quotas(proc.bootstrap) == []

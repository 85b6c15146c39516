"""Retried produce requests: an idempotent producer leaves no duplicates, a plain one does."""

from __future__ import annotations

from collections import Counter

import pytest
from brokerproc import free_port
from faultproxy import KafkaProxy
from kafkaclients import consume_confluent, create_topic, produce_confluent

PRODUCE = 0


def run_through_flaky_link(broker_factory, topic_name, idempotent: bool):
    broker_port = free_port()
    proxy = KafkaProxy(broker_port, drop_api_key=PRODUCE, probability=0.2, max_drops=15)
    try:
        broker = broker_factory(port=broker_port, advertise=f"127.0.0.1:{proxy.port}")
        bootstrap = f"127.0.0.1:{proxy.port}"
        create_topic(broker.bootstrap, topic_name, 2)
        records = [(f"k{i % 13}".encode(), f"{i:06d}".encode()) for i in range(3000)]
        conf = {"enable.idempotence": idempotent, "acks": "all", "linger.ms": 1, "batch.num.messages": 50,
                "max.in.flight.requests.per.connection": 5, "retry.backoff.ms": 10}
        produce_confluent(bootstrap, topic_name, records, **conf)
        consumed = consume_confluent(broker.bootstrap, topic_name, 2, expected=len(records) * 2, timeout=5)
        return proxy.drops, records, consumed
    finally:
        proxy.close()


def test_idempotent_producer_retries_leave_no_duplicates(broker_factory, topic_name):
    drops, records, consumed = run_through_flaky_link(broker_factory, topic_name, idempotent=True)
    assert drops > 0, "the proxy never dropped a produce response, so nothing was retried"
    counts = Counter(r.value for r in consumed)
    assert [v for v, n in counts.items() if n > 1] == []
    assert sorted(counts) == sorted(v for _, v in records)


@pytest.mark.parametrize("idempotent", [False])
def test_plain_producer_retries_do_duplicate(broker_factory, topic_name, idempotent):
    """The control: the same flaky link without idempotence writes retried batches twice."""
    drops, records, consumed = run_through_flaky_link(broker_factory, topic_name, idempotent=idempotent)
    assert drops > 0
    counts = Counter(r.value for r in consumed)
    assert any(n > 1 for n in counts.values())
    assert set(counts) == {v for _, v in records}

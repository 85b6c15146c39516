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


def _idempotent_batch(producer_id: int, first_seq: int, n: int) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=producer_id,
                                        producer_epoch=0, base_sequence=first_seq, batch_size=1 << 20)
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=f"v{first_seq + i}".encode(), headers=[])
    return bytes(builder.build())


def test_one_request_with_a_producers_consecutive_batches_is_accepted_once(broker, topic_name):
    """Two batches of one idempotent producer for one partition in one Produce request: the second
    follows the first (as Kafka validates them), and the whole request retried lands nowhere twice."""
    import rawclient as rc

    create_topic(broker.bootstrap, topic_name, 1)
    conn = rc.RawConnection(broker.bootstrap)
    try:
        records = _idempotent_batch(4242, 0, 2) + _idempotent_batch(4242, 2, 3)
        first = conn.request(rc.produce(topic_name, records, acks=-1)).responses[0].partition_responses[0]
        assert (first.error_code, first.base_offset) == (0, 0)
        again = conn.request(rc.produce(topic_name, records, acks=-1)).responses[0].partition_responses[0]
        assert (again.error_code, again.base_offset) == (0, 0)
        end = conn.request(rc.list_offsets(topic_name)).topics[0].partitions[0].offset
        assert end == 5
        gap = _idempotent_batch(4242, 5, 1) + _idempotent_batch(4242, 7, 1)
        refused = conn.request(rc.produce(topic_name, gap, acks=-1)).responses[0].partition_responses[0]
        assert refused.error_code == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER: 7 does not follow 5
    finally:
        conn.close()

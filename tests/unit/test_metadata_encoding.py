"""Metadata's spliced encoding (protocol/metadata.py): byte for byte what kafka-python encodes for the
whole response, at every version, and what a client decodes."""

from __future__ import annotations

import uuid

import pytest
from kafka.protocol.metadata import MetadataResponse
from strata_broker.protocol.metadata import _encode_topic, _WithEncodedTopics

R = MetadataResponse
P = R.MetadataResponseTopic.MetadataResponsePartition


def topics(count: int) -> list[MetadataResponse.MetadataResponseTopic]:
    return [R.MetadataResponseTopic(
        error_code=0 if i % 3 else 3, name=f"topic-{i}", topic_id=uuid.UUID(int=i + 1), is_internal=i == 1,
        partitions=[P(error_code=0, partition_index=p, leader_id=7, leader_epoch=p, replica_nodes=[7],
                      isr_nodes=[7], offline_replicas=[]) for p in range(i % 4)]) for i in range(count)]


@pytest.mark.parametrize("version", range(13))
@pytest.mark.parametrize("count", [0, 1, 5, 200])
def test_spliced_topics_encode_like_the_whole_response(version: int, count: int) -> None:
    def response(with_topics: list) -> MetadataResponse:
        r = R(version=version, throttle_time_ms=5, cluster_id="c", controller_id=7, topics=with_topics,
              brokers=[R.MetadataResponseBroker(node_id=7, host="h", port=9092, rack=None)])
        r.with_header(correlation_id=42)
        return r

    expected = response(topics(count)).encode(header=True, framed=True)
    spliced = _WithEncodedTopics(response([]), [_encode_topic(t, version) for t in topics(count)])
    spliced.with_header(correlation_id=42)
    got = spliced.encode(header=True, framed=True)
    assert bytes(got) == bytes(expected)
    decoded = R.decode(bytes(got)[4:], version=version, header=True)
    assert [t.name for t in decoded.topics] == [f"topic-{i}" for i in range(count)]

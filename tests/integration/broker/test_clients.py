"""Every Python-facing Kafka client produces and reads back byte-identical keyed records."""

from __future__ import annotations

import os
import random
from collections import defaultdict

import pytest
from kafkaclients import CONSUMERS, PRODUCERS, Record, create_topic

N_RECORDS = 10_000
N_PARTITIONS = 6


def keyed_records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = f"entity-{rng.randrange(700)}".encode()
        # Compressible, or librdkafka would send the batch uncompressed.
        value = f"{i:08d}|".encode() + b"payload:" * rng.randrange(0, 25) + rng.randbytes(4)
        out.append((key, value))
    return out


def check_round_trip(produced: list[tuple[bytes, bytes]], acked: list[Record], consumed: list[Record]) -> None:
    assert len(acked) == len(produced)
    # Byte-identical: the same multiset of (key, value), nothing lost, nothing extra.
    assert sorted((r.key, r.value) for r in consumed) == sorted(produced)
    # Each key lives in exactly one partition.
    partitions_of_key: dict[bytes | None, set[int]] = defaultdict(set)
    for r in consumed:
        partitions_of_key[r.key].add(r.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    # Per partition, offsets strictly increase and the order is the order of production.
    by_partition: dict[int, list[Record]] = defaultdict(list)
    for r in consumed:
        by_partition[r.partition].append(r)
    sent_order = {value: i for i, (_, value) in enumerate(produced)}
    for records in by_partition.values():
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets))
        sequence = [sent_order[r.value] for r in records]
        assert sequence == sorted(sequence)
    # What the producer was told matches what is stored.
    stored = {(r.partition, r.offset): (r.key, r.value) for r in consumed}
    for r in acked:
        assert stored[(r.partition, r.offset)] == (r.key, r.value)


@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_keyed_round_trip(broker, topic_name, client):
    create_topic(broker.bootstrap, topic_name, N_PARTITIONS)
    produced = keyed_records(N_RECORDS, seed=len(client))
    acked = PRODUCERS[client](broker.bootstrap, topic_name, produced)
    consumed = CONSUMERS[client](broker.bootstrap, topic_name, N_PARTITIONS, expected=N_RECORDS)
    check_round_trip(produced, acked, consumed)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python", "aiokafka"])
def test_compression_round_trip(broker, topic_name, client, codec):
    if client == "aiokafka" and codec == "zstd":
        pytest.importorskip("zstandard")
    create_topic(broker.bootstrap, topic_name, 2)
    produced = keyed_records(500, seed=7)
    conf = {"compression.type": codec} if client == "confluent-kafka" else {"compression_type": codec}
    acked = PRODUCERS[client](broker.bootstrap, topic_name, produced, **conf)
    consumed = CONSUMERS[client](broker.bootstrap, topic_name, 2, expected=len(produced))
    check_round_trip(produced, acked, consumed)
    # Stored verbatim: the batches on disk still carry the producer's codec.
    codec_id = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    seen = set()
    for p in range(2):
        directory = broker.data_dir / f"{topic_name}-{p}"
        for name in os.listdir(directory):
            if name.endswith(".log"):
                seen |= _codecs_in(directory / name)
    if client == "confluent-kafka":
        # librdkafka sends a batch uncompressed when compressing would not shrink it (a small last
        # batch of random values): such a batch is stored uncompressed, as sent.
        assert codec_id in seen and seen <= {codec_id, 0}, seen
    else:
        assert seen == {codec_id}


def _codecs_in(path) -> set[int]:
    import struct

    data = path.read_bytes()
    pos, codecs = 0, set()
    while pos + 61 <= len(data):
        (length,) = struct.unpack_from(">i", data, pos + 8)
        (attributes,) = struct.unpack_from(">h", data, pos + 21)
        codecs.add(attributes & 0x07)
        pos += 12 + length
    return codecs

"""Topic policies on produce (log/produce_checks.py): recompression and the timestamp bounds."""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from strata_broker.config import TOPIC_CONFIGS, parse_topic_config
from strata_broker.errors import ErrorCode, KafkaProtocolError
from strata_broker.log.batch import validate_batches
from strata_broker.log.produce_checks import apply_topic_policies

DEFAULTS = {name: parse_topic_config(name, key.default) for name, key in TOPIC_CONFIGS.items()}
NOW = 1_800_000_000_000


def batch(codec: int, timestamps: list[int], producer: tuple[int, int, int] = (5, 1, 40)) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                        producer_id=producer[0], producer_epoch=producer[1],
                                        base_sequence=producer[2], batch_size=1 << 20)
    for i, ts in enumerate(timestamps):
        builder.append(i, timestamp=ts, key=b"k%d" % i, value=b"value %d " % i * 20, headers=[("h", b"x")])
    return bytes(builder.build())


@pytest.mark.parametrize("source", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("target", ["uncompressed", "gzip", "snappy", "lz4", "zstd"])
def test_recompressed_batches_keep_every_record_and_header_field(source, target) -> None:
    records = batch(source, [NOW, NOW + 1, NOW - 5]) + batch(source, [NOW], producer=(5, 1, 43))
    out = apply_topic_policies({**DEFAULTS, "compression.type": target}, records, NOW)
    headers = validate_batches(out, 1 << 20)  # CRCs and lengths hold
    codec = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[target]
    assert [h.attributes & 7 for h in headers] == [codec, codec]
    before = validate_batches(records, 1 << 20)
    for old, new in zip(before, headers, strict=True):
        assert (new.base_offset, new.leader_epoch, new.last_offset_delta, new.base_timestamp, new.max_timestamp,
                new.producer_id, new.producer_epoch, new.base_sequence, new.record_count) == \
            (old.base_offset, old.leader_epoch, old.last_offset_delta, old.base_timestamp, old.max_timestamp,
             old.producer_id, old.producer_epoch, old.base_sequence, old.record_count)
    if source == codec:
        assert out is records  # nothing to do: the request's bytes as they came
    got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in DefaultRecordBatch(out[:headers[0].length])]
    want = [(r.offset, r.timestamp, r.key, r.value, r.headers)
            for r in DefaultRecordBatch(records[:before[0].length])]
    assert got == want


def test_a_corrupt_batch_is_left_for_the_append_to_refuse() -> None:
    records = bytearray(batch(0, [NOW]))
    records[-1] ^= 0xFF
    out = apply_topic_policies({**DEFAULTS, "compression.type": "zstd"}, bytes(records), NOW)
    assert out == bytes(records)
    with pytest.raises(KafkaProtocolError) as refused:
        validate_batches(out, 1 << 20)
    assert refused.value.code == ErrorCode.CORRUPT_MESSAGE


def test_timestamp_bounds() -> None:
    bounded = {**DEFAULTS, "message.timestamp.before.max.ms": 1000, "message.timestamp.after.max.ms": 1000}
    apply_topic_policies(bounded, batch(0, [NOW - 1000, NOW + 1000]), NOW)
    for timestamps in ([NOW + 1001], [NOW, NOW - 1001], [NOW - 1001, NOW]):
        with pytest.raises(KafkaProtocolError) as refused:
            apply_topic_policies(bounded, batch(3, timestamps), NOW)
        assert refused.value.code == ErrorCode.INVALID_TIMESTAMP
    apply_topic_policies(bounded, batch(0, [-1]), NOW)  # no timestamp: not checked
    apply_topic_policies({**bounded, "message.timestamp.type": "LogAppendTime"}, batch(0, [0]), NOW)

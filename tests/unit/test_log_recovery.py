"""The partition log on its own: crash recovery, torn tails, indexes, producer state across restarts."""

from __future__ import annotations

import os

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from strata_broker.config import BrokerConfig
from strata_broker.errors import ErrorCode, KafkaProtocolError
from strata_broker.log.partition import PartitionLog


def batch(values: list[bytes], ts: int = 1_000, producer: tuple[int, int, int] = (-1, -1, -1)) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=producer[0], producer_epoch=producer[1],
                                        base_sequence=producer[2], batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=ts + i, key=None, value=value, headers=[])
    return bytes(builder.build())


def open_log(path, clean: bool = False, **overrides: str) -> PartitionLog:
    config = BrokerConfig.from_overrides({"segment.bytes": "2048", "index.interval.bytes": "256", **overrides})
    return PartitionLog.open(str(path), "t", 0, config.resolve_topic({}), clean=clean)


def read_values(plog: PartitionLog, start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    offset = start
    while offset < plog.log_end_offset:
        data = plog.read(offset, 1 << 20)
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos + 8:pos + 12], "big") + 12
            for record in DefaultRecordBatch(data[pos:pos + length]):
                if record.offset >= offset:
                    out.append((record.offset, record.value))
            pos += length
        offset = out[-1][0] + 1
    return out


def fill(plog: PartitionLog, n: int) -> None:
    for i in range(n):
        plog.append(batch([f"value-{i:04d}".encode() * 4]))


def test_offsets_indexes_and_segments(tmp_path):
    plog = open_log(tmp_path)
    fill(plog, 200)
    assert plog.log_end_offset == 200
    assert len(plog.segments) > 5
    assert read_values(plog) == [(i, f"value-{i:04d}".encode() * 4) for i in range(200)]
    # Reading from any offset starts at the batch that holds it.
    for offset in (0, 1, 63, 64, 150, 199):
        assert read_values(plog, offset)[0][0] == offset
    with pytest.raises(KafkaProtocolError) as err:
        plog.read(201, 1000)
    assert err.value.code == ErrorCode.OFFSET_OUT_OF_RANGE
    assert plog.read(200, 1000) == b""


def test_clean_restart_keeps_everything(tmp_path):
    plog = open_log(tmp_path)
    fill(plog, 120)
    plog.close()
    again = open_log(tmp_path, clean=True)
    assert again.log_end_offset == 120
    assert read_values(again) == [(i, f"value-{i:04d}".encode() * 4) for i in range(120)]


@pytest.mark.parametrize("damage", ["torn", "garbage", "bad-crc"])
def test_crash_recovery_truncates_a_damaged_tail(tmp_path, damage):
    plog = open_log(tmp_path)
    fill(plog, 100)
    active = plog.active.log_path
    size = os.path.getsize(active)
    last = plog.active.find(99)
    assert last is not None
    last_pos = last[0]
    # The process dies: no close, no clean-shutdown marker. Then the tail is damaged.
    if damage == "torn":
        os.truncate(active, size - 7)
    elif damage == "garbage":
        with open(active, "ab") as f:
            f.write(b"\x00\x00\x00\x00\x00\x00\x00\x63\x00\x00\x01\x00garbage")
    else:
        with open(active, "r+b") as f:
            f.seek(size - 3)
            f.write(b"XYZ")
    recovered = open_log(tmp_path, clean=False)
    expected_end = 99 if damage != "garbage" else 100
    assert recovered.log_end_offset == expected_end
    assert os.path.getsize(active) == (last_pos if damage != "garbage" else size)
    assert read_values(recovered) == [(i, f"value-{i:04d}".encode() * 4) for i in range(expected_end)]
    # Appends continue right after the last good batch.
    result = recovered.append(batch([b"after"]))
    assert result.base_offset == expected_end
    assert read_values(recovered, expected_end) == [(expected_end, b"after")]


def test_recovery_scans_only_the_tail(tmp_path):
    """Segments below the checkpointed recovery point are trusted, not re-read (restart cost stays flat).

    To see that, damage a record *inside* an old segment: a full scan would truncate the log there,
    a tail scan leaves it alone (its CRC is checked by consumers, as in Kafka).
    """
    plog = open_log(tmp_path)
    fill(plog, 200)
    first = plog.segments[0]
    with open(first.log_path, "r+b") as f:
        f.seek(first.size // 2)
        f.write(b"!")
    recovered = open_log(tmp_path, clean=False)
    assert recovered.log_end_offset == 200
    assert len(recovered.segments) == len(plog.segments)


def test_idempotent_state_survives_restart(tmp_path):
    plog = open_log(tmp_path)
    pid = 42
    for seq in range(0, 30, 3):
        plog.append(batch([b"a", b"b", b"c"], producer=(pid, 0, seq)))
    # The retry of the last batch is recognised after a crash and a restart.
    recovered = open_log(tmp_path, clean=False)
    retry = recovered.append(batch([b"a", b"b", b"c"], producer=(pid, 0, 27)))
    assert retry.duplicate and retry.base_offset == 27
    assert recovered.log_end_offset == 30
    with pytest.raises(KafkaProtocolError) as err:
        recovered.append(batch([b"x"], producer=(pid, 0, 31)))
    assert err.value.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    with pytest.raises(KafkaProtocolError) as err:
        recovered.append(batch([b"x"], producer=(pid, -1, 30)))
    assert err.value.code == ErrorCode.INVALID_PRODUCER_EPOCH
    assert recovered.append(batch([b"x"], producer=(pid, 0, 30))).base_offset == 30
    # A bumped epoch starts again at sequence 0.
    assert recovered.append(batch([b"y"], producer=(pid, 1, 0))).base_offset == 31


def test_bad_produce_batches_are_refused_and_nothing_is_written(tmp_path):
    plog = open_log(tmp_path, **{"max.message.bytes": "1000"})
    corrupt = bytearray(batch([b"v"]))
    corrupt[-1] ^= 0xFF
    cases = {
        ErrorCode.CORRUPT_MESSAGE: bytes(corrupt),
        ErrorCode.MESSAGE_TOO_LARGE: batch([b"v" * 5000]),
        ErrorCode.INVALID_RECORD: b"",
    }
    for code, records in cases.items():
        with pytest.raises(KafkaProtocolError) as err:
            plog.append(records)
        assert err.value.code == code
    assert plog.log_end_offset == 0 and plog.active.size == 0

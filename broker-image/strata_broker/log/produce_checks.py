"""Topic policies applied to a produce request's record batches before they are appended.

Kept out of the append itself (partition.py / segment.py): the produce handler calls
`apply_topic_policies` once per partition, and it costs one walk over the batch headers when the
topic asks for nothing (compression.type=producer, the default timestamp bounds).

* message.timestamp.before.max.ms / after.max.ms (Kafka 3.6+, KIP-937): a CreateTime batch with a
  record timestamp more than before.max.ms in the past or after.max.ms in the future is refused
  with INVALID_TIMESTAMP; LogAppendTime topics are not checked (the broker stamps the time). The
  future bound reads the batch's max timestamp; the past bound reads the records' timestamps
  (decoded only on topics that set it: its default is no bound).
* compression.type (a codec, not `producer`): a batch stored with another codec is recompressed
  as Kafka's LogValidator does, its records section decompressed and compressed again with the
  topic's codec at compression.<codec>.level; every header field but the codec bits, the length
  and the CRC stays as the producer sent it (offsets, timestamps, producer id, epoch, sequence).
"""

from __future__ import annotations

import gzip
import struct
from typing import Any

import crc32c
import lz4.frame
import zstandard
from kafka.codec import gzip_decode, lz4_decode, snappy_decode, snappy_encode, zstd_decode
from kafka.record.default_records import DefaultRecordBatch

from ..errors import ErrorCode, KafkaProtocolError
from .batch import ATTR_COMPRESSION_MASK, ATTR_CONTROL, HEADER_SIZE, MAX_CODEC, parse_header

CODECS = {"uncompressed": 0, "none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
NO_LIMIT = 2**63 - 1
_LENGTH = struct.Struct(">i")
_MAX_TIMESTAMP = struct.Struct(">q")  # at byte 35 of a batch


def apply_topic_policies(values: dict[str, Any], records: bytes, now_ms: int) -> bytes:
    """The records to append: checked against the timestamp bounds (KafkaProtocolError
    INVALID_TIMESTAMP), recompressed when the topic's codec differs. Malformed input is returned
    as it is, for the append's validation to refuse."""
    if values["message.timestamp.type"] == "CreateTime":
        _check_timestamps(records, values["message.timestamp.before.max.ms"],
                          values["message.timestamp.after.max.ms"], now_ms)
    target = values["compression.type"]
    if target == "producer":
        return records
    return recompress(records, CODECS[target], values)


def _batches(records: bytes) -> list[tuple[int, int]]:
    """(position, length) of each whole batch, [] as soon as one is malformed."""
    out = []
    pos, total = 0, len(records)
    while pos < total:
        if total - pos < HEADER_SIZE:
            return []
        length = _LENGTH.unpack_from(records, pos + 8)[0] + 12
        if length < HEADER_SIZE or pos + length > total or records[pos + 16] != 2:
            return []
        out.append((pos, length))
        pos += length
    return out


def _check_timestamps(records: bytes, before_ms: int, after_ms: int, now_ms: int) -> None:
    earliest = now_ms - before_ms if before_ms < NO_LIMIT else None
    latest = now_ms + after_ms if after_ms < NO_LIMIT else None
    if earliest is None and latest is None:
        return
    for pos, length in _batches(records):
        max_ts = _MAX_TIMESTAMP.unpack_from(records, pos + 35)[0]
        if latest is not None and max_ts > latest:  # (-1, no timestamp, never is)
            raise KafkaProtocolError(ErrorCode.INVALID_TIMESTAMP,
                                     f"timestamp {max_ts} is more than message.timestamp.after.max.ms "
                                     f"({after_ms}) after the broker's time {now_ms}")
        if earliest is None:
            continue
        # The header bounds the newest record only: the records tell the oldest (read only on
        # topics that set a past bound).
        try:
            oldest = min((r.timestamp for r in DefaultRecordBatch(bytes(records[pos:pos + length]))
                          if r.timestamp != -1), default=-1)
        except Exception:  # noqa: BLE001 - a corrupt batch is the append's to refuse
            continue
        if oldest != -1 and oldest < earliest:  # -1: no timestamp, not checked (as Kafka)
            raise KafkaProtocolError(ErrorCode.INVALID_TIMESTAMP,
                                     f"timestamp {oldest} is more than message.timestamp.before.max.ms "
                                     f"({before_ms}) before the broker's time {now_ms}")


def recompress(records: bytes, codec: int, values: dict[str, Any]) -> bytes:
    """The record set with every batch in `codec` (records returned as they are when every batch
    already is; control batches and corrupt ones are left for the append to judge)."""
    batches = _batches(records)
    if all(records[pos + 22] & ATTR_COMPRESSION_MASK == codec for pos, _ in batches):
        return records
    out = bytearray()
    for pos, length in batches:
        raw = records[pos:pos + length]
        attributes = raw[22]
        if attributes & ATTR_COMPRESSION_MASK == codec or attributes & ATTR_CONTROL:
            out += raw
            continue
        header = parse_header(raw)
        if (attributes & ATTR_COMPRESSION_MASK) > MAX_CODEC or crc32c.crc32c(raw[21:]) != header.crc:
            return records  # refused by the append's validation, with its own error
        out += _recompressed(raw, header.attributes, codec, values)
    return bytes(out)


def _recompressed(raw: bytes, attributes: int, codec: int, values: dict[str, Any]) -> bytes:
    plain = _decompress(attributes & ATTR_COMPRESSION_MASK, raw[HEADER_SIZE:])
    body = _compress(codec, plain, values)
    attributes = (attributes & ~ATTR_COMPRESSION_MASK) | codec
    after_crc = struct.pack(">h", attributes) + raw[23:HEADER_SIZE] + body
    crc = crc32c.crc32c(after_crc)
    return raw[:8] + struct.pack(">i", 4 + 1 + 4 + len(after_crc)) + raw[12:17] + struct.pack(">I", crc) + after_crc


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return gzip_decode(data)
    if codec == 2:
        return snappy_decode(data)
    if codec == 3:
        return lz4_decode(data)
    return zstd_decode(data)


def _compress(codec: int, data: bytes, values: dict[str, Any]) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        level = values["compression.gzip.level"]
        return gzip.compress(data, compresslevel=6 if level == -1 else level)  # -1: zlib's default, 6
    if codec == 2:
        return snappy_encode(data)  # xerial framing, as Kafka's Java clients write it
    if codec == 3:
        return lz4.frame.compress(data, compression_level=values["compression.lz4.level"])
    return zstandard.ZstdCompressor(level=values["compression.zstd.level"]).compress(data)

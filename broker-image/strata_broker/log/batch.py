"""Record batch (magic v2) headers: read, validate and re-base without touching records.

Layout of the 61-byte header (Kafka's DefaultRecordBatch):
  baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 |
  crc uint32 | attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 |
  maxTimestamp int64 | producerId int64 | producerEpoch int16 | baseSequence int32 |
  recordCount int32
The CRC-32C covers everything from attributes to the end of the batch, so the broker
may rewrite baseOffset and partitionLeaderEpoch without recomputing it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import crc32c

from ..errors import ErrorCode, KafkaProtocolError

HEADER_SIZE = 61
# baseOffset + batchLength: the part needed to walk from batch to batch.
LOG_OVERHEAD = 12
_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = struct.Struct(">qi")
_OFFSET = struct.Struct(">q")

ATTR_COMPRESSION_MASK = 0x07
ATTR_LOG_APPEND_TIME = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
# KIP-534: the base timestamp is the delete horizon (set by the cleaner on markers and tombstones).
ATTR_DELETE_HORIZON = 0x40
# Compression codecs 0..4: none, gzip, snappy, lz4, zstd.
MAX_CODEC = 4


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    length: int  # whole batch in bytes, including the 12-byte log overhead
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % (1 << 31)


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    (base, length, epoch, magic, crc, attrs, lod, bts, mts, pid, pep, bseq, count) = _HEADER.unpack_from(
        buf, pos
    )
    return BatchHeader(base, length + LOG_OVERHEAD, epoch, magic, crc, attrs, lod, bts, mts, pid, pep, bseq,
                       count)


def peek_length(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """(base offset, whole batch length) of the batch at pos."""
    base, length = _PREFIX.unpack_from(buf, pos)
    return base, length + LOG_OVERHEAD


def validate_batches(records: bytes | bytearray | memoryview, max_batch_bytes: int,
                     allow_control: bool = False) -> list[BatchHeader]:
    """Parse and check every batch of a produce request's records; raise on the first bad one.
    Control batches (transaction markers) only where the broker wrote them (`allow_control`)."""
    view = memoryview(records)
    total = len(view)
    if total == 0:
        raise KafkaProtocolError(ErrorCode.INVALID_RECORD, "empty record set")
    headers: list[BatchHeader] = []
    pos = 0
    while pos < total:
        if total - pos < HEADER_SIZE:
            raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "truncated record batch header")
        header = parse_header(view, pos)
        if header.magic != 2:
            raise KafkaProtocolError(ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT,
                                     f"record batch magic {header.magic}; only v2 is accepted")
        if header.length < HEADER_SIZE or pos + header.length > total:
            raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "record batch length out of bounds")
        if header.length > max_batch_bytes:
            raise KafkaProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                     f"batch of {header.length} bytes > max.message.bytes {max_batch_bytes}")
        if header.record_count <= 0 or header.last_offset_delta != header.record_count - 1:
            raise KafkaProtocolError(ErrorCode.INVALID_RECORD, "record count and offset delta disagree")
        if (header.attributes & ATTR_COMPRESSION_MASK) > MAX_CODEC:
            raise KafkaProtocolError(ErrorCode.UNSUPPORTED_COMPRESSION_TYPE, "unknown compression codec")
        if header.is_control and not allow_control:
            raise KafkaProtocolError(ErrorCode.INVALID_RECORD, "clients may not write control batches")
        if crc32c.crc32c(view[pos + 21 : pos + header.length]) != header.crc:
            raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "record batch CRC-32C mismatch")
        headers.append(header)
        pos += header.length
    return headers


def stamp_log_append_time(batch: bytes | bytearray | memoryview, header: BatchHeader,
                          now_ms: int) -> tuple[bytes, BatchHeader]:
    """message.timestamp.type=LogAppendTime, as Kafka does it: the batch's timestamp type becomes
    LogAppendTime and its max timestamp the append time (every record then reads as that time), with
    the CRC-32C recomputed. Returns bytes 8..43 of the batch as rewritten (length through max
    timestamp; the rest of the batch is unchanged) and the batch's new header."""
    attributes = header.attributes | ATTR_LOG_APPEND_TIME
    view = memoryview(batch)
    middle = struct.pack(">hiqq", attributes, header.last_offset_delta, header.base_timestamp, now_ms)
    crc = crc32c.crc32c(view[43:header.length], crc32c.crc32c(middle))
    prefix = bytes(view[8:17]) + struct.pack(">I", crc) + middle
    return prefix, replace(header, attributes=attributes, max_timestamp=now_ms, crc=crc)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """(zig-zag decoded value, position after it)."""
    shift = raw = 0
    while True:
        byte = view[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return (raw >> 1) ^ -(raw & 1), pos


def set_delete_horizon(batch: bytes, header: BatchHeader, horizon_ms: int) -> bytes:
    """An uncompressed batch (a transaction marker) with its delete horizon set as Kafka's cleaner
    sets it (KIP-534): the attribute bit 0x40, the horizon as the base timestamp, every record's
    timestamp delta re-based on it (record timestamps unchanged), the CRC-32C recomputed."""
    view = memoryview(batch)
    records = bytearray()
    pos = HEADER_SIZE
    for _ in range(header.record_count):
        length, body = _read_varint(view, pos)
        end = body + length
        delta, after = _read_varint(view, body + 1)  # attributes (one byte), then the timestamp delta
        new_delta = _varint(delta + header.base_timestamp - horizon_ms)
        new_body = bytes(view[body:body + 1]) + new_delta + bytes(view[after:end])
        records += _varint(len(new_body)) + new_body
        pos = end
    attributes = header.attributes | ATTR_DELETE_HORIZON
    after_crc = struct.pack(">hiqqqhii", attributes, header.last_offset_delta, horizon_ms, header.max_timestamp,
                            header.producer_id, header.producer_epoch, header.base_sequence,
                            header.record_count) + bytes(records)
    crc = crc32c.crc32c(after_crc)
    return struct.pack(">qiibI", header.base_offset, 4 + 1 + 4 + len(after_crc), header.leader_epoch, 2,
                       crc) + after_crc


def batch_is_intact(buf: bytes | bytearray | memoryview, pos: int, end: int) -> BatchHeader | None:
    """The header of the batch at pos if it is complete and its CRC matches, else None (torn tail)."""
    if end - pos < HEADER_SIZE:
        return None
    header = parse_header(buf, pos)
    if header.magic != 2 or header.length < HEADER_SIZE or pos + header.length > end:
        return None
    if crc32c.crc32c(memoryview(buf)[pos + 21 : pos + header.length]) != header.crc:
        return None
    return header


def set_base_offset(batch: bytearray, pos: int, base_offset: int) -> None:
    _OFFSET.pack_into(batch, pos, base_offset)


# ---- control batches (transaction markers) --------------------------------------------------

CONTROL_ABORT = 0
CONTROL_COMMIT = 1
_CONTROL_KEY = struct.Struct(">hh")  # version 0, type (0 abort, 1 commit)
_CONTROL_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch


def _varint(value: int) -> bytes:
    """A zig-zag varint, as records encode their lengths and deltas."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value & ~0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def build_control_batch(producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
                        timestamp_ms: int) -> bytes:
    """A transaction marker as Kafka writes it: one control record (key: version 0 and type 0 abort
    / 1 commit; value: version 0 and the coordinator epoch) in a batch with the control and
    transactional attribute bits, the producer's id and epoch, and no sequence. Base offset 0:
    the log assigns the real one."""
    key = _CONTROL_KEY.pack(0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    value = _CONTROL_VALUE.pack(0, coordinator_epoch)
    body = (b"\x00" + _varint(0) + _varint(0) + _varint(len(key)) + key + _varint(len(value)) + value
            + _varint(0))
    record = _varint(len(body)) + body
    attributes = ATTR_TRANSACTIONAL | ATTR_CONTROL
    after_crc = struct.pack(">hiqqqhii", attributes, 0, timestamp_ms, timestamp_ms, producer_id, producer_epoch,
                            -1, 1) + record
    crc = crc32c.crc32c(after_crc)
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, then the rest
    return struct.pack(">qiibI", 0, batch_length, -1, 2, crc) + after_crc


def control_type(batch: bytes | bytearray | memoryview) -> int | None:
    """The type of a control batch's record (CONTROL_ABORT or CONTROL_COMMIT), None if unreadable."""
    record = control_record(batch)
    return None if record is None else record[0]


def control_record(batch: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(type, coordinator epoch) of a transaction marker's record: the key's type (CONTROL_ABORT or
    CONTROL_COMMIT) and the value's coordinator epoch (-1 if the record has no value); None if
    unreadable."""
    view = memoryview(batch)
    pos = HEADER_SIZE
    try:
        for _ in range(4):  # record length, attributes (1 byte, not a varint), timestamp delta, offset delta
            if _ == 1:
                pos += 1
                continue
            while view[pos] & 0x80:
                pos += 1
            pos += 1
        key_length, pos = _read_varint(view, pos)
        _, kind = _CONTROL_KEY.unpack_from(view, pos)
        pos += max(0, key_length)
        value_length, pos = _read_varint(view, pos)
        if value_length < _CONTROL_VALUE.size:
            return int(kind), -1
        _, coordinator_epoch = _CONTROL_VALUE.unpack_from(view, pos)
    except (IndexError, struct.error):
        return None
    return int(kind), int(coordinator_epoch)


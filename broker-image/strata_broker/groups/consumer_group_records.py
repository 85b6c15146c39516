"""Kafka's consumer-group records in `__consumer_offsets` (KIP-848): encoding, decoding, replay.

A consumer group's state is kept as Kafka's group coordinator writes it, one record per key, the
newest value winning (so compaction keeps exactly the current state) and a null value (tombstone)
deleting a key. Record types (the key's first int16), key fields, value:

- 3 (group): ConsumerGroupMetadataValue, the group epoch;
- 4 (group): ConsumerGroupPartitionMetadataValue, each subscribed topic's id, name and partition count;
- 5 (group, member): ConsumerGroupMemberMetadataValue, instance and rack ids, client id and host,
  subscription (topic names or regex), rebalance timeout, server assignor;
- 6 (group): ConsumerGroupTargetAssignmentMetadataValue, the assignment epoch;
- 7 (group, member): ConsumerGroupTargetAssignmentMemberValue, the member's target partitions;
- 8 (group, member): ConsumerGroupCurrentMemberAssignmentValue, member epoch, previous epoch, state
  (Kafka's MemberState byte), assigned partitions and partitions pending revocation.

A key is the record type as an int16 followed by its fields as classic (non-flexible) strings; a
value is an int16 version (0) followed by the flexible encoding (compact strings and arrays, UUIDs
as 16 bytes, an empty tagged-field section), byte for byte what Kafka 4.x's
`MessageUtil.toCoordinatorTypePrefixedBytes` / `toVersionPrefixedBytes` produce. Partitions are
named by topic id, as in Kafka. Tagged fields Kafka may add (e.g. the metadata hash of
ConsumerGroupMetadataValue) are skipped when read.

Offset-commit keys (types 0 and 1) are offsets.py's; classic-group metadata (type 2) is not
written by Strata and skipped when read.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

GROUP_METADATA = 3
PARTITION_METADATA = 4
MEMBER_METADATA = 5
TARGET_ASSIGNMENT_METADATA = 6
TARGET_ASSIGNMENT_MEMBER = 7
CURRENT_MEMBER_ASSIGNMENT = 8
CONSUMER_GROUP_TYPES = frozenset(range(GROUP_METADATA, CURRENT_MEMBER_ASSIGNMENT + 1))
_MEMBER_TYPES = frozenset((MEMBER_METADATA, TARGET_ASSIGNMENT_MEMBER, CURRENT_MEMBER_ASSIGNMENT))

# Kafka's MemberState byte values (ConsumerGroupCurrentMemberAssignmentValue.State).
STATE_STABLE = 0
STATE_UNREVOKED_PARTITIONS = 1
STATE_UNRELEASED_PARTITIONS = 2

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I8 = struct.Struct(">b")

TopicIdPartitions = list[tuple[uuid.UUID, list[int]]]


# ---- primitives --------------------------------------------------------------------------


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _compact_string(out: bytearray, value: str | None) -> None:
    if value is None:
        out.append(0)
        return
    raw = value.encode("utf-8")
    _varint(out, len(raw) + 1)
    out += raw


def _topic_partitions(out: bytearray, parts: TopicIdPartitions) -> None:
    _varint(out, len(parts) + 1)
    for topic_id, partitions in parts:
        out += topic_id.bytes
        _varint(out, len(partitions) + 1)
        for p in partitions:
            out += _I32.pack(p)
        out.append(0)  # tagged fields


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def varint(self) -> int:
        shift = value = 0
        while True:
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 28:
                raise ValueError("varint too long")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise IndexError("record truncated")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def i8(self) -> int:
        return int(_I8.unpack(self.take(1))[0])

    def i16(self) -> int:
        return int(_I16.unpack(self.take(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self.take(4))[0])

    def string(self) -> str:
        """A classic (int16-length) string, as in keys."""
        length = self.i16()
        if length < 0:
            raise ValueError("null string in a key")
        return self.take(length).decode("utf-8")

    def compact_string(self) -> str | None:
        length = self.varint() - 1
        return None if length < 0 else self.take(length).decode("utf-8")

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def array_length(self) -> int:
        return max(self.varint() - 1, 0)

    def tagged_fields(self) -> None:
        for _ in range(self.varint()):
            self.varint()  # tag
            self.take(self.varint())

    def topic_partitions(self) -> TopicIdPartitions:
        out = []
        for _ in range(self.array_length()):
            topic_id = self.uuid()
            partitions = [self.i32() for _ in range(self.array_length())]
            self.tagged_fields()
            out.append((topic_id, partitions))
        return out


def _value(fill: bytearray) -> bytes:
    """Version 0, the fields, then the top-level (empty) tagged fields."""
    return _I16.pack(0) + bytes(fill) + b"\x00"


# ---- keys --------------------------------------------------------------------------------


def encode_key(record_type: int, group_id: str, member_id: str | None = None) -> bytes:
    out = bytearray(_I16.pack(record_type))
    for text in (group_id,) if member_id is None else (group_id, member_id):
        raw = text.encode("utf-8")
        out += _I16.pack(len(raw))
        out += raw
    return bytes(out)


def decode_key(buf: bytes) -> tuple[int, str, str | None] | None:
    """(record type, group id, member id or None) of a consumer-group key; None for other types."""
    reader = _Reader(buf)
    record_type = reader.i16()
    if record_type not in CONSUMER_GROUP_TYPES:
        return None
    group_id = reader.string()
    member_id = reader.string() if record_type in _MEMBER_TYPES else None
    return record_type, group_id, member_id


# ---- values ------------------------------------------------------------------------------


@dataclass
class MemberMetadata:
    """ConsumerGroupMemberMetadataValue."""

    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topics: list[str] = field(default_factory=list)
    subscribed_regex: str | None = None
    rebalance_timeout_ms: int = -1
    server_assignor: str | None = None


@dataclass
class CurrentAssignment:
    """ConsumerGroupCurrentMemberAssignmentValue."""

    member_epoch: int = 0
    previous_member_epoch: int = -1
    state: int = STATE_STABLE
    assigned: TopicIdPartitions = field(default_factory=list)
    pending_revocation: TopicIdPartitions = field(default_factory=list)


def encode_epoch(epoch: int) -> bytes:
    """ConsumerGroupMetadataValue (group epoch) or ConsumerGroupTargetAssignmentMetadataValue
    (assignment epoch): the same layout, one int32."""
    return _value(bytearray(_I32.pack(epoch)))


def decode_epoch(buf: bytes) -> int:
    reader = _Reader(buf, 2)
    return reader.i32()


def encode_partition_metadata(topics: list[tuple[uuid.UUID, str, int]]) -> bytes:
    """ConsumerGroupPartitionMetadataValue: (topic id, name, partition count) of each subscribed
    topic, with no rack information (an empty PartitionMetadata list each)."""
    out = bytearray()
    _varint(out, len(topics) + 1)
    for topic_id, name, partitions in topics:
        out += topic_id.bytes
        _compact_string(out, name)
        out += _I32.pack(partitions)
        out.append(1)  # PartitionMetadata: empty
        out.append(0)  # tagged fields
    return _value(out)


def decode_partition_metadata(buf: bytes) -> list[tuple[uuid.UUID, str, int]]:
    reader = _Reader(buf, 2)
    out = []
    for _ in range(reader.array_length()):
        topic_id = reader.uuid()
        name = reader.compact_string() or ""
        partitions = reader.i32()
        for _ in range(reader.array_length()):  # rack information, not used
            reader.i32()
            for _ in range(reader.array_length()):
                reader.compact_string()
            reader.tagged_fields()
        reader.tagged_fields()
        out.append((topic_id, name, partitions))
    return out


def encode_member_metadata(m: MemberMetadata) -> bytes:
    out = bytearray()
    _compact_string(out, m.instance_id)
    _compact_string(out, m.rack_id)
    _compact_string(out, m.client_id)
    _compact_string(out, m.client_host)
    _varint(out, len(m.subscribed_topics) + 1)
    for name in m.subscribed_topics:
        _compact_string(out, name)
    _compact_string(out, m.subscribed_regex)
    out += _I32.pack(m.rebalance_timeout_ms)
    _compact_string(out, m.server_assignor)
    return _value(out)


def decode_member_metadata(buf: bytes) -> MemberMetadata:
    reader = _Reader(buf, 2)
    m = MemberMetadata()
    m.instance_id = reader.compact_string()
    m.rack_id = reader.compact_string()
    m.client_id = reader.compact_string() or ""
    m.client_host = reader.compact_string() or ""
    m.subscribed_topics = [reader.compact_string() or "" for _ in range(reader.array_length())]
    m.subscribed_regex = reader.compact_string()
    m.rebalance_timeout_ms = reader.i32()
    m.server_assignor = reader.compact_string()
    reader.tagged_fields()  # ClassicMemberMetadata (tag 0) is for classic members: not used
    return m


def encode_target_member(parts: TopicIdPartitions) -> bytes:
    """ConsumerGroupTargetAssignmentMemberValue."""
    out = bytearray()
    _topic_partitions(out, parts)
    return _value(out)


def decode_target_member(buf: bytes) -> TopicIdPartitions:
    return _Reader(buf, 2).topic_partitions()


def encode_current_assignment(a: CurrentAssignment) -> bytes:
    out = bytearray(_I32.pack(a.member_epoch))
    out += _I32.pack(a.previous_member_epoch)
    out += _I8.pack(a.state)
    _topic_partitions(out, a.assigned)
    _topic_partitions(out, a.pending_revocation)
    return _value(out)


def decode_current_assignment(buf: bytes) -> CurrentAssignment:
    reader = _Reader(buf, 2)
    return CurrentAssignment(reader.i32(), reader.i32(), reader.i8(), reader.topic_partitions(),
                             reader.topic_partitions())


# ---- replay ------------------------------------------------------------------------------


@dataclass
class StoredGroup:
    """A consumer group's records as replayed from the log (the newest value per key), decoded
    when the load is over."""

    group_id: str
    records: dict[bytes, bytes] = field(default_factory=dict)  # key -> value

    def decoded(self) -> tuple[int | None, int | None, list[tuple[uuid.UUID, str, int]],
                               dict[str, dict[int, object]]]:
        """(group epoch, assignment epoch, partition metadata, {member id: {record type: value}})."""
        group_epoch = assignment_epoch = None
        topics: list[tuple[uuid.UUID, str, int]] = []
        members: dict[str, dict[int, object]] = {}
        for key, value in self.records.items():
            parsed = decode_key(key)
            if parsed is None:
                continue
            record_type, _, member_id = parsed
            if record_type == GROUP_METADATA:
                group_epoch = decode_epoch(value)
            elif record_type == TARGET_ASSIGNMENT_METADATA:
                assignment_epoch = decode_epoch(value)
            elif record_type == PARTITION_METADATA:
                topics = decode_partition_metadata(value)
            elif member_id is not None:
                decoded: object
                if record_type == MEMBER_METADATA:
                    decoded = decode_member_metadata(value)
                elif record_type == TARGET_ASSIGNMENT_MEMBER:
                    decoded = decode_target_member(value)
                else:
                    decoded = decode_current_assignment(value)
                members.setdefault(member_id, {})[record_type] = decoded
        return group_epoch, assignment_epoch, topics, members

"""Pure functions of the group coordinator: offsets record layout, group placement, protocol choice."""

from __future__ import annotations

from strata_broker.groups.group import Group, Member
from strata_broker.groups.offsets import (
    CommittedOffset,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
    java_string_hash,
    partition_for,
)


def test_java_string_hash_matches_kafka() -> None:
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("") == 0
    # Negative Java hashes are masked, as Kafka's Utils.abs does.
    assert java_string_hash("polygenelubricants") == 0x80000000
    assert partition_for("polygenelubricants", 50) == 0
    assert 0 <= partition_for("my-group", 50) < 50


def test_offset_record_roundtrip() -> None:
    key = encode_key("g", "orders", 3)
    assert key == b"\x00\x01\x00\x01g\x00\x06orders\x00\x00\x00\x03"
    assert decode_key(key) == ("g", "orders", 3)
    entry = CommittedOffset(42, 7, "meta", 1700000000000)
    assert decode_value(encode_value(entry)) == entry
    assert decode_value(encode_value(CommittedOffset(1, -1, None, 5))) == CommittedOffset(1, -1, None, 5)
    assert decode_key(b"\x00\x02\x00\x01g") is None  # group metadata keys are skipped


def _member(member_id: str, *protocols: str) -> Member:
    return Member(member_id, None, "c", "/h", 6000, 6000, "consumer", [(p, b"") for p in protocols])


def test_protocol_selection_by_vote() -> None:
    group = Group("g")
    group.add_member(_member("a", "cooperative-sticky", "range"))
    group.add_member(_member("b", "range", "cooperative-sticky"))
    group.add_member(_member("c", "range", "roundrobin"))
    assert group.candidate_protocols() == {"range"}
    assert group.select_protocol() == "range"
    assert not group.supports("consumer", [("roundrobin", b"")])
    assert group.supports("consumer", [("roundrobin", b""), ("range", b"")])
    assert not group.supports("connect", [("range", b"")])

"""Consumer-group (KIP-848) records in __consumer_offsets: Kafka's bytes, and the state they rebuild.

The expected bytes were produced by Apache Kafka 4.4.0's own generated message classes
(`MessageUtil.toCoordinatorTypePrefixedBytes` for keys, `toVersionPrefixedBytes((short) 0, ...)` for
values), so Strata's records are what Kafka writes and reads. The coordinator tests run the real
GroupCoordinator over a real log directory (no broker process), reopened as after a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from strata_broker.config import BrokerConfig
from strata_broker.groups import GroupCoordinator
from strata_broker.groups import consumer_group_records as rec
from strata_broker.groups.consumer_group import MemberHeartbeat, MemberState
from strata_broker.log.manager import LogManager
from strata_broker.replica import ReplicaManager, SingleBroker

TOPIC_ID = uuid.UUID(bytes=bytes(range(1, 17)))

# (what, Strata's bytes, Kafka 4.4.0's bytes for the same fields)
GOLDEN = [
    ("ConsumerGroupMetadataKey", rec.encode_key(rec.GROUP_METADATA, "grp"), "00030003677270"),
    ("ConsumerGroupMetadataValue", rec.encode_epoch(7), "00000000000700"),
    ("ConsumerGroupPartitionMetadataKey", rec.encode_key(rec.PARTITION_METADATA, "grp"), "00040003677270"),
    ("ConsumerGroupPartitionMetadataValue", rec.encode_partition_metadata([(TOPIC_ID, "orders", 3)]),
     "0000020102030405060708090a0b0c0d0e0f10076f726465727300000003010000"),
    ("ConsumerGroupMemberMetadataKey", rec.encode_key(rec.MEMBER_METADATA, "grp", "m1"), "0005000367727000026d31"),
    ("ConsumerGroupMemberMetadataValue", rec.encode_member_metadata(rec.MemberMetadata(
        None, "r1", "c1", "/127.0.0.1", ["orders", "pay"], None, 30000, "uniform")),
     "0000000372310363310b2f3132372e302e302e3103076f726465727304706179000000753008756e69666f726d00"),
    ("ConsumerGroupMemberMetadataValue (static, regex)", rec.encode_member_metadata(rec.MemberMetadata(
        "i1", None, "", "", [], "ord.*", -1, None)), "000003693100010101066f72642e2affffffff0000"),
    ("ConsumerGroupTargetAssignmentMetadataKey", rec.encode_key(rec.TARGET_ASSIGNMENT_METADATA, "grp"),
     "00060003677270"),
    ("ConsumerGroupTargetAssignmentMemberKey", rec.encode_key(rec.TARGET_ASSIGNMENT_MEMBER, "grp", "m1"),
     "0007000367727000026d31"),
    ("ConsumerGroupTargetAssignmentMemberValue", rec.encode_target_member([(TOPIC_ID, [0, 2])]),
     "0000020102030405060708090a0b0c0d0e0f100300000000000000020000"),
    ("ConsumerGroupCurrentMemberAssignmentKey", rec.encode_key(rec.CURRENT_MEMBER_ASSIGNMENT, "grp", "m1"),
     "0008000367727000026d31"),
    ("ConsumerGroupCurrentMemberAssignmentValue", rec.encode_current_assignment(rec.CurrentAssignment(
        7, 6, rec.STATE_UNREVOKED_PARTITIONS, [(TOPIC_ID, [0])], [(TOPIC_ID, [2])])),
     "0000000000070000000601020102030405060708090a0b0c0d0e0f10020000000000020102030405060708090a0b0c0d0e0f10"
     "02000000020000"),
]


def test_records_are_kafkas_bytes_and_decode_back() -> None:
    for what, ours, kafkas in GOLDEN:
        assert ours.hex() == kafkas, what
    assert rec.decode_key(bytes.fromhex("0005000367727000026d31")) == (rec.MEMBER_METADATA, "grp", "m1")
    assert rec.decode_key(bytes.fromhex("00030003677270")) == (rec.GROUP_METADATA, "grp", None)
    assert rec.decode_key(rec.encode_key(2, "grp")) is None  # classic-group metadata: not ours
    member = rec.MemberMetadata("i1", "r", "c", "h", ["a", "b"], None, 45000, "range")
    assert rec.decode_member_metadata(rec.encode_member_metadata(member)) == member
    current = rec.CurrentAssignment(5, 4, rec.STATE_UNRELEASED_PARTITIONS, [(TOPIC_ID, [1, 3])], [])
    assert rec.decode_current_assignment(rec.encode_current_assignment(current)) == current
    assert rec.decode_target_member(rec.encode_target_member([(TOPIC_ID, [0, 2])])) == [(TOPIC_ID, [0, 2])]
    assert rec.decode_partition_metadata(rec.encode_partition_metadata([(TOPIC_ID, "t", 3)])) == [(TOPIC_ID, "t", 3)]
    # Written by Kafka with tagged fields set (the 4.1+ metadata hash; a classic member's metadata): skipped.
    assert rec.decode_epoch(bytes.fromhex("0000000000070100081122334455667788")) == 7
    # (Kafka's defaults for the fields not set are empty strings, not null.)
    assert rec.decode_member_metadata(bytes.fromhex("0000010102630268020274010000000501010007010000000a0100")) == \
        rec.MemberMetadata("", "", "c", "h", ["t"], "", 5, "")


# ---- the coordinator over a real log directory ------------------------------------------------

SESSION_MS = 10_000


class Clock:
    def __init__(self) -> None:
        self.mono = 1_000.0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return 1_700_000_000.0 + self.mono


def opened(data_dir: Path, clock: Clock) -> tuple[LogManager, GroupCoordinator]:
    config = BrokerConfig.from_overrides({"offsets.topic.num.partitions": "3",
                                          "group.consumer.session.timeout.ms": str(SESSION_MS)})
    logs = LogManager(str(data_dir), config)
    logs.open()
    if "orders" not in logs.topics:
        logs.create_topic("orders", 4, {})
    groups = GroupCoordinator(config, logs, ReplicaManager(logs, SingleBroker(0), None), monotonic=clock.monotonic,
                              wall=clock.wall)
    asyncio.run(groups.load_all())
    return logs, groups


def beat(groups: GroupCoordinator, member: str, epoch: int, owned: dict[str, set[int]] | None = None,
         join: bool = False, instance: str | None = None):  # type: ignore[no-untyped-def]
    req = MemberHeartbeat("g", member, epoch, instance_id=instance, rebalance_timeout_ms=60_000 if join else -1,
                          subscribed_topics=["orders"] if join else None, owned={} if join else owned,
                          client_id=f"client-{member}")
    result = asyncio.run(groups.consumer_heartbeat(req, 1))
    assert result.error == 0, result
    return result


def snapshot(groups: GroupCoordinator) -> object:
    group = groups.consumer.groups["g"]
    return (group.group_epoch, group.assignment_epoch, group.assignor, group.static_members, group.target,
            group.owners, group.topic_meta, [(m.member_id, m.instance_id, m.client_id, m.subscribed_topics, m.epoch,
                                              m.previous_epoch, m.state, m.assigned, m.pending_revocation,
                                              m.rebalance_timeout_ms) for m in group.members.values()])


def test_reopened_coordinator_has_the_same_group_mid_rebalance(tmp_path: Path) -> None:
    clock = Clock()
    logs, groups = opened(tmp_path, clock)
    assert beat(groups, "a", 0, join=True).assignment == {"orders": {0, 1, 2, 3}}
    beat(groups, "b", 0, join=True, instance="static-b")
    a = beat(groups, "a", 1, owned={"orders": {0, 1, 2, 3}})  # asked to give two partitions up
    member_a = groups.consumer.groups["g"].members["a"]
    assert member_a.state is MemberState.UNREVOKED_PARTITIONS and a.assignment is not None
    before = snapshot(groups)
    logs.close()

    logs, groups = opened(tmp_path, clock)
    assert snapshot(groups) == before
    # The members go on where they were: a revokes, b gets the partitions a released.
    a = beat(groups, "a", 1, owned=a.assignment)
    assert a.member_epoch == 2 and groups.consumer.groups["g"].members["a"].state is MemberState.STABLE
    b = beat(groups, "b", 2, owned={})
    members = groups.consumer.groups["g"].members
    assert b.assignment == members["b"].assigned and len(members["b"].assigned["orders"]) == 2
    assert sorted(members["a"].assigned["orders"] | members["b"].assigned["orders"]) == [0, 1, 2, 3]
    # A member that does not heartbeat within the session after the load is removed, and that is
    # written too (tombstones): after the next reopen only b is left.
    clock.mono += SESSION_MS / 1000 - 1
    beat(groups, "b", b.member_epoch, owned=groups.consumer.groups["g"].members["b"].assigned)
    clock.mono += 2
    asyncio.run(groups.tick())
    assert list(groups.consumer.groups["g"].members) == ["b"]
    before = snapshot(groups)
    logs.close()

    logs, groups = opened(tmp_path, clock)
    assert snapshot(groups) == before
    # b leaves: the group is gone (no offsets), every key tombstoned.
    asyncio.run(groups.consumer_heartbeat(MemberHeartbeat("g", "b", -1, instance_id="static-b"), 1))
    assert "g" not in groups.consumer.groups
    logs.close()

    logs, groups = opened(tmp_path, clock)
    assert "g" not in groups.consumer.groups and groups.list_consumer_groups() == []
    logs.close()

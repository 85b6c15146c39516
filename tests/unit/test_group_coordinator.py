"""The group coordinator in process: its state machine and committed offsets, with a fake clock.

No broker process and no sockets: a real LogManager in a temporary directory, the replica layer
of a single broker, and the GroupCoordinator with both of its clocks driven by the test (`tick()`
is called by hand, as the broker does every group.coordinator.tick.ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription
from strata_broker.config import BrokerConfig
from strata_broker.groups import GroupCoordinator
from strata_broker.groups.group import E, GroupState, JoinResult
from strata_broker.groups.offsets import CommittedOffset
from strata_broker.log.manager import LogManager
from strata_broker.replica import ReplicaManager, SingleBroker

SESSION_MS = 10_000
REBALANCE_MS = 30_000
TOPIC = "orders"


class FakeClock:
    """Both clocks of the coordinator; only `advance` moves them."""

    def __init__(self) -> None:
        self.mono = 1_000.0
        self.epoch = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.epoch

    def wall_ms(self) -> int:
        return int(self.epoch * 1000)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.epoch += seconds


class Env:
    """A log directory with the `orders` topic (2 partitions) and coordinators built over it."""

    def __init__(self, data_dir: Path, overrides: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.config = BrokerConfig.from_overrides({"offsets.topic.num.partitions": "3", **overrides})
        self.clock = FakeClock()
        self.logs: LogManager | None = None

    def open(self) -> GroupCoordinator:
        """(Re)open the log directory and build a fresh coordinator on it."""
        if self.logs is not None:
            self.logs.close()
        self.logs = LogManager(str(self.data_dir), self.config)
        self.logs.open()
        if TOPIC not in self.logs.topics:
            self.logs.create_topic(TOPIC, 2, {})
        replicas = ReplicaManager(self.logs, SingleBroker(0), None)
        return GroupCoordinator(self.config, self.logs, replicas, monotonic=self.clock.monotonic,
                                wall=self.clock.wall)

    def close(self) -> None:
        if self.logs is not None:
            self.logs.close()
            self.logs = None


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    envs: list[Env] = []

    def make(**overrides: str) -> Env:
        env = Env(tmp_path / f"data{len(envs)}", {k.replace("_", "."): v for k, v in overrides.items()})
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run one scenario. Time is the fake clock's, so a scenario takes about 0.01-0.1 s of real
    time (the fsyncs of its commits); the bound only catches one that waits on real time."""
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(scenario, 30))
    assert time.monotonic() - started < 5.0


def subscription(*topics: str) -> bytes:
    return bytes(ConsumerProtocolSubscription(version=0, topics=list(topics), user_data=None).encode())


PROTOCOLS = [("range", subscription(TOPIC))]


def join(groups: GroupCoordinator, member_id: str = "", instance_id: str | None = None,
         group_id: str = "g", require_known_member: bool = False) -> Awaitable[JoinResult]:
    return groups.join_group(group_id, member_id, instance_id, "consumer", PROTOCOLS, SESSION_MS, REBALANCE_MS,
                             "client", "/127.0.0.1", require_known_member)


async def settle() -> None:
    """Let parked requests run up to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def stable_group(groups: GroupCoordinator, count: int, group_id: str = "g",
                       instance_ids: list[str | None] | None = None) -> list[str]:
    """`count` members joined and synced; returns their member ids, the leader first."""
    instance_ids = instance_ids or [None] * count
    first = await join(groups, instance_id=instance_ids[0], group_id=group_id)
    assert first.error == E.NONE
    ids = [first.member_id]
    for i in range(1, count):
        # The newcomer starts the rebalance; the members it finds join again.
        pending = [asyncio.ensure_future(join(groups, instance_id=instance_ids[i], group_id=group_id))]
        await settle()
        pending += [asyncio.ensure_future(join(groups, m, group_id=group_id, instance_id=instance_ids[n]))
                    for n, m in enumerate(ids)]
        results = await asyncio.gather(*pending)
        assert all(r.error == E.NONE for r in results)
        ids.append(results[0].member_id)
    group = groups.describe_group(group_id)
    assert group is not None and group.is_(GroupState.COMPLETING_REBALANCE)
    leader = group.leader_id
    assert leader is not None
    generation = group.generation_id
    syncs = [asyncio.ensure_future(groups.sync_group(group_id, generation, m, instance_ids[ids.index(m)], None,
                                                     None, [(x, x.encode()) for x in ids] if m == leader else []))
             for m in ids]
    assert [s.error for s in await asyncio.gather(*syncs)] == [E.NONE] * count
    assert group.is_(GroupState.STABLE)
    return [leader] + [m for m in ids if m != leader]


# ---- membership ------------------------------------------------------------------------------


def test_empty_preparing_completing_stable(make_env) -> None:
    env = make_env(group_initial_rebalance_delay_ms="3000")

    async def scenario() -> None:
        groups = env.open()
        joining = asyncio.ensure_future(join(groups))
        await settle()
        group = groups.describe_group("g")
        assert group is not None and group.is_(GroupState.PREPARING_REBALANCE)
        assert group.generation_id == 0
        # The initial delay waits for more members: nothing happens before it has passed.
        env.clock.advance(2.9)
        await groups.tick()
        await settle()
        assert group.is_(GroupState.PREPARING_REBALANCE) and not joining.done()
        env.clock.advance(0.2)
        await groups.tick()
        result = await joining
        assert result.error == E.NONE and result.generation_id == 1
        assert result.leader == result.member_id and result.protocol_name == "range"
        assert [m[0] for m in result.members] == [result.member_id]  # the leader gets the subscriptions
        assert group.is_(GroupState.COMPLETING_REBALANCE)
        assert groups.heartbeat("g", 1, result.member_id, None) == E.NONE
        synced = await groups.sync_group("g", 1, result.member_id, None, "consumer", "range",
                                         [(result.member_id, b"assignment")])
        assert (synced.error, synced.assignment) == (E.NONE, b"assignment")
        assert group.is_(GroupState.STABLE)
        assert [g.group_id for g in groups.list_groups()] == ["g"]

    run(scenario())


def test_second_member_joining_rebalances(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        [first] = await stable_group(groups, 1)
        group = groups.describe_group("g")
        assert group is not None and group.generation_id == 1
        second = asyncio.ensure_future(join(groups))
        await settle()
        assert group.is_(GroupState.PREPARING_REBALANCE) and not second.done()
        # The first member learns of the rebalance from its heartbeat and joins again.
        assert groups.heartbeat("g", 1, first, None) == E.REBALANCE_IN_PROGRESS
        rejoined = await join(groups, first)
        joined = await second
        assert rejoined.generation_id == joined.generation_id == 2
        assert rejoined.leader == joined.leader == first
        assert sorted(m[0] for m in rejoined.members) == sorted([first, joined.member_id])
        assert joined.members == []  # followers do not get the subscriptions
        follower_sync = asyncio.ensure_future(groups.sync_group("g", 2, joined.member_id, None, None, None, []))
        await settle()
        assert not follower_sync.done()  # parked until the leader sends the assignment
        leader_sync = await groups.sync_group("g", 2, first, None, None, None,
                                              [(first, b"p0"), (joined.member_id, b"p1")])
        assert leader_sync.assignment == b"p0" and (await follower_sync).assignment == b"p1"
        assert group.is_(GroupState.STABLE)

    run(scenario())


def test_member_that_stops_heartbeating_is_removed_after_its_session(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        alive, silent = await stable_group(groups, 2)
        group = groups.describe_group("g")
        assert group is not None and group.generation_id == 2
        # `alive` heartbeats every 4 s; `silent` never does again.
        for _ in range(2):
            env.clock.advance(4)
            assert groups.heartbeat("g", 2, alive, None) == E.NONE
            await groups.tick()
            assert silent in group.members and group.is_(GroupState.STABLE)
        env.clock.advance(2.5)  # 10.5 s since `silent` last showed a sign of life
        await groups.tick()
        assert silent not in group.members
        assert group.is_(GroupState.PREPARING_REBALANCE)
        assert groups.heartbeat("g", 2, alive, None) == E.REBALANCE_IN_PROGRESS
        rejoined = await join(groups, alive)
        assert (rejoined.error, rejoined.generation_id, rejoined.leader) == (E.NONE, 3, alive)
        assert [m[0] for m in rejoined.members] == [alive]
        assert groups.heartbeat("g", 3, silent, None) == E.UNKNOWN_MEMBER_ID
        synced = await groups.sync_group("g", 3, alive, None, None, None, [(alive, b"everything")])
        assert synced.assignment == b"everything" and group.is_(GroupState.STABLE)

    run(scenario())


def test_rebalance_timeout_removes_a_member_that_does_not_rejoin(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        leader, laggard = await stable_group(groups, 2)
        group = groups.describe_group("g")
        assert group is not None
        newcomer = asyncio.ensure_future(join(groups))
        await settle()
        assert group.is_(GroupState.PREPARING_REBALANCE)
        leader_rejoin = asyncio.ensure_future(join(groups, leader))
        # `laggard` keeps its session alive with heartbeats but never joins again.
        for _ in range(7):
            env.clock.advance(4)
            assert groups.heartbeat("g", group.generation_id, laggard, None) == E.REBALANCE_IN_PROGRESS
            await groups.tick()
            await settle()
            assert not newcomer.done() and laggard in group.members
        env.clock.advance(2.5)  # 30.5 s: past the rebalance timeout
        await groups.tick()
        joined, rejoined = await newcomer, await leader_rejoin
        assert laggard not in group.members
        assert joined.generation_id == rejoined.generation_id == 3
        assert sorted(m[0] for m in rejoined.members) == sorted([leader, joined.member_id])
        assert group.is_(GroupState.COMPLETING_REBALANCE)
        assert groups.heartbeat("g", 3, laggard, None) == E.UNKNOWN_MEMBER_ID

    run(scenario())


def test_pending_member_id_expires(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        # KIP-394: the first JoinGroup only hands out a member id.
        first = await join(groups, require_known_member=True)
        assert first.error == E.MEMBER_ID_REQUIRED and first.member_id
        group = groups.describe_group("g")
        assert group is not None and first.member_id in group.pending_members
        env.clock.advance(SESSION_MS / 1000 + 0.1)
        await groups.tick()
        assert group.pending_members == {}
        late = await join(groups, first.member_id, require_known_member=True)
        assert late.error == E.UNKNOWN_MEMBER_ID

    run(scenario())


def test_static_membership_fences_the_old_instance(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        leader, old = await stable_group(groups, 2, instance_ids=["i-0", "i-1"])
        group = groups.describe_group("g")
        assert group is not None and group.generation_id == 2
        # The same instance restarts: a new member id, its assignment kept, no rebalance (KIP-345).
        restarted = await join(groups, instance_id="i-1")
        assert restarted.error == E.NONE and restarted.member_id != old
        assert restarted.generation_id == 2 and group.is_(GroupState.STABLE)
        assert group.static_members["i-1"] == restarted.member_id
        assert groups.heartbeat("g", 2, old, "i-1") == E.FENCED_INSTANCE_ID
        assert (await groups.sync_group("g", 2, old, "i-1", None, None, [])).error == E.FENCED_INSTANCE_ID
        assert (await join(groups, old, instance_id="i-1")).error == E.FENCED_INSTANCE_ID
        committed = await groups.commit_offsets("g", 2, old, "i-1",
                                                {(TOPIC, 0): CommittedOffset(1, -1, "", env.clock.wall_ms())})
        assert committed == {(TOPIC, 0): E.FENCED_INSTANCE_ID}
        assert groups.leave_group("g", [(old, "i-1")]) == (E.NONE, [E.FENCED_INSTANCE_ID])
        assert groups.heartbeat("g", 2, restarted.member_id, "i-1") == E.NONE
        synced = await groups.sync_group("g", 2, restarted.member_id, "i-1", None, None, [])
        assert (synced.error, synced.assignment) == (E.NONE, old.encode())
        assert groups.heartbeat("g", 2, leader, "i-0") == E.NONE

    run(scenario())


def test_wrong_generation_is_illegal(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        [member] = await stable_group(groups, 1)
        assert (await groups.sync_group("g", 7, member, None, None, None, [])).error == E.ILLEGAL_GENERATION
        assert groups.heartbeat("g", 0, member, None) == E.ILLEGAL_GENERATION
        assert (await groups.sync_group("g", 1, "stranger", None, None, None, [])).error == E.UNKNOWN_MEMBER_ID
        assert (await groups.sync_group("g", 1, member, None, "consumer", "roundrobin", [])).error \
            == E.INCONSISTENT_GROUP_PROTOCOL
        committed = await groups.commit_offsets("g", 5, member, None,
                                                {(TOPIC, 0): CommittedOffset(3, -1, "", env.clock.wall_ms())})
        assert committed == {(TOPIC, 0): E.ILLEGAL_GENERATION}
        assert (await groups.sync_group("g", 1, member, None, None, None, [])).error == E.NONE

    run(scenario())


def test_leave_group(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        leader, follower = await stable_group(groups, 2)
        group = groups.describe_group("g")
        assert group is not None
        assert groups.leave_group("g", [(follower, None), ("stranger", None)]) == \
            (E.NONE, [E.NONE, E.UNKNOWN_MEMBER_ID])
        assert follower not in group.members and group.is_(GroupState.PREPARING_REBALANCE)
        rejoined = await join(groups, leader)
        assert (rejoined.generation_id, [m[0] for m in rejoined.members]) == (3, [leader])
        # The last member leaving empties the group; with nothing committed it is forgotten.
        assert groups.leave_group("g", [(leader, None)]) == (E.NONE, [E.NONE])
        assert group.is_(GroupState.DEAD)
        assert groups.describe_group("g") is None and groups.list_groups() == []
        assert groups.leave_group("g", [(leader, None)]) == (E.NONE, [E.UNKNOWN_MEMBER_ID])

    run(scenario())


# ---- offsets -------------------------------------------------------------------------------


def test_commit_fetch_delete_offsets(make_env) -> None:
    env = make_env(offset_metadata_max_bytes="16")

    async def scenario() -> None:
        groups = env.open()
        now = env.clock.wall_ms()
        # A consumer that assigns partitions itself commits with no generation.
        results = await groups.commit_offsets("g", -1, "", None, {
            (TOPIC, 0): CommittedOffset(10, 3, "ok", now),
            (TOPIC, 1): CommittedOffset(20, -1, "m" * 17, now),
            (TOPIC, 2): CommittedOffset(30, -1, None, now),
            ("missing", 0): CommittedOffset(40, -1, None, now)})
        assert results == {(TOPIC, 0): E.NONE, (TOPIC, 1): E.OFFSET_METADATA_TOO_LARGE,
                           (TOPIC, 2): E.UNKNOWN_TOPIC_OR_PARTITION, ("missing", 0): E.UNKNOWN_TOPIC_OR_PARTITION}
        assert groups.fetch_offsets("g", None) == {(TOPIC, 0): CommittedOffset(10, 3, "ok", now)}
        assert groups.fetch_offsets("g", [(TOPIC, 0), (TOPIC, 1)]) == \
            {(TOPIC, 0): CommittedOffset(10, 3, "ok", now), (TOPIC, 1): None}
        group = groups.describe_group("g")
        assert group is not None and group.is_(GroupState.EMPTY)
        # The commit went through the log: __consumer_offsets exists and holds one record.
        assert env.logs is not None
        assert sum(p.log_end_offset for p in env.logs.topics["__consumer_offsets"].partitions) == 1

        deleted = await groups.delete_offsets("g", [(TOPIC, 0), (TOPIC, 1), (TOPIC, 9)])
        assert deleted == (E.NONE, {(TOPIC, 0): E.NONE, (TOPIC, 1): E.NONE, (TOPIC, 9): E.UNKNOWN_TOPIC_OR_PARTITION})
        assert groups.fetch_offsets("g", None) == {}
        # An Empty group with nothing committed is forgotten.
        assert groups.describe_group("g") is None
        assert await groups.delete_offsets("g", [(TOPIC, 0)]) == (E.GROUP_ID_NOT_FOUND, {})
        assert (await groups.commit_offsets("other", 1, "m", None, {(TOPIC, 0): CommittedOffset(1, -1, "", now)})
                ) == {(TOPIC, 0): E.ILLEGAL_GENERATION}

    run(scenario())


def test_offsets_of_a_member_and_of_subscribed_topics(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        [member] = await stable_group(groups, 1)
        now = env.clock.wall_ms()
        assert await groups.commit_offsets("g", 1, member, None, {(TOPIC, 1): CommittedOffset(5, 0, "", now)}) \
            == {(TOPIC, 1): E.NONE}
        assert await groups.commit_offsets("g", 1, "stranger", None, {(TOPIC, 1): CommittedOffset(6, 0, "", now)}) \
            == {(TOPIC, 1): E.UNKNOWN_MEMBER_ID}
        # The group's members subscribe to `orders`: its offsets may not be deleted under them.
        assert await groups.delete_offsets("g", [(TOPIC, 1)]) == (E.NONE, {(TOPIC, 1): E.GROUP_SUBSCRIBED_TO_TOPIC})
        assert await groups.delete_group("g") == E.NON_EMPTY_GROUP
        assert groups.fetch_offsets("g", [(TOPIC, 1)]) == {(TOPIC, 1): CommittedOffset(5, 0, "", now)}
        # During CompletingRebalance a commit must wait for the new assignment.
        second = asyncio.ensure_future(join(groups))
        await settle()
        await join(groups, member)
        await second
        assert await groups.commit_offsets("g", 2, member, None, {(TOPIC, 1): CommittedOffset(7, 0, "", now)}) \
            == {(TOPIC, 1): E.REBALANCE_IN_PROGRESS}
        # Once everyone has left, the group can be deleted, offsets and all.
        assert groups.leave_group("g", [(member, None), (second.result().member_id, None)])[1] == [E.NONE, E.NONE]
        group = groups.describe_group("g")
        assert group is not None and group.is_(GroupState.EMPTY)  # kept: it has offsets
        assert await groups.delete_group("g") == E.NONE
        assert groups.describe_group("g") is None and groups.fetch_offsets("g", None) == {}
        assert await groups.delete_group("g") == E.GROUP_ID_NOT_FOUND

    run(scenario())


def test_offsets_survive_a_restart(make_env) -> None:
    env = make_env()

    async def scenario() -> None:
        groups = env.open()
        now = env.clock.wall_ms()
        await groups.commit_offsets("a", -1, "", None, {(TOPIC, 0): CommittedOffset(11, 1, "x", now),
                                                        (TOPIC, 1): CommittedOffset(12, 1, None, now)})
        await groups.commit_offsets("b", -1, "", None, {(TOPIC, 0): CommittedOffset(21, -1, "", now)})
        await groups.commit_offsets("a", -1, "", None, {(TOPIC, 0): CommittedOffset(13, 2, "y", now + 1)})
        await groups.delete_offsets("a", [(TOPIC, 1)])
        groups.stop()

        restarted = env.open()  # a new LogManager and coordinator on the same directory
        assert restarted.fetch_offsets("a", None) == {}
        await restarted.load_all()
        assert restarted.fetch_offsets("a", None) == {(TOPIC, 0): CommittedOffset(13, 2, "y", now + 1)}
        assert restarted.fetch_offsets("b", None) == {(TOPIC, 0): CommittedOffset(21, -1, "", now)}
        assert sorted((g.group_id, g.state) for g in restarted.list_groups()) == \
            [("a", GroupState.EMPTY), ("b", GroupState.EMPTY)]
        # A group loaded from the log takes members as usual.
        [member] = await stable_group(restarted, 1, group_id="b")
        assert member

    run(scenario())


def test_offsets_retention_expires_an_empty_group(make_env) -> None:
    env = make_env(offsets_retention_minutes="1")

    async def scenario() -> None:
        groups = env.open()
        t0 = env.clock.wall_ms()
        await groups.commit_offsets("idle", -1, "", None, {(TOPIC, 0): CommittedOffset(1, -1, "", t0)})
        # A group with members keeps its offsets however old they are.
        [member] = await stable_group(groups, 1, group_id="busy")
        await groups.commit_offsets("busy", 1, member, None, {(TOPIC, 0): CommittedOffset(9, -1, "", t0)})
        env.clock.advance(30)
        await groups.commit_offsets("idle", -1, "", None, {(TOPIC, 1): CommittedOffset(2, -1, "", t0 + 30_000)})
        for _ in range(3):  # 59 s
            env.clock.advance(29 / 3)
            assert groups.heartbeat("busy", 1, member, None) == E.NONE
            await groups.tick()
        assert set(groups.fetch_offsets("idle", None)) == {(TOPIC, 0), (TOPIC, 1)}
        env.clock.advance(2)  # 61 s: the group has been Empty a minute; only the first offset is that old
        assert groups.heartbeat("busy", 1, member, None) == E.NONE
        await groups.tick()
        assert set(groups.fetch_offsets("idle", None)) == {(TOPIC, 1)}
        assert groups.describe_group("idle") is not None
        env.clock.advance(30)  # 91 s: the second one too, and the group is forgotten
        assert groups.heartbeat("busy", 1, member, None) == E.NONE
        await groups.tick()
        assert groups.fetch_offsets("idle", None) == {}
        assert groups.describe_group("idle") is None
        assert groups.fetch_offsets("busy", None) == {(TOPIC, 0): CommittedOffset(9, -1, "", t0)}
        # The expiry was written to the log as tombstones: a restart does not bring the offsets back.
        restarted = env.open()
        await restarted.load_all()
        assert restarted.fetch_offsets("idle", None) == {}
        assert [g.group_id for g in restarted.list_groups()] == ["busy"]

    run(scenario())

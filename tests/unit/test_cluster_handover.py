"""The cluster's hand-over of partitions, in process: real LogManagers and TierManagers in temp
dirs, sharing one in-memory bucket (tests/support/memstore.py), each broker on its own fake clock
(tests/support/fakeclock.py) that the test moves, so lease periods pass without waiting for them.

What is covered: taking a partition nobody held, one the previous leader sealed, one whose
previous leader vanished (after a lease period, not before, and with what it committed to the S3
commit log replayed), a stale leader fenced by the conditional manifest write, the seal on
release, acknowledgements stopping when the lease cannot be renewed, placement changes turning
into releases and acquisitions, the hand-over of a tail written before a restart, a clean stop,
and the state machine's transition table and the follower's decisions and reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakeclock import FakeClock
from memstore import MemStore
from rawclient import record_batch
from strata_broker.cluster.follower import Held, Move, PlacementFollower, decide, deleted_topics
from strata_broker.cluster.handover import (
    ALLOWED,
    IllegalTransition,
    PartitionHandover,
    State,
    local_leader_epoch,
)
from strata_broker.cluster.member import ClusterMember
from strata_broker.config import BrokerConfig
from strata_broker.errors import ErrorCode, KafkaProtocolError
from strata_broker.log.manager import LogManager
from strata_broker.log.partition import PartitionLog
from strata_broker.security.listeners import build_listeners
from strata_broker.tier.manager import TierManager
from strata_contract.layout import manifest_key, member_key, partition_root
from strata_contract.lease import MemberLease
from strata_contract.manifest import RemoteManifest
from strata_contract.placement import Assignment, BrokerAddress, Placement, TopicPlacement, write_placement

LEASE_MS = 3000
LEASE_S = LEASE_MS / 1000
CLUSTER = "unit"
TOPIC = "orders"
TOPIC_ID = str(uuid.uuid4())
S = State


class Coordinator:
    """Stands in for the group coordinator: records the offsets partitions it is handed."""

    def __init__(self) -> None:
        self.acquired: list[int] = []
        self.released: list[int] = []

    async def partition_acquired(self, plog: PartitionLog) -> None:
        self.acquired.append(plog.partition)

    def partition_released(self, partition: int) -> None:
        self.released.append(partition)


class Node:
    """One broker's storage and cluster side, in process."""

    def __init__(self, root: Path, node_id: int, store: MemStore, placement_file: Path,
                 clock: FakeClock | None = None) -> None:
        config = BrokerConfig.from_overrides({"tiered.s3.bucket": "mem", "cluster.id": CLUSTER,
                                              "tiered.download.process": "false"})
        self.node_id = node_id
        self.data_dir = str(root / f"broker-{node_id}")
        self.logs = LogManager(self.data_dir, config, RemoteManifest.from_json)
        self.tier = TierManager(config, self.data_dir, node_id, store=store)
        self.logs.open()
        self.tier.attach(self.logs)
        self.clock = clock or FakeClock()
        listeners = build_listeners(config, [f"127.0.0.1:{19092 + node_id}"], [])
        self.member = ClusterMember(node_id, self.logs, self.tier, listeners, {}, str(placement_file), LEASE_MS,
                                    clock=self.clock)
        self.logs.listener = self.member
        self.coordinator = Coordinator()

    async def start(self) -> Node:
        await self.member.start(self.coordinator)
        return self

    def handover(self, partition: int = 0) -> PartitionHandover | None:
        return self.member.handovers.get((TOPIC, partition))

    def plog(self, partition: int = 0) -> PartitionLog:
        return self.logs.topics[TOPIC].partitions[partition]

    def pause(self) -> None:
        """Stop this broker's loops (a process frozen, or gone) without any hand-over."""
        for task in self.member._tasks:
            task.cancel()

    async def close(self) -> None:
        self.pause()
        for handover in list(self.member.handovers.table.values()):
            handover.cancel()
        if self.member.shared is not None:
            self.member.shared.stop()
        await asyncio.sleep(0)
        self.logs.close()
        await self.tier.close()


def place(path: Path, version: int, leaders: list[tuple[int, int]], brokers: tuple[int, ...] = (0, 1)) -> None:
    """Publish a placement of TOPIC: (leader, epoch) per partition."""
    write_placement(str(path), Placement(
        version, tuple(BrokerAddress(b, "127.0.0.1", 19092 + b) for b in brokers),
        {TOPIC: TopicPlacement(TOPIC_ID, tuple(Assignment(leader, epoch) for leader, epoch in leaders))}))


def manifest_in(store: MemStore, partition: int = 0) -> RemoteManifest:
    raw = store.objects[manifest_key(partition_root("", CLUSTER, TOPIC, uuid.UUID(TOPIC_ID), partition))].body
    return RemoteManifest.from_json(raw)


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Let the event loop run (real time, briefly) until condition holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every task that can run without time passing run."""
    for _ in range(30):
        await asyncio.sleep(0)


async def advance(seconds: float, *clocks: FakeClock, step: float = 0.1) -> None:
    """Move the clocks on together in steps, letting the loops run at each one."""
    moved = 0.0
    while moved < seconds - 1e-9:
        delta = min(step, seconds - moved)
        for clock in clocks:
            clock.advance(delta)
        moved += delta
        await settle()


async def advance_until(condition: Callable[[], object], what: str, *clocks: FakeClock, limit: float,
                        step: float = 0.05) -> float:
    """Move the clocks on in steps until condition holds, at most `limit` fake seconds (and a few
    real ones: uploads read files on threads); returns the fake time it took."""
    moved = 0.0
    deadline = time.monotonic() + 5.0
    while not condition():
        if moved > limit or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {moved:.2f} fake seconds")
        for clock in clocks:
            clock.advance(step)
        moved += step
        await settle()
        await asyncio.sleep(0.001)
    return moved


def append(plog: PartitionLog, n: int) -> None:
    plog.append(record_batch(n))


def assert_refused(node: Node, partition: int = 0) -> None:
    with pytest.raises(KafkaProtocolError) as refused:
        node.member.check_leader(TOPIC, partition)
    assert refused.value.code == ErrorCode.NOT_LEADER_OR_FOLLOWER


@pytest.fixture
def store() -> MemStore:
    return MemStore()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The brokers' data dirs: on tmpfs where there is one, so the logs' fsyncs cost nothing
    (these tests time hand-overs, not the disk), else under tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="handover-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def placement_file(root: Path) -> Path:
    return root / "placement.json"


async def leading_node(root: Path, store: MemStore, placement_file: Path, records: int = 0,
                       partitions: int = 1) -> Node:
    """Broker 0, leading every partition of TOPIC at epoch 1, with `records` appended to partition 0."""
    place(placement_file, 1, [(0, 1)] * partitions)
    node = await Node(root, 0, store, placement_file).start()
    await until(lambda: all(node.member.leads(TOPIC, p) for p in range(partitions)), "broker 0 leading")
    if records:
        append(node.plog(), records)
    return node


# ---- acquiring ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_acquire_a_partition_nobody_held(root: Path, store: MemStore, placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file)
    try:
        handover = node.handover()
        assert handover is not None
        assert list(handover.history) == [S.IDLE, S.ACQUIRING, S.CLAIMING, S.LEADING]
        assert node.clock.now() == 1000.0  # nothing to wait for: no time had to pass
        manifest = manifest_in(store)
        assert (manifest.leader_epoch, manifest.leader_id, manifest.sealed) == (1, 0, False)
        node.member.check_leader(TOPIC, 0)
        assert node.member.may_ack(TOPIC, 0, 1)
        assert not node.member.may_ack(TOPIC, 0, 0)
        assert local_leader_epoch(node.plog()) == 1
        lease = MemberLease.from_json(store.objects[member_key("", CLUSTER, 0)].body)
        assert lease.id == 0 and lease.renewals >= 1 and lease.port == 19092
    finally:
        await node.close()


@pytest.mark.asyncio
async def test_acquire_after_the_previous_leader_sealed(
        root: Path, store: MemStore,
                                                        placement_file: Path) -> None:
    old = await leading_node(root, store, placement_file, records=3)
    new = None
    try:
        released = old.handover()
        place(placement_file, 2, [(1, 2)])
        await advance(0.2, old.clock)  # broker 0's next look at the placement
        await until(lambda: released is not None and released.state is S.RELEASED, "broker 0's release")
        assert released is not None and released.sealed
        assert manifest_in(store).sealed and manifest_in(store).end_offset == 3

        new = await Node(root, 1, store, placement_file).start()
        await until(lambda: new.member.leads(TOPIC, 0), "broker 1 leading")
        assert new.clock.now() == 1000.0  # sealed: taken at once, no lease period waited out
        handover = new.handover()
        assert handover is not None and list(handover.history) == [S.IDLE, S.ACQUIRING, S.CLAIMING, S.LEADING]
        manifest = manifest_in(store)
        assert (manifest.leader_epoch, manifest.leader_id, manifest.sealed) == (2, 1, False)
        assert new.plog().log_end_offset == 3  # laid out from the manifest: the data stays in S3
        assert new.member.may_ack(TOPIC, 0, 2)
        assert not old.member.leads(TOPIC, 0)
        assert_refused(old)
        assert old.plog().log_end_offset == 0  # broker 0's copy is gone
    finally:
        await old.close()
        if new is not None:
            await new.close()


@pytest.mark.asyncio
async def test_acquire_after_the_previous_leader_vanished_waits_one_lease_period(
        root: Path, store: MemStore, placement_file: Path) -> None:
    old = await leading_node(root, store, placement_file, records=2)
    old.pause()  # gone: no seal, no more renewals
    place(placement_file, 2, [(1, 2)])
    new = await Node(root, 1, store, placement_file).start()
    try:
        handover = new.handover()
        assert handover is not None and handover.state is S.ACQUIRING
        await advance(LEASE_S - 0.3, new.clock)
        assert handover.state is S.ACQUIRING  # the old leader may still be acknowledging
        assert not new.member.leads(TOPIC, 0)
        assert manifest_in(store).leader_epoch == 1
        await advance(0.4, new.clock)
        await until(lambda: new.member.leads(TOPIC, 0), "broker 1 leading after a lease period")
        assert list(handover.history) == [S.IDLE, S.ACQUIRING, S.CLAIMING, S.LEADING]
        manifest = manifest_in(store)
        assert (manifest.leader_epoch, manifest.leader_id, manifest.sealed) == (2, 1, False)
    finally:
        await old.close()
        await new.close()


@pytest.mark.asyncio
async def test_what_the_vanished_leader_committed_to_the_s3_commit_log_is_replayed(
        root: Path, store: MemStore, placement_file: Path) -> None:
    """strata.durability=s3: batches acknowledged after their commit-log write, never uploaded as
    segments, are in the new leader's log once it leads."""
    old = await leading_node(root, store, placement_file)
    plog = old.plog()
    for n in (2, 3):
        result = plog.append(record_batch(n))
        await asyncio.wait_for(old.tier.commit(plog, result), 5)
        assert old.member.may_ack(TOPIC, 0, plog.leader_epoch)
    assert manifest_in(store).end_offset == 0  # nothing uploaded as a segment
    old.pause()
    place(placement_file, 2, [(1, 2)])
    new = await Node(root, 1, store, placement_file).start()
    try:
        await advance(LEASE_S + 0.2, new.clock)
        await until(lambda: new.member.leads(TOPIC, 0), "broker 1 leading")
        assert new.plog().log_end_offset == 5
        assert new.plog().leader_epoch == 2
    finally:
        await old.close()
        await new.close()


@pytest.mark.asyncio
async def test_a_renewing_previous_leader_is_waited_for_until_the_cap_and_is_then_fenced(
        root: Path, store: MemStore) -> None:
    """Broker 0 keeps renewing its lease but never sees the move (its placement is stale, as a
    mounted ConfigMap can be). Broker 1 waits for a seal while that lease keeps changing, claims
    after the cap, and broker 0's next conditional manifest write fails: it is fenced."""
    stale, fresh = root / "stale.json", root / "fresh.json"
    old = await leading_node(root, store, stale)
    place(fresh, 2, [(1, 2)])
    new = await Node(root, 1, store, fresh).start()
    try:
        handover = new.handover()
        assert handover is not None
        await advance(30.0, old.clock, new.clock, step=0.5)
        assert handover.state is S.ACQUIRING  # the lease still changes: the old leader is alive
        assert old.member.leads(TOPIC, 0) and old.member.may_ack(TOPIC, 0, 1)
        await advance(31.0, old.clock, new.clock, step=0.5)  # past max(60 s, 3 leases)
        await until(lambda: new.member.leads(TOPIC, 0), "broker 1 leading after the cap")
        assert manifest_in(store).leader_epoch == 2

        # Broker 0 still believes it leads; its next manifest write (an upload) is refused.
        old_handover = old.handover()
        assert old_handover is not None and old_handover.state is S.LEADING
        plog = old.plog()
        append(plog, 4)
        plog.roll()
        await old.tier.upload_partition(old.logs.topics[TOPIC], plog)
        assert plog.fenced
        assert not old.member.may_ack(TOPIC, 0, 1)
        assert not old.member.leads(TOPIC, 0)
        assert old_handover.state is S.FENCED
        assert_refused(old)
        manifest = manifest_in(store)
        assert (manifest.leader_epoch, manifest.leader_id, manifest.end_offset) == (2, 1, 0)
        assert new.member.leads(TOPIC, 0) and new.member.may_ack(TOPIC, 0, 2)

        # Told at last, broker 0 lets go without touching the bucket.
        place(stale, 3, [(1, 2)])
        await advance(0.2, old.clock)
        await until(lambda: old_handover.state is S.RELEASED, "broker 0 letting go")
        assert not old_handover.sealed
        assert list(old_handover.history)[-3:] == [S.FENCED, S.RELEASING, S.RELEASED]
        assert manifest_in(store).leader_epoch == 2 and not manifest_in(store).sealed
    finally:
        await old.close()
        await new.close()


@pytest.mark.asyncio
async def test_a_stale_claim_is_fenced_when_the_bucket_has_a_newer_epoch(
        root: Path, store: MemStore, placement_file: Path) -> None:
    old = await leading_node(root, store, placement_file)
    old.pause()
    # Broker 1 follows a placement older than the claim already in the bucket.
    late = root / "late.json"
    place(late, 1, [(1, 0)])
    new = await Node(root, 1, store, late).start()
    try:
        handover = new.handover()
        await until(lambda: handover is not None and handover.state is S.FENCED, "broker 1 standing back")
        assert handover is not None and list(handover.history) == [S.IDLE, S.ACQUIRING, S.FENCED]
        assert not new.member.leads(TOPIC, 0)
        assert manifest_in(store).leader_id == 0
    finally:
        await old.close()
        await new.close()


# ---- releasing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_release_uploads_the_tail_and_seals_the_manifest(
        root: Path, store: MemStore,
                                                               placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file, records=5)
    try:
        handover = node.handover()
        assert handover is not None
        assert manifest_in(store).end_offset == 0  # all of it only on the local disk so far
        place(placement_file, 2, [(1, 2)])
        await advance(0.2, node.clock)
        await until(lambda: handover.state is S.RELEASED, "the release")
        assert list(handover.history)[-3:] == [S.LEADING, S.RELEASING, S.RELEASED]
        manifest = manifest_in(store)
        assert manifest.sealed and manifest.end_offset == 5
        assert (manifest.leader_epoch, manifest.leader_id) == (1, 0)  # sealed at the epoch it held
        assert handover.sealed
        assert (TOPIC, 0) in node.tier.commit_log.handed_over
        assert node.member.handovers.get((TOPIC, 0)) is None
        assert node.plog().log_end_offset == 0
        assert_refused(node)
    finally:
        await node.close()


@pytest.mark.asyncio
async def test_lease_renewal_failure_stops_acknowledgements_after_the_lease(
        root: Path, store: MemStore, placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file)
    try:
        member = node.member
        store.refuse(member_key("", CLUSTER, 0))
        last_good = member.lease.valid_until - LEASE_S  # when the last successful renewal started
        failures = store.failures
        await advance(last_good + LEASE_S - node.clock.now() - 0.05, node.clock)
        assert store.failures > failures  # renewals were tried and failed
        assert member.may_ack(TOPIC, 0, 1) and member.leads(TOPIC, 0)  # still within the lease
        await advance(0.1, node.clock)
        assert node.clock.now() >= last_good + LEASE_S
        assert not member.may_ack(TOPIC, 0, 1)
        assert not member.leads(TOPIC, 0)
        assert_refused(node)
        handover = node.handover()
        assert handover is not None and handover.state is S.LEADING  # nothing moved: only the lease lapsed

        store.restore()
        await advance(LEASE_S / 3, node.clock)
        assert member.may_ack(TOPIC, 0, 1) and member.leads(TOPIC, 0)
    finally:
        await node.close()


# ---- following the placement ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_placement_changes_turn_into_releases_and_acquisitions(
        root: Path, store: MemStore,
                                                                     placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file, partitions=3)
    append(node.plog(1), 2)
    other = None
    try:
        moved, kept, bumped = node.handover(0), node.handover(1), node.handover(2)
        assert moved is not None and kept is not None and bumped is not None
        # Partition 0 moves to broker 1; 1 stays; 2 stays with broker 0 at a newer epoch.
        place(placement_file, 2, [(1, 2), (0, 1), (0, 2)])
        await advance(0.2, node.clock)
        await until(lambda: moved.state is S.RELEASED and bumped.state is S.LEADING and bumped.epoch == 2,
                    "the placement followed")
        assert moved.sealed
        assert kept.state is S.LEADING and list(kept.history) == [S.IDLE, S.ACQUIRING, S.CLAIMING, S.LEADING]
        assert node.plog(1).log_end_offset == 2  # untouched
        assert list(bumped.history)[-4:] == [S.LEADING, S.ACQUIRING, S.CLAIMING, S.LEADING]
        assert manifest_in(store, 2).leader_epoch == 2 and node.member.may_ack(TOPIC, 2, 2)
        assert not node.member.may_ack(TOPIC, 2, 1)  # a write appended at the old epoch is not acknowledged

        other = await Node(root, 1, store, placement_file).start()
        await until(lambda: other.member.leads(TOPIC, 0), "broker 1 leading partition 0")
        assert [p for p in range(3) if other.member.leads(TOPIC, p)] == [0]
        assert [p for p in range(3) if node.member.leads(TOPIC, p)] == [1, 2]

        # Partition 0 comes back, and broker 0 takes it again from broker 1's seal.
        place(placement_file, 3, [(0, 3), (0, 1), (0, 2)])
        took = await advance_until(lambda: node.member.leads(TOPIC, 0) and not other.member.leads(TOPIC, 0),
                                   "partition 0 back", node.clock, other.clock, limit=LEASE_S / 2)
        assert took < LEASE_S / 2  # sealed by broker 1: no lease period waited out
        assert manifest_in(store).leader_epoch == 3 and not manifest_in(store).sealed

        # The topic leaves the placement: it was deleted.
        write_placement(str(placement_file), Placement(4, (BrokerAddress(0, "127.0.0.1", 19092),), {}))
        await advance(0.2, node.clock)
        await until(lambda: TOPIC not in node.logs.topics, "the topic gone")
        assert not node.member.handovers.table
    finally:
        await node.close()
        if other is not None:
            await other.close()


@pytest.mark.asyncio
async def test_a_tail_written_before_a_restart_is_sealed_for_the_new_leader(
        root: Path, store: MemStore, placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file, records=3)
    await node.close()  # stops without handing anything over (a crash, as far as the bucket knows)
    place(placement_file, 2, [(1, 2)])
    again = await Node(root, 0, store, placement_file).start()
    try:
        handover = again.handover()
        assert handover is not None
        await until(lambda: handover.state is S.RELEASED, "the late seal")
        assert list(handover.history) == [S.IDLE, S.RELEASING, S.RELEASED] and handover.sealed
        manifest = manifest_in(store)
        assert manifest.sealed and manifest.end_offset == 3 and manifest.leader_epoch == 1
        assert again.plog().log_end_offset == 0
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_stop_hands_over_sealed_and_drops_the_lease(
        root: Path, store: MemStore,
                                                          placement_file: Path) -> None:
    node = await leading_node(root, store, placement_file, records=2)
    try:
        handover = node.handover()
        await asyncio.wait_for(node.member.stop(), 5)
        assert handover is not None and handover.state is S.RELEASED and handover.sealed
        assert manifest_in(store).sealed and manifest_in(store).end_offset == 2
        assert member_key("", CLUSTER, 0) not in store.objects
    finally:
        await node.close()


# ---- the pieces on their own ----------------------------------------------------------------


def test_transition_table() -> None:
    assert ALLOWED[S.RELEASED] == frozenset()
    assert ALLOWED[S.RELEASING] == {S.RELEASED}
    assert S.LEADING not in ALLOWED[S.ACQUIRING] and S.LEADING not in ALLOWED[S.IDLE]  # only by a claim
    assert S.LEADING not in ALLOWED[S.FENCED]  # a fenced broker claims again at a newer epoch, or lets go
    for state in State:
        assert S.RELEASED in ALLOWED[state] or state is S.RELEASED
    handover = PartitionHandover((TOPIC, 0), None)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        handover.to(S.LEADING)
    handover.to(S.ACQUIRING)
    handover.to(S.CLAIMING)
    handover.to(S.LEADING)
    handover.to(S.FENCED)
    with pytest.raises(IllegalTransition):
        handover.to(S.LEADING)
    handover.to(S.RELEASING)
    handover.to(S.RELEASED)
    with pytest.raises(IllegalTransition):
        handover.to(S.ACQUIRING)


def test_follower_decisions() -> None:
    here, there = Assignment(0, 5), Assignment(1, 5)
    assert decide(0, here, None, False) is Move.ACQUIRE
    assert decide(0, here, Held(4, False), True) is Move.ACQUIRE  # placed here again at a newer epoch
    assert decide(0, here, Held(5, False), True) is None
    assert decide(0, here, Held(4, True), True) is None  # a release in progress finishes first
    assert decide(0, there, Held(4, False), True) is Move.RELEASE
    assert decide(0, there, Held(4, True), True) is None
    assert decide(0, there, None, True) is Move.LATE_SEAL
    assert decide(0, there, None, False) is None
    placement = Placement(3, (), {"a": TopicPlacement(TOPIC_ID, (here,))})
    assert deleted_topics(placement, ["a", "b", "c"], {"c"}) == ["b"]
    assert deleted_topics(Placement(), ["a", "b"], set()) == []  # no placement yet: nothing is deleted


def test_follower_takes_only_newer_whole_placements(tmp_path: Path) -> None:
    path = tmp_path / "placement.json"
    follower = PlacementFollower(str(path), 0)
    assert not follower.refresh() and follower.placement.version == 0  # no file yet
    place(path, 2, [(0, 1), (1, 1)])
    assert follower.refresh() and follower.placement.version == 2
    assert not follower.refresh()  # the same version again: nothing new
    place(path, 1, [(1, 1), (1, 1)])
    assert not follower.refresh() and follower.assignment(TOPIC, 0) == Assignment(0, 1)  # older: ignored
    path.write_text('{"version": 3, "brokers": [')  # caught mid-write
    assert not follower.refresh() and follower.placement.version == 2
    place(path, 3, [(0, 1), (1, 2)])
    assert follower.refresh()
    moves = follower.moves(TOPIC, {(TOPIC, 0): Held(1, False), (TOPIC, 1): Held(1, False)}, {})
    assert moves == [((TOPIC, 1), Move.RELEASE, 2)]
    assert follower.controller_id() == 0 and [b.id for b in follower.other_brokers()] == [1]
    assert follower.partition_leaders(TOPIC, TOPIC_ID) is not None
    assert follower.partition_leaders(TOPIC, str(uuid.uuid4())) is None  # another topic of that name

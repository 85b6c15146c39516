"""The hand-over of partitions between brokers: one state machine per partition this broker holds.

Leadership passes through the bucket (docs/cluster.md):
- the leader of epoch E holds the partition; every write it acknowledges needs a live lease, and
  every manifest it writes is conditional on the manifest version it last saw;
- when the placement gives the partition to someone else, the leader stops accepting writes,
  rolls and uploads its tail, and marks the manifest sealed;
- the new leader (epoch E+1) waits for that seal - or, if the old leader is gone, for one lease
  period, after which the old leader cannot acknowledge anything - then claims the manifest with
  a conditional write at E+1 (which fences any later write by the old leader), replays what
  earlier leaders committed to the S3 commit log beyond the manifest, and starts serving.

States of one partition on this broker (`State`; `ALLOWED` lists every transition):

    IDLE --acquire--> ACQUIRING --previous leader sealed, or its lease ran out--> CLAIMING
    CLAIMING --conditional manifest write at our epoch landed, commit log replayed--> LEADING
    CLAIMING --someone wrote the manifest in between--> ACQUIRING (look again)
    ACQUIRING --the bucket already has a newer epoch--> FENCED
    LEADING --a conditional manifest write was refused (a newer epoch claimed it)--> FENCED
    ACQUIRING / CLAIMING / LEADING / FENCED --placed here at a newer epoch--> ACQUIRING
    ACQUIRING / CLAIMING / LEADING / FENCED --placed elsewhere--> RELEASING
    IDLE --local data from before a restart, placed elsewhere--> RELEASING (late seal)
    RELEASING --tail uploaded and manifest sealed, or given up (fenced, lease lost)--> RELEASED
    any --topic deleted, or a failed take-over--> RELEASED

RELEASED is final: the partition's entry leaves the table, and the next placement look starts a
new one if the partition comes back. Only LEADING serves requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from strata_contract.layout import manifest_key
from strata_contract.manifest import RemoteManifest

from ..groups.offsets import OFFSETS_TOPIC
from ..log.files import read_json, write_json_atomic
from ..tier.publish import Fenced, publish_manifest
from ..tier.restore import seed_partition_dir
from .follower import Held, PartitionKey
from .lease import PreviousLeader

if TYPE_CHECKING:
    from ..log.manager import LogManager, Topic
    from ..log.partition import PartitionLog
    from ..tier.manager import TierManager
    from .clock import Clock

log = logging.getLogger(__name__)

LEADER_EPOCH_FILE = "leader-epoch.json"


class State(Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"  # waiting for the previous leader's seal, or for its lease to run out
    CLAIMING = "claiming"  # claiming the manifest at our epoch, then replaying the S3 commit log
    LEADING = "leading"
    RELEASING = "releasing"  # rolling, uploading the tail, sealing the manifest
    RELEASED = "released"
    FENCED = "fenced"  # a newer epoch holds the partition in the bucket: nothing is written here


S = State
ALLOWED: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.ACQUIRING, S.RELEASING, S.RELEASED}),
    S.ACQUIRING: frozenset({S.ACQUIRING, S.CLAIMING, S.FENCED, S.RELEASING, S.RELEASED}),
    S.CLAIMING: frozenset({S.ACQUIRING, S.LEADING, S.RELEASING, S.RELEASED}),
    S.LEADING: frozenset({S.ACQUIRING, S.FENCED, S.RELEASING, S.RELEASED}),
    S.FENCED: frozenset({S.ACQUIRING, S.RELEASING, S.RELEASED}),
    S.RELEASING: frozenset({S.RELEASED}),
    S.RELEASED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class CoordinatorHandoff(Protocol):
    """A coordinator (groups for `__consumer_offsets`, transactions for `__transaction_state`), told
    when this broker takes over or gives up a partition of its topic."""

    async def partition_acquired(self, plog: PartitionLog) -> None: ...

    def partition_released(self, partition: int) -> None: ...


class Handovers:
    """Every partition this broker holds or is taking over or handing on, keyed by (topic, partition)."""

    def __init__(self, node_id: int, logs: LogManager, tier: TierManager, lease_ms: int,
                 lease_valid: Callable[[], bool], clock: Clock, poll_s: float = 0.2) -> None:
        self.node_id = node_id
        self.logs = logs
        self.tier = tier
        self.lease_ms = lease_ms
        self.lease_valid = lease_valid
        self.clock = clock
        self.poll_s = poll_s
        self.table: dict[PartitionKey, PartitionHandover] = {}
        self.coordinators: dict[str, CoordinatorHandoff] = {}  # by internal topic
        self.stopping = False
        self.dirty = False  # a hand-over ended: look at the placement again even if it did not change

    @property
    def coordinator(self) -> CoordinatorHandoff | None:
        """The group coordinator (told about `__consumer_offsets` partitions)."""
        return self.coordinators.get(OFFSETS_TOPIC)

    @coordinator.setter
    def coordinator(self, coordinator: CoordinatorHandoff | None) -> None:
        if coordinator is None:
            self.coordinators.pop(OFFSETS_TOPIC, None)
        else:
            self.coordinators[OFFSETS_TOPIC] = coordinator

    # ---- what the placement follower asks and starts ----------------------------------------

    def held(self) -> dict[PartitionKey, Held]:
        return {k: Held(h.epoch, h.state is State.RELEASING) for k, h in self.table.items()}

    def get(self, key: PartitionKey) -> PartitionHandover | None:
        return self.table.get(key)

    def acquire(self, key: PartitionKey, epoch: int) -> PartitionHandover:
        handover = self.table.get(key)
        if handover is None:
            handover = self.table[key] = PartitionHandover(key, self)
        handover.begin_acquire(epoch)
        return handover

    def release(self, key: PartitionKey) -> None:
        self.table[key].begin_release()

    def late_seal(self, key: PartitionKey) -> PartitionHandover:
        handover = self.table[key] = PartitionHandover(key, self)
        handover.begin_late_seal()
        return handover

    def drop(self, key: PartitionKey) -> None:
        """Forget a partition at once (its topic was deleted or replaced)."""
        handover = self.table.pop(key, None)
        if handover is None:
            return
        handover.cancel()
        handover.to(State.RELEASED)
        coordinator = self.coordinators.get(key[0])
        if coordinator is not None:
            coordinator.partition_released(key[1])

    def discard(self, handover: PartitionHandover) -> None:
        """A hand-over that ended leaves the table (unless a newer one took its place)."""
        if self.table.get(handover.key) is handover:
            del self.table[handover.key]
        if handover.state is not State.RELEASED:
            handover.to(State.RELEASED)

    def plog(self, key: PartitionKey) -> PartitionLog | None:
        topic = self.logs.topics.get(key[0])
        if topic is None or key[1] >= len(topic.partitions):
            return None
        return topic.partitions[key[1]]

    async def stop(self, timeout: float) -> None:
        """Hand every partition this broker leads back sealed; stop the take-overs in progress."""
        self.stopping = True
        releases = []
        for handover in list(self.table.values()):
            handover.cancel()
            if handover.state in (State.LEADING, State.FENCED):
                releases.append(handover.begin_release())
        if releases:
            await asyncio.wait(releases, timeout=timeout)


class PartitionHandover:
    """One partition's state machine on this broker (the module docstring has the picture)."""

    def __init__(self, key: PartitionKey, owner: Handovers) -> None:
        self.key = key
        self.owner = owner
        self.state = State.IDLE
        self.epoch = 0  # the leader epoch this broker acquires or holds the partition at
        self.task: asyncio.Task[None] | None = None
        self.sealed = False  # the release ended with the manifest sealed for the next leader
        self.history: deque[State] = deque([State.IDLE], maxlen=32)

    def __repr__(self) -> str:
        return f"<{self.key[0]}-{self.key[1]} {self.state.value} at epoch {self.epoch}>"

    def to(self, state: State) -> None:
        if state not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.key[0]}-{self.key[1]}: {self.state.value} -> {state.value}")
        self.state = state
        self.history.append(state)

    def leading(self) -> bool:
        """Whether this broker serves the partition; a refused manifest write (the partition's
        log is marked fenced by it) moves LEADING to FENCED here, for good."""
        if self.state is State.LEADING:
            plog = self.owner.plog(self.key)
            if plog is not None and plog.fenced:
                log.warning("%s-%d: fenced at epoch %d (a newer leader claimed it)", *self.key, self.epoch)
                self.to(State.FENCED)
        return self.state is State.LEADING

    def cancel(self) -> None:
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _run(self, job) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        self.cancel()  # a take-over in progress stops before the partition is handed on
        self.task = asyncio.get_running_loop().create_task(job)
        return self.task

    # ---- acquiring ----------------------------------------------------------------------------

    def begin_acquire(self, epoch: int) -> asyncio.Task[None]:
        self.to(State.ACQUIRING)
        self.epoch = epoch
        return self._run(self._acquire(epoch))

    async def _acquire(self, epoch: int) -> None:
        owner = self.owner
        topic_name, partition = self.key
        seen = owner.clock.now()
        previous = PreviousLeader(owner.tier.store, owner.tier.prefix, owner.tier.cluster, owner.node_id,
                                  owner.lease_ms, owner.clock, seen)
        waited_for_seal = False
        try:
            while not owner.stopping:
                topic = owner.logs.topics.get(topic_name)
                if topic is None:
                    owner.discard(self)
                    return
                prefix = owner.tier.partition_prefix(topic, partition)
                raw, etag = await owner.tier.store.get_with_etag(manifest_key(prefix), deadline=30)
                manifest = RemoteManifest.from_json(raw) if raw else None
                if manifest is not None and manifest.leader_epoch > epoch:
                    log.warning("%s-%d: the bucket has epoch %d, newer than ours (%d); not taking it", topic_name,
                                partition, manifest.leader_epoch, epoch)
                    self.to(State.FENCED)
                    return
                if (manifest is not None and not manifest.sealed and manifest.leader_epoch < epoch
                        and await previous.may_still_write(manifest.leader_id)):
                    waited_for_seal = True
                    await owner.clock.sleep(owner.poll_s / 2)
                    continue
                self.to(State.CLAIMING)
                if await self._claim(topic, partition, epoch, manifest, etag):
                    self.to(State.LEADING)
                    plog = topic.partitions[partition]
                    log.info("leading %s-%d at epoch %d from offset %d..%d (%s, %.2fs)", topic_name, partition,
                             epoch, plog.log_start_offset, plog.log_end_offset,
                             "sealed by the previous leader" if manifest is None or manifest.sealed
                             else ("after its lease ran out" if waited_for_seal else "same leader"),
                             owner.clock.now() - seen)
                    coordinator = owner.coordinators.get(topic_name)
                    if coordinator is not None:
                        await coordinator.partition_acquired(plog)
                    return
                self.to(State.ACQUIRING)  # the manifest moved under us: look again
                await owner.clock.sleep(owner.poll_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("taking over %s-%d failed; will retry on the next placement check", topic_name, partition)
            if self.epoch == epoch:
                owner.discard(self)
            await owner.clock.sleep(1.0)
            owner.dirty = True

    async def _claim(self, topic: Topic, partition: int, epoch: int, manifest: RemoteManifest | None,
                     etag: str | None) -> bool:
        """Lay the partition out from the manifest (or keep this broker's own copy, when it was the
        last to claim it), claim the manifest at `epoch` with a conditional write, and replay the S3
        commit log beyond it. False: someone wrote the manifest in between."""
        owner = self.owner
        tier = owner.tier
        base = manifest or RemoteManifest(topic.name, str(topic.topic_id), partition)
        current = topic.partitions[partition]
        local_epoch = local_leader_epoch(current)
        if (manifest is not None and manifest.leader_id == owner.node_id and manifest.leader_epoch == local_epoch
                and current.log_end_offset >= manifest.end_offset and not current.fenced):
            # This broker was the last to claim it (before a restart, or before a move it never
            # acted on was undone): its own log may hold more than S3 has.
            plog = current
        else:
            plog = owner.logs.replace_partition(topic.name, partition, lambda d: seed_partition_dir(d, base))
        plog.leader_epoch = epoch
        plog.claimed = False
        plog.remote_etag = etag
        tier.commit_log.handed_over.discard((topic.name, partition))
        plog.fenced = False
        claimed = replace(base, leader_epoch=epoch, leader_id=owner.node_id, sealed=False, version=base.version + 1)
        prefix = tier.partition_prefix(topic, partition)
        try:
            await publish_manifest(tier.store, plog, prefix, claimed, deadline=30)
        except Fenced:
            plog.fenced = False
            return False
        plog.claimed = True
        write_json_atomic(os.path.join(plog.directory, LEADER_EPOCH_FILE), {"epoch": epoch})
        # Batches earlier leaders acknowledged from the S3 commit log (strata.durability=s3).
        chain = await tier.commit_log.chain_for(topic.name, partition, plog.log_end_offset, base.leader_epoch)
        for entry in chain:
            plog.append_restored(entry.data)
        # Leader-epoch history: the bucket's for a copy laid out from it, then this epoch from the
        # log end (Kafka's makeLeader), written to the manifest at once (one PUT per leader change:
        # the next leader starts from it even if this one never uploads).
        plog.epochs.adopt(base.leader_epochs)
        plog.epochs.assign(epoch, plog.log_end_offset)
        async with plog.manifest_lock:
            current_manifest = plog.remote
            if isinstance(current_manifest, RemoteManifest):
                history = plog.epochs.to_list()
                try:
                    await publish_manifest(tier.store, plog, prefix, replace(
                        current_manifest, leader_epochs=history, version=current_manifest.version + 1), deadline=30)
                except Fenced:
                    return False
        if plog.log_end_offset > 0:
            tier.commit_log.mark_durable_up_to((topic.name, partition), plog.log_end_offset - 1)
        return True

    # ---- releasing ----------------------------------------------------------------------------

    def begin_release(self) -> asyncio.Task[None]:
        previous = self.state
        self.to(State.RELEASING)
        return self._run(self._release(previous))

    def begin_late_seal(self) -> asyncio.Task[None]:
        self.to(State.RELEASING)
        return self._run(self._late_seal())

    async def _late_seal(self) -> None:
        """This broker's copy from before a restart, given to another broker since: hand its tail
        over sealed if nobody has claimed it after this broker, then drop it."""
        owner = self.owner
        topic_name, partition = self.key
        topic = owner.logs.topics.get(topic_name)
        if topic is None:
            owner.discard(self)
            return
        plog = topic.partitions[partition]
        local_epoch = local_leader_epoch(plog)
        try:
            raw, etag = await owner.tier.store.get_with_etag(
                manifest_key(owner.tier.partition_prefix(topic, partition)), deadline=30)
        except Exception as exc:
            log.warning("%s-%d: cannot look at the manifest (%s); dropping the local copy", topic_name, partition, exc)
            raw, etag = None, None
        manifest = RemoteManifest.from_json(raw) if raw else None
        if (manifest is not None and local_epoch > 0 and manifest.leader_epoch == local_epoch
                and manifest.leader_id == owner.node_id and not manifest.sealed):
            plog.leader_epoch, plog.remote_etag, plog.fenced = local_epoch, etag, False
            plog.set_remote(manifest)
            log.info("%s-%d: handing over what this broker wrote at epoch %d before it restarted", topic_name,
                     partition, local_epoch)
            await self._release(State.LEADING)
            return
        owner.discard(self)
        owner.logs.replace_partition(topic_name, partition, None)
        owner.dirty = True

    async def _release(self, previous: State) -> None:
        """Stop writing, upload the tail, seal the manifest for the next leader, drop the copy."""
        owner = self.owner
        tier = owner.tier
        topic_name, partition = self.key
        current = owner.plog(self.key)
        if previous is not State.LEADING and (current is None or not current.claimed
                                              or current.leader_epoch != self.epoch):
            # Not claimed in the bucket at our epoch: nothing of it is this broker's to hand over.
            owner.discard(self)
            if current is not None and current.log_end_offset > 0:
                owner.logs.replace_partition(topic_name, partition, None)
            owner.dirty = True
            return
        coordinator = owner.coordinators.get(topic_name)
        if coordinator is not None:
            coordinator.partition_released(partition)
        started = owner.clock.now()
        try:
            topic = owner.logs.topics.get(topic_name)
            while topic is not None and owner.lease_valid():
                plog = topic.partitions[partition]
                if plog.fenced or plog.remote is None:
                    break
                if (topic_name, partition) in tier.busy:
                    await owner.clock.sleep(0.05)
                    continue
                if plog.active.size > 0:
                    plog.roll()
                await tier.upload_partition(topic, plog)
                if plog.remote_end_offset >= plog.log_end_offset:
                    prefix = tier.partition_prefix(topic, partition)
                    async with plog.manifest_lock:
                        assert plog.remote is not None
                        await publish_manifest(tier.store, plog, prefix,
                                               replace(plog.remote, sealed=True, version=plog.remote.version + 1),
                                               deadline=30)
                    self.sealed = True
                    tier.commit_log.handed_over.add(self.key)
                    break
                await owner.clock.sleep(0.5)
        except Fenced:
            pass
        except Exception:
            log.exception("handing over %s-%d", topic_name, partition)
        finally:
            owner.discard(self)
            topic = owner.logs.topics.get(topic_name)
            if topic is not None and partition < len(topic.partitions):
                end = topic.partitions[partition].log_end_offset
                owner.logs.replace_partition(topic_name, partition, None)
                if self.sealed:
                    log.info("handed over %s-%d at offset %d (sealed in %.2fs)", topic_name, partition, end,
                             owner.clock.now() - started)
                else:
                    log.warning("gave up %s-%d at offset %d without sealing it (fenced, lease lost or S3 down); "
                                "the next leader waits out the lease", topic_name, partition, end)
            owner.dirty = True  # the placement may have handed it back meanwhile


def local_leader_epoch(plog: PartitionLog) -> int:
    """The epoch this broker last claimed the partition at (-1: never), kept in its directory."""
    return int((read_json(os.path.join(plog.directory, LEADER_EPOCH_FILE)) or {}).get("epoch", -1))

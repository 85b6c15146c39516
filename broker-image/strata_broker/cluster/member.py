"""This broker's part in a cluster: its lease, the placement it follows, and the hand-over of
partitions (docs/cluster.md).

Leadership of a partition passes through the bucket:
- the leader of epoch E holds it; every write it acknowledges needs a live lease (a renewal
  started less than `cluster.lease.ms` ago), and every manifest it writes is conditional on the
  manifest version it last saw;
- when the placement gives the partition to someone else, the leader stops accepting writes,
  rolls and uploads its tail, and marks the manifest sealed;
- the new leader (epoch E+1) waits for that seal — or, if the old leader is gone, for one lease
  period, after which the old leader cannot acknowledge anything — then claims the manifest with
  a conditional write at E+1 (which fences any later write by the old leader), replays what
  earlier leaders committed to the S3 commit log beyond the manifest, and starts serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.offsets import OFFSETS_TOPIC, partition_for
from ..log.files import read_json, write_json_atomic
from ..replica.leadership import PartitionLeader
from ..tier.layout import manifest_key, parse_topic_dir, topic_meta_key, topics_root
from ..tier.manager import seed_partition_dir
from ..tier.manifest import RemoteManifest
from ..tier.publish import Fenced, publish_manifest
from .lease import MemberLease, member_key
from .placement import BrokerAddress, Placement, read_placement
from .shared import SharedDocuments

if TYPE_CHECKING:
    from ..log.manager import LogManager, Topic
    from ..log.partition import PartitionLog
    from ..security.listeners import Listener
    from ..tier.manager import TierManager

log = logging.getLogger(__name__)

LEADER_EPOCH_FILE = "leader-epoch.json"
_POLL_S = 0.2

ACQUIRING, LEADING, RELEASING = "acquiring", "leading", "releasing"


@dataclass
class Role:
    state: str
    epoch: int
    task: asyncio.Task[None] | None = None


class CoordinatorHandoff(Protocol):
    """The group coordinator, told when this broker takes over or gives up an offsets partition."""

    async def partition_acquired(self, plog: PartitionLog) -> None: ...

    def partition_released(self, partition: int) -> None: ...


class ClusterMember:
    """The clustered `Leadership` strategy (replica/leadership.py), and the hand-over it drives."""

    def __init__(self, node_id: int, logs: LogManager, tier: TierManager, listeners: list[Listener],
                 shared: dict[str, Any], placement_file: str, lease_ms: int) -> None:
        self.logs = logs
        self.tier = tier
        self.listeners = listeners
        self.node_id = node_id
        self._shared_documents = shared  # ACLs, credentials, quotas: kept in the bucket for every broker
        self._coordinator: CoordinatorHandoff | None = None
        self.placement_file = placement_file
        self.lease_ms = lease_ms
        self.placement = Placement()
        self.roles: dict[tuple[str, int], Role] = {}
        self._valid_until = 0.0
        self._renewals = 0
        self._created_here: set[str] = set()  # topics created on this broker, not placed yet
        self._publishing: dict[str, asyncio.Task[None] | None] = {}  # topic.json writes in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._sizes: dict[tuple[str, int], tuple[float, int]] = {}
        self._bytes_in: dict[str, float] = {}
        self._stopping = False
        self._dirty = False  # a hand-over ended: look at the placement again even if it did not change
        self.shared: SharedDocuments | None = None  # ACLs, credentials, quotas: set up at start

    # ---- lease and placement ----------------------------------------------------------------

    def lease_valid(self) -> bool:
        return time.monotonic() < self._valid_until

    async def start(self, coordinator: CoordinatorHandoff) -> None:
        """Join the cluster; `coordinator` hears about the offsets partitions this broker takes."""
        self._coordinator = coordinator
        self.logs.require_remote = True
        self.shared = SharedDocuments(self.tier.store, self.tier.prefix, self.tier.cluster, self._shared_documents)
        await self.shared.start()
        if not await self._renew():
            raise SystemExit("cluster mode: could not write this broker's lease to the bucket")
        self._read_placement()
        await self._reconcile()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._renew_loop()))
        self._tasks.append(loop.create_task(self._placement_loop()))
        log.info("cluster member %d: lease %d ms, placement from %s (version %d)", self.node_id, self.lease_ms,
                 self.placement_file, self.placement.version)

    async def _renew(self) -> bool:
        started = time.monotonic()
        lst = self.listeners[0]
        self._renewals += 1
        lease = MemberLease(self.node_id, lst.advertised_host, lst.advertised_port, self._renewals, self.lease_ms,
                            self._measure_bytes_in(started),
                            {x.name: (x.advertised_host, x.advertised_port) for x in self.listeners})
        try:
            await self.tier.store.put(member_key(self.tier.prefix, self.tier.cluster, self.node_id), lease.to_json(),
                                      deadline=self.lease_ms / 2000.0)
        except Exception as exc:
            log.warning("lease renewal failed (%s); writes stop %.1fs after the last renewal", exc,
                        self.lease_ms / 1000.0)
            return False
        # The placement is looked at before the renewal counts, so a broker coming back from a
        # pause learns what it lost before it may write again.
        self._read_placement()
        await self._reconcile()
        self._valid_until = started + self.lease_ms / 1000.0
        return True

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000.0)
            try:
                await self._renew()
            except Exception:
                log.exception("lease renewal")

    async def _placement_loop(self) -> None:
        while True:
            await asyncio.sleep(_POLL_S)
            try:
                if self._read_placement() or self._dirty:
                    self._dirty = False
                    await self._reconcile()
            except Exception:
                log.exception("placement update")

    def _read_placement(self) -> bool:
        placement = read_placement(self.placement_file)
        if placement is None or placement.version <= self.placement.version:
            return False
        self.placement = placement
        return True

    def _measure_bytes_in(self, now: float) -> dict[str, float]:
        logs = self.logs
        rates: dict[str, float] = {}
        for (topic, partition), role in self.roles.items():
            if role.state != LEADING or topic not in logs.topics:
                continue
            plog = logs.topics[topic].partitions[partition]
            size = sum(s.size for s in plog.segments)
            then, before = self._sizes.get((topic, partition), (now, size))
            self._sizes[(topic, partition)] = (now, size)
            if now > then:
                rates[f"{topic}/{partition}"] = round(max(0, size - before) / (now - then), 1)
        return rates

    # ---- questions the request handlers ask --------------------------------------------------

    def leads(self, topic: str, partition: int) -> bool:
        role = self.roles.get((topic, partition))
        if role is None or role.state != LEADING or not self.lease_valid():
            return False
        plog = self._plog(topic, partition)
        return plog is not None and not plog.fenced

    def check_leader(self, topic: str, partition: int) -> None:
        if not self.leads(topic, partition):
            if self.placement.assignment(topic, partition) is None and topic in self.logs.topics:
                raise KafkaProtocolError(ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} is not placed yet")
            raise KafkaProtocolError(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                     f"broker {self.node_id} does not lead {topic}-{partition}")

    def may_ack(self, topic: str, partition: int, epoch: int) -> bool:
        """Whether a write appended at `epoch` may be acknowledged now: the lease still holds, and
        no newer leader has claimed the partition (if one did, the write is the old leader's to
        lose, and the producer retries against the new one)."""
        plog = self._plog(topic, partition)
        return self.lease_valid() and plog is not None and plog.leader_epoch == epoch and not plog.fenced

    def coordinates(self, group_id: str) -> bool:
        topic = self.logs.topics.get(OFFSETS_TOPIC)
        if topic is None:
            return False
        return self.leads(OFFSETS_TOPIC, partition_for(group_id, len(topic.partitions)))

    def coordinator_of(self, group_id: str) -> BrokerAddress | None:
        placed = self.placement.topics.get(OFFSETS_TOPIC)
        if placed is None or not placed.partitions:
            return None
        assignment = placed.partitions[partition_for(group_id, len(placed.partitions))]
        return self.placement.broker(assignment.leader)

    def controller_id(self) -> int:
        ids = [b.id for b in self.placement.brokers]
        return min(ids) if ids else self.node_id

    def other_brokers(self) -> list[BrokerAddress]:
        return [b for b in self.placement.brokers if b.id != self.node_id]

    def partition_leaders(self, topic: str, topic_id: str, partitions: int) -> list[PartitionLeader] | None:
        placed = self.placement.topics.get(topic)
        if placed is None or str(placed.id) != topic_id:
            return None
        live = {b.id for b in self.placement.brokers}
        return [PartitionLeader(a.leader, a.epoch, a.leader in live) for a in placed.partitions]

    async def shared_state_flushed(self) -> None:
        """The change is in the bucket before it is answered; the other brokers load it within a second."""
        if self.shared is not None:
            await self.shared.flush()

    async def exists_elsewhere(self, name: str) -> bool:
        """Whether the cluster has this topic though this broker has not adopted it yet."""
        if name in self.placement.topics:
            return True
        root = topics_root(self.tier.prefix, self.tier.cluster)
        _, dirs = await self.tier.store.list(f"{root}{name}-", delimiter="/")
        for d in dirs:
            parsed = parse_topic_dir(d[len(root):].rstrip("/"))
            if parsed is not None and parsed[0] == name and await self.tier.store.get_or_none(
                    topic_meta_key(self.tier.prefix, self.tier.cluster, name, parsed[1])) is not None:
                return True
        return False

    def _plog(self, topic: str, partition: int) -> PartitionLog | None:
        t = self.logs.topics.get(topic)
        if t is None or partition >= len(t.partitions):
            return None
        return t.partitions[partition]

    # ---- topic events from the LogManager ------------------------------------------------------

    def topic_created(self, topic: Topic) -> None:
        self._created_here.add(topic.name)
        self._publishing[topic.name] = self.tier.topic_created(topic)

    def topic_changed(self, topic: Topic) -> None:
        self._publishing[topic.name] = self.tier.topic_changed(topic)

    async def published(self, name: str) -> None:
        """Wait until a topic this broker created or changed is in the bucket, so that no other
        broker creates it again and the controller sees it (handlers answer after this)."""
        task = self._publishing.pop(name, None)
        if task is not None:
            await asyncio.shield(task)

    def topic_deleted(self, topic: Topic) -> None:
        self._created_here.discard(topic.name)
        for key in [k for k in self.roles if k[0] == topic.name]:
            self._drop_role(key)
        self.tier.topic_deleted(topic)

    # ---- following the placement ---------------------------------------------------------------

    async def _reconcile(self) -> None:
        if self._stopping:
            return
        placement = self.placement
        logs = self.logs
        for name, placed in placement.topics.items():
            self._created_here.discard(name)
            local = logs.topics.get(name)
            topic_id = uuid.UUID(placed.id)
            if local is None or local.topic_id != topic_id:
                for key in [k for k in self.roles if k[0] == name]:
                    self._drop_role(key)
                local = logs.adopt_topic(name, topic_id, len(placed.partitions), placed.configs,
                                         internal=name == OFFSETS_TOPIC)
                self.tier.attach_topic(local)
            else:
                if len(local.partitions) < len(placed.partitions):
                    logs.grow_topic(name, len(placed.partitions))
                if placed.configs != local.overrides:
                    logs.set_topic_overrides(name, placed.configs)
                self.tier.attach_topic(local)
            for p, assignment in enumerate(placed.partitions):
                key = (name, p)
                role = self.roles.get(key)
                if assignment.leader == self.node_id:
                    if role is None or (role.epoch < assignment.epoch and role.state != RELEASING):
                        self._start(key, Role(ACQUIRING, assignment.epoch), self._acquire(key, assignment.epoch))
                elif role is not None and role.state != RELEASING:
                    self._start(key, Role(RELEASING, role.epoch), self._release(key, role.state))
                elif role is None and local.partitions[p].log_end_offset > 0:
                    # This broker's copy from before a restart, given to another broker since: hand
                    # its tail over sealed if nobody has claimed it yet, then drop it.
                    self._start(key, Role(RELEASING, 0), self._late_seal(key))
        # Topics the placement no longer has were deleted (unless created here and not placed yet).
        if placement.version > 0:
            for name in [n for n in logs.topics if n not in placement.topics and n not in self._created_here]:
                topic = logs.topics[name]
                led = any(k[0] == name for k in self.roles)
                for key in [k for k in self.roles if k[0] == name]:
                    self._drop_role(key)
                logs.delete_topic(name, notify=False)
                if led:
                    # An upload racing the deletion elsewhere may have left objects behind.
                    self.tier.topic_deleted(topic)

    def _start(self, key: tuple[str, int], role: Role, job) -> None:  # type: ignore[no-untyped-def]
        old = self.roles.get(key)
        if old is not None and old.task is not None and not old.task.done() and old.task is not asyncio.current_task():
            old.task.cancel()  # a take-over in progress stops before the partition is handed on
        self.roles[key] = role
        role.task = asyncio.get_running_loop().create_task(job)

    def _drop_role(self, key: tuple[str, int]) -> None:
        role = self.roles.pop(key, None)
        if role is not None and role.task is not None and role.task is not asyncio.current_task():
            role.task.cancel()
        if role is not None and key[0] == OFFSETS_TOPIC and self._coordinator is not None:
            self._coordinator.partition_released(key[1])

    async def _acquire(self, key: tuple[str, int], epoch: int) -> None:
        topic_name, partition = key
        seen = time.monotonic()
        logs = self.logs
        waited_for_seal = False
        watch: dict[str, float] = {}
        try:
            while not self._stopping:
                topic = logs.topics.get(topic_name)
                if topic is None:
                    return
                prefix = self.tier.partition_prefix(topic, partition)
                raw, etag = await self.tier.store.get_with_etag(manifest_key(prefix), deadline=30)
                manifest = RemoteManifest.from_json(raw) if raw else None
                if manifest is not None and manifest.leader_epoch > epoch:
                    log.warning("%s-%d: the bucket has epoch %d, newer than ours (%d); not taking it", topic_name,
                                partition, manifest.leader_epoch, epoch)
                    return
                if manifest is not None and not manifest.sealed and manifest.leader_epoch < epoch:
                    previous_alive = await self._previous_leader_alive(manifest.leader_id, seen, watch)
                else:
                    previous_alive = False
                if previous_alive:
                    waited_for_seal = True
                    await asyncio.sleep(_POLL_S / 2)
                    continue
                if await self._take_over(topic, partition, epoch, manifest, etag):
                    role = self.roles.get(key)
                    if role is not None and role.epoch == epoch:
                        role.state = LEADING
                    plog = topic.partitions[partition]
                    log.info("leading %s-%d at epoch %d from offset %d..%d (%s, %.2fs)", topic_name, partition,
                             epoch, plog.log_start_offset, plog.log_end_offset,
                             "sealed by the previous leader" if manifest is None or manifest.sealed
                             else ("after its lease ran out" if waited_for_seal else "same leader"),
                             time.monotonic() - seen)
                    if topic_name == OFFSETS_TOPIC and self._coordinator is not None:
                        await self._coordinator.partition_acquired(plog)
                    return
                await asyncio.sleep(_POLL_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("taking over %s-%d failed; will retry on the next placement check", topic_name, partition)
            if self.roles.get(key) is not None and self.roles[key].epoch == epoch:
                self.roles.pop(key, None)
            await asyncio.sleep(1.0)
            self._dirty = True

    async def _previous_leader_alive(self, leader_id: int, seen: float, watch: dict[str, float]) -> bool:
        """Whether to keep waiting for the previous leader to seal the partition. It is given up
        once its lease has not been renewed for a lease period (it has stopped acknowledging by
        then), or after a minute in any case; never sooner than a lease period after the move was
        seen, for the previous leader may have renewed just before the controller decided."""
        now = time.monotonic()
        if leader_id == self.node_id:
            return False  # that was this broker, and it stopped writing at the old epoch already
        if now - seen > max(60.0, 3 * self.lease_ms / 1000.0):
            return False
        raw = await self.tier.store.get_or_none(member_key(self.tier.prefix, self.tier.cluster, leader_id))
        renewals = float(MemberLease.from_json(raw).renewals) if raw is not None else -1.0
        if "renewals" not in watch:
            watch["renewals"], watch["changed"] = renewals, seen  # the first look counts from the move
        elif watch["renewals"] != renewals:
            watch["renewals"], watch["changed"] = renewals, now
        # Never sooner than a lease period after the move was seen; later while it still renews.
        return now - watch["changed"] < self.lease_ms / 1000.0

    async def _take_over(self, topic: Topic, partition: int, epoch: int, manifest: RemoteManifest | None,
                         etag: str | None) -> bool:
        logs = self.logs
        base = manifest or RemoteManifest(topic.name, str(topic.topic_id), partition)
        current = topic.partitions[partition]
        local_epoch = _local_epoch(current)
        if (manifest is not None and manifest.leader_id == self.node_id and manifest.leader_epoch == local_epoch
                and current.log_end_offset >= manifest.end_offset and not current.fenced):
            # This broker was the last to claim it (before a restart, or before a move it never
            # acted on was undone): its own log may hold more than S3 has.
            plog = current
        else:
            plog = logs.replace_partition(topic.name, partition, lambda d: seed_partition_dir(d, base))
        plog.leader_epoch = epoch
        plog.claimed = False
        plog.remote_etag = etag
        self.tier.commit_log.handed_over.discard((topic.name, partition))
        plog.fenced = False
        claimed = replace(base, leader_epoch=epoch, leader_id=self.node_id, sealed=False, version=base.version + 1)
        prefix = self.tier.partition_prefix(topic, partition)
        try:
            await publish_manifest(self.tier.store, plog, prefix, claimed, deadline=30)
        except Fenced:
            plog.fenced = False
            return False  # the manifest moved under us: look again
        plog.claimed = True
        write_json_atomic(os.path.join(plog.directory, LEADER_EPOCH_FILE), {"epoch": epoch})
        # Batches earlier leaders acknowledged from the S3 commit log (strata.durability=s3).
        chain = await self.tier.commit_log.chain_for(topic.name, partition, plog.log_end_offset, base.leader_epoch)
        for entry in chain:
            plog.append_restored(entry.data)
        if plog.log_end_offset > 0:
            self.tier.commit_log.mark_durable_up_to((topic.name, partition), plog.log_end_offset - 1)
        return True

    async def _late_seal(self, key: tuple[str, int]) -> None:
        topic_name, partition = key
        topic = self.logs.topics.get(topic_name)
        if topic is None:
            return
        plog = topic.partitions[partition]
        local_epoch = _local_epoch(plog)
        try:
            raw, etag = await self.tier.store.get_with_etag(
                manifest_key(self.tier.partition_prefix(topic, partition)), deadline=30)
        except Exception as exc:
            log.warning("%s-%d: cannot look at the manifest (%s); dropping the local copy", topic_name, partition, exc)
            raw, etag = None, None
        manifest = RemoteManifest.from_json(raw) if raw else None
        if (manifest is not None and local_epoch > 0 and manifest.leader_epoch == local_epoch
                and manifest.leader_id == self.node_id and not manifest.sealed):
            plog.leader_epoch, plog.remote_etag, plog.fenced = local_epoch, etag, False
            plog.set_remote(manifest)
            log.info("%s-%d: handing over what this broker wrote at epoch %d before it restarted", topic_name,
                     partition, local_epoch)
            await self._release(key, LEADING)
            return
        if self.roles.get(key) is not None and self.roles[key].epoch == 0:
            self.roles.pop(key, None)
        self.logs.replace_partition(topic_name, partition, None)
        self._dirty = True

    async def _release(self, key: tuple[str, int], previous_state: str) -> None:
        """Stop writing, upload the tail, seal the manifest for the next leader, drop the copy."""
        topic_name, partition = key
        role = self.roles.get(key)
        current = self._plog(topic_name, partition)
        if previous_state == ACQUIRING and (current is None or not current.claimed or role is None
                                            or current.leader_epoch != role.epoch):
            # Not claimed in the bucket yet: nothing of it is this broker's to hand over.
            if self.roles.get(key) is role:
                self.roles.pop(key, None)
            if current is not None and current.log_end_offset > 0:
                self.logs.replace_partition(topic_name, partition, None)
            self._dirty = True
            return
        if topic_name == OFFSETS_TOPIC and self._coordinator is not None:
            self._coordinator.partition_released(partition)
        started = time.monotonic()
        sealed = False
        try:
            topic = self.logs.topics.get(topic_name)
            while topic is not None and self.lease_valid():
                plog = topic.partitions[partition]
                if plog.fenced or plog.remote is None:
                    break
                if (topic_name, partition) in self.tier.busy:
                    await asyncio.sleep(0.05)
                    continue
                if plog.active.size > 0:
                    plog.roll()
                await self.tier.upload_partition(topic, plog)
                if plog.remote_end_offset >= plog.log_end_offset:
                    prefix = self.tier.partition_prefix(topic, partition)
                    async with plog.manifest_lock:
                        assert plog.remote is not None
                        await publish_manifest(self.tier.store, plog, prefix,
                                               replace(plog.remote, sealed=True, version=plog.remote.version + 1),
                                               deadline=30)
                    sealed = True
                    self.tier.commit_log.handed_over.add(key)
                    break
                await asyncio.sleep(0.5)
        except Fenced:
            pass
        except Exception:
            log.exception("handing over %s-%d", topic_name, partition)
        finally:
            if self.roles.get(key) is role:
                self.roles.pop(key, None)
            topic = self.logs.topics.get(topic_name)
            if topic is not None and partition < len(topic.partitions):
                end = topic.partitions[partition].log_end_offset
                self.logs.replace_partition(topic_name, partition, None)
                if sealed:
                    log.info("handed over %s-%d at offset %d (sealed in %.2fs)", topic_name, partition, end,
                             time.monotonic() - started)
                else:
                    log.warning("gave up %s-%d at offset %d without sealing it (fenced, lease lost or S3 down); "
                                "the next leader waits out the lease", topic_name, partition, end)
            self._dirty = True  # the placement may have handed it back meanwhile

    # ---- shutdown ------------------------------------------------------------------------------

    async def stop(self, timeout: float = 20.0) -> None:
        """Hand every partition back sealed, so successors start at once, then drop the lease."""
        for task in self._tasks:
            task.cancel()
        if self.shared is not None:
            self.shared.stop()
        self._stopping = True
        releases = []
        for key, role in list(self.roles.items()):
            if role.task is not None and not role.task.done():
                role.task.cancel()
            if role.state == LEADING:
                role.state = RELEASING
                releases.append(asyncio.get_running_loop().create_task(self._release(key, LEADING)))
        if releases:
            await asyncio.wait(releases, timeout=timeout)
        try:
            await self.tier.store.delete_many([member_key(self.tier.prefix, self.tier.cluster, self.node_id)])
        except Exception as exc:
            log.warning("could not remove this broker's lease: %s", exc)


def _local_epoch(plog: PartitionLog) -> int:
    """The epoch this broker last claimed the partition at (-1: never), kept in its directory."""
    return int((read_json(os.path.join(plog.directory, LEADER_EPOCH_FILE)) or {}).get("epoch", -1))

"""This broker's part in a cluster (docs/cluster.md): the composition of its lease
(cluster/lease.py LeaseKeeper), the placement it follows (cluster/follower.py) and the hand-over
of partitions (cluster/handover.py), answering the `Leadership` questions the request handlers
and the group coordinator ask (replica/leadership.py).

Two loops drive it: the lease renewal every `lease_ms / 3` (which looks at the placement before
the renewal counts) and a look at the placement file every `poll_s`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from strata_contract.layout import member_key, parse_topic_dir, topic_meta_key, topics_root
from strata_contract.lease import MemberLease
from strata_contract.placement import BrokerAddress, Placement

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.offsets import OFFSETS_TOPIC, partition_for
from ..groups.txn_log import TRANSACTION_TOPIC
from ..replica.leadership import PartitionLeader
from .clock import Clock, MonotonicClock
from .follower import Move, PlacementFollower, deleted_topics
from .handover import CoordinatorHandoff, Handovers, State
from .lease import LeaseKeeper
from .shared import SharedDocuments

if TYPE_CHECKING:
    from ..log.manager import LogManager, Topic
    from ..log.partition import PartitionLog
    from ..security.listeners import Listener
    from ..tier.manager import TierManager

log = logging.getLogger(__name__)

_POLL_S = 0.2


class ClusterMember:
    """The clustered `Leadership` strategy (replica/leadership.py), and the hand-overs it drives."""

    def __init__(self, node_id: int, logs: LogManager, tier: TierManager, listeners: list[Listener],
                 shared: dict[str, Any], placement_file: str, lease_ms: int, clock: Clock | None = None,
                 poll_s: float = _POLL_S) -> None:
        self.logs = logs
        self.tier = tier
        self.node_id = node_id
        self.lease_ms = lease_ms
        self.clock: Clock = clock or MonotonicClock()
        self.poll_s = poll_s
        self._shared_documents = shared  # ACLs, credentials, quotas: kept in the bucket for every broker
        self.follower = PlacementFollower(placement_file, node_id)
        self.lease = LeaseKeeper(tier.store, tier.prefix, tier.cluster, node_id, listeners, lease_ms, self.clock,
                                 self._measure_bytes_in, self._end_offsets)
        self.handovers = Handovers(node_id, logs, tier, lease_ms, self.lease.valid, self.clock, poll_s)
        self._created_here: set[str] = set()  # topics created on this broker, not placed yet
        self._publishing: dict[str, asyncio.Task[None] | None] = {}  # topic.json writes in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._sizes: dict[tuple[str, int], tuple[float, int]] = {}
        self.shared: SharedDocuments | None = None  # ACLs, credentials, quotas: set up at start
        self._peer_ends: dict[tuple[str, int], int] = {}  # from the other brokers' leases (refresh_peer_end_offsets)

    @property
    def placement(self) -> Placement:
        return self.follower.placement

    # ---- lease and placement ----------------------------------------------------------------

    def lease_valid(self) -> bool:
        return self.lease.valid()

    async def start(self, coordinator: CoordinatorHandoff, transactions: CoordinatorHandoff | None = None) -> None:
        """Join the cluster; `coordinator` hears about the offsets partitions this broker takes,
        `transactions` about the `__transaction_state` partitions."""
        self.handovers.coordinator = coordinator
        if transactions is not None:
            self.handovers.coordinators[TRANSACTION_TOPIC] = transactions
        self.logs.require_remote = True
        self.shared = SharedDocuments(self.tier.store, self.tier.prefix, self.tier.cluster, self._shared_documents)
        await self.shared.start()
        if not await self.renew():
            raise SystemExit("cluster mode: could not write this broker's lease to the bucket")
        self.follower.refresh()
        await self.reconcile()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._renew_loop()))
        self._tasks.append(loop.create_task(self._placement_loop()))
        log.info("cluster member %d: lease %d ms, placement from %s (version %d)", self.node_id, self.lease_ms,
                 self.follower.path, self.placement.version)

    async def renew(self) -> bool:
        """One lease renewal; the placement is looked at before it counts."""
        return await self.lease.renew(self._follow)

    async def _follow(self) -> None:
        self.follower.refresh()
        await self.reconcile()

    async def _renew_loop(self) -> None:
        while True:
            await self.clock.sleep(self.lease_ms / 3000.0)
            try:
                await self.renew()
            except Exception:
                log.exception("lease renewal")

    async def _placement_loop(self) -> None:
        while True:
            await self.clock.sleep(self.poll_s)
            try:
                if self.follower.refresh() or self.handovers.dirty:
                    self.handovers.dirty = False
                    await self.reconcile()
            except Exception:
                log.exception("placement update")

    def _measure_bytes_in(self, now: float) -> dict[str, float]:
        logs = self.logs
        rates: dict[str, float] = {}
        for (topic, partition), handover in self.handovers.table.items():
            if handover.state is not State.LEADING or topic not in logs.topics:
                continue
            plog = logs.topics[topic].partitions[partition]
            size = sum(s.size for s in plog.segments)
            then, before = self._sizes.get((topic, partition), (now, size))
            self._sizes[(topic, partition)] = (now, size)
            if now > then:
                rates[f"{topic}/{partition}"] = round(max(0, size - before) / (now - then), 1)
        return rates

    def _end_offsets(self) -> dict[str, int]:
        """Log end offset per non-empty partition this broker leads (in its lease; an empty partition
        has no lag whatever was committed, so leaving it out changes no sum)."""
        logs = self.logs
        out: dict[str, int] = {}
        for (topic, partition), handover in self.handovers.table.items():
            if handover.state is State.LEADING and topic in logs.topics:
                end = logs.topics[topic].partitions[partition].log_end_offset
                if end:
                    out[f"{topic}/{partition}"] = end
        return out

    # ---- consumer lag across brokers ---------------------------------------------------------

    async def refresh_peer_end_offsets(self) -> None:
        """Read the other brokers' leases for the end offsets of the partitions the placement says they
        lead (as fresh as their last renewal, every lease_ms / 3): the group coordinator's lag then
        covers partitions led elsewhere. A lease that cannot be read leaves its partitions out."""
        ends: dict[tuple[str, int], int] = {}
        for other in self.other_brokers():
            raw = await self.tier.store.get_or_none(member_key(self.tier.prefix, self.tier.cluster, other.id))
            if raw is None:
                continue
            for name, offset in MemberLease.from_json(raw).end_offsets.items():
                topic, _, partition = name.rpartition("/")
                assignment = self.follower.assignment(topic, int(partition))
                if assignment is not None and assignment.leader == other.id:
                    ends[(topic, int(partition))] = offset
        self._peer_ends = ends

    def end_offset(self, topic: str, partition: int) -> int | None:
        """A partition's log end offset: this broker's own if it leads it, else the leader's (its last
        lease, as read by refresh_peer_end_offsets); None when unknown. A local copy of a partition
        led elsewhere is stale and never used."""
        if self.leads(topic, partition):
            plog = self._plog(topic, partition)
            return plog.log_end_offset if plog is not None else None
        return self._peer_ends.get((topic, partition))

    # ---- questions the request handlers ask --------------------------------------------------

    def leads(self, topic: str, partition: int) -> bool:
        handover = self.handovers.get((topic, partition))
        if handover is None or not handover.leading() or not self.lease.valid():
            return False
        plog = self._plog(topic, partition)
        return plog is not None and not plog.fenced

    def check_leader(self, topic: str, partition: int) -> None:
        if not self.leads(topic, partition):
            if self.follower.assignment(topic, partition) is None and topic in self.logs.topics:
                raise KafkaProtocolError(ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} is not placed yet")
            raise KafkaProtocolError(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                     f"broker {self.node_id} does not lead {topic}-{partition}")

    def may_ack(self, topic: str, partition: int, epoch: int) -> bool:
        """Whether a write appended at `epoch` may be acknowledged now: the lease still holds, and
        no newer leader has claimed the partition (if one did, the write is the old leader's to
        lose, and the producer retries against the new one)."""
        plog = self._plog(topic, partition)
        return self.lease.valid() and plog is not None and plog.leader_epoch == epoch and not plog.fenced

    def coordinates(self, group_id: str) -> bool:
        topic = self.logs.topics.get(OFFSETS_TOPIC)
        if topic is None:
            return False
        return self.leads(OFFSETS_TOPIC, partition_for(group_id, len(topic.partitions)))

    def coordinator_of(self, group_id: str) -> BrokerAddress | None:
        return self.follower.coordinator_of(group_id)

    def txn_coordinator_of(self, transactional_id: str) -> BrokerAddress | None:
        return self.follower.coordinator_of(transactional_id, TRANSACTION_TOPIC)

    def controller_id(self) -> int:
        return self.follower.controller_id()

    def other_brokers(self) -> list[BrokerAddress]:
        return self.follower.other_brokers()

    def partition_leaders(self, topic: str, topic_id: str, partitions: int) -> list[PartitionLeader] | None:
        return self.follower.partition_leaders(topic, topic_id)

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
        return self.handovers.plog((topic, partition))

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
        self._drop_topic(topic.name)
        self.tier.topic_deleted(topic)

    def _drop_topic(self, name: str) -> bool:
        """Forget every hand-over of a topic; whether there was any."""
        keys = [k for k in self.handovers.table if k[0] == name]
        for key in keys:
            self.handovers.drop(key)
        return bool(keys)

    # ---- following the placement ---------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring this broker in line with the placement: adopt placed topics, start the hand-overs
        the follower decides on, and forget deleted topics."""
        if self.handovers.stopping:
            return
        placement = self.placement
        logs = self.logs
        handovers = self.handovers
        for name, placed in placement.topics.items():
            self._created_here.discard(name)
            local = logs.topics.get(name)
            topic_id = uuid.UUID(placed.id)
            if local is None or local.topic_id != topic_id:
                self._drop_topic(name)
                local = logs.adopt_topic(name, topic_id, len(placed.partitions), placed.configs,
                                         internal=name in (OFFSETS_TOPIC, TRANSACTION_TOPIC))
                self.tier.attach_topic(local)
            else:
                if len(local.partitions) < len(placed.partitions):
                    logs.grow_topic(name, len(placed.partitions))
                if placed.configs != local.overrides:
                    logs.set_topic_overrides(name, placed.configs)
                self.tier.attach_topic(local)
            has_local_copy = {p: plog.log_end_offset > 0 for p, plog in enumerate(local.partitions)}
            for key, move, epoch in self.follower.moves(name, handovers.held(), has_local_copy):
                if move is Move.ACQUIRE:
                    handovers.acquire(key, epoch)
                elif move is Move.RELEASE:
                    handovers.release(key)
                else:
                    handovers.late_seal(key)
        # Topics the placement no longer has were deleted (unless created here and not placed yet).
        for name in deleted_topics(placement, list(logs.topics), self._created_here):
            topic = logs.topics[name]
            led = self._drop_topic(name)
            logs.delete_topic(name, notify=False)
            if led:
                # An upload racing the deletion elsewhere may have left objects behind.
                self.tier.topic_deleted(topic)

    # ---- shutdown ------------------------------------------------------------------------------

    async def stop(self, timeout: float = 20.0) -> None:
        """Hand every partition back sealed, so successors start at once, then drop the lease."""
        for task in self._tasks:
            task.cancel()
        if self.shared is not None:
            self.shared.stop()
        await self.handovers.stop(timeout)
        await self.lease.drop()

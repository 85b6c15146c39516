"""The group coordinator: membership (membership.py for classic groups, consumer_group.py for KIP-848
consumer groups) and committed offsets (offset_manager.py) composed.

One broker coordinates every group, or, in a cluster, the groups of the offsets partitions it
leads (`partition_acquired` / `partition_released`). The request handlers (protocol/groups.py)
and the broker talk to `GroupCoordinator` only; it hands membership calls to the
`MembershipCoordinator` and offset calls to the `OffsetManager`, and does the few things that
need both: a commit is checked against the membership first, an Empty group without offsets is
forgotten, offsets retention runs over the groups that are Empty, DeleteGroups.

A group id is either a classic group or a consumer group, as in Kafka (with
group.consumer.migration.policy=disabled): a ConsumerGroupHeartbeat for a classic group that has
members is answered GROUP_ID_NOT_FOUND, a JoinGroup for a consumer group that has members
INCONSISTENT_GROUP_PROTOCOL; an Empty group (committed offsets only) becomes whichever kind joins
it next, its offsets kept.

A consumer group's membership is persisted in `__consumer_offsets` as Kafka's consumer-group records
(consumer_group_records.py): every request or tick that changed one appends its records before it
answers (`persist_consumer_groups`), and loading the topic (or, in a cluster, one partition of it)
brings the groups back with their members, epochs and assignments. Classic groups are not
persisted: after a restart or a coordinator move their members rejoin (JoinGroup), their offsets kept.

Both clocks are constructor arguments (monotonic for deadlines, wall for retention and record
timestamps), so tests drive time; `tick()`, which the broker calls every
group.coordinator.tick.ms, is when sessions, join phases and retention are checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import KafkaProtocolError
from .consumer_group import (
    ConsumerGroup,
    ConsumerGroupCoordinator,
    HeartbeatError,
    HeartbeatResult,
    MemberHeartbeat,
    unknown_group,
)
from .group import E, Group, GroupState, JoinResult, SyncResult
from .membership import MembershipCoordinator
from .offset_manager import OffsetManager
from .offsets import CommittedOffset, OffsetStore

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager
    from ..log.partition import PartitionLog
    from ..replica import ReplicaManager

__all__ = ["E", "GroupCoordinator"]

log = logging.getLogger(__name__)


class GroupCoordinator:
    """The classic consumer group protocol, membership and offsets, as the handlers call it."""

    def __init__(self, config: BrokerConfig, logs: LogManager, replicas: ReplicaManager, *,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        store = OffsetStore(logs, replicas, int(config["offsets.topic.num.partitions"]), wall=wall)
        self.offsets = OffsetManager(config, logs, store, wall=wall)
        self.membership = MembershipCoordinator(config, self.offsets.has_offsets, monotonic=monotonic, wall=wall)
        self.consumer = ConsumerGroupCoordinator(config, logs, monotonic=monotonic, wall=wall)
        store.record_sink = self.consumer.replay  # consumer-group records are replayed with the offsets
        self.tick_ms = int(config["group.coordinator.tick.ms"])
        # Cluster mode: offsets partitions taken over whose records are still being replayed.
        self._loading: set[int] = set()

    @property
    def groups(self) -> dict[str, Group]:
        return self.membership.groups

    # ---- lifecycle -----------------------------------------------------------------------

    async def load_all(self) -> None:
        """One broker coordinates every group: load every offsets partition (in a cluster, each is
        loaded by `partition_acquired` when this broker takes it over). A group with consumer-group
        records comes back as that consumer group, members and all; one with offsets only as an
        Empty classic group."""
        with_offsets = await self.offsets.load_all()
        self.consumer.finish_load()
        self.membership.adopt(g for g in with_offsets if g not in self.consumer.groups)

    def stop(self) -> None:
        self.membership.stop()

    async def partition_acquired(self, plog: PartitionLog) -> None:
        """Cluster mode: this broker now coordinates the groups stored in this offsets partition
        (`loading` says so for its groups until the replay is over)."""
        self._loading.add(plog.partition)
        try:
            with_offsets = await self.offsets.load_partition(plog)

            def mine(group_id: str) -> bool:
                return self.offsets.partition_of(group_id) == plog.partition

            if plog.partition not in self._loading:  # released while it was being replayed: forget it again
                self.offsets.unload_partition(plog.partition)
                self.consumer.release([g for g in self.consumer.stored if mine(g)])
                return
            self.consumer.finish_load(mine)
            self.membership.adopt(g for g in with_offsets if g not in self.consumer.groups)
        finally:
            self._loading.discard(plog.partition)

    def loading(self, group_id: str) -> bool:
        """Is the group's offsets partition still being replayed (its state not known yet)?"""
        return bool(self._loading) and self.offsets.partition_of(group_id) in self._loading

    def partition_released(self, partition: int) -> None:
        """Cluster mode: the groups of this offsets partition are coordinated elsewhere now;
        their members are told to find the new coordinator."""
        self._loading.discard(partition)
        self.offsets.unload_partition(partition)
        self.membership.release([g for g in self.membership.groups if self.offsets.partition_of(g) == partition])
        self.consumer.release([g for g in self.consumer.groups if self.offsets.partition_of(g) == partition])

    def ensure_offsets_topic(self) -> None:
        self.offsets.ensure_topic()

    async def tick(self) -> None:
        """Expire sessions and pending members, end join phases past their deadline, then expire
        the offsets of groups Empty for longer than offsets.retention.minutes."""
        self.membership.tick()
        self.consumer.tick()
        for group in list(self.consumer.groups.values()):
            self._maybe_drop_consumer(group)
        await self.persist_consumer_groups()
        if self.offsets.retention_ms <= 0:
            return
        for cgroup in list(self.consumer.groups.values()):
            if cgroup.members or cgroup.empty_since_ms is None:
                continue
            if await self.offsets.expire_group(cgroup.group_id, cgroup.empty_since_ms):
                self._maybe_drop_consumer(cgroup)
        await self.persist_consumer_groups()
        for group_id in self.membership.empty_groups():
            since = self.membership.empty_since(group_id)
            if since is None:
                continue
            if await self.offsets.expire_group(group_id, since):
                group = self.membership.groups.get(group_id)
                if group is not None:
                    self.membership.maybe_drop(group)

    # ---- the consumer group protocol (KIP-848) ---------------------------------------------

    async def persist_consumer_groups(self) -> int:
        """Append the records of every consumer group changed since the last call (all appended
        before any is awaited, so the log has them in the order of the changes), then wait until
        they are durable. NONE, or the error to answer (NOT_COORDINATOR: the partition moved)."""
        waits = []
        error = E.NONE
        for group_id, records in self.consumer.take_changes():
            try:
                waits.append((group_id, self.offsets.store.append_records(group_id, records)))
            except KafkaProtocolError as exc:
                log.error("cannot store consumer group %s: %s", group_id, exc)
                error = E.NOT_COORDINATOR if exc.code == E.NOT_COORDINATOR else E.COORDINATOR_NOT_AVAILABLE
        for group_id, wait in waits:
            try:
                await wait
            except KafkaProtocolError as exc:
                log.error("cannot store consumer group %s: %s", group_id, exc)
                error = E.NOT_COORDINATOR if exc.code == E.NOT_COORDINATOR else E.COORDINATOR_NOT_AVAILABLE
        return error

    async def consumer_heartbeat(self, req: MemberHeartbeat, version: int) -> HeartbeatResult:
        """ConsumerGroupHeartbeat: errors come back in the result, with Kafka's messages. What the
        heartbeat changed is in __consumer_offsets before the answer goes out (as Kafka)."""
        try:
            self.consumer.validate(req, version)
            classic = self.membership.live(req.group_id)
            if classic is not None:
                if classic.members or classic.pending_members:
                    raise HeartbeatError(E.GROUP_ID_NOT_FOUND, f"Group {req.group_id} is not a consumer group.")
                if req.member_epoch != 0:
                    # An Empty group known from its offsets only (e.g. after a restart): the member rejoins.
                    raise unknown_group(req)
                # An Empty classic group (offsets only) becomes a consumer group; its offsets stay.
                self.membership.groups.pop(req.group_id, None)
                classic.state = GroupState.DEAD
            result = self.consumer.heartbeat(req)
        except HeartbeatError as exc:
            log.debug("ConsumerGroupHeartbeat %s refused with %d: %s", req, exc.code, exc.message)
            result = HeartbeatResult(exc.code, exc.message, req.member_id or None, req.member_epoch)
        group = self.consumer.groups.get(req.group_id)
        if group is not None:
            self._maybe_drop_consumer(group)
        error = await self.persist_consumer_groups()
        if error != E.NONE and result.error == E.NONE:
            return HeartbeatResult(error, "the group's state could not be stored", req.member_id or None,
                                   req.member_epoch)
        return result

    def _maybe_drop_consumer(self, group: ConsumerGroup) -> None:
        """Forget an Empty consumer group with nothing committed."""
        if not group.members and not self.offsets.has_offsets(group.group_id):
            self.consumer.drop(group.group_id)

    def consumer_group(self, group_id: str) -> ConsumerGroup | None:
        return self.consumer.get(group_id)

    def is_consumer_group(self, group_id: str) -> bool:
        return self.consumer.get(group_id) is not None

    # ---- membership ----------------------------------------------------------------------

    async def join_group(self, group_id: str, member_id: str, instance_id: str | None, protocol_type: str,
                         protocols: list[tuple[str, bytes]], session_timeout_ms: int, rebalance_timeout_ms: int,
                         client_id: str, client_host: str, require_known_member: bool) -> JoinResult:
        cgroup = self.consumer.get(group_id)
        if cgroup is not None:
            if cgroup.members:
                return JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, member_id)
            self.consumer.drop(group_id)  # an Empty consumer group (offsets only) becomes a classic group
            await self.persist_consumer_groups()
        return await self.membership.join_group(group_id, member_id, instance_id, protocol_type, protocols,
                                                session_timeout_ms, rebalance_timeout_ms, client_id, client_host,
                                                require_known_member)

    async def sync_group(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None,
                         protocol_type: str | None, protocol_name: str | None,
                         assignments: Iterable[tuple[str, bytes]]) -> SyncResult:
        return await self.membership.sync_group(group_id, generation_id, member_id, instance_id, protocol_type,
                                                protocol_name, assignments)

    def heartbeat(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None) -> int:
        return self.membership.heartbeat(group_id, generation_id, member_id, instance_id)

    def leave_group(self, group_id: str, leaving: list[tuple[str, str | None]]) -> tuple[int, list[int]]:
        """Returns (group error, one error per leaving member)."""
        return self.membership.leave_group(group_id, leaving)

    # ---- offsets -------------------------------------------------------------------------

    async def commit_offsets(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None,
                             offsets: dict[tuple[str, int], CommittedOffset], api_version: int = 8
                             ) -> dict[tuple[str, int], int]:
        """OffsetCommit: the membership check, then the store; one error code per partition. A
        consumer group checks the member epoch (`generation_id`), a classic group the generation."""
        cgroup = self.consumer.get(group_id)
        if cgroup is not None:
            error = self.consumer.check_commit(cgroup, member_id, generation_id, api_version)
            if error != E.NONE:
                return {tp: error for tp in offsets}
            results = await self.offsets.commit(group_id, offsets)
            if not cgroup.members and cgroup.empty_since_ms is None:
                cgroup.empty_since_ms = int(self.membership.wall() * 1000)
            return results
        error, group = self.membership.check_commit(group_id, generation_id, member_id, instance_id)
        if error != E.NONE:
            return {tp: error for tp in offsets}
        assert group is not None
        results = await self.offsets.commit(group_id, offsets)
        self.membership.offsets_committed(group)
        return results

    def check_txn_member(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None) -> int:
        """TxnOffsetCommit v3+ (KIP-447): the member's generation, or its member epoch in a consumer group."""
        cgroup = self.consumer.get(group_id)
        if cgroup is not None:
            return self.consumer.check_commit(cgroup, member_id, generation_id, 9, transactional=True)
        return self.membership.check_commit(group_id, generation_id, member_id, instance_id)[0]

    def fetch_offsets(self, group_id: str, partitions: list[tuple[str, int]] | None
                      ) -> dict[tuple[str, int], CommittedOffset | None]:
        return self.offsets.fetch(group_id, partitions)

    def check_fetch(self, group_id: str, member_id: str | None, member_epoch: int) -> int:
        """OffsetFetch v9+ from a consumer-group member: its epoch must be current (-1: the admin)."""
        cgroup = self.consumer.get(group_id)
        if cgroup is None or member_epoch == -1 and not member_id:
            return E.NONE
        return self.consumer.check_fetch(cgroup, member_id, member_epoch)

    async def delete_offsets(self, group_id: str, partitions: list[tuple[str, int]]
                             ) -> tuple[int, dict[tuple[str, int], int]]:
        """OffsetDelete: not for the topics a non-Empty group subscribes to (nor for any topic if
        its members' subscriptions cannot be read)."""
        cgroup = self.consumer.get(group_id)
        if cgroup is not None:
            results = await self.offsets.delete(group_id, partitions, cgroup.subscribed_topics())
            self._maybe_drop_consumer(cgroup)
            await self.persist_consumer_groups()
            return E.NONE, results
        group = self.membership.live(group_id)
        if group is None:
            return E.GROUP_ID_NOT_FOUND, {}
        subscribed: set[str] = set()
        if not group.is_(GroupState.EMPTY):
            topics = group.subscribed_topics()
            if topics is None:
                return E.NON_EMPTY_GROUP, {}
            subscribed = topics
        results = await self.offsets.delete(group_id, partitions, subscribed)
        self.membership.maybe_drop(group)
        return E.NONE, results

    # ---- metering ------------------------------------------------------------------------

    def lag(self, logs: LogManager, end_offset: Callable[[str, int], int | None] | None = None
            ) -> list[tuple[str, str, str | None, int]]:
        """(group, topic, a member's client id, lag) for every group with committed offsets here:
        the lag of a topic is the sum over its partitions of log end offset - committed offset.
        `end_offset` gives a partition's log end offset (None: unknown; in a cluster, that of the
        broker leading it); without it, this broker's own logs. Internal topics and partitions whose
        end offset is unknown are left out."""
        out: list[tuple[str, str, str | None, int]] = []
        for group_id in sorted(self.offsets.store.groups()):
            per_topic: dict[str, int] = {}
            for (topic, partition), committed in self.offsets.store.group_offsets(group_id).items():
                if topic.startswith("__"):
                    continue
                if end_offset is not None:
                    end = end_offset(topic, partition)
                    if end is None:
                        continue
                else:
                    try:
                        end = logs.get_partition(topic, partition).log_end_offset
                    except KafkaProtocolError:
                        continue
                per_topic[topic] = per_topic.get(topic, 0) + max(0, end - committed.offset)
            group = self.membership.groups.get(group_id)
            clients = sorted({m.client_id for m in group.members.values()}) if group is not None else []
            cgroup = self.consumer.get(group_id)
            if cgroup is not None:
                clients = sorted({m.client_id for m in cgroup.members.values()})
            for topic, lag in sorted(per_topic.items()):
                out.append((group_id, topic, clients[0] if clients else None, lag))
        return out

    # ---- admin ---------------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        return self.membership.list_groups()

    def list_consumer_groups(self) -> list[ConsumerGroup]:
        return [g for g in self.consumer.groups.values() if not g.dead]

    def describe_group(self, group_id: str) -> Group | None:
        return self.membership.describe_group(group_id)

    async def delete_group(self, group_id: str) -> int:
        """DeleteGroups for one Empty group: its offsets are deleted, then the group is forgotten."""
        cgroup = self.consumer.get(group_id)
        if cgroup is not None:
            if cgroup.members:
                return E.NON_EMPTY_GROUP
            try:
                await self.offsets.delete_group(group_id)
            except KafkaProtocolError as exc:
                log.error("cannot delete offsets of group %s: %s", group_id, exc)
                return E.COORDINATOR_NOT_AVAILABLE
            self.consumer.drop(group_id)
            error = await self.persist_consumer_groups()
            if error != E.NONE:
                return error
            log.info("deleted consumer group %s", group_id)
            return E.NONE
        error, group = self.membership.begin_delete(group_id)
        if error != E.NONE:
            return error
        assert group is not None
        try:
            await self.offsets.delete_group(group_id)
        except KafkaProtocolError as exc:
            log.error("cannot delete offsets of group %s: %s", group_id, exc)
            self.membership.abort_delete(group)
            return E.COORDINATOR_NOT_AVAILABLE
        self.membership.end_delete(group)
        log.info("deleted group %s", group_id)
        return E.NONE

"""The group coordinator for the classic consumer group protocol (Kafka's GroupCoordinator).

One broker coordinates every group. State machine per group:

    Empty -> PreparingRebalance -> CompletingRebalance -> Stable -> PreparingRebalance ...

- JoinGroup parks each member's request until every known member has rejoined (or the
  rebalance timeout removes those that did not), then answers all of them with the new
  generation; only the leader gets the members' subscriptions.
- SyncGroup parks followers until the leader sends the assignment.
- Session timeouts are checked by `tick()`, which the broker calls periodically.
- Committed offsets live in `OffsetStore` (durable in `__consumer_offsets`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import KafkaProtocolError
from .group import Group, GroupState, JoinResult, Member, SyncResult
from .offsets import CommittedOffset, OffsetStore, partition_for

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager
    from ..log.partition import PartitionLog
    from ..replica import ReplicaManager

log = logging.getLogger(__name__)


class E:
    """Kafka error codes used by the coordinator."""

    NONE = 0
    UNKNOWN_TOPIC_OR_PARTITION = 3
    OFFSET_METADATA_TOO_LARGE = 12
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_REQUEST = 42
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    MEMBER_ID_REQUIRED = 79
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    GROUP_SUBSCRIBED_TO_TOPIC = 86


def _now() -> float:
    return time.monotonic()


class GroupCoordinator:
    def __init__(self, config: BrokerConfig, logs: LogManager, replicas: ReplicaManager) -> None:
        self.logs = logs
        self.groups: dict[str, Group] = {}
        self.offsets = OffsetStore(logs, replicas, int(config["offsets.topic.num.partitions"]))
        self.min_session_ms = int(config["group.min.session.timeout.ms"])
        self.max_session_ms = int(config["group.max.session.timeout.ms"])
        self.initial_delay_ms = int(config["group.initial.rebalance.delay.ms"])
        self.max_group_size = int(config["group.max.size"])
        self.max_metadata_bytes = int(config["offset.metadata.max.bytes"])
        self.offsets_retention_ms = int(config["offsets.retention.minutes"]) * 60_000
        self.tick_ms = int(config["group.coordinator.tick.ms"])
        # group -> wall-clock ms when it became Empty (for offsets.retention.minutes).
        self._empty_since: dict[str, int] = {}

    # ---- lifecycle -----------------------------------------------------------------------

    async def load_all(self) -> None:
        """One broker coordinates every group: load every offsets partition (in a cluster, each is
        loaded by `partition_acquired` when this broker takes it over)."""
        await self.offsets.load()
        now_ms = int(time.time() * 1000)
        for group_id in self.offsets.groups():
            self.groups.setdefault(group_id, Group(group_id))
            self._empty_since[group_id] = now_ms

    def stop(self) -> None:
        for group in self.groups.values():
            for member in group.members.values():
                member.complete_join(JoinResult(E.COORDINATOR_NOT_AVAILABLE, member.member_id))
                member.complete_sync(SyncResult(E.COORDINATOR_NOT_AVAILABLE))

    async def partition_acquired(self, plog: PartitionLog) -> None:
        """Cluster mode: this broker now coordinates the groups stored in this offsets partition."""
        count = await self.offsets.load_partition(plog)
        now_ms = int(time.time() * 1000)
        for group_id in self.offsets.groups():
            if partition_for(group_id, self.offsets.num_partitions) == plog.partition and group_id not in self.groups:
                self.groups[group_id] = Group(group_id)
                self._empty_since[group_id] = now_ms
        log.info("coordinating the groups of %s-%d (%d record(s) loaded)", plog.topic, plog.partition, count)

    def partition_released(self, partition: int) -> None:
        """Cluster mode: the groups of this offsets partition are coordinated elsewhere now;
        their members are told to find the new coordinator."""
        self.offsets.unload_partition(partition)
        for group_id in [g for g in self.groups if partition_for(g, self.offsets.num_partitions) == partition]:
            group = self.groups.pop(group_id)
            self._empty_since.pop(group_id, None)
            for member in group.members.values():
                member.complete_join(JoinResult(E.NOT_COORDINATOR, member.member_id))
                member.complete_sync(SyncResult(E.NOT_COORDINATOR))

    def ensure_offsets_topic(self) -> None:
        try:
            self.offsets._ensure_topic()
        except KafkaProtocolError as exc:
            log.warning("cannot create the offsets topic: %s", exc)

    async def tick(self) -> None:
        """Expire sessions and pending members, end join phases past their deadline."""
        now = _now()
        for group in list(self.groups.values()):
            for member_id, deadline in list(group.pending_members.items()):
                if now >= deadline:
                    del group.pending_members[member_id]
                    if group.is_(GroupState.PREPARING_REBALANCE):
                        self._try_complete_join(group)
            for member in list(group.members.values()):
                if member.awaiting_join or member.awaiting_sync:
                    continue
                if now >= member.session_deadline:
                    log.info("member %s of group %s failed to heartbeat within %d ms; removing it",
                             member.member_id, group.group_id, member.session_timeout_ms)
                    self._remove_member_and_update(group, member)
            if group.is_(GroupState.PREPARING_REBALANCE) and now >= group.rebalance_deadline:
                self._complete_join(group)
        await self._expire_offsets()

    async def _expire_offsets(self) -> None:
        if self.offsets_retention_ms <= 0:
            return
        now_ms = int(time.time() * 1000)
        for group_id, since in list(self._empty_since.items()):
            group = self.groups.get(group_id)
            if group is None or not group.is_(GroupState.EMPTY):
                self._empty_since.pop(group_id, None)
                continue
            if now_ms - since < self.offsets_retention_ms:
                continue
            entries = self.offsets.group_offsets(group_id)
            expired = {tp: None for tp, e in entries.items()
                       if now_ms - e.commit_timestamp >= self.offsets_retention_ms}
            if expired:
                log.info("expiring %d offset(s) of empty group %s", len(expired), group_id)
                await self.offsets.write(group_id, expired)  # type: ignore[arg-type]
            self._maybe_drop(group)

    # ---- helpers -------------------------------------------------------------------------

    def _maybe_drop(self, group: Group) -> None:
        """Forget an Empty group with nothing committed (Kafka marks it Dead)."""
        if group.is_(GroupState.EMPTY) and not group.members and not group.pending_members \
                and not self.offsets.group_offsets(group.group_id):
            group.state = GroupState.DEAD
            self.groups.pop(group.group_id, None)
            self._empty_since.pop(group.group_id, None)

    def _get_or_create(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        return group

    @staticmethod
    def _fenced(group: Group, member_id: str, instance_id: str | None) -> bool:
        if instance_id is None:
            return False
        current = group.static_members.get(instance_id)
        return current is not None and current != member_id

    def _touch(self, member: Member) -> None:
        member.session_deadline = _now() + member.session_timeout_ms / 1000.0

    # ---- JoinGroup -----------------------------------------------------------------------

    async def join_group(self, group_id: str, member_id: str, instance_id: str | None, protocol_type: str,
                         protocols: list[tuple[str, bytes]], session_timeout_ms: int, rebalance_timeout_ms: int,
                         client_id: str, client_host: str, require_known_member: bool) -> JoinResult:
        if not group_id:
            return JoinResult(E.INVALID_GROUP_ID, member_id)
        if not self.min_session_ms <= session_timeout_ms <= self.max_session_ms:
            return JoinResult(E.INVALID_SESSION_TIMEOUT, member_id)
        group = self.groups.get(group_id)
        if group is None:
            if member_id:
                return JoinResult(E.UNKNOWN_MEMBER_ID, member_id)
            group = self._get_or_create(group_id)
        if group.is_(GroupState.DEAD):
            return JoinResult(E.COORDINATOR_NOT_AVAILABLE, member_id)
        if not group.supports(protocol_type, protocols):
            self._maybe_drop(group)
            return JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, member_id)
        args = (instance_id, protocol_type, protocols, session_timeout_ms, rebalance_timeout_ms, client_id,
                client_host)
        if not member_id:
            if instance_id is not None:
                new_id = f"{instance_id}-{uuid.uuid4()}"
                old_id = group.static_members.get(instance_id)
                if old_id is not None and old_id in group.members:
                    return await self._replace_static_member(group, old_id, new_id, *args)
                if len(group.members) >= self.max_group_size:
                    return JoinResult(E.GROUP_MAX_SIZE_REACHED, member_id)
                return await self._add_member_and_rebalance(group, new_id, *args)
            new_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if len(group.members) + len(group.pending_members) >= self.max_group_size:
                return JoinResult(E.GROUP_MAX_SIZE_REACHED, member_id)
            if require_known_member:
                # KIP-394: hand out the id first; the member joins again with it.
                group.pending_members[new_id] = _now() + session_timeout_ms / 1000.0
                return JoinResult(E.MEMBER_ID_REQUIRED, new_id)
            return await self._add_member_and_rebalance(group, new_id, *args)
        return await self._join_known_member(group, member_id, *args)

    async def _join_known_member(self, group: Group, member_id: str, instance_id: str | None, protocol_type: str,
                                 protocols: list[tuple[str, bytes]], session_timeout_ms: int,
                                 rebalance_timeout_ms: int, client_id: str, client_host: str) -> JoinResult:
        if member_id in group.pending_members:
            del group.pending_members[member_id]
            return await self._add_member_and_rebalance(group, member_id, instance_id, protocol_type, protocols,
                                                        session_timeout_ms, rebalance_timeout_ms, client_id,
                                                        client_host)
        if self._fenced(group, member_id, instance_id):
            return JoinResult(E.FENCED_INSTANCE_ID, member_id)
        member = group.members.get(member_id)
        if member is None or group.state in (GroupState.EMPTY, GroupState.DEAD):
            return JoinResult(E.UNKNOWN_MEMBER_ID, member_id)
        member.client_id, member.client_host = client_id, client_host
        self._touch(member)
        if group.is_(GroupState.COMPLETING_REBALANCE) and member.matches(protocols):
            # The member lost our JoinGroup answer: repeat it.
            return self._current_generation(group, member)
        if group.is_(GroupState.STABLE) and member.matches(protocols) and member_id != group.leader_id:
            return self._current_generation(group, member)
        return await self._update_member_and_rebalance(group, member, protocols, session_timeout_ms,
                                                       rebalance_timeout_ms)

    def _current_generation(self, group: Group, member: Member) -> JoinResult:
        is_leader = member.member_id == group.leader_id
        return JoinResult(E.NONE, member.member_id, group.generation_id, group.protocol_type, group.protocol_name,
                          group.leader_id or "", self._member_list(group) if is_leader else [])

    def _member_list(self, group: Group) -> list[tuple[str, str | None, bytes]]:
        assert group.protocol_name is not None
        return [(m.member_id, m.group_instance_id, m.metadata_for(group.protocol_name)) for m in group.members.values()]

    def _new_join_future(self, member: Member) -> asyncio.Future[JoinResult]:
        if member.awaiting_join:
            # A second JoinGroup from the same member replaces the first one.
            member.complete_join(JoinResult(E.REBALANCE_IN_PROGRESS, member.member_id))
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_future = future
        return future

    async def _add_member_and_rebalance(self, group: Group, member_id: str, instance_id: str | None,
                                        protocol_type: str, protocols: list[tuple[str, bytes]],
                                        session_timeout_ms: int, rebalance_timeout_ms: int, client_id: str,
                                        client_host: str) -> JoinResult:
        member = Member(member_id, instance_id, client_id, client_host, session_timeout_ms, rebalance_timeout_ms,
                        protocol_type, protocols, is_new=True)
        self._touch(member)
        future = self._new_join_future(member)
        group.add_member(member)
        self._empty_since.pop(group.group_id, None)
        if group.is_(GroupState.PREPARING_REBALANCE) and group.initial_rebalance_cap:
            # Initial join: wait a little longer for the rest of the members to arrive.
            group.rebalance_deadline = min(_now() + self.initial_delay_ms / 1000.0, group.initial_rebalance_cap)
        log.info("member %s joins group %s (%d member(s))", member_id, group.group_id, len(group.members))
        self._maybe_prepare_rebalance(group, f"member {member_id} joined")
        return await future

    async def _update_member_and_rebalance(self, group: Group, member: Member, protocols: list[tuple[str, bytes]],
                                           session_timeout_ms: int, rebalance_timeout_ms: int) -> JoinResult:
        member.protocols = protocols
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        future = self._new_join_future(member)
        self._maybe_prepare_rebalance(group, f"member {member.member_id} rejoined")
        return await future

    async def _replace_static_member(self, group: Group, old_id: str, new_id: str, instance_id: str | None,
                                     protocol_type: str, protocols: list[tuple[str, bytes]],
                                     session_timeout_ms: int, rebalance_timeout_ms: int, client_id: str,
                                     client_host: str) -> JoinResult:
        member = group.members.pop(old_id)
        member.complete_join(JoinResult(E.FENCED_INSTANCE_ID, old_id))
        member.complete_sync(SyncResult(E.FENCED_INSTANCE_ID))
        was_leader = group.leader_id == old_id
        member.member_id = new_id
        member.client_id, member.client_host = client_id, client_host
        group.members[new_id] = member
        assert instance_id is not None
        group.static_members[instance_id] = new_id
        if was_leader:
            group.leader_id = new_id
        self._touch(member)
        log.info("static member %s of group %s rejoined as %s", instance_id, group.group_id, new_id)
        if group.is_(GroupState.STABLE) and member.matches(protocols) and not was_leader:
            # Same instance, same subscription: keep the assignment, no rebalance (KIP-345).
            return self._current_generation(group, member)
        return await self._update_member_and_rebalance(group, member, protocols, session_timeout_ms,
                                                       rebalance_timeout_ms)

    def _maybe_prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY):
            self._prepare_rebalance(group, reason)
        elif group.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(group)

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.is_(GroupState.COMPLETING_REBALANCE):
            for member in group.members.values():
                member.assignment = b""
                member.complete_sync(SyncResult(E.REBALANCE_IN_PROGRESS))
        now = _now()
        rebalance_s = max((m.rebalance_timeout_ms for m in group.members.values()), default=0) / 1000.0
        if group.is_(GroupState.EMPTY) and self.initial_delay_ms > 0:
            group.rebalance_deadline = now + min(self.initial_delay_ms / 1000.0, rebalance_s)
            group.initial_rebalance_cap = now + rebalance_s
        else:
            group.rebalance_deadline = now + rebalance_s
            group.initial_rebalance_cap = 0.0
        log.info("preparing to rebalance group %s in generation %d (%s)", group.group_id, group.generation_id,
                 reason)
        group.state = GroupState.PREPARING_REBALANCE
        self._try_complete_join(group)

    def _try_complete_join(self, group: Group) -> None:
        if not group.is_(GroupState.PREPARING_REBALANCE):
            return
        if group.initial_rebalance_cap and _now() < group.rebalance_deadline:
            return  # the initial delay ends in tick()
        if group.all_joined():
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        for member in list(group.members.values()):
            if not member.awaiting_join:
                log.info("member %s of group %s did not rejoin in time; removing it", member.member_id,
                         group.group_id)
                group.remove_member(member.member_id)
        group.initial_rebalance_cap = 0.0
        group.generation_id += 1
        if not group.members:
            group.state = GroupState.EMPTY
            group.protocol_name = None
            group.leader_id = None
            log.info("group %s is empty in generation %d", group.group_id, group.generation_id)
            self._empty_since[group.group_id] = int(time.time() * 1000)
            self._maybe_drop(group)
            return
        if group.leader_id not in group.members:
            group.leader_id = next(iter(group.members))
        group.protocol_name = group.select_protocol()
        group.state = GroupState.COMPLETING_REBALANCE
        log.info("group %s: generation %d with %d member(s), protocol %s, leader %s", group.group_id,
                 group.generation_id, len(group.members), group.protocol_name, group.leader_id)
        members = self._member_list(group)
        for member in group.members.values():
            member.is_new = False
            self._touch(member)
            member.complete_join(JoinResult(
                E.NONE, member.member_id, group.generation_id, group.protocol_type, group.protocol_name,
                group.leader_id, members if member.member_id == group.leader_id else []))

    def _remove_member_and_update(self, group: Group, member: Member) -> None:
        member.complete_join(JoinResult(E.UNKNOWN_MEMBER_ID, member.member_id))
        member.complete_sync(SyncResult(E.UNKNOWN_MEMBER_ID))
        group.remove_member(member.member_id)
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, f"member {member.member_id} left")
        elif group.is_(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(group)

    # ---- SyncGroup -----------------------------------------------------------------------

    async def sync_group(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None,
                         protocol_type: str | None, protocol_name: str | None,
                         assignments: Iterable[tuple[str, bytes]]) -> SyncResult:
        group = self.groups.get(group_id)
        if not group_id:
            return SyncResult(E.INVALID_GROUP_ID)
        if group is None:
            return SyncResult(E.UNKNOWN_MEMBER_ID)
        if group.is_(GroupState.DEAD):
            return SyncResult(E.COORDINATOR_NOT_AVAILABLE)
        if self._fenced(group, member_id, instance_id):
            return SyncResult(E.FENCED_INSTANCE_ID)
        member = group.members.get(member_id)
        if member is None:
            return SyncResult(E.UNKNOWN_MEMBER_ID)
        if generation_id != group.generation_id:
            return SyncResult(E.ILLEGAL_GENERATION)
        if (protocol_type is not None and protocol_type != group.protocol_type) or \
                (protocol_name is not None and protocol_name != group.protocol_name):
            return SyncResult(E.INCONSISTENT_GROUP_PROTOCOL)
        if group.is_(GroupState.PREPARING_REBALANCE):
            return SyncResult(E.REBALANCE_IN_PROGRESS)
        self._touch(member)
        if group.is_(GroupState.STABLE):
            return SyncResult(E.NONE, member.assignment, group.protocol_type, group.protocol_name)
        if not group.is_(GroupState.COMPLETING_REBALANCE):
            return SyncResult(E.UNKNOWN_MEMBER_ID)
        if member.awaiting_sync:
            member.complete_sync(SyncResult(E.REBALANCE_IN_PROGRESS))
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        member.sync_future = future
        if member_id == group.leader_id:
            given = {mid: bytes(data or b"") for mid, data in assignments}
            for m in group.members.values():
                m.assignment = given.get(m.member_id, b"")
            group.state = GroupState.STABLE
            log.info("group %s is stable in generation %d", group.group_id, group.generation_id)
            for m in group.members.values():
                m.complete_sync(SyncResult(E.NONE, m.assignment, group.protocol_type, group.protocol_name))
        return await future

    # ---- Heartbeat and LeaveGroup --------------------------------------------------------

    def heartbeat(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None) -> int:
        if not group_id:
            return E.INVALID_GROUP_ID
        group = self.groups.get(group_id)
        if group is None:
            return E.UNKNOWN_MEMBER_ID
        if group.is_(GroupState.DEAD):
            return E.COORDINATOR_NOT_AVAILABLE
        if self._fenced(group, member_id, instance_id):
            return E.FENCED_INSTANCE_ID
        member = group.members.get(member_id)
        if member is None or group.is_(GroupState.EMPTY):
            return E.UNKNOWN_MEMBER_ID
        if generation_id != group.generation_id:
            return E.ILLEGAL_GENERATION
        self._touch(member)
        if group.is_(GroupState.PREPARING_REBALANCE):
            return E.REBALANCE_IN_PROGRESS
        return E.NONE

    def leave_group(self, group_id: str, leaving: list[tuple[str, str | None]]) -> tuple[int, list[int]]:
        """Returns (group error, one error per leaving member)."""
        if not group_id:
            return E.INVALID_GROUP_ID, [E.INVALID_GROUP_ID] * len(leaving)
        group = self.groups.get(group_id)
        if group is None:
            return E.NONE, [E.UNKNOWN_MEMBER_ID] * len(leaving)
        if group.is_(GroupState.DEAD):
            return E.COORDINATOR_NOT_AVAILABLE, [E.COORDINATOR_NOT_AVAILABLE] * len(leaving)
        errors = []
        for member_id, instance_id in leaving:
            if not member_id and instance_id is not None:
                member_id = group.static_members.get(instance_id, "")
                if not member_id:
                    errors.append(E.UNKNOWN_MEMBER_ID)
                    continue
            elif self._fenced(group, member_id, instance_id):
                errors.append(E.FENCED_INSTANCE_ID)
                continue
            if member_id in group.pending_members:
                del group.pending_members[member_id]
                self._try_complete_join(group)
                errors.append(E.NONE)
                continue
            member = group.members.get(member_id)
            if member is None:
                errors.append(E.UNKNOWN_MEMBER_ID)
                continue
            log.info("member %s leaves group %s", member_id, group.group_id)
            self._remove_member_and_update(group, member)
            errors.append(E.NONE)
        return E.NONE, errors

    # ---- offsets -------------------------------------------------------------------------

    async def commit_offsets(self, group_id: str, generation_id: int, member_id: str, instance_id: str | None,
                             offsets: dict[tuple[str, int], CommittedOffset]) -> dict[tuple[str, int], int]:
        def all_(code: int) -> dict[tuple[str, int], int]:
            return {tp: code for tp in offsets}

        group = self.groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return all_(E.ILLEGAL_GENERATION)
            group = self._get_or_create(group_id)
        if group.is_(GroupState.DEAD):
            return all_(E.COORDINATOR_NOT_AVAILABLE)
        if self._fenced(group, member_id, instance_id):
            return all_(E.FENCED_INSTANCE_ID)
        if generation_id < 0 and group.is_(GroupState.EMPTY):
            pass  # a consumer that assigns partitions itself
        elif group.is_(GroupState.COMPLETING_REBALANCE):
            return all_(E.REBALANCE_IN_PROGRESS)
        elif member_id not in group.members:
            return all_(E.UNKNOWN_MEMBER_ID)
        elif generation_id != group.generation_id:
            return all_(E.ILLEGAL_GENERATION)
        else:
            self._touch(group.members[member_id])
        results: dict[tuple[str, int], int] = {}
        valid: dict[tuple[str, int], CommittedOffset | None] = {}
        logs = self.logs
        for tp, entry in offsets.items():
            topic, partition = tp
            if entry.metadata is not None and len(entry.metadata.encode("utf-8")) > self.max_metadata_bytes:
                results[tp] = E.OFFSET_METADATA_TOO_LARGE
                continue
            try:
                logs.get_partition(topic, partition)
            except KafkaProtocolError:
                results[tp] = E.UNKNOWN_TOPIC_OR_PARTITION
                continue
            valid[tp] = entry
        if valid:
            try:
                await self.offsets.write(group_id, valid)
                code = E.NONE
            except KafkaProtocolError as exc:
                log.error("cannot store offsets of group %s: %s", group_id, exc)
                code = E.COORDINATOR_NOT_AVAILABLE
            for tp in valid:
                results[tp] = code
        if group.is_(GroupState.EMPTY):
            self._empty_since.setdefault(group_id, int(time.time() * 1000))
            self._maybe_drop(group)
        return results

    def fetch_offsets(self, group_id: str, partitions: list[tuple[str, int]] | None
                      ) -> dict[tuple[str, int], CommittedOffset | None]:
        committed = self.offsets.group_offsets(group_id)
        if partitions is None:
            return dict(committed)
        return {tp: committed.get(tp) for tp in partitions}

    async def delete_offsets(self, group_id: str, partitions: list[tuple[str, int]]
                             ) -> tuple[int, dict[tuple[str, int], int]]:
        group = self.groups.get(group_id)
        if group is None or group.is_(GroupState.DEAD):
            return E.GROUP_ID_NOT_FOUND, {}
        subscribed: set[str] = set()
        if not group.is_(GroupState.EMPTY):
            topics = group.subscribed_topics()
            if topics is None:
                return E.NON_EMPTY_GROUP, {}
            subscribed = topics
        results: dict[tuple[str, int], int] = {}
        doomed: dict[tuple[str, int], CommittedOffset | None] = {}
        committed = self.offsets.group_offsets(group_id)
        for tp in partitions:
            topic, partition = tp
            try:
                self.logs.get_partition(topic, partition)
            except KafkaProtocolError:
                results[tp] = E.UNKNOWN_TOPIC_OR_PARTITION
                continue
            if topic in subscribed:
                results[tp] = E.GROUP_SUBSCRIBED_TO_TOPIC
                continue
            results[tp] = E.NONE
            if tp in committed:
                doomed[tp] = None
        if doomed:
            await self.offsets.write(group_id, doomed)
        self._maybe_drop(group)
        return E.NONE, results

    # ---- admin ---------------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.is_(GroupState.DEAD)]

    def describe_group(self, group_id: str) -> Group | None:
        group = self.groups.get(group_id)
        return None if group is None or group.is_(GroupState.DEAD) else group

    async def delete_group(self, group_id: str) -> int:
        if not group_id:
            return E.INVALID_GROUP_ID
        group = self.groups.get(group_id)
        if group is None or group.is_(GroupState.DEAD):
            return E.GROUP_ID_NOT_FOUND
        if not group.is_(GroupState.EMPTY) or group.members or group.pending_members:
            return E.NON_EMPTY_GROUP
        group.state = GroupState.DEAD
        try:
            await self.offsets.delete_group(group_id)
        except KafkaProtocolError as exc:
            log.error("cannot delete offsets of group %s: %s", group_id, exc)
            group.state = GroupState.EMPTY
            return E.COORDINATOR_NOT_AVAILABLE
        self.groups.pop(group_id, None)
        self._empty_since.pop(group_id, None)
        log.info("deleted group %s", group_id)
        return E.NONE

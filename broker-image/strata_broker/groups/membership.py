"""Group membership for the classic consumer group protocol (the membership half of Kafka's GroupCoordinator).

State machine per group:

    Empty -> PreparingRebalance -> CompletingRebalance -> Stable -> PreparingRebalance ...

- JoinGroup parks each member's request until every known member has rejoined (or the
  rebalance timeout removes those that did not), then answers all of them with the new
  generation; only the leader gets the members' subscriptions.
- SyncGroup parks followers until the leader sends the assignment.
- Session timeouts, pending-member deadlines and join-phase deadlines are checked by `tick()`.

Time comes from two clocks handed in: a monotonic one for every deadline, a wall clock (seconds
since the epoch) for `Group.empty_since_ms`, from which the offset manager counts
offsets.retention.minutes. Committed offsets are not kept here: `has_offsets` tells whether an
Empty group still has some (and so is kept rather than forgotten).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .group import E, Group, GroupState, JoinResult, Member, SyncResult

if TYPE_CHECKING:
    from ..config import BrokerConfig

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class MembershipCoordinator:
    """Every group this broker coordinates, its members, generations and rebalances."""

    def __init__(self, config: BrokerConfig, has_offsets: Callable[[str], bool], *,
                 monotonic: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.groups: dict[str, Group] = {}
        self.has_offsets = has_offsets
        self.monotonic = monotonic
        self.wall = wall
        self.min_session_ms = int(config["group.min.session.timeout.ms"])
        self.max_session_ms = int(config["group.max.session.timeout.ms"])
        self.initial_delay_ms = int(config["group.initial.rebalance.delay.ms"])
        self.max_group_size = int(config["group.max.size"])

    def _wall_ms(self) -> int:
        return int(self.wall() * 1000)

    # ---- lifecycle -----------------------------------------------------------------------

    def adopt(self, group_ids: Iterable[str]) -> None:
        """Groups found in the offsets topic: each one not known yet becomes an Empty group whose
        offsets retention starts counting now."""
        now_ms = self._wall_ms()
        for group_id in group_ids:
            if group_id not in self.groups:
                self.groups[group_id] = Group(group_id, empty_since_ms=now_ms)

    def release(self, group_ids: Iterable[str]) -> None:
        """These groups are coordinated elsewhere now: forget them; their waiting members are told
        to find the new coordinator."""
        for group_id in list(group_ids):
            group = self.groups.pop(group_id, None)
            if group is None:
                continue
            for member in group.members.values():
                member.complete_join(JoinResult(E.NOT_COORDINATOR, member.member_id))
                member.complete_sync(SyncResult(E.NOT_COORDINATOR))

    def stop(self) -> None:
        """Answer every parked JoinGroup and SyncGroup: the coordinator is going away."""
        for group in self.groups.values():
            for member in group.members.values():
                member.complete_join(JoinResult(E.COORDINATOR_NOT_AVAILABLE, member.member_id))
                member.complete_sync(SyncResult(E.COORDINATOR_NOT_AVAILABLE))

    def tick(self) -> None:
        """Expire sessions and pending members, end join phases past their deadline."""
        now = self.monotonic()
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

    def empty_groups(self) -> list[str]:
        """The groups whose offsets retention clock is running (see `empty_since`)."""
        return [g.group_id for g in self.groups.values() if g.empty_since_ms is not None]

    def empty_since(self, group_id: str) -> int | None:
        """Wall-clock ms since when the group has been Empty; None if it is unknown, has no
        retention clock, or is no longer Empty (its clock is then cleared)."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        if not group.is_(GroupState.EMPTY):
            group.empty_since_ms = None
        return group.empty_since_ms

    # ---- group lookup for the offset side --------------------------------------------------

    def live(self, group_id: str) -> Group | None:
        """The group, unless it is unknown or being deleted (Dead)."""
        group = self.groups.get(group_id)
        return None if group is None or group.is_(GroupState.DEAD) else group

    def check_commit(self, group_id: str, generation_id: int, member_id: str,
                     instance_id: str | None) -> tuple[int, Group | None]:
        """May this member commit offsets for the group now? (error, group); a commit with no
        generation (a consumer assigning partitions itself) creates the group. A commit from a
        member counts as a sign of life."""
        group = self.groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return E.ILLEGAL_GENERATION, None
            group = self._get_or_create(group_id)
        if group.is_(GroupState.DEAD):
            return E.COORDINATOR_NOT_AVAILABLE, group
        if self._fenced(group, member_id, instance_id):
            return E.FENCED_INSTANCE_ID, group
        if generation_id < 0 and group.is_(GroupState.EMPTY):
            pass  # a consumer that assigns partitions itself
        elif group.is_(GroupState.COMPLETING_REBALANCE):
            return E.REBALANCE_IN_PROGRESS, group
        elif member_id not in group.members:
            return E.UNKNOWN_MEMBER_ID, group
        elif generation_id != group.generation_id:
            return E.ILLEGAL_GENERATION, group
        else:
            self._touch(group.members[member_id])
        return E.NONE, group

    def offsets_committed(self, group: Group) -> None:
        """After a commit: an Empty group's retention clock starts if it was not running."""
        if group.is_(GroupState.EMPTY):
            if group.empty_since_ms is None:
                group.empty_since_ms = self._wall_ms()
            self.maybe_drop(group)

    def begin_delete(self, group_id: str) -> tuple[int, Group | None]:
        """DeleteGroups: an Empty group with nobody joining turns Dead while its offsets are
        deleted (`end_delete` forgets it, `abort_delete` brings it back)."""
        if not group_id:
            return E.INVALID_GROUP_ID, None
        group = self.groups.get(group_id)
        if group is None or group.is_(GroupState.DEAD):
            return E.GROUP_ID_NOT_FOUND, None
        if not group.is_(GroupState.EMPTY) or group.members or group.pending_members:
            return E.NON_EMPTY_GROUP, None
        group.state = GroupState.DEAD
        return E.NONE, group

    def abort_delete(self, group: Group) -> None:
        group.state = GroupState.EMPTY

    def end_delete(self, group: Group) -> None:
        if self.groups.get(group.group_id) is group:
            del self.groups[group.group_id]

    def maybe_drop(self, group: Group) -> None:
        """Forget an Empty group with nothing committed (Kafka marks it Dead)."""
        if group.is_(GroupState.EMPTY) and not group.members and not group.pending_members \
                and not self.has_offsets(group.group_id):
            group.state = GroupState.DEAD
            self.groups.pop(group.group_id, None)

    # ---- helpers -------------------------------------------------------------------------

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
        member.session_deadline = self.monotonic() + member.session_timeout_ms / 1000.0

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
            self.maybe_drop(group)
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
                group.pending_members[new_id] = self.monotonic() + session_timeout_ms / 1000.0
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
        group.empty_since_ms = None
        if group.is_(GroupState.PREPARING_REBALANCE) and group.initial_rebalance_cap:
            # Initial join: wait a little longer for the rest of the members to arrive.
            group.rebalance_deadline = min(self.monotonic() + self.initial_delay_ms / 1000.0,
                                           group.initial_rebalance_cap)
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
        now = self.monotonic()
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
        if group.initial_rebalance_cap and self.monotonic() < group.rebalance_deadline:
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
            group.empty_since_ms = self._wall_ms()
            self.maybe_drop(group)
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

    # ---- admin ---------------------------------------------------------------------------

    def list_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.is_(GroupState.DEAD)]

    def describe_group(self, group_id: str) -> Group | None:
        return self.live(group_id)

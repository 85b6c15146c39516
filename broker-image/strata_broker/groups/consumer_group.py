"""The KIP-848 consumer group protocol: consumer groups, member epochs and server-side assignment.

A member talks to the coordinator with ConsumerGroupHeartbeat only (no JoinGroup/SyncGroup): it
joins with epoch 0 and its subscription, then heartbeats with its current epoch and, when they
changed, the partitions it owns. The coordinator keeps, per group (Kafka's GroupMetadataManager):

- the group epoch, bumped whenever the membership, a subscription or the subscribed topics'
  partitions change;
- the target assignment, computed by a server-side assignor (`assignors.py`, chosen by the member's
  ServerAssignor or the first of `group.consumer.assignors`) for the group epoch; its epoch is the
  assignment epoch;
- each member's current assignment and member epoch, reconciled towards the target one step at a
  time (Kafka's CurrentAssignmentBuilder): partitions the target takes away are first *revoked*
  (the member keeps its epoch and stays in UNREVOKED_PARTITIONS until a heartbeat no longer lists
  them as owned), then the member moves to the target epoch and receives its new partitions; a
  partition still owned (assigned or pending revocation) by another member is held back
  (UNRELEASED_PARTITIONS) until that member let it go. So no partition is ever owned by two members.

Sessions (`group.consumer.session.timeout.ms`) and revocations (the member's rebalance timeout) are
checked by `tick()`; a member past either is removed (fenced) and its partitions released.
Static members (instance id) may leave with epoch -2 and be replaced by a new member with the same
instance id, which takes over the assignment without a rebalance.

Committed offsets live in `__consumer_offsets` as for classic groups (the offset manager), and so
does the membership, as Kafka's consumer-group records (consumer_group_records.py): the group epoch,
the subscribed topics' metadata, each member's subscription, the target assignment and each member's
current assignment (epoch, previous epoch, state, partitions). Every change marks what it touched
(`_mark`); `take_changes()` then compares the records the state makes with the ones last written
(`ConsumerGroup.persisted`) and returns the new values and the tombstones (a member gone, a group
deleted) for the façade to append before it answers. On load (a restart, or in a cluster the
offsets partition taken over) `replay` collects the newest record per key and `finish_load` rebuilds
the groups: members keep their member id, epoch and assignment, and must heartbeat within the
session timeout (counted from the load) or are removed.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import regex

from . import consumer_group_records as rec
from .assignors import ASSIGNORS, assignor_names
from .group import E

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager

log = logging.getLogger(__name__)

Partitions = dict[str, set[int]]  # topic name -> partitions

# A topic regex may spend this long on one topic name (Python's matcher backtracks; Kafka's RE2 does not).
REGEX_TIMEOUT_S = 0.05

# Member epochs a heartbeat may carry besides the member's own.
JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2


class CE:
    """Error codes of the KIP-848 APIs beyond the classic ones (group.E)."""

    UNSUPPORTED_VERSION = 35
    FENCED_MEMBER_EPOCH = 110
    UNRELEASED_INSTANCE_ID = 111
    UNSUPPORTED_ASSIGNOR = 112
    STALE_MEMBER_EPOCH = 113
    INVALID_REGULAR_EXPRESSION = 128


class MemberState(Enum):
    STABLE = "stable"
    UNREVOKED_PARTITIONS = "unrevoked_partitions"
    UNRELEASED_PARTITIONS = "unreleased_partitions"


class ConsumerGroupState(Enum):
    EMPTY = "Empty"
    ASSIGNING = "Assigning"
    RECONCILING = "Reconciling"
    STABLE = "Stable"
    DEAD = "Dead"


class HeartbeatError(Exception):
    """A heartbeat refused with this error code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class MemberHeartbeat:
    """The fields of a ConsumerGroupHeartbeat, owned partitions by topic name (unknown ids dropped)."""

    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topics: list[str] | None = None
    subscribed_regex: str | None = None
    server_assignor: str | None = None
    owned: Partitions | None = None
    client_id: str = ""
    client_host: str = ""


@dataclass
class HeartbeatResult:
    error: int = E.NONE
    message: str | None = None
    member_id: str | None = None
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: Partitions | None = None  # None: not sent (unchanged)


@dataclass
class ConsumerMember:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topics: list[str] = field(default_factory=list)
    subscribed_regex: str | None = None
    server_assignor: str | None = None
    rebalance_timeout_ms: int = -1
    epoch: int = 0
    previous_epoch: int = -1
    state: MemberState = MemberState.STABLE
    assigned: Partitions = field(default_factory=dict)
    pending_revocation: Partitions = field(default_factory=dict)
    session_deadline: float = 0.0
    # Monotonic deadline by which partitions pending revocation must be revoked (None: nothing pending).
    revocation_deadline: float | None = None
    # How many topics the broker had when the regex was last resolved (it is resolved again when that changes).
    regex_topic_count: int = -1

    def owned_partitions(self) -> set[tuple[str, int]]:
        """Assigned and pending revocation: what this member may still be consuming."""
        return {(t, p) for src in (self.assigned, self.pending_revocation) for t, ps in src.items() for p in ps}


@dataclass
class ConsumerGroup:
    group_id: str
    group_epoch: int = 0
    assignment_epoch: int = 0
    members: dict[str, ConsumerMember] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    target: dict[str, Partitions] = field(default_factory=dict)  # member id -> target assignment
    owners: dict[tuple[str, int], str] = field(default_factory=dict)  # partition -> owning member id
    # The subscribed topics as last seen: name -> (topic id, partition count).
    topic_meta: dict[str, tuple[uuid.UUID, int]] = field(default_factory=dict)
    assignor: str = ""
    empty_since_ms: int | None = None
    dead: bool = False
    # The records last written for this group (key -> value): what the next changes are relative to.
    persisted: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state(self) -> ConsumerGroupState:
        if self.dead:
            return ConsumerGroupState.DEAD
        if not self.members:
            return ConsumerGroupState.EMPTY
        if self.assignment_epoch < self.group_epoch:
            return ConsumerGroupState.ASSIGNING
        for member in self.members.values():
            if member.epoch >= 0 and (member.epoch != self.assignment_epoch or member.state is not MemberState.STABLE):
                return ConsumerGroupState.RECONCILING
        return ConsumerGroupState.STABLE

    def subscribed_topics(self) -> set[str]:
        return {t for m in self.members.values() for t in m.subscribed_topics}

    def set_ownership(self, member: ConsumerMember, before: set[tuple[str, int]]) -> None:
        for tp in before:
            if self.owners.get(tp) == member.member_id:
                del self.owners[tp]
        for tp in member.owned_partitions():
            self.owners[tp] = member.member_id


def unknown_group(req: MemberHeartbeat) -> HeartbeatError:
    """A heartbeat (not a join) for a group this coordinator has no members of (deleted, expired,
    or known from its offsets only). Kafka answers GROUP_ID_NOT_FOUND, which librdkafka treats as
    fatal; UNKNOWN_MEMBER_ID makes the member rejoin with epoch 0."""
    return HeartbeatError(E.UNKNOWN_MEMBER_ID, f"Member {req.member_id} is not a member of group {req.group_id}: "
                                               f"the coordinator does not know the group; "
                                               f"rejoin with member epoch 0.")


def _copy(parts: Partitions) -> Partitions:
    return {t: set(ps) for t, ps in parts.items() if ps}


def _flatten(parts: Partitions | None) -> set[tuple[str, int]]:
    return {(t, p) for t, ps in (parts or {}).items() for p in ps}


class ConsumerGroupCoordinator:
    """Every consumer-protocol group this broker coordinates."""

    def __init__(self, config: BrokerConfig, logs: LogManager, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.logs = logs
        self.monotonic = monotonic
        self.wall = wall
        self.groups: dict[str, ConsumerGroup] = {}
        self.heartbeat_interval_ms = int(config["group.consumer.heartbeat.interval.ms"])
        self.session_timeout_ms = int(config["group.consumer.session.timeout.ms"])
        self.max_size = int(config["group.consumer.max.size"])
        self.assignors = assignor_names(str(config["group.consumer.assignors"]))
        # Groups changed since the last take_changes(): (group, the members touched or None for all).
        self.dirty: list[tuple[ConsumerGroup, set[str] | None]] = []
        # Records replayed from __consumer_offsets, by group, until finish_load() builds the groups.
        self.stored: dict[str, rec.StoredGroup] = {}

    # ---- lookups -------------------------------------------------------------------------

    def get(self, group_id: str) -> ConsumerGroup | None:
        group = self.groups.get(group_id)
        return None if group is None or group.dead else group

    def _topic_meta(self, names: set[str]) -> dict[str, tuple[uuid.UUID, int]]:
        out = {}
        for name in names:
            try:
                topic = self.logs.get_topic(name)
            except Exception:
                continue
            out[name] = (topic.topic_id, len(topic.partitions))
        return out

    def _resolve_regex(self, pattern: str) -> list[str]:
        """The non-internal topics the whole of whose name the regex matches; a pattern that takes
        too long on a name raises HeartbeatError(INVALID_REGULAR_EXPRESSION)."""
        compiled = regex.compile(pattern)
        try:
            return sorted(t for t in self.logs.topics
                          if not t.startswith("__") and compiled.fullmatch(t, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            raise HeartbeatError(CE.INVALID_REGULAR_EXPRESSION,
                                 f"SubscribedTopicRegex {pattern} takes too long to match.") from None

    def topic_id(self, name: str) -> uuid.UUID | None:
        try:
            return self.logs.get_topic(name).topic_id
        except Exception:
            return None

    # ---- ConsumerGroupHeartbeat ----------------------------------------------------------

    def validate(self, req: MemberHeartbeat, version: int) -> None:
        """The request checks Kafka makes before looking at the group (INVALID_REQUEST and friends)."""
        def invalid(message: str) -> HeartbeatError:
            return HeartbeatError(E.INVALID_REQUEST, message)

        if not req.group_id:
            raise invalid("GroupId can't be empty.")
        if req.instance_id is not None and not req.instance_id:
            raise invalid("InstanceId can't be empty.")
        if req.rack_id is not None and not req.rack_id:
            raise invalid("RackId can't be empty.")
        if version >= 1 and not req.member_id:
            raise invalid("MemberId can't be empty.")
        if req.member_epoch == JOIN_EPOCH:
            if req.rebalance_timeout_ms == -1:
                raise invalid("RebalanceTimeoutMs must be provided in first request.")
            if req.owned is None or req.owned:
                raise invalid("TopicPartitions must be empty when (re-)joining.")
            if req.subscribed_topics is None and req.subscribed_regex is None:
                raise invalid("SubscribedTopicNames or SubscribedTopicRegex must be set in first request.")
        elif req.member_epoch == STATIC_LEAVE_EPOCH:
            if req.instance_id is None:
                raise invalid("InstanceId can't be null.")
        elif req.member_epoch < STATIC_LEAVE_EPOCH:
            raise invalid(f"MemberEpoch is invalid: {req.member_epoch}.")
        elif not req.member_id:
            raise invalid("MemberId can't be empty.")
        if req.server_assignor is not None and req.server_assignor not in self.assignors:
            raise HeartbeatError(CE.UNSUPPORTED_ASSIGNOR,
                                 f"ServerAssignor {req.server_assignor} is not supported. "
                                 f"Supported assignors: {', '.join(self.assignors)}.")
        if req.subscribed_regex:
            try:
                regex.compile(req.subscribed_regex)
            except regex.error as exc:
                raise HeartbeatError(CE.INVALID_REGULAR_EXPRESSION,
                                     f"SubscribedTopicRegex {req.subscribed_regex} is invalid: {exc}") from None

    def heartbeat(self, req: MemberHeartbeat) -> HeartbeatResult:
        """A validated heartbeat (see `validate`): join, leave or stay, then reconcile."""
        if req.member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(req)
        group = self.get(req.group_id)
        if group is None:
            if req.member_epoch != JOIN_EPOCH:
                raise unknown_group(req)
            group = self.groups[req.group_id] = ConsumerGroup(req.group_id)
        if len(group.members) >= self.max_size and (not req.member_id or req.member_id not in group.members):
            raise HeartbeatError(E.GROUP_MAX_SIZE_REACHED,
                                 f"The consumer group has reached its maximum capacity of {self.max_size} members.")
        member_id = req.member_id or str(uuid.uuid4())
        replaced: ConsumerMember | None = None
        if req.instance_id is None:
            member = group.members.get(member_id)
            if member is None:
                if req.member_epoch != JOIN_EPOCH:
                    raise HeartbeatError(E.UNKNOWN_MEMBER_ID, f"Member {member_id} is not a member of group "
                                                              f"{group.group_id}.")
                member = ConsumerMember(member_id)
            else:
                self._check_epoch(member, req.member_epoch, req.owned)
        else:
            static_id = group.static_members.get(req.instance_id)
            static = group.members.get(static_id) if static_id is not None else None
            if req.member_epoch == JOIN_EPOCH:
                if static is None:
                    member = group.members.get(member_id) or ConsumerMember(member_id)
                elif static.epoch != STATIC_LEAVE_EPOCH:
                    raise HeartbeatError(CE.UNRELEASED_INSTANCE_ID,
                                         f"Static member {member_id} with instance id {req.instance_id} cannot join "
                                         f"the group because the instance id is owned by {static.member_id} member.")
                else:
                    # The instance comes back under a new member id: it takes over the assignment.
                    replaced = static
                    member = ConsumerMember(member_id, assigned=_copy(static.assigned))
            else:
                if static is None:
                    raise HeartbeatError(E.UNKNOWN_MEMBER_ID, f"Instance id {req.instance_id} is unknown.")
                if static.member_id != member_id:
                    raise HeartbeatError(E.FENCED_INSTANCE_ID,
                                         f"Static member {member_id} with instance id {req.instance_id} was fenced "
                                         f"by member {static.member_id}.")
                member = static
                self._check_epoch(member, req.member_epoch, req.owned)
        is_new = replaced is not None or member_id not in group.members
        epochs_before = (group.group_epoch, group.assignment_epoch)
        before_assigned = _copy(member.assigned)
        previous = replaced if replaced is not None else member
        before_subscription = (list(previous.subscribed_topics), previous.subscribed_regex)

        # 1. The member's fields; a changed subscription bumps the group epoch.
        if req.instance_id is not None:
            member.instance_id = req.instance_id
        if req.rack_id is not None:
            member.rack_id = req.rack_id
        if req.rebalance_timeout_ms != -1:
            member.rebalance_timeout_ms = req.rebalance_timeout_ms
        if req.server_assignor is not None:
            member.server_assignor = req.server_assignor
        if req.subscribed_regex:  # an empty regex is none (librdkafka sends "" beside the topic names)
            if req.subscribed_regex != member.subscribed_regex:
                member.regex_topic_count = -1
            member.subscribed_regex = req.subscribed_regex
        elif req.subscribed_topics is not None:
            member.subscribed_topics = sorted(set(req.subscribed_topics))
            member.subscribed_regex = None
        if member.subscribed_regex and member.regex_topic_count != len(self.logs.topics):
            member.subscribed_topics = self._resolve_regex(member.subscribed_regex)
            member.regex_topic_count = len(self.logs.topics)
        member.client_id, member.client_host = req.client_id, req.client_host
        bump = (list(member.subscribed_topics), member.subscribed_regex) != before_subscription
        if replaced is not None:
            target = group.target.get(replaced.member_id, {})
            self._remove(group, replaced, bump_epoch=False)
            group.target[member_id] = target
        if is_new:
            group.members[member_id] = member
            if member.instance_id is not None:
                group.static_members[member.instance_id] = member_id
            group.empty_since_ms = None
            group.set_ownership(member, set())
            log.info("member %s joins consumer group %s (%d member(s))", member_id, group.group_id,
                     len(group.members))
        meta = self._topic_meta(group.subscribed_topics())
        if meta != group.topic_meta:
            group.topic_meta = meta
            bump = True
        if bump:
            group.group_epoch += 1
            log.info("consumer group %s: group epoch %d", group.group_id, group.group_epoch)

        # 2. A new target assignment for a new group epoch.
        if group.group_epoch > group.assignment_epoch:
            self._compute_target(group, member)

        # 3. Reconcile the member towards its target.
        self._reconcile(group, member, req.owned)
        member.session_deadline = self.monotonic() + self.session_timeout_ms / 1000.0
        self._mark(group, None if is_new or (group.group_epoch, group.assignment_epoch) != epochs_before
                   else member.member_id)
        # The assignment is sent to a joining member, on a full heartbeat (all optional fields set,
        # as a client sends after an error) and when it changed; otherwise it is left out.
        full = req.rebalance_timeout_ms != -1 and req.owned is not None and \
            (req.subscribed_topics is not None or req.subscribed_regex is not None)
        send = full or req.member_epoch == JOIN_EPOCH or member.assigned != before_assigned
        return HeartbeatResult(E.NONE, None, member.member_id, member.epoch, self.heartbeat_interval_ms,
                               _copy(member.assigned) if send else None)

    @staticmethod
    def _check_epoch(member: ConsumerMember, received: int, owned: Partitions | None) -> None:
        if received > member.epoch:
            raise HeartbeatError(CE.FENCED_MEMBER_EPOCH,
                                 f"The consumer group member has a greater member epoch ({received}) than the one "
                                 f"known by the group coordinator ({member.epoch}). The member must abandon all "
                                 f"its partitions and rejoin.")
        if received < member.epoch:
            # The answer with the bumped epoch may have been lost: the previous epoch and a subset of
            # the current assignment are accepted.
            if received != member.previous_epoch or owned is None or \
                    not _flatten(owned) <= _flatten(member.assigned):
                raise HeartbeatError(CE.FENCED_MEMBER_EPOCH,
                                     f"The consumer group member has a smaller member epoch ({received}) than the "
                                     f"one known by the group coordinator ({member.epoch}). The member must abandon "
                                     f"all its partitions and rejoin.")

    def _leave(self, req: MemberHeartbeat) -> HeartbeatResult:
        group = self.get(req.group_id)
        if group is None:
            raise unknown_group(req)
        if req.instance_id is None:
            member = group.members.get(req.member_id)
            if member is None:
                raise HeartbeatError(E.UNKNOWN_MEMBER_ID, f"Member {req.member_id} is not a member of group "
                                                          f"{group.group_id}.")
        else:
            static_id = group.static_members.get(req.instance_id)
            member = group.members.get(static_id) if static_id is not None else None
            if member is None:
                raise HeartbeatError(E.UNKNOWN_MEMBER_ID, f"Instance id {req.instance_id} is unknown.")
            if member.member_id != req.member_id:
                raise HeartbeatError(E.FENCED_INSTANCE_ID,
                                     f"Static member {req.member_id} with instance id {req.instance_id} was fenced "
                                     f"by member {member.member_id}.")
        if req.member_epoch == STATIC_LEAVE_EPOCH:
            # The static member will be back: it keeps its assignment until its session expires.
            log.info("static member %s (instance %s) of consumer group %s leaves temporarily", member.member_id,
                     member.instance_id, group.group_id)
            if member.epoch != STATIC_LEAVE_EPOCH:
                member.previous_epoch = member.epoch
            member.epoch = STATIC_LEAVE_EPOCH
            self._mark(group, member.member_id)
        else:
            log.info("member %s leaves consumer group %s", member.member_id, group.group_id)
            self._remove(group, member)
        return HeartbeatResult(E.NONE, None, req.member_id, req.member_epoch, 0, None)

    def _remove(self, group: ConsumerGroup, member: ConsumerMember, bump_epoch: bool = True) -> None:
        """The member is gone: its partitions are released and (unless replaced) the group rebalances."""
        group.members.pop(member.member_id, None)
        if member.instance_id is not None and group.static_members.get(member.instance_id) == member.member_id:
            del group.static_members[member.instance_id]
        group.target.pop(member.member_id, None)
        for tp in member.owned_partitions():
            if group.owners.get(tp) == member.member_id:
                del group.owners[tp]
        if bump_epoch:
            group.group_epoch += 1
            group.topic_meta = self._topic_meta(group.subscribed_topics())
        if not group.members:
            group.empty_since_ms = int(self.wall() * 1000)
        self._mark(group, None)

    # ---- target assignment ---------------------------------------------------------------

    def _preferred_assignor(self, group: ConsumerGroup) -> str:
        """The assignor the most members ask for (ties: the configured order), else the default."""
        votes: dict[str, int] = {}
        for m in group.members.values():
            if m.server_assignor:
                votes[m.server_assignor] = votes.get(m.server_assignor, 0) + 1
        if not votes:
            return self.assignors[0]
        best = max(votes.values())
        return next(name for name in self.assignors if votes.get(name) == best)

    def _compute_target(self, group: ConsumerGroup, member: ConsumerMember) -> None:
        name = self._preferred_assignor(group)
        subscriptions = {mid: m.subscribed_topics for mid, m in group.members.items()}
        counts = {t: n for t, (_, n) in group.topic_meta.items()}
        group.target = ASSIGNORS[name](subscriptions, counts, group.target)
        group.assignor = name
        group.assignment_epoch = group.group_epoch
        log.info("consumer group %s: target assignment for epoch %d by %s: %s", group.group_id,
                 group.assignment_epoch, name,
                 {m: {t: sorted(ps) for t, ps in a.items()} for m, a in group.target.items()})

    # ---- reconciliation ------------------------------------------------------------------

    def _reconcile(self, group: ConsumerGroup, member: ConsumerMember, owned: Partitions | None) -> None:
        target_epoch = group.assignment_epoch
        if member.epoch == STATIC_LEAVE_EPOCH:
            return
        if member.state is MemberState.STABLE:
            if member.epoch == target_epoch:
                return
            self._next_assignment(group, member, member.epoch, owned)
        elif member.state is MemberState.UNREVOKED_PARTITIONS:
            if self._owns_any(owned, member.pending_revocation):
                return
            self._next_assignment(group, member, min(member.epoch + 1, target_epoch), owned)
        else:
            self._next_assignment(group, member, member.epoch, owned)

    @staticmethod
    def _owns_any(owned: Partitions | None, revoking: Partitions) -> bool:
        """Does the member still own any of these? (unknown: it does)"""
        if owned is None:
            return True
        return bool(_flatten(owned) & _flatten(revoking))

    def _next_assignment(self, group: ConsumerGroup, member: ConsumerMember, epoch: int,
                         owned: Partitions | None) -> None:
        target = group.target.get(member.member_id, {})
        assigned: Partitions = {}
        revoking: Partitions = {}
        assigning: Partitions = {}
        unreleased = False
        for topic in set(target) | set(member.assigned):
            want = target.get(topic, set())
            have = member.assigned.get(topic, set())
            keep = have & want
            if keep:
                assigned[topic] = set(keep)
            if have - keep:
                revoking[topic] = have - keep
            free = set()
            for p in want - keep:
                owner = group.owners.get((topic, p))
                if owner is not None and owner != member.member_id:
                    unreleased = True
                else:
                    free.add(p)
            if free:
                assigning[topic] = free
        before = member.owned_partitions()
        old_epoch = member.epoch
        if revoking and self._owns_any(owned, revoking):
            member.state = MemberState.UNREVOKED_PARTITIONS
            new_epoch = epoch
            member.assigned, member.pending_revocation = assigned, revoking
            if member.revocation_deadline is None:
                timeout = member.rebalance_timeout_ms if member.rebalance_timeout_ms > 0 else self.session_timeout_ms
                member.revocation_deadline = self.monotonic() + timeout / 1000.0
        else:
            for topic, parts in assigning.items():
                assigned.setdefault(topic, set()).update(parts)
            member.state = MemberState.UNRELEASED_PARTITIONS if unreleased else MemberState.STABLE
            new_epoch = group.assignment_epoch
            member.assigned, member.pending_revocation = assigned, {}
            member.revocation_deadline = None
        if new_epoch != old_epoch:
            member.previous_epoch = old_epoch
            member.epoch = new_epoch
        group.set_ownership(member, before)

    # ---- timers --------------------------------------------------------------------------

    def tick(self) -> None:
        """Remove members whose session expired or who did not revoke in their rebalance timeout."""
        now = self.monotonic()
        for group in list(self.groups.values()):
            for member in list(group.members.values()):
                if now >= member.session_deadline:
                    log.info("member %s of consumer group %s failed to heartbeat within %d ms; removing it",
                             member.member_id, group.group_id, self.session_timeout_ms)
                    self._remove(group, member)
                elif member.revocation_deadline is not None and now >= member.revocation_deadline \
                        and member.state is MemberState.UNREVOKED_PARTITIONS:
                    log.info("member %s of consumer group %s did not revoke its partitions within %d ms; "
                             "removing it", member.member_id, group.group_id, member.rebalance_timeout_ms)
                    self._remove(group, member)

    # ---- offsets -------------------------------------------------------------------------

    def check_commit(self, group: ConsumerGroup, member_id: str, member_epoch: int, api_version: int,
                     transactional: bool = False) -> int:
        """May this member commit offsets now (Kafka's ConsumerGroup.validateOffsetCommit)?"""
        if member_epoch < 0 and not group.members:
            return E.NONE  # the admin client, or a consumer assigning partitions itself
        member = group.members.get(member_id)
        if member is None:
            return E.UNKNOWN_MEMBER_ID
        if not transactional and api_version < 9:
            return CE.UNSUPPORTED_VERSION
        if member_epoch != member.epoch:
            return CE.STALE_MEMBER_EPOCH
        return E.NONE

    def check_fetch(self, group: ConsumerGroup, member_id: str | None, member_epoch: int) -> int:
        """May this member fetch the group's offsets (OffsetFetch v9+ carries its epoch)?"""
        if member_epoch == -1:
            return E.NONE
        member = group.members.get(member_id or "")
        if member is None:
            return E.UNKNOWN_MEMBER_ID
        if member_epoch != member.epoch:
            return CE.STALE_MEMBER_EPOCH
        return E.NONE

    # ---- lifecycle -----------------------------------------------------------------------

    def drop(self, group_id: str, persist: bool = True) -> None:
        """Forget the group; with `persist`, its records are tombstoned by the next take_changes()."""
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.dead = True
            if persist:
                self._mark(group, None)

    def release(self, group_ids: list[str]) -> None:
        """Cluster mode: these groups are coordinated elsewhere now (their records stay as they are
        in the log, for the new coordinator to load); their members are sent there."""
        gone = set(group_ids)
        for group_id in gone:
            self.drop(group_id, persist=False)
            self.stored.pop(group_id, None)
        self.dirty = [(g, m) for g, m in self.dirty if g.group_id not in gone]

    # ---- persistence (consumer_group_records.py) ------------------------------------------

    def _mark(self, group: ConsumerGroup, member_id: str | None) -> None:
        """The group changed: the member's records (and the group's), or all of them (None)."""
        for i, (marked, members) in enumerate(self.dirty):
            if marked is group:
                if members is not None:
                    if member_id is None:
                        self.dirty[i] = (group, None)
                    else:
                        members.add(member_id)
                return
        self.dirty.append((group, None if member_id is None else {member_id}))

    def _topic_ids(self, group: ConsumerGroup, parts: Partitions) -> rec.TopicIdPartitions:
        out = []
        for name in sorted(parts):
            if not parts[name]:
                continue
            meta = group.topic_meta.get(name)
            topic_id = meta[0] if meta is not None else self.topic_id(name)
            if topic_id is not None:
                out.append((topic_id, sorted(parts[name])))
        return out

    def _group_records(self, group: ConsumerGroup) -> dict[bytes, bytes]:
        gid = group.group_id
        return {
            rec.encode_key(rec.GROUP_METADATA, gid): rec.encode_epoch(group.group_epoch),
            rec.encode_key(rec.PARTITION_METADATA, gid): rec.encode_partition_metadata(
                [(tid, name, n) for name, (tid, n) in sorted(group.topic_meta.items())]),
            rec.encode_key(rec.TARGET_ASSIGNMENT_METADATA, gid): rec.encode_epoch(group.assignment_epoch),
        }

    def _member_records(self, group: ConsumerGroup, m: ConsumerMember) -> dict[bytes, bytes]:
        gid, mid = group.group_id, m.member_id
        state = {MemberState.STABLE: rec.STATE_STABLE, MemberState.UNREVOKED_PARTITIONS: rec.STATE_UNREVOKED_PARTITIONS,
                 MemberState.UNRELEASED_PARTITIONS: rec.STATE_UNRELEASED_PARTITIONS}[m.state]
        return {
            # A regex member's topic names are not written (Kafka's neither): they are the regex's matches.
            rec.encode_key(rec.MEMBER_METADATA, gid, mid): rec.encode_member_metadata(rec.MemberMetadata(
                m.instance_id, m.rack_id, m.client_id, m.client_host,
                [] if m.subscribed_regex else list(m.subscribed_topics), m.subscribed_regex, m.rebalance_timeout_ms,
                m.server_assignor)),
            rec.encode_key(rec.TARGET_ASSIGNMENT_MEMBER, gid, mid): rec.encode_target_member(
                self._topic_ids(group, group.target.get(mid, {}))),
            rec.encode_key(rec.CURRENT_MEMBER_ASSIGNMENT, gid, mid): rec.encode_current_assignment(
                rec.CurrentAssignment(m.epoch, m.previous_epoch, state, self._topic_ids(group, m.assigned),
                                      self._topic_ids(group, m.pending_revocation))),
        }

    def _changes(self, group: ConsumerGroup, member_ids: set[str] | None) -> list[tuple[bytes, bytes | None]]:
        """The records that bring the log to the group's state (all of it, or these members' and the
        group's own), in the order Kafka writes them: tombstones of members' records first, then
        the group's; new values from the subscription to the current assignment. Updates `persisted`."""
        desired: dict[bytes, bytes] = {}
        if not group.dead:
            desired.update(self._group_records(group))
            for m in group.members.values():
                if member_ids is None or m.member_id in member_ids:
                    desired.update(self._member_records(group, m))
        if member_ids is None:
            candidates: Iterable[bytes] = list(group.persisted)
        else:
            gid = group.group_id
            candidates = [rec.encode_key(t, gid, mid) for mid in member_ids for t in
                          (rec.MEMBER_METADATA, rec.TARGET_ASSIGNMENT_MEMBER, rec.CURRENT_MEMBER_ASSIGNMENT)]
            candidates += [k for k in (rec.encode_key(t, gid) for t in (rec.GROUP_METADATA, rec.PARTITION_METADATA,
                                                                         rec.TARGET_ASSIGNMENT_METADATA))]
        tombstones = [k for k in candidates if k in group.persisted and k not in desired]
        values = [(k, v) for k, v in desired.items() if group.persisted.get(k) != v]
        tombstones.sort(key=lambda k: _TOMBSTONE_ORDER.index(int.from_bytes(k[:2], "big")))
        values.sort(key=lambda kv: _VALUE_ORDER.index(int.from_bytes(kv[0][:2], "big")))
        for k in tombstones:
            del group.persisted[k]
        group.persisted.update(values)
        return [(k, None) for k in tombstones] + [(k, v) for k, v in values]

    def take_changes(self) -> list[tuple[str, list[tuple[bytes, bytes | None]]]]:
        """(group id, records) for every group changed since the last call, in the order changed:
        what to append to the group's offsets partition (call it and append without awaiting in
        between, so the log keeps the order)."""
        out = []
        dirty, self.dirty = self.dirty, []
        for group, members in dirty:
            records = self._changes(group, members)
            if records:
                out.append((group.group_id, records))
        return out

    def replay(self, key: bytes, value: bytes | None) -> None:
        """One record of the offsets topic that is not an offset commit, in log order."""
        try:
            parsed = rec.decode_key(key)
        except (struct.error, ValueError, IndexError, UnicodeDecodeError):
            log.warning("skipping an unreadable consumer-group key in __consumer_offsets")
            return
        if parsed is None:
            return  # classic-group metadata (type 2) or a type Strata does not know
        group_id = parsed[1]
        stored = self.stored.setdefault(group_id, rec.StoredGroup(group_id))
        if value is None:
            stored.records.pop(key, None)
            if not stored.records:
                del self.stored[group_id]
        else:
            stored.records[key] = value

    def finish_load(self, owns: Callable[[str], bool] | None = None) -> list[str]:
        """Rebuild the groups replayed (those `owns` accepts, or all); returns their ids."""
        loaded = []
        names = {t.topic_id: name for name, t in self.logs.topics.items()}
        for group_id in [g for g in self.stored if owns is None or owns(g)]:
            stored = self.stored.pop(group_id)
            try:
                group = self._restore(stored, names)
            except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
                log.warning("cannot restore consumer group %s from __consumer_offsets: %r", group_id, exc)
                continue
            self.groups[group_id] = group
            loaded.append(group_id)
            log.info("consumer group %s loaded: epoch %d, %d member(s)", group_id, group.group_epoch,
                     len(group.members))
        return loaded

    def _restore(self, stored: rec.StoredGroup, names: dict[uuid.UUID, str]) -> ConsumerGroup:
        group_epoch, assignment_epoch, topics, members = stored.decoded()
        group = ConsumerGroup(stored.group_id, group_epoch=group_epoch or 0, assignment_epoch=assignment_epoch or 0)
        group.persisted = dict(stored.records)
        group.topic_meta = {name: (tid, n) for tid, name, n in topics}
        now = self.monotonic()

        def by_name(parts: rec.TopicIdPartitions) -> Partitions:
            return {names[tid]: set(ps) for tid, ps in parts if tid in names and ps}

        states = {rec.STATE_UNREVOKED_PARTITIONS: MemberState.UNREVOKED_PARTITIONS,
                  rec.STATE_UNRELEASED_PARTITIONS: MemberState.UNRELEASED_PARTITIONS}
        for member_id, records in members.items():
            meta = records.get(rec.MEMBER_METADATA)
            if not isinstance(meta, rec.MemberMetadata):
                continue  # an incomplete member: its other records are tombstoned with the next full write
            current = records.get(rec.CURRENT_MEMBER_ASSIGNMENT)
            if not isinstance(current, rec.CurrentAssignment):
                current = rec.CurrentAssignment()
            # (An empty string, as Kafka may write for an optional field, is none.)
            member = ConsumerMember(member_id, instance_id=meta.instance_id or None, rack_id=meta.rack_id or None,
                                    client_id=meta.client_id, client_host=meta.client_host,
                                    subscribed_topics=sorted(set(meta.subscribed_topics)),
                                    subscribed_regex=meta.subscribed_regex or None,
                                    server_assignor=meta.server_assignor if meta.server_assignor in self.assignors
                                    else None,
                                    rebalance_timeout_ms=meta.rebalance_timeout_ms, epoch=current.member_epoch,
                                    previous_epoch=current.previous_member_epoch,
                                    state=states.get(current.state, MemberState.STABLE),
                                    assigned=by_name(current.assigned),
                                    pending_revocation=by_name(current.pending_revocation))
            if member.subscribed_regex:
                try:
                    member.subscribed_topics = self._resolve_regex(member.subscribed_regex)
                    member.regex_topic_count = len(self.logs.topics)
                except (HeartbeatError, regex.error):
                    member.subscribed_topics = []
            # As after a join: the session (and a pending revocation) is counted from the load.
            member.session_deadline = now + self.session_timeout_ms / 1000.0
            if member.state is MemberState.UNREVOKED_PARTITIONS:
                timeout = member.rebalance_timeout_ms if member.rebalance_timeout_ms > 0 else self.session_timeout_ms
                member.revocation_deadline = now + timeout / 1000.0
            target = records.get(rec.TARGET_ASSIGNMENT_MEMBER)
            if isinstance(target, list):
                group.target[member_id] = by_name(target)
            group.members[member_id] = member
            if member.instance_id is not None:
                group.static_members[member.instance_id] = member_id
            group.set_ownership(member, set())
        group.assignor = self._preferred_assignor(group)
        if not group.members:
            group.empty_since_ms = int(self.wall() * 1000)
        return group


# Kafka's order: a member's current assignment, target and subscription go before the group's records;
# new values from the subscription through the group epoch and target to the current assignment.
_TOMBSTONE_ORDER = (rec.CURRENT_MEMBER_ASSIGNMENT, rec.TARGET_ASSIGNMENT_MEMBER, rec.MEMBER_METADATA,
                    rec.TARGET_ASSIGNMENT_METADATA, rec.PARTITION_METADATA, rec.GROUP_METADATA)
_VALUE_ORDER = (rec.MEMBER_METADATA, rec.PARTITION_METADATA, rec.GROUP_METADATA, rec.TARGET_ASSIGNMENT_MEMBER,
                rec.TARGET_ASSIGNMENT_METADATA, rec.CURRENT_MEMBER_ASSIGNMENT)

"""Following the placement: reads the placement file, and decides what this broker does next.

The decisions are pure functions of the placement and what this broker holds, so they can be
read (and tested) apart from the hand-overs that carry them out (cluster/handover.py):
- a partition placed here at an epoch newer than the one held (or not held at all) is acquired;
- a partition held here (or being acquired) that the placement gives to another broker is
  released; one already being released is left to finish;
- a partition this broker has data of from before a restart, now given to another broker, gets
  a late seal (its tail handed over if nobody claimed it yet), then its copy goes;
- a topic the placement no longer has was deleted, unless it was created here and is not
  placed yet.
The questions Metadata and the group coordinator ask about other brokers are answered here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from strata_contract.placement import Assignment, BrokerAddress, Placement, read_placement

from ..groups.offsets import OFFSETS_TOPIC, partition_for
from ..replica.leadership import PartitionLeader

PartitionKey = tuple[str, int]


class Move(Enum):
    ACQUIRE = "acquire"
    RELEASE = "release"
    LATE_SEAL = "late-seal"


@dataclass(frozen=True)
class Held:
    """What this broker holds of a partition, as far as the placement is concerned."""

    epoch: int
    releasing: bool


def decide(node_id: int, assignment: Assignment, held: Held | None, has_local_copy: bool) -> Move | None:
    """The next step for one partition (None: nothing to do)."""
    if assignment.leader == node_id:
        if held is None or (held.epoch < assignment.epoch and not held.releasing):
            return Move.ACQUIRE
        return None
    if held is not None and not held.releasing:
        return Move.RELEASE
    if held is None and has_local_copy:
        return Move.LATE_SEAL
    return None


def deleted_topics(placement: Placement, local: Iterable[str], created_here: set[str]) -> list[str]:
    """Topics this broker has that the placement no longer names (none before the first placement)."""
    if placement.version <= 0:
        return []
    return [n for n in local if n not in placement.topics and n not in created_here]


class PlacementFollower:
    """The newest placement this broker has read, and what it says about other brokers."""

    def __init__(self, path: str, node_id: int) -> None:
        self.path = path
        self.node_id = node_id
        self.placement = Placement()

    def refresh(self) -> bool:
        """Read the file; True when it holds a newer version than the one followed so far."""
        placement = read_placement(self.path)
        if placement is None or placement.version <= self.placement.version:
            return False
        self.placement = placement
        return True

    def moves(self, topic: str, held: Mapping[PartitionKey, Held], has_local_copy: Mapping[int, bool]
              ) -> list[tuple[PartitionKey, Move, int]]:
        """(partition, move, placed epoch) for every partition of a placed topic that needs one."""
        placed = self.placement.topics[topic]
        out = []
        for p, assignment in enumerate(placed.partitions):
            move = decide(self.node_id, assignment, held.get((topic, p)), has_local_copy.get(p, False))
            if move is not None:
                out.append(((topic, p), move, assignment.epoch))
        return out

    def assignment(self, topic: str, partition: int) -> Assignment | None:
        return self.placement.assignment(topic, partition)

    def coordinator_of(self, key: str, topic: str = OFFSETS_TOPIC) -> BrokerAddress | None:
        """The leader of the partition of `topic` (`__consumer_offsets`, `__transaction_state`) that
        hash(key) falls in: a group's or a transactional id's coordinator."""
        placed = self.placement.topics.get(topic)
        if placed is None or not placed.partitions:
            return None
        assignment = placed.partitions[partition_for(key, len(placed.partitions))]
        return self.placement.broker(assignment.leader)

    def controller_id(self) -> int:
        ids = [b.id for b in self.placement.brokers]
        return min(ids) if ids else self.node_id

    def other_brokers(self) -> list[BrokerAddress]:
        return [b for b in self.placement.brokers if b.id != self.node_id]

    def partition_leaders(self, topic: str, topic_id: str) -> list[PartitionLeader] | None:
        placed = self.placement.topics.get(topic)
        if placed is None or str(placed.id) != topic_id:
            return None
        live = {b.id for b in self.placement.brokers}
        return [PartitionLeader(a.leader, a.epoch, a.leader in live) for a in placed.partitions]

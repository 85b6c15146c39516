"""Who leads what: the one question every partition handler and the group coordinator ask.

Two strategies answer it, chosen once at start by the composition root (broker.py):
`SingleBroker` (this broker leads everything it holds) and the cluster's `ClusterMember`
(leases and a placement in the bucket; cluster/member.py). Handlers never ask which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from strata_contract.placement import BrokerAddress


@dataclass(frozen=True)
class PartitionLeader:
    """One partition as Metadata describes it."""

    leader: int
    epoch: int
    live: bool = True  # False: the leader named by the placement is not a live broker


class Leadership(Protocol):
    """What the request handlers and the group coordinator may ask about leadership."""

    node_id: int

    def leads(self, topic: str, partition: int) -> bool: ...

    def check_leader(self, topic: str, partition: int) -> None:
        """Raise NOT_LEADER_OR_FOLLOWER (or LEADER_NOT_AVAILABLE) unless this broker leads it."""

    def may_ack(self, topic: str, partition: int, epoch: int) -> bool:
        """Whether a write appended at `epoch` may still be acknowledged (no newer leader)."""

    def coordinates(self, group_id: str) -> bool: ...

    def coordinator_of(self, group_id: str) -> BrokerAddress | None:
        """The broker coordinating a group; None while nobody does (not placed yet)."""

    def txn_coordinator_of(self, transactional_id: str) -> BrokerAddress | None:
        """The broker coordinating a transactional id; None while nobody does (not placed yet)."""

    def controller_id(self) -> int: ...

    def other_brokers(self) -> list[BrokerAddress]: ...

    def partition_leaders(self, topic: str, topic_id: str, partitions: int) -> list[PartitionLeader] | None:
        """Leader and epoch of each partition; None while the topic is not placed."""

    async def exists_elsewhere(self, name: str) -> bool:
        """Whether another broker has this topic though this one has not adopted it yet."""

    async def published(self, name: str) -> None:
        """Wait until a topic created or changed here is visible to the other brokers."""

    async def shared_state_flushed(self) -> None:
        """Wait until shared security state (ACLs) changed here is visible to the other brokers."""


class SingleBroker:
    """One broker: it leads every partition it holds, coordinates every group, is the controller."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._leader = PartitionLeader(node_id, 0)  # one object: Metadata's cache compares it by identity

    def leads(self, topic: str, partition: int) -> bool:
        return True

    def check_leader(self, topic: str, partition: int) -> None:
        return None

    def may_ack(self, topic: str, partition: int, epoch: int) -> bool:
        return True

    def coordinates(self, group_id: str) -> bool:
        return True

    def coordinator_of(self, group_id: str) -> BrokerAddress | None:
        return BrokerAddress(self.node_id, "", 0)  # handlers answer with the client's listener address

    def txn_coordinator_of(self, transactional_id: str) -> BrokerAddress | None:
        return BrokerAddress(self.node_id, "", 0)

    def controller_id(self) -> int:
        return self.node_id

    def other_brokers(self) -> list[BrokerAddress]:
        return []

    def partition_leaders(self, topic: str, topic_id: str, partitions: int) -> list[PartitionLeader] | None:
        return [self._leader] * partitions

    async def exists_elsewhere(self, name: str) -> bool:
        return False

    async def published(self, name: str) -> None:
        return None

    async def shared_state_flushed(self) -> None:
        return None

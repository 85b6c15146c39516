"""The replica layer: partitions as the request handlers and the group coordinator use them."""

from .leadership import Leadership, PartitionLeader, SingleBroker
from .manager import Appended, Caller, RemoteLog, ReplicaManager

__all__ = ["Appended", "Caller", "Leadership", "PartitionLeader", "RemoteLog", "ReplicaManager", "SingleBroker"]

"""Cluster mode: partition reassignments as requests in the bucket, for the controller to act on.

AlterPartitionReassignments with replicas [b] writes `reassignments/<topic>/<partition>.json`
({"target": b}) into the cluster's part of the bucket (strata_contract.layout); the cluster
controller moves the partition's leadership to broker b in its next placement (a move like any
other: new leader epoch, S3 hand-over) and deletes the request once b leads the partition. A
request with replicas null (a cancellation) deletes the object if the move was not done yet.
ListPartitionReassignments lists the requests still in the bucket: in progress until done.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from strata_contract.layout import parse_reassignment_key, reassignment_key, reassignments_root

if TYPE_CHECKING:
    from .member import ClusterMember


def cluster_of(leadership: object) -> ClusterMember | None:
    """The cluster member, when the broker runs in a cluster (its Leadership is one)."""
    from .member import ClusterMember

    return leadership if isinstance(leadership, ClusterMember) else None


async def request_move(cluster: ClusterMember, topic: str, partition: int, target: int) -> None:
    tier = cluster.tier
    await tier.store.put(reassignment_key(tier.prefix, tier.cluster, topic, partition),
                         json.dumps({"target": target}).encode())


async def cancel_move(cluster: ClusterMember, topic: str, partition: int) -> bool:
    """Delete a pending request; False if there was none."""
    tier = cluster.tier
    key = reassignment_key(tier.prefix, tier.cluster, topic, partition)
    if await tier.store.get_or_none(key) is None:
        return False
    await tier.store.delete_many([key])
    return True


async def pending_moves(cluster: ClusterMember) -> dict[tuple[str, int], int]:
    """(topic, partition) -> target broker for every request not done yet."""
    tier = cluster.tier
    root = reassignments_root(tier.prefix, tier.cluster)
    objects, _ = await tier.store.list(root)
    out: dict[tuple[str, int], int] = {}
    for obj in objects:
        where = parse_reassignment_key(root, obj["Key"])
        if where is None:
            continue
        body = await tier.store.get_or_none(obj["Key"])
        if body is None:
            continue  # done meanwhile
        try:
            out[where] = int(json.loads(body)["target"])
        except (ValueError, KeyError, TypeError):
            continue
    return out

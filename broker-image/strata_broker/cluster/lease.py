"""A broker's lease: an object in the bucket the broker rewrites every renew interval.

The controller calls a broker alive while the object's `renewals` counter keeps changing
(judged by the controller's own clock, so clocks need not agree), and moves its partitions
away once it has not changed for lease + grace. The broker, for its part, stops accepting
writes once `cluster.lease.ms` has passed since the start of its last successful renewal, so
it has fenced itself before anyone else takes over. Object: `clusters/<cluster>/members/<id>.json`.

The format (`MemberLease`) and the key are strata_contract's (lease.py, layout.py): the operator's
controller reads them too. Here: the keeper of this broker's own lease (`LeaseKeeper`), and the
watch a new leader keeps on its predecessor's lease while it waits for a seal (`PreviousLeader`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from strata_contract.layout import member_key
from strata_contract.lease import MemberLease

if TYPE_CHECKING:
    from ..security.listeners import Listener
    from ..tier.store import ObjectStore
    from .clock import Clock

log = logging.getLogger(__name__)


class LeaseKeeper:
    """This broker's own lease: rewrites it in the bucket, and knows whether it still holds.

    The lease holds while the last successful renewal *started* less than `lease_ms` ago (by
    this broker's clock): a renewal that took long counts from when it was sent, so the broker
    stops acknowledging no later than the controller may move its partitions."""

    def __init__(self, store: ObjectStore, prefix: str, cluster: str, node_id: int, listeners: list[Listener],
                 lease_ms: int, clock: Clock, bytes_in: Callable[[float], dict[str, float]],
                 end_offsets: Callable[[], dict[str, int]] | None = None) -> None:
        self.store = store
        self.key = member_key(prefix, cluster, node_id)
        self.node_id = node_id
        self.listeners = listeners
        self.lease_ms = lease_ms
        self.clock = clock
        self.bytes_in = bytes_in  # bytes/s per led partition since the last renewal, for balancing
        self.end_offsets = end_offsets or dict  # log end offset per led partition, for consumer lag
        self.renewals = 0
        self.valid_until = 0.0

    def valid(self) -> bool:
        return self.clock.now() < self.valid_until

    async def renew(self, before_it_counts: Callable[[], Awaitable[None]]) -> bool:
        """Write the lease; on success run `before_it_counts` (the broker looks at the placement
        there, so a broker back from a pause learns what it lost before it may write again), then
        extend the lease to a lease period after this renewal started. False: the write failed,
        and the lease runs out as it was."""
        started = self.clock.now()
        first = self.listeners[0]
        self.renewals += 1
        lease = MemberLease(self.node_id, first.advertised_host, first.advertised_port, self.renewals, self.lease_ms,
                            self.bytes_in(started),
                            {x.name: (x.advertised_host, x.advertised_port) for x in self.listeners},
                            self.end_offsets())
        try:
            await self.store.put(self.key, lease.to_json(), deadline=self.lease_ms / 2000.0)
        except Exception as exc:
            log.warning("lease renewal failed (%s); writes stop %.1fs after the last renewal", exc,
                        self.lease_ms / 1000.0)
            return False
        await before_it_counts()
        self.valid_until = started + self.lease_ms / 1000.0
        return True

    async def drop(self) -> None:
        """Delete the lease (clean stop): the controller moves what is left at once."""
        try:
            await self.store.delete_many([self.key])
        except Exception as exc:
            log.warning("could not remove this broker's lease: %s", exc)


class PreviousLeader:
    """Watches the lease of a partition's previous leader while the next one waits for its seal.

    The wait ends once that lease has not been renewed for a lease period (the previous leader
    has stopped acknowledging by then), or after max(60 s, 3 lease periods) in any case; never
    sooner than a lease period after the move was seen, for the previous leader may have renewed
    just before the controller decided."""

    def __init__(self, store: ObjectStore, prefix: str, cluster: str, node_id: int, lease_ms: int, clock: Clock,
                 seen: float) -> None:
        self.store = store
        self.prefix = prefix
        self.cluster = cluster
        self.node_id = node_id
        self.lease_ms = lease_ms
        self.clock = clock
        self.seen = seen  # when this broker saw the move
        self._renewals: float | None = None
        self._changed = seen

    async def may_still_write(self, leader_id: int) -> bool:
        now = self.clock.now()
        if leader_id == self.node_id:
            return False  # that was this broker, and it stopped writing at the old epoch already
        if now - self.seen > max(60.0, 3 * self.lease_ms / 1000.0):
            return False
        raw = await self.store.get_or_none(member_key(self.prefix, self.cluster, leader_id))
        renewals = float(MemberLease.from_json(raw).renewals) if raw is not None else -1.0
        if self._renewals is None:
            self._renewals = renewals  # the first look counts from the move
        elif self._renewals != renewals:
            self._renewals, self._changed = renewals, now
        return now - self._changed < self.lease_ms / 1000.0

"""Committed offsets of the groups this broker coordinates (the offsets half of Kafka's GroupMetadataManager).

Commits, fetches and deletes go through the `OffsetStore` (durable in `__consumer_offsets`).
Whether a member may commit, and which topics a group still subscribes to, is the membership
coordinator's business: the façade in coordinator.py asks it first. Offsets retention
(offsets.retention.minutes) is counted on the wall clock handed in: an offset of a group that has
been Empty for the retention period is deleted once it is itself that old.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import KafkaProtocolError
from .group import E
from .offsets import CommittedOffset, OffsetStore, partition_for

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager
    from ..log.partition import PartitionLog

log = logging.getLogger(__name__)


class OffsetManager:
    """Commit, fetch, delete and expire committed offsets, on top of an `OffsetStore`."""

    def __init__(self, config: BrokerConfig, logs: LogManager, store: OffsetStore, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.logs = logs
        self.store = store
        self.wall = wall
        self.max_metadata_bytes = int(config["offset.metadata.max.bytes"])
        self.retention_ms = int(config["offsets.retention.minutes"]) * 60_000

    # ---- loading -------------------------------------------------------------------------

    async def load_all(self) -> list[str]:
        """Replay every offsets partition; the groups that have committed offsets."""
        await self.store.load()
        return self.store.groups()

    async def load_partition(self, plog: PartitionLog) -> list[str]:
        """Replay one offsets partition (cluster mode: just taken over); the groups stored there."""
        count = await self.store.load_partition(plog)
        log.info("coordinating the groups of %s-%d (%d record(s) loaded)", plog.topic, plog.partition, count)
        return [g for g in self.store.groups() if self.partition_of(g) == plog.partition]

    def unload_partition(self, partition: int) -> None:
        self.store.unload_partition(partition)

    def partition_of(self, group_id: str) -> int:
        """The offsets partition that stores this group (and whose leader coordinates it)."""
        return partition_for(group_id, self.store.num_partitions)

    def ensure_topic(self) -> None:
        """Create `__consumer_offsets` if it does not exist yet (a failure is logged, not raised)."""
        try:
            self.store.ensure_topic()
        except KafkaProtocolError as exc:
            log.warning("cannot create the offsets topic: %s", exc)

    def has_offsets(self, group_id: str) -> bool:
        return bool(self.store.group_offsets(group_id))

    # ---- commit, fetch, delete -----------------------------------------------------------

    async def commit(self, group_id: str, offsets: dict[tuple[str, int], CommittedOffset]
                     ) -> dict[tuple[str, int], int]:
        """Store the offsets (the membership check has passed); one error code per partition."""
        results: dict[tuple[str, int], int] = {}
        valid: dict[tuple[str, int], CommittedOffset | None] = {}
        for tp, entry in offsets.items():
            topic, partition = tp
            if entry.metadata is not None and len(entry.metadata.encode("utf-8")) > self.max_metadata_bytes:
                results[tp] = E.OFFSET_METADATA_TOO_LARGE
                continue
            try:
                self.logs.get_partition(topic, partition)
            except KafkaProtocolError:
                results[tp] = E.UNKNOWN_TOPIC_OR_PARTITION
                continue
            valid[tp] = entry
        if valid:
            try:
                await self.store.write(group_id, valid)
                code = E.NONE
            except KafkaProtocolError as exc:
                log.error("cannot store offsets of group %s: %s", group_id, exc)
                code = E.COORDINATOR_NOT_AVAILABLE
            for tp in valid:
                results[tp] = code
        return results

    def fetch(self, group_id: str, partitions: list[tuple[str, int]] | None
              ) -> dict[tuple[str, int], CommittedOffset | None]:
        """The committed offsets of these partitions (None where nothing is committed), or all."""
        committed = self.store.group_offsets(group_id)
        if partitions is None:
            return dict(committed)
        return {tp: committed.get(tp) for tp in partitions}

    async def delete(self, group_id: str, partitions: list[tuple[str, int]], subscribed: set[str]
                     ) -> dict[tuple[str, int], int]:
        """OffsetDelete: tombstones for these partitions, except those of topics the group still
        subscribes to; one error code per partition."""
        results: dict[tuple[str, int], int] = {}
        doomed: dict[tuple[str, int], CommittedOffset | None] = {}
        committed = self.store.group_offsets(group_id)
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
            await self.store.write(group_id, doomed)
        return results

    async def delete_group(self, group_id: str) -> None:
        """Tombstones for every offset of the group (raises KafkaProtocolError if not stored)."""
        await self.store.delete_group(group_id)

    # ---- retention -----------------------------------------------------------------------

    async def expire_group(self, group_id: str, empty_since_ms: int) -> bool:
        """A group Empty since `empty_since_ms` (wall clock): once it has been Empty for the
        retention period, delete its offsets that are that old too and return True."""
        if self.retention_ms <= 0:
            return False
        now_ms = int(self.wall() * 1000)
        if now_ms - empty_since_ms < self.retention_ms:
            return False
        expired: dict[tuple[str, int], CommittedOffset | None] = {
            tp: None for tp, e in self.store.group_offsets(group_id).items()
            if now_ms - e.commit_timestamp >= self.retention_ms}
        if expired:
            log.info("expiring %d offset(s) of empty group %s", len(expired), group_id)
            await self.store.write(group_id, expired)
        return True

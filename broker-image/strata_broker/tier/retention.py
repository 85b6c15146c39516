"""Retention in the bucket: a tiered partition's remote segments go once they are past its
retention (time or total size, counted over the bucket and the local disk together) or wholly
below its log start offset (DeleteRecords).

Only segments whose local copy is gone are candidates (local retention goes first). The manifest
moves first, so no reader is sent to an object that is about to go; then the objects of every
doomed segment (strata_contract.layout.SEGMENT_SUFFIXES) are deleted. `publish_log_start` records
a log start offset moved by DeleteRecords in the manifest, so a restore or the next leader starts
there too; the segments below it go in the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from strata_contract.layout import SEGMENT_SUFFIXES
from strata_contract.manifest import RemoteSegment

from ..errors import ErrorCode, KafkaProtocolError
from ..log.partition import PartitionLog
from .publish import Fenced, publish_manifest
from .store import ObjectStore, S3Unavailable

if TYPE_CHECKING:
    from ..log.manager import Topic

log = logging.getLogger(__name__)


class RemoteRetention:
    """`partition_prefix(topic, partition)`: where the partition's objects live."""

    def __init__(self, store: ObjectStore, partition_prefix: Callable[[Topic, int], str]) -> None:
        self.store = store
        self.partition_prefix = partition_prefix

    def doomed(self, plog: PartitionLog, now_ms: int) -> list[RemoteSegment]:
        """The remote segments, oldest first, that retention removes now."""
        manifest = plog.remote
        if manifest is None or not manifest.segments:
            return []
        retention_ms, retention_bytes = plog.config.retention_ms, plog.config.retention_bytes
        below_start = manifest.segments[0].last_offset < plog.log_start_offset  # DeleteRecords moved it
        if ((retention_ms < 0 and retention_bytes < 0) or not plog.config.deletes) and not below_start:
            return []
        local_only = sum(s.size for s in plog.segments if s.base_offset >= manifest.end_offset)
        total = manifest.size_bytes + local_only
        doomed: list[RemoteSegment] = []
        for segment in manifest.segments:
            if segment.last_offset < plog.log_start_offset:
                doomed.append(segment)  # wholly below the log start: no reader may ask for it
                total -= segment.size
                continue
            if not plog.config.deletes:
                break
            if segment.base_offset >= plog.local_start_offset:
                break  # the local copy still exists: local retention goes first
            expired = retention_ms >= 0 and now_ms - segment.max_timestamp > retention_ms
            oversize = retention_bytes >= 0 and total - segment.size >= retention_bytes
            if not (expired or oversize):
                break
            doomed.append(segment)
            total -= segment.size
        return doomed

    async def enforce(self, topic: Topic, plog: PartitionLog, now_ms: int) -> None:
        """One retention pass over the partition's remote segments (the caller holds its manifest lock);
        S3 trouble postpones it to the next pass."""
        manifest = plog.remote
        doomed = self.doomed(plog, now_ms)
        if manifest is None or not doomed:
            return
        prefix = self.partition_prefix(topic, plog.partition)
        remaining = manifest.segments[len(doomed):]
        new_start = max(remaining[0].base_offset if remaining else plog.local_start_offset, plog.log_start_offset)
        updated = replace(manifest, segments=remaining, log_start_offset=new_start, version=manifest.version + 1)
        try:
            # The manifest moves first, so no reader is sent to an object that is about to go.
            await publish_manifest(self.store, plog, prefix, updated, deadline=60)
            plog.log_start_offset = max(plog.log_start_offset, new_start)
            await self.store.delete_many([s.key(prefix, suffix) for s in doomed for suffix in SEGMENT_SUFFIXES])
            log.info("retention removed %d segment(s) of %s-%d from S3; log start offset now %d", len(doomed),
                     topic.name, plog.partition, plog.log_start_offset)
        except Exception as exc:
            log.warning("S3 retention for %s-%d postponed: %s", topic.name, plog.partition, exc)

    async def publish_log_start(self, topic: Topic, plog: PartitionLog) -> None:
        """DeleteRecords: the manifest in the bucket carries the new log start offset. Raises the
        Kafka error to answer when it cannot be written."""
        async with plog.manifest_lock:
            manifest = plog.remote
            if manifest is None or manifest.log_start_offset >= plog.log_start_offset:
                return
            updated = replace(manifest, log_start_offset=plog.log_start_offset, version=manifest.version + 1)
            try:
                await publish_manifest(self.store, plog, self.partition_prefix(topic, plog.partition), updated,
                                       deadline=60)
            except Fenced:
                raise KafkaProtocolError(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                         f"{plog.topic}-{plog.partition} moved to another broker") from None
            except (S3Unavailable, OSError) as exc:
                raise KafkaProtocolError(ErrorCode.KAFKA_STORAGE_ERROR,
                                         f"the new log start could not be written to S3: {exc}") from exc

"""Uploads: a partition's closed segments go to the bucket, oldest first, then its manifest lists them.

A segment's files go up one object each (`segment_files`: the indexes, then the log; a log above
MULTIPART_THRESHOLD as a multipart upload), and only then is the manifest rewritten (through
publish.py, so a fenced leader cannot), with the producer state as of the segment's end. Until
the manifest names a segment, no reader is sent to its objects; a failed upload leaves the segment
on disk for the next round. `upload_partition` runs one partition at a time (`busy`), at most
`tiered.upload.concurrency` segments at once over all partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from strata_contract.layout import segment_key
from strata_contract.manifest import RemoteSegment

from ..log import txn_index
from ..log.files import read_json
from ..log.partition import PartitionLog, snapshot_name
from ..log.segment import Segment
from .publish import Fenced, publish_manifest
from .store import MULTIPART_THRESHOLD, ObjectStore, S3Unavailable

if TYPE_CHECKING:
    from ..log.manager import LogManager, Topic

log = logging.getLogger(__name__)


def segment_files(segment: Segment) -> dict[str, str]:
    """The local files uploaded for a segment, by the suffix of their objects, in upload order (the
    log last). A new per-segment index is one more entry here, and its suffix in
    strata_contract.layout.SEGMENT_SUFFIXES (what retention deletes and `strata tier scrub` keeps).
    The aborted-transaction index (`.txnindex`) goes up beside them only when it has entries."""
    return {"index": segment.offset_index.path, "timeindex": segment.time_index.path, "log": segment.log_path}


class Uploader:
    """`partition_prefix(topic, partition)`: where the partition's objects live. `topic_named`:
    the live topic of that name (None once deleted), so an upload stops for a deleted topic."""

    def __init__(self, store: ObjectStore, concurrency: int, partition_prefix: Callable[[Topic, int], str],
                 topic_named: Callable[[str], Topic | None]) -> None:
        self.store = store
        self.partition_prefix = partition_prefix
        self.topic_named = topic_named
        self._uploads = asyncio.Semaphore(concurrency)
        self.busy: set[tuple[str, int]] = set()  # partitions being uploaded now
        self.uploaded_segments = 0
        self.upload_failures = 0
        self._last_pressure_log = 0.0

    def due(self, topic: Topic, plog: PartitionLog) -> bool:
        """The partition has closed segments not in the bucket, and no upload of it is running."""
        return (topic.name, plog.partition) not in self.busy and bool(plog.closed_segments_not_in_remote())

    async def upload_partition(self, topic: Topic, plog: PartitionLog) -> None:
        """Upload every closed segment not in the bucket yet; failures are logged and counted, and
        the segments stay on disk for the next round."""
        key = (topic.name, plog.partition)
        self.busy.add(key)
        try:
            for segment in plog.closed_segments_not_in_remote():
                async with self._uploads:
                    if self.topic_named(topic.name) is not topic:
                        return  # deleted meanwhile
                    await self.upload_segment(topic, plog, segment)
        except Fenced:
            return
        except (S3Unavailable, OSError) as exc:
            self.upload_failures += 1
            lag = plog.log_end_offset - plog.remote_end_offset
            log.warning("upload of %s-%d failed (%s); %d offsets not in S3 yet, kept on disk", topic.name,
                        plog.partition, exc, lag)
        finally:
            self.busy.discard(key)

    async def upload_segment(self, topic: Topic, plog: PartitionLog, segment: Segment) -> None:
        prefix = self.partition_prefix(topic, plog.partition)
        last = segment.next_offset - 1
        sizes = {}
        for suffix, path in segment_files(segment).items():
            key = segment_key(prefix, segment.base_offset, last, suffix)
            if suffix == "log":
                sizes[suffix] = await self._put_file(key, path, segment.size, deadline=300)
            else:
                sizes[suffix] = await self._put_file(key, path, None, deadline=120)
        aborted = txn_index.index_path(plog.directory, segment.base_offset)
        if os.path.exists(aborted) and os.path.getsize(aborted) > 0:  # only segments with an aborted transaction
            await self._put_file(segment_key(prefix, segment.base_offset, last, "txnindex"), aborted, None,
                                 deadline=120)
        snapshot = read_json(os.path.join(plog.directory, snapshot_name(segment.next_offset))) or {}
        # Uploads, compaction, retention and garbage collection all rewrite the manifest: one at a time.
        async with plog.manifest_lock:
            assert plog.remote is not None
            manifest = replace(plog.remote, segments=[*plog.remote.segments, RemoteSegment(
                segment.base_offset, last, segment.size, segment.max_timestamp, sizes["index"], sizes["timeindex"])],
                producer_state=snapshot.get("producers", {}), version=plog.remote.version + 1)
            if not plog.remote.segments or manifest.log_start_offset < plog.log_start_offset:
                manifest.log_start_offset = plog.log_start_offset
            await publish_manifest(self.store, plog, prefix, manifest, deadline=120)
        self.uploaded_segments += 1
        log.debug("uploaded %s-%d [%d..%d] (%d bytes)", topic.name, plog.partition, segment.base_offset, last,
                  segment.size)

    async def _put_file(self, key: str, path: str, size: int | None, deadline: float) -> int:
        """Upload the first `size` bytes of a local file (None: the whole file); returns the byte count."""
        if size is None:
            body = await asyncio.to_thread(_read_range, path, 0, None)
            await self.store.put(key, body, deadline=deadline)
            return len(body)
        if size <= MULTIPART_THRESHOLD:
            await self.store.put(key, await asyncio.to_thread(_read_range, path, 0, size), deadline=deadline)
        else:
            await self.store.put_multipart(key, size, lambda start, n: asyncio.to_thread(_read_range, path, start, n),
                                           deadline=deadline)
        return size

    # ---- reporting ------------------------------------------------------------------------

    def warn_on_disk_pressure(self, logs: LogManager) -> None:
        """While uploads lag, the disk fills (KAFKA-19952): say so before it is full."""
        now = time.monotonic()
        if now - self._last_pressure_log < 30:
            return
        usage = shutil.disk_usage(logs.data_dir)
        if usage.free / usage.total > 0.10:
            return
        self._last_pressure_log = now
        waiting = sum(s.size for t in logs.topics.values() for p in t.partitions if p.remote is not None
                      for s in p.segments if s.next_offset > p.remote_end_offset)
        log.warning("local disk %.0f%% full; %d bytes wait for upload to S3 (healthy: %s)",
                    100 * (1 - usage.free / usage.total), waiting, self.store.healthy)


def _read_range(path: str, start: int, length: int | None) -> bytes:
    """Bytes [start, start + length) of a file (None: to its end), through a descriptor of its own
    (the segments' cached descriptors belong to the event loop's thread)."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read() if length is None else f.read(length)

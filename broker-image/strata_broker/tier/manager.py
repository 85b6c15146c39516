"""The broker's remote storage, composed: `TierManager` builds the parts of `tier/` from the
broker's config around one bucket, and is what the rest of the broker talks to.

- the replica layer reads through it (`read`, `offset_for_timestamp`: reader.py with its chunk
  cache and download process), commits batches of partitions that are durable in S3 (`commit`:
  wal.py, the S3 commit log), and records a moved log start (`publish_log_start`: retention.py);
- the broker's tick (`tick`) rolls stale active segments, uploads closed ones (uploader.py),
  trims the commit log, and enforces local and remote retention (retention.py);
- topic events from the LogManager (or the cluster member) mirror topics into the bucket
  (topics.py); `restore` recreates missing topics from it at start-up (restore.py);
- `reserve_producer_ids` hands out cluster-wide producer id blocks (producer_ids.py);
- `maybe_compact` compacts remote segments of compacted topics (compactor.py).

Every part gets what it uses in its constructor: the store, the key prefix of a partition, and
the few settings it reads. In cluster mode `leads` says which partitions this broker leads: only
those are uploaded, trimmed and compacted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from strata_contract.layout import partition_root, producer_ids_key
from strata_contract.manifest import RemoteManifest
from strata_contract.usage import usage_prefix

from ..log.partition import AppendResult, PartitionLog
from ..log.txn_index import AbortedTxn
from .cache import ChunkCache
from .compactor import RemoteCompactor
from .downloader import ChunkDownloader
from .producer_ids import ProducerIdBlocks
from .reader import RemoteReader
from .restore import restore_topics
from .retention import RemoteRetention
from .store import ObjectStore
from .topics import BucketTopics
from .uploader import Uploader
from .wal import S3CommitLog

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager, Topic

log = logging.getLogger(__name__)


class TierManager:
    def __init__(self, config: BrokerConfig, data_dir: str, broker_id: int = 0,
                 store: ObjectStore | None = None) -> None:
        """`store`: the bucket (default: the S3 client the config names; tests hand in one in memory)."""
        self.config = config
        self.broker_id = broker_id
        self.prefix = config["tiered.s3.prefix"]
        self.cluster = config["cluster.id"]
        self.store = store or ObjectStore(config["tiered.s3.bucket"], config["tiered.s3.endpoint"],
                                          config["tiered.s3.region"])
        # The chunks kept in memory cover the read-ahead window and a few more: with fewer, a deep
        # prefetch pushed chunks out of memory before the reader got to them (prefetch=8 ran 10-30%
        # slower than 4 with 8 chunks in memory).
        self.cache = ChunkCache(os.path.join(data_dir, "__remote-cache"), config["tiered.cache.bytes"],
                                max(8, config["tiered.prefetch.chunks"] + 4), config["tiered.cache.admit.downloads"])
        self.downloader: ChunkDownloader | None = None
        if config["tiered.download.process"] and hasattr(os, "memfd_create"):
            # Slots for the chunks the memory cache keeps, those being prefetched, and a few that
            # fetch responses still hold while they are written out.
            slots = self.cache.memory_chunks + config["tiered.prefetch.chunks"] + 4
            self.downloader = ChunkDownloader(self.store, slots, config["tiered.chunk.bytes"])
        self.reader = RemoteReader(self.store, self.cache, config["tiered.chunk.bytes"],
                                   config["tiered.prefetch.chunks"], self.downloader)
        self.commit_log = S3CommitLog(self.store, self.prefix, self.cluster, broker_id,
                                      config["tiered.s3.commit.interval.ms"])
        self.compactor = RemoteCompactor(self.store, config["tiered.compaction.delete.delay.ms"],
                                         config["log.cleaner.io.max.bytes.per.second"])
        self.uploader = Uploader(self.store, config["tiered.upload.concurrency"], self.partition_prefix,
                                 self._topic_named)
        self.retention = RemoteRetention(self.store, self.partition_prefix)
        self.topics = BucketTopics(self.store, self.prefix, self.cluster)
        self.producer_ids = ProducerIdBlocks(self.store, producer_ids_key(self.prefix, self.cluster), broker_id)
        self.logs: LogManager | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Cluster mode: only partitions this broker leads are uploaded, trimmed and compacted.
        self.leads: Callable[[str, int], bool] = lambda topic, partition: True

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        try:
            await self.store._call("head_bucket", deadline=60)
        except Exception as exc:
            await self.store.close()
            raise SystemExit(f"tiered storage: bucket {self.store.bucket!r} is not reachable at "
                             f"{self.store.endpoint or 'AWS'}: {exc}") from None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.downloader is not None:
            await self.downloader.close()
        self.cache.close()
        await self.store.close()

    def attach(self, logs: LogManager) -> None:
        """Give every tiered partition a manifest (empty until its first upload)."""
        self.logs = logs
        for topic in logs.topics.values():
            self.attach_topic(topic)

    async def replay_commit_log(self) -> None:
        assert self.logs is not None
        await self.commit_log.replay(self.logs)
        self._mark_uploaded_durable()

    def _mark_uploaded_durable(self) -> None:
        assert self.logs is not None
        for topic in self.logs.topics.values():
            for plog in topic.partitions:
                if plog.remote is not None and plog.remote_end_offset > 0:
                    self.commit_log.mark_durable_up_to((topic.name, plog.partition), plog.remote_end_offset - 1)

    def attach_topic(self, topic: Topic) -> None:
        if not topic.config.remote_storage:
            return
        for plog in topic.partitions:
            if plog.remote is None:
                plog.set_remote(RemoteManifest(topic.name, str(topic.topic_id), plog.partition))

    @property
    def usage_prefix(self) -> str:
        return usage_prefix(self.cluster, self.prefix)

    def partition_prefix(self, topic: Topic, partition: int) -> str:
        return partition_root(self.prefix, self.cluster, topic.name, topic.topic_id, partition)

    def _topic_named(self, name: str) -> Topic | None:
        return self.logs.topics.get(name) if self.logs is not None else None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- topic events (called by the LogManager) ---------------------------------------------

    def topic_created(self, topic: Topic) -> asyncio.Task[Any] | None:
        self.attach_topic(topic)
        if topic.config.remote_storage:
            return self._spawn(self.topics.put_meta(topic))
        return None

    def topic_changed(self, topic: Topic) -> asyncio.Task[Any] | None:
        return self.topic_created(topic)

    def topic_deleted(self, topic: Topic) -> None:
        self._spawn(self.topics.delete(topic))

    # ---- the tick ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass: roll stale active segments, upload closed ones, trim local and remote logs."""
        assert self.logs is not None
        now_ms = int(time.time() * 1000)
        interval = self.config["tiered.upload.interval.ms"]
        jobs = []
        for topic in list(self.logs.topics.values()):
            for plog in topic.partitions:
                if plog.remote is None or not self.leads(topic.name, plog.partition):
                    continue
                plog.roll_if_older_than(now_ms, interval)
                if self.uploader.due(topic, plog):
                    jobs.append(self.uploader.upload_partition(topic, plog))
        if jobs:
            await asyncio.gather(*jobs)
            self._mark_uploaded_durable()
            await self.commit_log.trim({(t.name, p.partition): p.remote_end_offset
                                        for t in self.logs.topics.values() for p in t.partitions})
        self.uploader.warn_on_disk_pressure(self.logs)
        for topic in list(self.logs.topics.values()):
            for plog in topic.partitions:
                if plog.remote is not None and self.leads(topic.name, plog.partition):
                    plog.enforce_retention(now_ms)
                    async with plog.manifest_lock:
                        await self.retention.enforce(topic, plog, now_ms)

    # ---- uploads (the cluster's hand-over uploads a partition before it lets go) ---------------

    @property
    def busy(self) -> set[tuple[str, int]]:
        """Partitions being uploaded now."""
        return self.uploader.busy

    async def upload_partition(self, topic: Topic, plog: PartitionLog) -> None:
        await self.uploader.upload_partition(topic, plog)

    @property
    def uploaded_segments(self) -> int:
        return self.uploader.uploaded_segments

    @property
    def upload_failures(self) -> int:
        return self.uploader.upload_failures

    # ---- the replica layer's remote log (replica/manager.py RemoteLog) -------------------------

    def commit(self, plog: PartitionLog, result: AppendResult) -> Awaitable[None]:
        """Answered once the appended batch is in S3 (the commit log, wal.py)."""
        return self.commit_log.commit_append(plog, result)

    async def read(self, topic: Topic, plog: PartitionLog, offset: int, max_bytes: int,
                   always_one: bool) -> bytes | memoryview:
        assert plog.remote is not None
        return await self.reader.read(plog.remote, self.partition_prefix(topic, plog.partition), offset, max_bytes,
                                      always_one)

    async def offset_for_timestamp(self, topic: Topic, plog: PartitionLog, timestamp: int) -> tuple[int, int] | None:
        if plog.remote is None:
            return None
        return await self.reader.offset_for_timestamp(plog.remote, self.partition_prefix(topic, plog.partition),
                                                      timestamp, plog.local_start_offset)

    async def aborted_transactions(self, topic: Topic, plog: PartitionLog, fetch_offset: int,
                                   upper_offset: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping [fetch_offset, upper_offset) from the remote segments'
        `.txnindex` objects (cold read_committed reads)."""
        if plog.remote is None:
            return []
        return await self.reader.aborted_transactions(plog.remote, self.partition_prefix(topic, plog.partition),
                                                      fetch_offset, upper_offset,
                                                      int(self.config["transaction.max.timeout.ms"]))

    async def publish_log_start(self, plog: PartitionLog) -> None:
        """DeleteRecords: the manifest in the bucket carries the new log start offset, so a restore
        or the next leader of the partition starts there too. The remote segments wholly below it
        are deleted by the next retention pass."""
        topic = self._topic_named(plog.topic)
        if topic is not None:
            await self.retention.publish_log_start(topic, plog)

    # ---- compaction, restore, producer ids ---------------------------------------------------

    async def maybe_compact(self, topic: Topic, plog: PartitionLog) -> None:
        prefix = self.partition_prefix(topic, plog.partition)
        try:
            await self.compactor.maybe_compact(plog, prefix)
            await self.compactor.collect_garbage(plog, prefix)
        except Exception as exc:
            log.warning("S3 compaction of %s-%d postponed: %s", topic.name, plog.partition, exc)

    async def restore(self, data_dir: str, meta_dir: str) -> int:
        """Recreate, from the bucket, every topic this data dir does not have (restore.py)."""
        return await restore_topics(self.store, self.prefix, self.cluster, data_dir, meta_dir)

    async def reserve_producer_ids(self, count: int, at_least: int = 0) -> int:
        """The first of `count` producer ids no broker of the cluster has been given (producer_ids.py)."""
        return await self.producer_ids.reserve(count, at_least)

"""The broker's tier: uploads closed segments, keeps manifests, enforces total retention in S3,
mirrors topic metadata into the bucket, deletes a deleted topic's objects, and restores topics
from the bucket into an empty data dir."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from strata_contract.usage import usage_prefix

from ..errors import ErrorCode, KafkaProtocolError
from ..log import txn_index
from ..log.files import read_json, write_json_atomic
from ..log.partition import (
    CHECKPOINT,
    PRODUCER_SNAPSHOT,
    REMOTE_MANIFEST,
    AppendResult,
    OffsetInRemoteStorage,
    PartitionLog,
    snapshot_name,
)
from ..log.segment import Segment
from ..log.txn_index import AbortedTxn
from .cache import ChunkCache
from .compactor import RemoteCompactor
from .downloader import ChunkDownloader
from .layout import (
    manifest_key,
    parse_topic_dir,
    partition_root,
    producer_ids_key,
    segment_key,
    topic_meta_key,
    topic_root,
    topics_root,
)
from .manifest import RemoteManifest, RemoteSegment
from .publish import Fenced, publish_manifest
from .reader import RemoteReader
from .store import ObjectStore, PreconditionFailed, S3Unavailable
from .wal import S3CommitLog

if TYPE_CHECKING:
    from ..config import BrokerConfig
    from ..log.manager import LogManager, Topic

log = logging.getLogger(__name__)

_MULTIPART_THRESHOLD = 64 << 20
_PART_BYTES = 25 << 20


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
        self.logs: LogManager | None = None
        self._uploads = asyncio.Semaphore(config["tiered.upload.concurrency"])
        self.busy: set[tuple[str, int]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.uploaded_segments = 0
        self._last_pressure_log = 0.0
        self.upload_failures = 0
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- topic events (called by the LogManager) ---------------------------------------------

    def topic_created(self, topic: Topic) -> asyncio.Task[Any] | None:
        self.attach_topic(topic)
        if topic.config.remote_storage:
            return self._spawn(self._put_topic_meta(topic))
        return None

    def topic_changed(self, topic: Topic) -> asyncio.Task[Any] | None:
        self.attach_topic(topic)
        if topic.config.remote_storage:
            return self._spawn(self._put_topic_meta(topic))
        return None

    def topic_deleted(self, topic: Topic) -> None:
        self._spawn(self._delete_topic_objects(topic))

    async def _put_topic_meta(self, topic: Topic) -> None:
        body = json.dumps({"name": topic.name, "id": str(topic.topic_id), "partitions": len(topic.partitions),
                           "configs": topic.overrides, "internal": topic.internal}, sort_keys=True).encode()
        try:
            await self.store.put(topic_meta_key(self.prefix, self.cluster, topic.name, topic.topic_id), body,
                                 deadline=300)
        except Exception as exc:
            log.error("could not write metadata of topic %s to S3: %s", topic.name, exc)

    async def _delete_topic_objects(self, topic: Topic) -> None:
        root = topic_root(self.prefix, self.cluster, topic.name, topic.topic_id)
        try:
            # topic.json first: a half-deleted topic is never restored.
            await self.store.delete_many([topic_meta_key(self.prefix, self.cluster, topic.name, topic.topic_id)])
            count = await self.store.delete_prefix(root)
            log.info("deleted %d object(s) of topic %s from S3", count, topic.name)
        except Exception as exc:
            log.error("could not delete objects of topic %s (scrub will find them): %s", topic.name, exc)

    # ---- uploads --------------------------------------------------------------------------

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
                if (topic.name, plog.partition) not in self.busy and plog.closed_segments_not_in_remote():
                    jobs.append(self.upload_partition(topic, plog))
        if jobs:
            await asyncio.gather(*jobs)
            self._mark_uploaded_durable()
            await self.commit_log.trim({(t.name, p.partition): p.remote_end_offset
                                        for t in self.logs.topics.values() for p in t.partitions})
        self._warn_on_disk_pressure()
        for topic in list(self.logs.topics.values()):
            for plog in topic.partitions:
                if plog.remote is not None and self.leads(topic.name, plog.partition):
                    plog.enforce_retention(now_ms)
                    async with plog.manifest_lock:
                        await self._enforce_total_retention(topic, plog, now_ms)

    def _warn_on_disk_pressure(self) -> None:
        """While uploads lag, the disk fills (KAFKA-19952): say so before it is full."""
        assert self.logs is not None
        now = time.monotonic()
        if now - self._last_pressure_log < 30:
            return
        usage = shutil.disk_usage(self.logs.data_dir)
        if usage.free / usage.total > 0.10:
            return
        self._last_pressure_log = now
        waiting = sum(s.size for t in self.logs.topics.values() for p in t.partitions if p.remote is not None
                      for s in p.segments if s.next_offset > p.remote_end_offset)
        log.warning("local disk %.0f%% full; %d bytes wait for upload to S3 (healthy: %s)",
                    100 * (1 - usage.free / usage.total), waiting, self.store.healthy)

    async def upload_partition(self, topic: Topic, plog: PartitionLog) -> None:
        key = (topic.name, plog.partition)
        self.busy.add(key)
        try:
            for segment in plog.closed_segments_not_in_remote():
                async with self._uploads:
                    if self.logs is None or self.logs.topics.get(topic.name) is not topic:
                        return  # deleted meanwhile
                    await self._upload_segment(topic, plog, segment)
        except Fenced:
            return
        except (S3Unavailable, OSError) as exc:
            self.upload_failures += 1
            lag = plog.log_end_offset - plog.remote_end_offset
            log.warning("upload of %s-%d failed (%s); %d offsets not in S3 yet, kept on disk", topic.name,
                        plog.partition, exc, lag)
        finally:
            self.busy.discard(key)

    async def _upload_segment(self, topic: Topic, plog: PartitionLog, segment: Segment) -> None:
        prefix = self.partition_prefix(topic, plog.partition)
        last = segment.next_offset - 1
        index = await asyncio.to_thread(_read_file, segment.offset_index.path)
        timeindex = await asyncio.to_thread(_read_file, segment.time_index.path)
        await self.store.put(segment_key(prefix, segment.base_offset, last, "index"), index, deadline=120)
        await self.store.put(segment_key(prefix, segment.base_offset, last, "timeindex"), timeindex, deadline=120)
        await self._put_log(segment_key(prefix, segment.base_offset, last, "log"), segment)
        aborted = await asyncio.to_thread(_read_file_or_empty,
                                          txn_index.index_path(plog.directory, segment.base_offset))
        if aborted:  # the aborted-transaction index, only for segments that have one
            await self.store.put(segment_key(prefix, segment.base_offset, last, "txnindex"), aborted, deadline=120)
        snapshot = read_json(os.path.join(plog.directory, snapshot_name(segment.next_offset))) or {}
        # Uploads, compaction, retention and garbage collection all rewrite the manifest: one at a time.
        async with plog.manifest_lock:
            assert plog.remote is not None
            manifest = replace(plog.remote, segments=[*plog.remote.segments, RemoteSegment(
                segment.base_offset, last, segment.size, segment.max_timestamp, len(index), len(timeindex))],
                producer_state=snapshot.get("producers", {}), version=plog.remote.version + 1)
            if not plog.remote.segments or manifest.log_start_offset < plog.log_start_offset:
                manifest.log_start_offset = plog.log_start_offset
            await publish_manifest(self.store, plog, prefix, manifest, deadline=120)
        self.uploaded_segments += 1
        log.debug("uploaded %s-%d [%d..%d] (%d bytes)", topic.name, plog.partition, segment.base_offset, last,
                  segment.size)

    async def _put_log(self, key: str, segment: Segment) -> None:
        size = segment.size
        if size <= _MULTIPART_THRESHOLD:
            await self.store.put(key, await asyncio.to_thread(segment.read_file, 0, size), deadline=300)
            return
        client = self.store._client
        bucket = self.store.bucket
        upload = await self.store._call("create_multipart_upload", Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, _PART_BYTES), start=1):
                body = await asyncio.to_thread(segment.read_file, start, min(_PART_BYTES, size - start))
                part = await self.store._call("upload_part", deadline=300, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=body)
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            await self.store._call("complete_multipart_upload", Key=key, UploadId=upload_id,
                                   MultipartUpload={"Parts": parts})
        except BaseException:
            await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    # ---- total retention in S3 -------------------------------------------------------------

    async def _enforce_total_retention(self, topic: Topic, plog: PartitionLog, now_ms: int) -> None:
        manifest = plog.remote
        if manifest is None or not manifest.segments:
            return
        retention_ms, retention_bytes = plog.config.retention_ms, plog.config.retention_bytes
        below_start = manifest.segments[0].last_offset < plog.log_start_offset  # DeleteRecords moved it
        if ((retention_ms < 0 and retention_bytes < 0) or not plog.config.deletes) and not below_start:
            return
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
        if not doomed:
            return
        prefix = self.partition_prefix(topic, plog.partition)
        remaining = manifest.segments[len(doomed):]
        new_start = max(remaining[0].base_offset if remaining else plog.local_start_offset, plog.log_start_offset)
        updated = replace(manifest, segments=remaining, log_start_offset=new_start, version=manifest.version + 1)
        try:
            # The manifest moves first, so no reader is sent to an object that is about to go.
            await publish_manifest(self.store, plog, prefix, updated, deadline=60)
            plog.log_start_offset = max(plog.log_start_offset, new_start)
            await self.store.delete_many([s.key(prefix, suffix) for s in doomed
                                          for suffix in ("log", "index", "timeindex", "txnindex")])
            log.info("retention removed %d segment(s) of %s-%d from S3; log start offset now %d", len(doomed),
                     topic.name, plog.partition, plog.log_start_offset)
        except Exception as exc:
            log.warning("S3 retention for %s-%d postponed: %s", topic.name, plog.partition, exc)

    async def publish_log_start(self, plog: PartitionLog) -> None:
        """DeleteRecords: the manifest in the bucket carries the new log start offset, so a restore
        or the next leader of the partition starts there too. The remote segments wholly below it
        are deleted by the next retention pass."""
        topic = self.logs.topics.get(plog.topic) if self.logs is not None else None
        if topic is None:
            return
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

    # ---- compaction ---------------------------------------------------------------------

    async def maybe_compact(self, topic: Topic, plog: PartitionLog) -> None:
        prefix = self.partition_prefix(topic, plog.partition)
        try:
            await self.compactor.maybe_compact(plog, prefix)
            await self.compactor.collect_garbage(plog, prefix)
        except Exception as exc:
            log.warning("S3 compaction of %s-%d postponed: %s", topic.name, plog.partition, exc)

    # ---- producer ids -----------------------------------------------------------------------

    async def reserve_producer_ids(self, count: int, at_least: int = 0) -> int:
        """The first of `count` producer ids that no broker of the cluster has been given, nor this
        one in an earlier life whatever became of its disk (partition states restored from the
        bucket remember those ids). The counter lives in the bucket and moves by conditional writes
        only; `at_least` carries forward a counter kept elsewhere before (a local file)."""
        key = producer_ids_key(self.prefix, self.cluster)
        while True:
            data, etag = await self.store.get_with_etag(key)
            start = max(int(json.loads(data)["next"]) if data else 0, at_least)
            # The reservation names itself: put_if takes an identical body already in place for its
            # own retried write, and two brokers reserving the same block would write identical ones.
            body = json.dumps({"next": start + count, "reserved_by": self.broker_id,
                               "reservation": uuid.uuid4().hex}).encode()
            try:
                await self.store.put_if(key, body, etag)
            except PreconditionFailed:
                continue  # another broker reserved a block in between: read again
            return start

    # ---- durable appends --------------------------------------------------------------------

    def commit(self, plog: PartitionLog, result: AppendResult) -> Awaitable[None]:
        """Answered once the appended batch is in S3 (the commit log). A retried duplicate waits
        too, and re-sends the stored batch in case its first commit failed."""
        log_ = self.commit_log
        topic = plog.topic
        if not result.duplicate:
            return log_.commit(topic, plog.partition, result.base_offset, result.last_offset, result.data,
                               plog.leader_epoch)
        if log_.durable_offset((topic, plog.partition)) >= result.last_offset:
            return log_.wait_durable(topic, plog.partition, result.last_offset)
        try:
            stored = plog.read(result.base_offset, 1)  # exactly the batch the producer retried
        except OffsetInRemoteStorage:
            return log_.wait_durable(topic, plog.partition, result.last_offset)  # uploaded: durable already
        return log_.commit(topic, plog.partition, result.base_offset, result.last_offset, stored, plog.leader_epoch)

    # ---- reads ----------------------------------------------------------------------------

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

    # ---- restore --------------------------------------------------------------------------

    async def restore(self, data_dir: str, meta_dir: str) -> int:
        """Recreate, from the bucket, every topic this data dir does not have. Reads manifests only:
        the data stays in S3 until someone fetches it, so start-up time does not grow with it."""
        _, topic_dirs = await self.store.list(topics_root(self.prefix, self.cluster), delimiter="/")
        restored = 0
        for topic_dir in topic_dirs:
            parsed = parse_topic_dir(topic_dir.rstrip("/").rsplit("/", 1)[-1])
            if parsed is None:
                continue
            name, topic_id = parsed
            local_meta = os.path.join(meta_dir, "topics", f"{name}.json")
            if os.path.exists(local_meta):
                continue
            raw = await self.store.get_or_none(topic_meta_key(self.prefix, self.cluster, name, topic_id))
            if raw is None:
                continue  # deleted, or never finished being created
            meta = json.loads(raw)
            for p in range(int(meta["partitions"])):
                manifest_raw = await self.store.get_or_none(
                    manifest_key(partition_root(self.prefix, self.cluster, name, topic_id, p)))
                manifest = (RemoteManifest.from_json(manifest_raw) if manifest_raw
                            else RemoteManifest(name, str(topic_id), p))
                seed_partition_dir(os.path.join(data_dir, f"{name}-{p}"), manifest)
            write_json_atomic(local_meta, meta)
            restored += 1
            log.info("restored topic %s (%s partitions) from the bucket", name, meta["partitions"])
        return restored

    # ---- reporting ------------------------------------------------------------------------

    def upload_lag(self) -> dict[tuple[str, int], int]:
        assert self.logs is not None
        return {(t.name, p.partition): p.log_end_offset - p.remote_end_offset
                for t in self.logs.topics.values() for p in t.partitions if p.remote is not None}


def seed_partition_dir(directory: str, manifest: RemoteManifest) -> None:
    """Lay out a partition directory whose log starts where the bucket ends: only the manifest,
    the producer state and a checkpoint; data stays in S3 until someone fetches it."""
    os.makedirs(directory, exist_ok=True)
    end = manifest.end_offset
    write_json_atomic(os.path.join(directory, REMOTE_MANIFEST), json.loads(manifest.to_json()))
    write_json_atomic(os.path.join(directory, PRODUCER_SNAPSHOT), {"offset": end, "producers": manifest.producer_state})
    write_json_atomic(os.path.join(directory, CHECKPOINT), {
        "log_start_offset": manifest.log_start_offset, "log_end_offset": end,
        "recovery_point": end, "high_watermark": end, "remote_offset": end - 1})


def _read_file_or_empty(path: str) -> bytes:
    try:
        return _read_file(path)
    except FileNotFoundError:
        return b""


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()

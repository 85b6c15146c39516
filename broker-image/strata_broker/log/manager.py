"""All partition logs of one broker: topics, their metadata, group commit and housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import BrokerConfig, TopicConfig
from ..errors import ErrorCode, KafkaProtocolError
from .files import deferred_fsync, fsync_dir, read_json, write_json_atomic
from .handles import HandleCache, automatic_capacity
from .partition import ManifestLoader, PartitionLog
from .segment import SYNCFS_MIN_SEGMENTS, AppendBuffers, Segment, sync_filesystem

log = logging.getLogger(__name__)

_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_CLEAN_MARKER = ".clean-shutdown"
# __meta/written/<topic>-<partition>: the partition was written since the last clean shutdown (made
# before its first write after a start, removed at the next clean start). After a crash only these
# are recovered; `.tracking` says the data dir keeps these records (older ones did not: all recovered).
_WRITTEN_DIR = "written"
_TRACKING = ".tracking"
# Lazily opened partitions loaded per step of the background loader (the event loop serves between).
_LOAD_STEP = 200
_PRODUCER_ID_BLOCK = 1000


@dataclass
class Topic:
    name: str
    topic_id: uuid.UUID
    overrides: dict[str, str]
    config: TopicConfig
    partitions: list[PartitionLog] = field(default_factory=list)
    internal: bool = False
    # Metadata's encoded description of this topic per API version (protocol/metadata.py), kept
    # while the partition count, internal flag and leaders it was made from are unchanged.
    metadata_cache: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)


# The broker's own topics. These names, and every name starting with "__", are internal from the first
# start, whether or not the topic exists yet: no client creates, deletes, reconfigures or writes them.
RESERVED_TOPIC_NAMES = frozenset({"__consumer_offsets", "__transaction_state", "_schemas"})


def is_internal_name(name: str) -> bool:
    return name.startswith("__") or name in RESERVED_TOPIC_NAMES


def refuse_internal(name: str, what: str) -> None:
    """Internal topics (and reserved names) are the broker's: no admin request changes them, whoever asks."""
    if is_internal_name(name):
        raise KafkaProtocolError(ErrorCode.INVALID_REQUEST, f"{name} is an internal topic: it cannot be {what}")


def validate_topic_name(name: str) -> None:
    if not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise KafkaProtocolError(ErrorCode.INVALID_TOPIC_EXCEPTION,
                                 f"invalid topic name {name!r}: 1-249 of [a-zA-Z0-9._-]")


# A group-commit round of at most INLINE_SYNC_MAX_SEGMENTS segments with at most this many bytes
# written since their last sync is fsynced on the event loop's own thread when nothing else is ready
# to run there and recent rounds took at most INLINE_SYNC_MAX_SECONDS (on average): see GroupCommit.
INLINE_SYNC_MAX_BYTES = 64 * 1024
INLINE_SYNC_MAX_SEGMENTS = 4
INLINE_SYNC_MAX_SECONDS = 0.001
# Loop passes a small round waits, at most, for the callbacks ready to run (see GroupCommit._run).
INLINE_SYNC_YIELDS = 4


class GroupCommit:
    """acks=all waits here: every waiter that arrives during one fsync round shares the next one.

    A small round first lets the callbacks ready on the loop run (at most INLINE_SYNC_YIELDS
    passes): requests read in the same pass as its first one append and join it. It is then
    fsynced on the event loop's thread when the loop has nothing else ready to run, the
    round is small (at most INLINE_SYNC_MAX_SEGMENTS segments and `inline_max_bytes` written since
    their last sync: what a moderate rate leaves, never the background flush of many partitions)
    and recent rounds were quick (a moving average of their fsync time at most
    `inline_max_seconds`, so a slow disk does not stall the loop for long). The loop would only
    sleep meanwhile, and no thread hand-off (an executor wake-up, then the GIL and the loop's
    self-pipe on the way back, each a chance for the scheduler of a loaded machine to take
    milliseconds) stands between the fdatasync and the answer. Any other round runs on a thread of
    its own, so the loop keeps reading and appending the next round's requests meanwhile, and an
    acknowledgement never queues behind the uploads, compaction and downloads that use the default
    executor."""

    def __init__(self, inline_max_bytes: int = INLINE_SYNC_MAX_BYTES,
                 inline_max_seconds: float = INLINE_SYNC_MAX_SECONDS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-fsync")
        self._segments: set[Segment] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._running = False
        self.inline_max_bytes = inline_max_bytes
        self.inline_max_seconds = inline_max_seconds
        self.sync_seconds = 0.0  # moving average of a round's fsync time (the disk, as seen lately)
        # Each segment's size when a round last took it (weak: a deleted segment drops out).
        self._synced_size: weakref.WeakKeyDictionary[Segment, int] = weakref.WeakKeyDictionary()
        self.rounds = 0
        self.inline_rounds = 0  # of `rounds`, those synced on the loop's thread
        self.yields = 0  # loop passes rounds waited for ready callbacks (see _run)
        # Directories whose new entries must be durable before this round's data (written markers).
        self.dirs: set[str] = set()

    async def sync_many(self, segments: Iterable[Segment]) -> None:
        """Until every one of `segments` is durable: one waiter for all (a request's partitions)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._segments.update(segments)
        self._waiters.append(future)
        if not self._running:
            self._running = True
            loop.create_task(self._run())
        await future

    def _small(self, segments: set[Segment]) -> bool:
        """The round may be synced on the loop's thread as far as the disk and its size go: the
        disk has been quick and the round is small."""
        if self.sync_seconds > self.inline_max_seconds or len(segments) > INLINE_SYNC_MAX_SEGMENTS:
            return False
        unsynced = 0
        for segment in segments:
            unsynced += segment.size - self._synced_size.get(segment, 0)
            if unsynced > self.inline_max_bytes:
                return False
        return True

    def _inline(self, loop: asyncio.AbstractEventLoop, segments: set[Segment]) -> bool:
        """Sync this round on the loop's thread: the loop is idle (no callback ready; a loop that
        does not say is taken as busy) and the round is small (_small)."""
        return not getattr(loop, "_ready", True) and self._small(segments)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                # Callbacks ready to run (typically requests pipelined behind this round's, read in
                # the same pass, not yet appended) run first, up to INLINE_SYNC_YIELDS loop passes:
                # they join this round rather than wait for the next one, and the loop is then idle
                # for an inline sync rather than the round going to the thread.
                yields = 0
                while (getattr(loop, "_ready", None) and yields < INLINE_SYNC_YIELDS
                       and self._small(self._segments)):
                    await asyncio.sleep(0)
                    yields += 1
                self.yields += yields
                segments, waiters = self._segments, self._waiters
                self._segments, self._waiters = set(), []
                dirs, self.dirs = self.dirs, set()
                inline = self._inline(loop, segments)
                for segment in segments:
                    segment.dirty = False
                    self._synced_size[segment] = segment.size
                # An open segment's descriptor stays open (and the same) while the thread syncs it; one
                # not open is synced through a descriptor of the thread's own (never all opened at once:
                # a round may hold more segments than the handle cache).
                pinned: dict[Segment, bool] = {}
                try:
                    for segment in segments:
                        pinned[segment] = segment.pin_if_open()
                    if inline:
                        took = _fsync_all(pinned, dirs)
                        self.inline_rounds += 1
                    else:
                        took = await loop.run_in_executor(self._executor, _fsync_all, pinned, dirs)
                    self.sync_seconds += (took - self.sync_seconds) / 8
                except OSError as exc:
                    for future in waiters:
                        if not future.done():
                            future.set_exception(KafkaProtocolError(ErrorCode.KAFKA_STORAGE_ERROR, str(exc)))
                    continue
                finally:
                    for segment, was_pinned in pinned.items():
                        if was_pinned:
                            segment.unpin()
                self.rounds += 1
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._running = False

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _fsync_all(segments: dict[Segment, bool], dirs: set[str]) -> float:
    """fsync the directories, then fdatasync the segments (one syncfs of the data directory's
    filesystem when there are many); the seconds that took."""
    start = time.perf_counter()
    if len(segments) >= SYNCFS_MIN_SEGMENTS:
        if sync_filesystem(os.path.dirname(next(iter(segments)).directory)):
            return time.perf_counter() - start
    for directory in dirs:
        fsync_dir(directory)
    for segment, pinned in segments.items():
        try:
            segment.sync_log(pinned)
        except OSError:
            # A segment deleted by retention meanwhile was fsynced when it was sealed.
            if not segment.closed:
                raise
    return time.perf_counter() - start


def _reserve_fds(count: int = 2) -> list[int]:
    """Up to `count` descriptors held in reserve (fewer when the process is out of them)."""
    out = []
    for _ in range(count):
        try:
            out.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    return out


class TopicListener(Protocol):
    """Told about topic changes (the tier mirrors them into the bucket)."""

    def topic_created(self, topic: Topic) -> None: ...

    def topic_changed(self, topic: Topic) -> None: ...

    def topic_deleted(self, topic: Topic) -> None: ...


class LogManager:
    def __init__(self, data_dir: str, config: BrokerConfig, load_manifest: ManifestLoader | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.config = config
        self._load_manifest = load_manifest  # with tiered storage: parses a partition's remote manifest copy
        capacity = config["log.segment.handles.max"]
        self.handles = HandleCache(capacity if capacity > 0 else automatic_capacity())
        self.handles.buffers = AppendBuffers(config["log.append.buffer.ms"])
        # Descriptors kept in reserve, given up only to clean up after running out (rmtree needs two).
        self._spare_fds = _reserve_fds()
        self.meta_dir = os.path.join(self.data_dir, "__meta")
        self.topics: dict[str, Topic] = {}
        self.group_commit = GroupCommit()
        self._lock_fd = -1
        self._next_producer_id = 0
        self._producer_id_limit = 0
        self._producer_id_lock = asyncio.Lock()
        # With tiered storage, blocks of producer ids come from the cluster's counter in the bucket
        # (TierManager.reserve_producer_ids): a per-broker counter would hand the same id to two
        # brokers' producers, or, after a lost disk, reuse ids the restored partitions remember.
        self.producer_id_blocks: Callable[[int, int], Awaitable[int]] | None = None
        self.listener: TopicListener | None = None
        # Cluster mode: partitions move through S3, so every topic must be tiered.
        self.require_remote = False

    # ---- startup and shutdown -----------------------------------------------------------

    def open(self) -> None:
        os.makedirs(os.path.join(self.meta_dir, "topics"), exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SystemExit(f"data dir {self.data_dir} is in use by another broker") from exc
        marker = os.path.join(self.data_dir, _CLEAN_MARKER)
        clean = os.path.exists(marker)
        written_dir = self.written_dir
        os.makedirs(written_dir, exist_ok=True)
        tracked = os.path.exists(os.path.join(written_dir, _TRACKING))
        if clean:
            # Every partition was closed cleanly: none needs recovery, whatever was written before.
            for name in os.listdir(written_dir):
                if name != _TRACKING:
                    os.unlink(os.path.join(written_dir, name))
            if not tracked:
                write_json_atomic(os.path.join(written_dir, _TRACKING), {})
            fsync_dir(written_dir)
            os.unlink(marker)
        written = set(os.listdir(written_dir)) - {_TRACKING}
        # A crash of a broker that kept no such records (an older version): every partition is recovered.
        recover_all = not clean and not tracked
        for name in os.listdir(self.data_dir):
            if name.endswith("-delete"):
                shutil.rmtree(os.path.join(self.data_dir, name), ignore_errors=True)
        started = time.monotonic()
        recovered = 0
        for name in sorted(os.listdir(os.path.join(self.meta_dir, "topics"))):
            meta = read_json(os.path.join(self.meta_dir, "topics", name))
            if not meta or not name.endswith(".json"):
                continue
            recovered += self._open_topic(meta, clean, None if recover_all else written)
        if recover_all:
            # Recovered (rebuilt indexes not yet fsynced): recovered again after another crash.
            for plog in self.all_partitions():
                self._mark_written(plog)
            write_json_atomic(os.path.join(written_dir, _TRACKING), {})
            fsync_dir(written_dir)
        ids = read_json(os.path.join(self.meta_dir, "producer-ids.json")) or {}
        self._next_producer_id = self._producer_id_limit = int(ids.get("next_block", 0))
        previous = "clean" if clean else (f"crash, {recovered} written partition(s) recovered" if self.topics
                                          else "none")
        log.info("opened %d topic(s) from %s in %.3fs (previous shutdown: %s; other partitions load on first "
                 "use)", len(self.topics), self.data_dir, time.monotonic() - started, previous)

    @property
    def written_dir(self) -> str:
        return os.path.join(self.meta_dir, _WRITTEN_DIR)

    def _open_topic(self, meta: dict, clean: bool, written: set[str] | None) -> int:
        """Open a topic's partitions: those written since the last clean shutdown (all when
        `written` is None) are recovered now, before anything is served; the rest load on first
        use. Returns how many were recovered."""
        overrides = {str(k): str(v) for k, v in meta.get("configs", {}).items()}
        topic = Topic(meta["name"], uuid.UUID(meta["id"]), overrides, self.config.resolve_topic(overrides),
                      internal=bool(meta.get("internal", False)) or is_internal_name(meta["name"]))
        recovered = 0
        for p in range(int(meta["partitions"])):
            directory = self._partition_dir(topic.name, p)
            recover = not clean and (written is None or os.path.basename(directory) in written)
            plog = PartitionLog.open(directory, topic.name, p, topic.config, not recover, self._load_manifest,
                                     self.handles, lazy=not recover)
            if recover:
                recovered += 1  # its written record stays until the next clean start
            else:
                plog.on_first_write = self._mark_written
            topic.partitions.append(plog)
        self.topics[topic.name] = topic
        return recovered

    def _mark_written(self, plog: PartitionLog) -> None:
        """Before a partition's first write since start-up: record it, so a crash recovers it. The
        record's directory entry is made durable by the next group commit round, before its data."""
        path = os.path.join(self.written_dir, os.path.basename(plog.directory))
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        self.group_commit.dirs.add(self.written_dir)

    def unloaded_partitions(self) -> int:
        return sum(1 for t in self.topics.values() for p in t.partitions if not p.loaded)

    async def load_remaining(self) -> None:
        """After start-up: load the lazily opened partitions a step at a time, serving in between
        (retention and the other housekeeping then see every partition)."""
        started = time.monotonic()
        count = 0
        for topic in list(self.topics.values()):
            for plog in list(topic.partitions):
                if not plog.loaded:
                    plog.ensure_loaded()
                    count += 1
                    if count % _LOAD_STEP == 0:
                        await asyncio.sleep(0)
        if count:
            log.info("loaded %d partition(s) in the background in %.1fs", count, time.monotonic() - started)

    def close(self) -> None:
        self.group_commit.close()
        if self.handles.buffers is not None:
            self.handles.buffers.close()  # each partition's close writes its buffer out
        for fd in self._spare_fds:
            os.close(fd)
        self._spare_fds = []
        partitions = self.all_partitions()
        # Many partitions written since start-up: their closes skip every fsync, and one syncfs of the
        # data dir's filesystem makes all of it durable before the clean-shutdown marker is written
        # (a crash before that marker is recovered as a crash: the written partitions are scanned).
        written = sum(1 for p in partitions if p.loaded and p.on_first_write is None)
        deferred = written >= SYNCFS_MIN_SEGMENTS
        with deferred_fsync() if deferred else contextlib.nullcontext():
            for plog in partitions:
                plog.close()
        if deferred and not sync_filesystem(self.data_dir):
            os.sync()
        with open(os.path.join(self.data_dir, _CLEAN_MARKER), "w") as f:
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.data_dir)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ---- topics --------------------------------------------------------------------------

    def _partition_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.data_dir, f"{topic}-{partition}")

    def _write_topic_meta(self, topic: Topic) -> None:
        write_json_atomic(
            os.path.join(self.meta_dir, "topics", f"{topic.name}.json"),
            {"name": topic.name, "id": str(topic.topic_id), "partitions": len(topic.partitions),
             "configs": topic.overrides, "internal": topic.internal},
        )

    def _resolve(self, overrides: dict[str, str]) -> TopicConfig:
        try:
            config = self.config.resolve_topic(overrides)
        except ValueError as exc:
            raise KafkaProtocolError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        if self.require_remote and not config.remote_storage:
            raise KafkaProtocolError(ErrorCode.INVALID_CONFIG,
                                     "in a cluster every topic is kept in S3 (remote.storage.enable=true)")
        return config

    def create_topic(self, name: str, partitions: int, overrides: dict[str, str],
                     validate_only: bool = False, internal: bool = False,
                     topic_id: uuid.UUID | None = None) -> Topic | None:
        validate_topic_name(name)
        if not internal and is_internal_name(name):
            raise KafkaProtocolError(ErrorCode.INVALID_TOPIC_EXCEPTION,
                                     f"{name!r} is reserved for the broker's internal topics")
        if name in self.topics:
            raise KafkaProtocolError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        if partitions < 1 or partitions > 10000:
            raise KafkaProtocolError(ErrorCode.INVALID_PARTITIONS, "partitions must be 1..10000")
        config = self._resolve(overrides)
        if validate_only:
            return None
        topic = Topic(name, topic_id or uuid.uuid4(), dict(overrides), config, internal=internal)
        self._add_partitions(topic, partitions, new_topic=True)
        self.topics[name] = topic
        log.info("created topic %s (%d partitions, id %s)", name, partitions, topic.topic_id)
        if self.listener is not None:
            self.listener.topic_created(topic)
        return topic

    def delete_topic(self, name: str, notify: bool = True) -> Topic:
        """notify=False: only this broker's copy goes (cluster mode, the topic was deleted elsewhere)."""
        topic = self.topics.pop(name, None)
        if topic is None:
            raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {name!r}")
        os.unlink(os.path.join(self.meta_dir, "topics", f"{name}.json"))
        fsync_dir(os.path.join(self.meta_dir, "topics"))
        for plog in topic.partitions:
            plog.delete_files()
            doomed = f"{plog.directory}.{topic.topic_id.hex}-delete"
            os.replace(plog.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted topic %s", name)
        if self.listener is not None and notify:
            self.listener.topic_deleted(topic)
        return topic

    def create_partitions(self, name: str, count: int, validate_only: bool = False) -> None:
        topic = self.get_topic(name)
        if count <= len(topic.partitions):
            raise KafkaProtocolError(ErrorCode.INVALID_PARTITIONS,
                                     f"topic {name} has {len(topic.partitions)} partitions; it can only grow")
        if count > 10000:
            raise KafkaProtocolError(ErrorCode.INVALID_PARTITIONS, "partitions must be at most 10000")
        if validate_only:
            return
        self._add_partitions(topic, count, new_topic=False)
        if self.listener is not None:
            self.listener.topic_changed(topic)

    def alter_topic_config(self, name: str, overrides: dict[str, str], validate_only: bool = False) -> None:
        topic = self.get_topic(name)
        config = self._resolve(overrides)
        if validate_only:
            return
        topic.overrides = dict(overrides)
        topic.config = config
        for plog in topic.partitions:
            plog.config = config
        self._write_topic_meta(topic)
        if self.listener is not None:
            self.listener.topic_changed(topic)

    # ---- cluster mode: topics and partitions the placement hands this broker -----------------

    def adopt_topic(self, name: str, topic_id: uuid.UUID, partitions: int, overrides: dict[str, str],
                    internal: bool = False) -> Topic:
        """A topic created elsewhere in the cluster: known here with empty partitions, which fill
        when this broker takes one over. The bucket is not told (it has the topic already)."""
        existing = self.topics.get(name)
        if existing is not None:
            if existing.topic_id == topic_id:
                return existing
            self.delete_topic(name, notify=False)
        topic = Topic(name, topic_id, dict(overrides), self.config.resolve_topic(overrides),
                      internal=internal or is_internal_name(name))
        self._add_partitions(topic, partitions, new_topic=True)
        self.topics[name] = topic
        log.info("topic %s (%d partitions, id %s) placed in the cluster", name, partitions, topic_id)
        return topic

    def grow_topic(self, name: str, partitions: int) -> None:
        self._add_partitions(self.get_topic(name), partitions, new_topic=False)

    def set_topic_overrides(self, name: str, overrides: dict[str, str]) -> None:
        topic = self.get_topic(name)
        if topic.overrides == overrides:
            return
        topic.overrides = dict(overrides)
        topic.config = self.config.resolve_topic(overrides)
        for plog in topic.partitions:
            plog.config = topic.config
        self._write_topic_meta(topic)

    def replace_partition(self, name: str, partition: int, seed: Callable[[str], None] | None) -> PartitionLog:
        """Throw this broker's copy of a partition away and open a new one laid out by `seed`
        (None: empty). Used when leadership arrives (seed from the bucket) or leaves."""
        topic = self.get_topic(name)
        old = topic.partitions[partition]
        old.delete_files()
        directory = self._partition_dir(name, partition)
        doomed = f"{directory}.{uuid.uuid4().hex}-delete"
        if os.path.exists(directory):
            os.replace(directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        if seed is not None:
            seed(directory)
        plog = self._open_partition(directory, name, partition, topic.config, clean=True)
        topic.partitions[partition] = plog
        old._wake()  # long polls parked on the old copy look again
        return plog

    def _add_partitions(self, topic: Topic, count: int, new_topic: bool) -> None:
        """Open empty partitions up to `count` and record them, all or nothing: when the files cannot
        be made (out of descriptors or disk), what was made is removed and the topic is as before."""
        name, first = topic.name, len(topic.partitions)
        added: list[PartitionLog] = []
        try:
            for p in range(first, count):
                shutil.rmtree(self._partition_dir(name, p), ignore_errors=True)
                added.append(self._open_partition(self._partition_dir(name, p), name, p, topic.config, True))
            topic.partitions.extend(added)
            self._write_topic_meta(topic)
        except OSError as exc:
            del topic.partitions[first:]
            for plog in added:
                plog.delete_files()
            for fd in self._spare_fds:  # removing files needs descriptors: the reserve's are freed now
                os.close(fd)
            for p in range(first, count):
                shutil.rmtree(self._partition_dir(name, p), ignore_errors=True)
            if new_topic:
                try:
                    os.unlink(os.path.join(self.meta_dir, "topics", f"{name}.json"))
                except FileNotFoundError:
                    pass
            else:
                try:
                    self._write_topic_meta(topic)
                except OSError:
                    pass  # the atomic write failed: the previous file, with the old count, is in place
            self._spare_fds = _reserve_fds()
            log.warning("could not create %d partition(s) of %s, nothing was kept: %s", count - first, name, exc)
            raise KafkaProtocolError(ErrorCode.KAFKA_STORAGE_ERROR,
                                     f"could not create the partitions' files ({exc.strerror or exc}); "
                                     "nothing was created") from exc

    def _open_partition(self, directory: str, topic: str, partition: int, config: TopicConfig,
                        clean: bool) -> PartitionLog:
        plog = PartitionLog.open(directory, topic, partition, config, clean, self._load_manifest, self.handles)
        plog.on_first_write = self._mark_written
        return plog

    def get_topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic {name!r}")
        return topic

    def get_partition(self, name: str, partition: int) -> PartitionLog:
        topic = self.get_topic(name)
        if not 0 <= partition < len(topic.partitions):
            raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{name} has no partition {partition}")
        return topic.partitions[partition]

    def topic_by_id(self, topic_id: uuid.UUID) -> Topic | None:
        for topic in self.topics.values():
            if topic.topic_id == topic_id:
                return topic
        return None

    # ---- producer ids --------------------------------------------------------------------

    async def allocate_producer_id(self) -> int:
        """Unique across restarts: a block is persisted (locally, or in the bucket's cluster-wide
        counter) before any id from it is handed out."""
        if self._next_producer_id >= self._producer_id_limit:
            await self.reserve_producer_id_block()
        pid = self._next_producer_id
        self._next_producer_id += 1
        return pid

    async def reserve_producer_id_block(self) -> None:
        """Take a new block unless the current one has ids left (also called at start-up, while
        the bucket is known to be reachable, so that producers can start during an S3 outage)."""
        async with self._producer_id_lock:
            if self._next_producer_id < self._producer_id_limit:
                return
            start = self._next_producer_id
            if self.producer_id_blocks is not None:
                start = await self.producer_id_blocks(_PRODUCER_ID_BLOCK, start)
            write_json_atomic(os.path.join(self.meta_dir, "producer-ids.json"),
                              {"next_block": start + _PRODUCER_ID_BLOCK})
            self._next_producer_id, self._producer_id_limit = start, start + _PRODUCER_ID_BLOCK

    # ---- housekeeping --------------------------------------------------------------------

    def all_partitions(self) -> list[PartitionLog]:
        return [p for t in self.topics.values() for p in t.partitions]

    def enforce_retention(self) -> int:
        now_ms = int(time.time() * 1000)
        return sum(plog.enforce_retention(now_ms) for plog in self.all_partitions())

    async def flush_dirty(self) -> None:
        """Background fsync so that acks=0/1 data reaches the disk within log.flush.interval.ms."""
        dirty = [s for p in self.all_partitions() for s in p.dirty_segments()]
        if dirty:
            await self.group_commit.sync_many(dirty)  # one waiter, however many segments

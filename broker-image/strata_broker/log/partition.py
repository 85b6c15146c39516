"""A partition's log: an ordered list of segments, the last one active."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kafka.record.default_records import DefaultRecordBatch

from ..config import TopicConfig
from ..errors import ErrorCode, KafkaProtocolError
from . import txn_index
from .batch import (
    CONTROL_ABORT,
    BatchHeader,
    build_control_batch,
    control_record,
    parse_header,
    stamp_log_append_time,
    validate_batches,
)
from .files import fsync_dir, read_json, write_json_atomic
from .handles import HandleCache
from .leader_epochs import LeaderEpochCache
from .producer_state import ProducerState
from .segment import Segment, segment_name

log = logging.getLogger(__name__)

_OFFSET = struct.Struct(">q")
_OFFSET_LENGTH_EPOCH = struct.Struct(">qii")  # a batch's first 16 bytes
_EPOCH = struct.Struct(">i")

CHECKPOINT = "checkpoint.json"
PRODUCER_SNAPSHOT = "producer-state.json"
REMOTE_MANIFEST = "remote-manifest.json"  # this broker's copy of the partition's remote manifest


class RemoteManifestView(Protocol):
    """What the local log knows of the segments in remote storage (strata_contract.manifest.RemoteManifest)."""

    log_start_offset: int
    segments: Sequence[Any]

    @property
    def end_offset(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    def to_json(self) -> bytes: ...


# Parses the remote manifest copy kept in the partition directory (remote storage supplies it).
ManifestLoader = Callable[[bytes], RemoteManifestView]
# The commit point of a local compaction: which segments go, which cleaned ones replace them.
CLEANER_SWAP = "cleaner-swap.json"


class OffsetInRemoteStorage(Exception):
    """The offset is below the local log start but in S3: the caller reads it through the tier."""


def snapshot_name(offset: int) -> str:
    """Producer state as of offset, kept beside the segment that ends there (uploaded with it)."""
    return f"{offset:020d}.snapshot"


class AppendResult:
    __slots__ = ("base_offset", "last_offset", "duplicate", "segment", "_data", "_pieces", "log_append_time")

    def __init__(self, base_offset: int, last_offset: int, duplicate: bool, segment: Segment | None,
                 data: bytes | bytearray = b"", pieces: list[bytes | memoryview] | None = None,
                 log_append_time: int = -1) -> None:
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.duplicate = duplicate
        self.segment = segment
        self._data = data
        self._pieces = pieces
        # The time stamped on the batches (message.timestamp.type=LogAppendTime), else -1.
        self.log_append_time = log_append_time

    @property
    def data(self) -> bytes | bytearray:
        """The batches as written (offsets assigned); empty for a duplicate. Joined on first use only."""
        if self._pieces is not None:
            self._data = b"".join(self._pieces)
            self._pieces = None
        return self._data


class PartitionLog:
    def __init__(self, directory: str, topic: str, partition: int, config: TopicConfig,
                 handles: HandleCache | None = None) -> None:
        self.directory = directory
        self.handles = handles  # the broker's bounded set of segments with open files
        self.topic = topic
        self.partition = partition
        self.config = config
        self._segments: list[Segment] = []
        self._log_start_offset = 0
        self._producers = ProducerState()
        # Opened lazily (LogManager at start-up): (clean, manifest loader) until first use loads the
        # partition from its directory; nothing of it is served before that.
        self._pending: tuple[bool, ManifestLoader | None] | None = None
        # Called before the first write since start-up (the manager records the partition as
        # written, so that only written partitions are recovered after a crash).
        # Aborted transactions whose marker is in the local log, in marker order (.txnindex files).
        self._aborted: list[txn_index.AbortedTxn] = []
        self.on_first_write: Callable[[PartitionLog], None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        # Tiered storage: the manifest of what is in S3 (None when this topic is not tiered).
        self._remote: RemoteManifestView | None = None
        self.manifest_lock = asyncio.Lock()
        # Cluster mode: the leader epoch this broker holds the partition at, and the ETag of the
        # manifest version it last wrote or read (manifest writes are conditional on it).
        self.leader_epoch = 0
        self.epochs = LeaderEpochCache(directory)  # the start offset of each leader epoch (OffsetForLeaderEpoch)
        self.remote_etag: str | None = None
        self.fenced = False
        self.claimed = False  # cluster mode: this broker's claim at leader_epoch is in the bucket
        # Compaction: offsets below this are clean.
        self._cleaned_offset = 0
        # Compaction: when a stamped transaction marker's delete horizon passes (a cleaning pass is
        # then due even with nothing dirty); None when no marker waits. In the checkpoint.
        self.marker_due_ms: int | None = None
        self.remote_marker_due_ms: int | None = None  # the same for the S3 compactor (in memory)

    # ---- opening and recovery -----------------------------------------------------------

    @classmethod
    def open(cls, directory: str, topic: str, partition: int, config: TopicConfig, clean: bool,
             load_manifest: ManifestLoader | None = None, handles: HandleCache | None = None,
             lazy: bool = False) -> PartitionLog:
        """lazy: read nothing now; the directory is loaded (as after a clean shutdown when `clean`)
        on the first use of the partition's state."""
        plog = cls(directory, topic, partition, config, handles)
        if lazy:
            plog._pending = (clean, load_manifest)
            return plog
        os.makedirs(directory, exist_ok=True)
        plog._load(clean, load_manifest)
        return plog

    @property
    def loaded(self) -> bool:
        return self._pending is None

    def ensure_loaded(self) -> None:
        """Load a lazily opened partition now (on the event loop's thread)."""
        if self._pending is not None:
            clean, load_manifest = self._pending
            self._pending = None
            os.makedirs(self.directory, exist_ok=True)
            self._load(clean, load_manifest)

    # The state a load reads from disk: every access loads a lazily opened partition first.

    @property
    def segments(self) -> list[Segment]:
        if self._pending is not None:
            self.ensure_loaded()
        return self._segments

    @property
    def log_start_offset(self) -> int:
        if self._pending is not None:
            self.ensure_loaded()
        return self._log_start_offset

    @log_start_offset.setter
    def log_start_offset(self, value: int) -> None:
        self.ensure_loaded()
        self._log_start_offset = value

    @property
    def producers(self) -> ProducerState:
        if self._pending is not None:
            self.ensure_loaded()
        return self._producers

    @producers.setter
    def producers(self, value: ProducerState) -> None:
        self.ensure_loaded()
        self._producers = value

    @property
    def remote(self) -> RemoteManifestView | None:
        if self._pending is not None:
            self.ensure_loaded()
        return self._remote

    @remote.setter
    def remote(self, value: RemoteManifestView | None) -> None:
        self.ensure_loaded()
        self._remote = value

    @property
    def aborted(self) -> list[txn_index.AbortedTxn]:
        if self._pending is not None:
            self.ensure_loaded()
        return self._aborted

    @aborted.setter
    def aborted(self, value: list[txn_index.AbortedTxn]) -> None:
        self.ensure_loaded()
        self._aborted = value

    @property
    def cleaned_offset(self) -> int:
        if self._pending is not None:
            self.ensure_loaded()
        return self._cleaned_offset

    @cleaned_offset.setter
    def cleaned_offset(self, value: int) -> None:
        self.ensure_loaded()
        self._cleaned_offset = value

    def _load(self, clean: bool, load_manifest: ManifestLoader | None) -> None:
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.directory, name))
        finish_cleaner_swap(self.directory)
        checkpoint = read_json(os.path.join(self.directory, CHECKPOINT)) or {}
        bases = sorted(int(name[:-4]) for name in os.listdir(self.directory)
                       if name.endswith(".log") and name[:-4].isdigit())
        recovery_point = int(checkpoint.get("recovery_point", 0))
        for base in bases:
            self.segments.append(Segment(self.directory, base, self.config.index_interval_bytes, self.handles))
        if not self.segments:
            # A partition restored from S3 starts its local log where the bucket ends.
            start = max(int(checkpoint.get("log_start_offset", 0)), int(checkpoint.get("log_end_offset", 0)))
            self.segments.append(Segment(self.directory, start, self.config.index_interval_bytes, self.handles))
        # Segments wholly below the recovery point were fsynced with their indexes at roll time;
        # after a crash only the tail from the recovery point on is scanned, so restart time does
        # not grow with the size of the log.
        for i, segment in enumerate(self.segments):
            tail = i == len(self.segments) - 1 or self.segments[i + 1].base_offset > recovery_point
            if clean or not tail:
                segment.load()
                continue
            before = segment.size
            segment.recover()
            if segment.size < before:
                for later in self.segments[i + 1:]:
                    log.warning("deleting %s after a torn batch before it", later.log_path)
                    later.delete()
                del self.segments[i + 1:]
                break
        manifest = read_json(os.path.join(self.directory, REMOTE_MANIFEST))
        if manifest is not None and load_manifest is not None:
            self.remote = load_manifest(json.dumps(manifest).encode())
        floor = self.segments[0].base_offset
        if self.remote is not None and self.remote.segments:
            floor = min(floor, self.remote.log_start_offset)
        self.log_start_offset = max(int(checkpoint.get("log_start_offset", 0)), floor)
        self.cleaned_offset = int(checkpoint.get("cleaned_offset", 0))
        due_ms = checkpoint.get("marker_due_ms")
        self.marker_due_ms = None if due_ms is None else int(due_ms)
        self._load_producer_state()

    def _load_producer_state(self) -> None:
        """Producer state (sequences, ongoing transactions) from the last snapshot, then the batches
        after it; the aborted-transaction index is read from the segments' `.txnindex` files, and
        rebuilt for the part of the log the snapshot does not cover."""
        snapshot = read_json(os.path.join(self.directory, PRODUCER_SNAPSHOT))
        from_offset = 0
        if snapshot and int(snapshot.get("offset", -1)) <= self.log_end_offset:
            self.producers = ProducerState.from_json(snapshot.get("producers", {}))
            from_offset = int(snapshot["offset"])
        for segment in self.segments:
            entries = txn_index.read_index(_txn_index_path(segment))
            kept = [e for e in entries if e.last_offset < from_offset]
            if len(kept) != len(entries):
                txn_index.write_index(_txn_index_path(segment), kept)
            self.aborted.extend(kept)
        for segment in self._segments_from(from_offset):
            for pos, header in segment.walk(0):
                if header.base_offset >= from_offset:
                    self._record(header, segment, pos)

    def _segments_from(self, offset: int) -> list[Segment]:
        segments = self.segments
        if offset >= segments[-1].base_offset:
            return segments[-1:]  # the common case: reading the active segment
        i = max(0, bisect_right([s.base_offset for s in segments], offset) - 1)
        return self.segments[i:]

    # ---- state ---------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def local_start_offset(self) -> int:
        return self.segments[0].base_offset

    @property
    def remote_end_offset(self) -> int:
        """One past the highest offset safely in S3 (0 when nothing is)."""
        return self.remote.end_offset if self.remote is not None else 0

    @property
    def log_end_offset(self) -> int:
        return self.active.next_offset

    @property
    def high_watermark(self) -> int:
        # One copy of each partition: everything appended is committed.
        return self.log_end_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def write_checkpoint(self, recovery_point: int | None = None) -> None:
        write_json_atomic(
            os.path.join(self.directory, CHECKPOINT),
            {
                "log_start_offset": self.log_start_offset,
                "recovery_point": self.active.base_offset if recovery_point is None else recovery_point,
                "high_watermark": self.high_watermark,
                "log_end_offset": self.log_end_offset,
                "remote_offset": self.remote_end_offset - 1,
                "cleaned_offset": self.cleaned_offset,
                "marker_due_ms": self.marker_due_ms,
            },
        )

    def write_producer_snapshot(self) -> None:
        write_json_atomic(
            os.path.join(self.directory, PRODUCER_SNAPSHOT),
            {"offset": self.log_end_offset, "producers": self.producers.to_json()},
        )

    # ---- appending -----------------------------------------------------------------------

    def _first_write(self) -> None:
        hook, self.on_first_write = self.on_first_write, None
        if hook is not None:
            hook(self)

    def append(self, records: bytes) -> AppendResult:
        headers = validate_batches(records, self.config.max_message_bytes)
        if self.on_first_write is not None:
            self._first_write()
        if len(headers) == 1:
            duplicate_of = self.producers.check(headers[0])
            if duplicate_of is not None:
                return AppendResult(duplicate_of, duplicate_of + headers[0].last_offset_delta, True, None)
        else:
            duplicate_of = self.producers.check_all(headers)
            if duplicate_of is not None:  # a retried request: answered with where it first landed
                last = duplicate_of + sum(h.last_offset_delta + 1 for h in headers) - 1
                return AppendResult(duplicate_of, last, True, None)
        self._maybe_roll(len(records))
        next_offset = self.log_end_offset
        base_offset = next_offset
        rebased: list[BatchHeader] = []
        # Written as pieces (os.writev): each batch's new base offset, then the rest of the batch
        # straight from the request, instead of a rebased copy of the whole record set.
        view = memoryview(records)
        pieces: list[bytes | memoryview] = []
        pos = 0
        append_time = int(time.time() * 1000) if self.config.log_append_time else -1
        epoch = self.leader_epoch
        for header in headers:
            # The batch's base offset, its length and the partitionLeaderEpoch the leader stamps (as
            # Kafka's LogValidator; outside the CRC): the leader-epoch history's OffsetForLeaderEpoch.
            pieces.append(_OFFSET_LENGTH_EPOCH.pack(next_offset, header.length - 12, epoch))
            if append_time >= 0:
                prefix, stamped = stamp_log_append_time(view[pos:pos + header.length], header, append_time)
                pieces.append(prefix[8:])
                pieces.append(view[pos + 43:pos + header.length])
                header = stamped
            else:
                pieces.append(view[pos + 16:pos + header.length])
            rebased.append(_rebase(header, next_offset))
            next_offset += header.last_offset_delta + 1
            pos += header.length
        segment = self.active
        try:
            segment.append_pieces(pieces, rebased)
        except OSError as exc:
            log.error("append to %s-%d failed: %s", self.topic, self.partition, exc)
            raise KafkaProtocolError(ErrorCode.KAFKA_STORAGE_ERROR, str(exc)) from exc
        producers = self.producers
        for header in rebased:
            producers.record(header)
        self._wake()
        return AppendResult(base_offset, next_offset - 1, False, segment, pieces=pieces, log_append_time=append_time)

    def append_restored(self, data: bytes) -> int:
        """Append batches that already carry their offsets (replayed from the S3 commit log).

        Batches below the log end are already here and skipped; returns how many were appended.
        """
        headers = validate_batches(data, max(self.config.max_message_bytes, len(data)), allow_control=True)
        if self.on_first_write is not None:
            self._first_write()
        appended = 0
        pos = 0
        for header in headers:
            chunk = data[pos:pos + header.length]
            pos += header.length
            if header.last_offset < self.log_end_offset:
                continue
            if header.base_offset != self.log_end_offset:
                raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE,
                                         f"restored batch at {header.base_offset} leaves a gap after "
                                         f"{self.log_end_offset}")
            self._maybe_roll(len(chunk))
            segment = self.active
            position = segment.size
            segment.append(chunk, [header])
            self._record(header, segment, position, bytes(chunk) if header.is_control else None)
            appended += 1
        if appended:
            self.active.fsync()
            self._wake()
        return appended

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool,
                      coordinator_epoch: int = 0) -> AppendResult:
        """Write a transaction marker (a control batch) that ends the producer's transaction in this
        partition: commit makes its records visible to read_committed readers, abort adds an entry to
        the aborted-transaction index. A marker from an older producer epoch, or from an older
        coordinator epoch than the producer's last marker here, is refused (ProducerState.check_marker)."""
        self.producers.check_marker(producer_id, producer_epoch, coordinator_epoch)
        batch = bytearray(build_control_batch(producer_id, producer_epoch, commit, coordinator_epoch,
                                              int(time.time() * 1000)))
        self._maybe_roll(len(batch))
        offset = self.log_end_offset
        _OFFSET.pack_into(batch, 0, offset)
        _EPOCH.pack_into(batch, 12, self.leader_epoch)
        header = parse_header(batch)
        segment = self.active
        position = segment.size
        try:
            segment.append(bytes(batch), [header])
        except OSError as exc:
            log.error("marker append to %s-%d failed: %s", self.topic, self.partition, exc)
            raise KafkaProtocolError(ErrorCode.KAFKA_STORAGE_ERROR, str(exc)) from exc
        self._record(header, segment, position, bytes(batch))
        self._wake()
        return AppendResult(offset, offset, False, segment, data=bytes(batch))

    def _record(self, header: BatchHeader, segment: Segment, position: int, batch: bytes | None = None) -> None:
        """Producer state after an appended (or recovered) batch; an abort marker that ends a
        transaction with records here adds an entry to the aborted-transaction index. A marker's
        coordinator epoch (its record's value) becomes its producer's."""
        if not header.is_control or header.producer_id < 0:
            self.producers.record(header)
            return
        first = self.producers.ongoing.get(header.producer_id)
        if batch is None:
            batch = segment.read_batch(position, header.length)
        marker = control_record(batch)
        self.producers.record(header, None if marker is None else marker[1])
        if first is None:
            return
        if marker is None or marker[0] != CONTROL_ABORT:
            return
        unstable = self.producers.first_unstable_offset()
        entry = txn_index.AbortedTxn(header.producer_id, first, header.base_offset,
                                     header.next_offset if unstable is None else unstable)
        self.aborted.append(entry)
        txn_index.append_entry(_txn_index_path(segment), entry)

    @property
    def last_stable_offset(self) -> int:
        """Below it every transaction is decided (Kafka's LSO): the first offset of the oldest
        ongoing transaction, else the high watermark. read_committed readers stop there."""
        unstable = self.producers.first_unstable_offset()
        return self.high_watermark if unstable is None else min(unstable, self.high_watermark)

    def aborted_between(self, fetch_offset: int, upper_offset: int) -> list[txn_index.AbortedTxn]:
        """Aborted transactions (local index) overlapping [fetch_offset, upper_offset)."""
        if not self.aborted:
            return []
        lasts = [e.last_offset for e in self.aborted]
        start = bisect_right(lasts, fetch_offset - 1)
        return txn_index.overlapping(self.aborted[start:], fetch_offset, upper_offset)

    def _prune_aborted(self) -> None:
        """Forget index entries whose marker is no longer in the local log."""
        start = self.local_start_offset
        if self.aborted and self.aborted[0].last_offset < start:
            self.aborted = [e for e in self.aborted if e.last_offset >= start]

    def _maybe_roll(self, incoming: int) -> None:
        active = self.active
        if active.size == 0:
            return
        too_big = active.size + incoming > self.config.segment_bytes
        too_old = int(time.time() * 1000) - active.created_ms >= self.config.segment_ms
        if too_big or too_old:
            self.roll()

    def roll(self) -> None:
        old = self.active
        old.seal()
        self.segments.append(Segment(self.directory, old.next_offset, self.config.index_interval_bytes, self.handles))
        self.write_producer_snapshot()
        write_json_atomic(os.path.join(self.directory, snapshot_name(old.next_offset)),
                          {"offset": old.next_offset, "producers": self.producers.to_json()}, fsync=False)
        self.write_checkpoint()

    def roll_if_older_than(self, now_ms: int, interval_ms: int) -> bool:
        """Tiering: a partial active segment is closed after interval_ms so it can be uploaded."""
        if self.active.size > 0 and now_ms - self.active.created_ms >= interval_ms:
            self.roll()
            return True
        return False

    def closed_segments_not_in_remote(self) -> list[Segment]:
        end = self.remote_end_offset
        return [s for s in self.segments[:-1] if s.next_offset > end and s.size > 0]

    # ---- reading -------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, always_one: bool = True) -> bytes:
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise KafkaProtocolError(ErrorCode.OFFSET_OUT_OF_RANGE,
                                     f"offset {offset} outside [{self.log_start_offset}, {self.log_end_offset}]")
        if offset < self.local_start_offset:
            raise OffsetInRemoteStorage(offset)
        for segment in self._segments_from(offset):
            data = segment.read_from(offset, max_bytes, always_one)
            if data:
                return data
        return b""

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= timestamp, or None."""
        for segment in self.segments:
            if segment.max_timestamp < timestamp:
                continue
            relative = segment.time_index.start_before(timestamp)
            _, start = segment.offset_index.floor(relative)
            for pos, header in segment.walk(start):
                if header.base_offset < self.log_start_offset and header.last_offset < self.log_start_offset:
                    continue
                if header.max_timestamp < timestamp:
                    continue
                batch = DefaultRecordBatch(segment.read_batch(pos, header.length))
                for record in batch:
                    if record.timestamp >= timestamp and record.offset >= self.log_start_offset:
                        return record.offset, record.timestamp
        return None

    def max_timestamp_offset(self) -> tuple[int, int] | None:
        """(offset, timestamp) of the record with the largest timestamp (ListOffsets -3)."""
        candidates = [s for s in self.segments if s.max_timestamp >= 0]
        if not candidates:
            return None
        segment = max(candidates, key=lambda s: s.max_timestamp)
        for pos, header in segment.walk(0):
            if header.max_timestamp == segment.max_timestamp:
                for record in DefaultRecordBatch(segment.read_batch(pos, header.length)):
                    if record.timestamp == header.max_timestamp:
                        return record.offset, record.timestamp
        return None

    def add_waiter(self, future: asyncio.Future[None]) -> None:
        """future is resolved at the next append (fetch long polls wait on it)."""
        self._waiters.add(future)

    def remove_waiter(self, future: asyncio.Future[None]) -> None:
        self._waiters.discard(future)

    def _wake(self) -> None:
        if self._waiters:
            for future in self._waiters:
                if not future.done():
                    future.set_result(None)
            self._waiters.clear()

    # ---- retention and housekeeping ------------------------------------------------------

    def enforce_retention(self, now_ms: int) -> int:
        """Delete whole closed local segments; returns how many.

        Without tiering, retention.ms / retention.bytes govern the log. With tiering, the local
        copy of a segment goes only once S3 has confirmed it and local.retention.* has passed;
        total retention is then enforced in S3 by the tier. Segments wholly below the log start
        (moved by DeleteRecords) go whatever the retention settings (tiered: once in S3).
        """
        tiered = self.remote is not None
        if not tiered and not self.config.deletes and self.segments[0].next_offset > self.log_start_offset:
            return 0  # cleanup.policy=compact alone: the cleaner bounds the log, not retention
        keep_ms = self.config.local_retention_ms if tiered else self.config.retention_ms
        keep_bytes = self.config.local_retention_bytes if tiered else self.config.retention_bytes
        deleted = 0
        while len(self.segments) > 1:
            oldest = self.segments[0]
            if tiered and oldest.next_offset > self.remote_end_offset:
                break  # not in S3 yet: never deleted before its upload lands
            by_retention = tiered or self.config.deletes
            expired = (by_retention and keep_ms >= 0 and oldest.max_timestamp >= 0
                       and now_ms - oldest.max_timestamp > keep_ms)
            oversize = by_retention and keep_bytes >= 0 and self.size_bytes - oldest.size >= keep_bytes
            deleted_records = oldest.next_offset <= self.log_start_offset  # below a DeleteRecords
            if not (expired or oversize or deleted_records):
                break
            self.segments.pop(0)
            if not tiered:
                self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
            oldest.delete()
            _unlink_quietly(os.path.join(self.directory, snapshot_name(oldest.next_offset)))
            deleted += 1
        if deleted:
            self._prune_aborted()
            self.write_checkpoint()
            log.info("%s deleted %d local segment(s) of %s-%d; local log starts at %d", "tiering" if tiered
                     else "retention", deleted, self.topic, self.partition, self.local_start_offset)
        return deleted

    def advance_log_start(self, offset: int) -> int:
        """DeleteRecords: records below `offset` are gone for readers from now on. Closed local
        segments wholly below it are deleted at once (on a tiered partition only once S3 has them:
        remote retention then deletes the remote copies). Returns how many local segments went."""
        if offset <= self.log_start_offset:
            return 0
        self.log_start_offset = offset
        tiered = self.remote is not None
        deleted = 0
        while len(self.segments) > 1 and self.segments[0].next_offset <= offset:
            oldest = self.segments[0]
            if tiered and oldest.next_offset > self.remote_end_offset:
                break  # not in S3 yet: uploaded first, then removed by local and remote retention
            self.segments.pop(0)
            oldest.delete()
            _unlink_quietly(os.path.join(self.directory, snapshot_name(oldest.next_offset)))
            deleted += 1
        self._prune_aborted()
        self.write_checkpoint()
        log.info("log start offset of %s-%d moved to %d (DeleteRecords); %d local segment(s) deleted",
                 self.topic, self.partition, offset, deleted)
        return deleted

    def install_cleaned(self, originals: list[Segment], cleaned_bases: list[int], cleaned_through: int,
                        kept_aborts: set[int] | None = None, marker_due_ms: int | None = None) -> bool:
        """Swap cleaned segments (written as `<base>.log.cleaned`) in for the originals, crash-safely.

        `kept_aborts`: the offsets of the abort markers the pass kept (the aborted-transaction
        index loses the entries of the others; None: every marker was kept). `marker_due_ms`: the
        pass's earliest delete horizon still ahead (compaction.Markers).

        Runs on the event loop, so no read sees half a swap. False (and nothing changed) when
        retention or another change took any original away meanwhile.
        """
        count = len(originals)
        if not _is_slice(self.segments, originals) or originals[-1] is self.active:
            for base in cleaned_bases:
                _unlink_quietly(os.path.join(self.directory, f"{segment_name(base)}.log.cleaned"))
            return False
        start = self.segments.index(originals[0])
        for base in cleaned_bases:
            with open(os.path.join(self.directory, f"{segment_name(base)}.log.cleaned"), "rb+") as f:
                os.fsync(f.fileno())
        write_json_atomic(os.path.join(self.directory, CLEANER_SWAP),
                          {"remove": [s.base_offset for s in originals], "install": cleaned_bases})
        for segment in originals:
            segment.close()
        finish_cleaner_swap(self.directory)
        installed = []
        for base in cleaned_bases:
            segment = Segment(self.directory, base, self.config.index_interval_bytes, self.handles)
            segment.rebuild()
            segment.seal()
            installed.append(segment)
        self.segments[start:start + count] = installed
        if kept_aborts is not None:
            first, end = originals[0].base_offset, cleaned_through
            self.aborted = [e for e in self.aborted
                            if not first <= e.last_offset < end or e.last_offset in kept_aborts]
        self.marker_due_ms = marker_due_ms
        # Segments may have been merged: each installed one's `.txnindex` holds the entries of
        # the abort markers it still contains (offsets never change).
        for segment in originals:
            if segment.base_offset not in cleaned_bases:
                _unlink_quietly(_txn_index_path(segment))
        for segment in installed:
            txn_index.write_index(_txn_index_path(segment), [
                e for e in self.aborted if segment.base_offset <= e.last_offset < segment.next_offset])
        self.cleaned_offset = max(self.cleaned_offset, cleaned_through)
        self.write_checkpoint()
        return True

    def set_remote(self, manifest: RemoteManifestView) -> None:
        self.remote = manifest
        write_json_atomic(os.path.join(self.directory, REMOTE_MANIFEST), json.loads(manifest.to_json()))
        self.log_start_offset = max(self.log_start_offset,
                                    manifest.log_start_offset if manifest.segments else self.log_start_offset)
        self.write_checkpoint()

    def dirty_segments(self) -> list[Segment]:
        if self._pending is not None:
            return []  # not loaded: not written since start-up
        return [s for s in self._segments if s.dirty]

    def close(self) -> None:
        """Clean shutdown: fsync, remember where the data is safe, close files. A partition not
        written since start-up (or never loaded) is only closed: nothing of it changed."""
        if self._pending is not None:
            return
        if self.on_first_write is not None:
            # Not written since start-up: its files and checkpoint are as the last close left them
            # (retention, DeleteRecords and compaction write their own checkpoints).
            self._wake()
            for segment in self._segments:
                segment.close()
            return
        self.active.fsync()
        self.write_producer_snapshot()
        self.write_checkpoint(recovery_point=self.log_end_offset)
        self._wake()
        for segment in self.segments:
            segment.close()

    def delete_files(self) -> None:
        if self._pending is not None:
            return
        for segment in self._segments:
            segment.close()


def finish_cleaner_swap(directory: str) -> None:
    """Complete a compaction swap that was committed (its swap file exists), else drop leftovers.

    Idempotent: a crash anywhere in here is finished by the next start.
    """
    swap_path = os.path.join(directory, CLEANER_SWAP)
    swap = read_json(swap_path)
    if swap is not None:
        install = set(swap["install"])
        for base in swap["remove"]:
            for suffix in (".index", ".timeindex"):
                _unlink_quietly(os.path.join(directory, segment_name(base) + suffix))
            if base not in install:
                _unlink_quietly(os.path.join(directory, segment_name(base) + ".log"))
        for base in swap["install"]:
            cleaned = os.path.join(directory, segment_name(base) + ".log.cleaned")
            if os.path.exists(cleaned):
                os.replace(cleaned, os.path.join(directory, segment_name(base) + ".log"))
        fsync_dir(directory)
        os.unlink(swap_path)
    for name in os.listdir(directory):
        if name.endswith(".cleaned"):
            os.unlink(os.path.join(directory, name))


def _is_slice(segments: list[Segment], part: list[Segment]) -> bool:
    if not part or part[0] not in segments:
        return False
    start = segments.index(part[0])
    return segments[start:start + len(part)] == part


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _txn_index_path(segment: Segment) -> str:
    return txn_index.index_path(segment.directory, segment.base_offset)


def _rebase(h: BatchHeader, base_offset: int) -> BatchHeader:
    # The constructor directly: dataclasses.replace costs several times more, once per batch.
    return BatchHeader(base_offset, h.length, h.leader_epoch, h.magic, h.crc, h.attributes, h.last_offset_delta,
                       h.base_timestamp, h.max_timestamp, h.producer_id, h.producer_epoch, h.base_sequence,
                       h.record_count)

"""Compaction of record batches: keep the latest value of every key, drop expired tombstones.

Transactions are respected as Kafka does: records of aborted transactions (given as the
partition's aborted-transaction index) neither count as a key's latest value nor survive a
cleaning. Transaction markers (control batches) are removed as Kafka's cleaner removes them
(LogCleaner / CleanedTransactionMetadata, KIP-534), when a `Markers` tracker is given: a
marker stays while any record of its transaction remains; the first pass that finds none left
stamps the marker with a delete horizon (attribute bit 0x40, the horizon in the base timestamp,
as Kafka does) of now + delete.retention.ms; a pass after the horizon drops it. Kafka reaches
"no record left" one pass after the records went; here it is the pass that removes them, and
the horizon gives readers the same delete.retention.ms to get past the marker. Kafka keeps an
emptied batch header as the last batch of its producer (RETAIN_EMPTY); no such header is kept
here (the producer snapshot written at each roll already holds the producer's state).

Pure functions over bytes, shared by the local cleaner and the S3 one. Offsets never change
(gaps are allowed); a batch with nothing removed is kept verbatim; a batch that loses records
is rebuilt with kafka-python's builder, with its codec, producer id, epoch and base sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from .batch import (
    ATTR_DELETE_HORIZON,
    ATTR_LOG_APPEND_TIME,
    CONTROL_ABORT,
    HEADER_SIZE,
    BatchHeader,
    control_type,
    parse_header,
    set_base_offset,
    set_delete_horizon,
    stamp_log_append_time,
)
from .txn_index import AbortedTxn

KeyMap = dict[bytes, int]
# producer id -> [(first offset, marker offset)] of its aborted transactions
AbortedRanges = dict[int, list[tuple[int, int]]]


def aborted_ranges(entries: Iterable[AbortedTxn]) -> AbortedRanges:
    out: AbortedRanges = {}
    for entry in entries:
        out.setdefault(entry.producer_id, []).append((entry.first_offset, entry.last_offset))
    return out


class Markers:
    """Transaction-marker removal over one cleaning pass, fed the batches in offset order.

    `enabled` is False when the pass does not start at the log start (records of a transaction
    may lie before it): markers are then kept as they are. After the pass: `kept_aborts` holds
    the offsets of the abort markers kept (their `.txnindex` entries stay, the others go),
    `removed` how many markers were dropped, and `next_due_ms` the earliest delete horizon still
    ahead (when a pass with nothing dirty is worth running), None if none.
    """

    def __init__(self, now_ms: int, delete_retention_ms: int, enabled: bool = True) -> None:
        self.now_ms = now_ms
        self.delete_retention_ms = delete_retention_ms
        self.enabled = enabled
        self._with_records: set[int] = set()  # producers whose open transaction has records kept
        self.kept_aborts: set[int] = set()
        self.removed = 0
        self.next_due_ms: int | None = None

    def records_kept(self, header: BatchHeader) -> None:
        if header.is_transactional:
            self._with_records.add(header.producer_id)

    def marker(self, raw: bytes, header: BatchHeader) -> bytes | None:
        """The marker as it stays in the log (stamped with a delete horizon), or None: dropped."""
        had_records = header.producer_id in self._with_records
        self._with_records.discard(header.producer_id)
        is_abort = control_type(raw) == CONTROL_ABORT
        if self.enabled and not had_records:
            if header.attributes & ATTR_DELETE_HORIZON:
                horizon = header.base_timestamp
                if horizon <= self.now_ms:
                    self.removed += 1
                    return None
            else:
                horizon = self.now_ms + self.delete_retention_ms
                raw = set_delete_horizon(raw, header, horizon)
            self.next_due_ms = horizon if self.next_due_ms is None else min(self.next_due_ms, horizon)
        if is_abort:
            self.kept_aborts.add(header.base_offset)
        return raw


def _aborted(header: BatchHeader, aborted: AbortedRanges | None) -> bool:
    """Whether a (non-control) batch belongs to an aborted transaction."""
    if not aborted or not header.is_transactional:
        return False
    return any(first <= header.base_offset <= last for first, last in aborted.get(header.producer_id, ()))


def iter_batches(data: bytes | memoryview) -> Iterator[tuple[int, BatchHeader]]:
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        header = parse_header(data, pos)
        if header.length < HEADER_SIZE or pos + header.length > len(data):
            return
        yield pos, header
        pos += header.length


def latest_offsets(datas: Iterable[bytes], from_offset: int, into: KeyMap | None = None,
                   aborted: AbortedRanges | None = None) -> KeyMap:
    """key -> offset of its last record, over records at or after from_offset (the dirty section);
    records of aborted transactions do not count."""
    latest: KeyMap = {} if into is None else into
    for data in datas:
        view = memoryview(data)
        for pos, header in iter_batches(view):
            if header.last_offset < from_offset or header.is_control or _aborted(header, aborted):
                continue
            for record in DefaultRecordBatch(bytes(view[pos:pos + header.length])):
                if record.key is not None and record.offset >= from_offset:
                    latest[bytes(record.key)] = record.offset
    return latest


def clean(data: bytes, latest: KeyMap, tombstones_before_ms: int,
          aborted: AbortedRanges | None = None, markers: Markers | None = None) -> tuple[bytes, int]:
    """The batches of data without superseded records, tombstones older than the cutoff and
    records of aborted transactions; transaction markers as `markers` decides (kept verbatim
    without it). Segments of one pass go through in offset order with the same `markers`.

    Returns (cleaned bytes, records removed). Records without a key are kept (Kafka refuses
    them on compacted topics; a topic that changed policy may hold some).
    """
    out = bytearray()
    removed = 0
    view = memoryview(data)
    for pos, header in iter_batches(view):
        raw = bytes(view[pos:pos + header.length])
        if header.is_control:
            if markers is None:
                out += raw
            else:
                stays = markers.marker(raw, header)
                if stays is not None:
                    out += stays
            continue
        if _aborted(header, aborted):
            removed += header.record_count
            continue
        records = list(DefaultRecordBatch(raw))
        kept = [r for r in records if _keep(r, latest, tombstones_before_ms)]
        removed += len(records) - len(kept)
        if len(kept) == len(records):
            out += raw
        elif kept:
            out += _rebuild(header, kept)
        if kept and markers is not None:
            markers.records_kept(header)
    return bytes(out), removed


def _keep(record, latest: KeyMap, tombstones_before_ms: int) -> bool:  # type: ignore[no-untyped-def]
    if record.key is None:
        return True
    newest = latest.get(bytes(record.key))
    if newest is not None and newest > record.offset:
        return False
    if record.value is None and record.timestamp < tombstones_before_ms:
        return False
    return True


def _rebuild(header: BatchHeader, records: list) -> bytes:  # type: ignore[type-arg]
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=header.attributes & 0x07, is_transactional=header.is_transactional,
        producer_id=header.producer_id, producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence, batch_size=1 << 31)
    for record in records:
        builder.append(record.offset - header.base_offset, timestamp=record.timestamp, key=record.key,
                       value=record.value, headers=list(record.headers))
    built = bytearray(builder.build())
    set_base_offset(built, 0, header.base_offset)
    if header.attributes & ATTR_LOG_APPEND_TIME:  # keep the broker's append time and the timestamp type
        prefix, _ = stamp_log_append_time(built, parse_header(built, 0), header.max_timestamp)
        built[8:43] = prefix
    return bytes(built)

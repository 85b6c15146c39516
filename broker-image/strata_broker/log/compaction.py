"""Compaction of record batches: keep the latest value of every key, drop expired tombstones.

Transactions are respected as Kafka does: records of aborted transactions (given as the
partition's aborted-transaction index) neither count as a key's latest value nor survive a
cleaning; transaction markers (control batches) are kept.

Pure functions over bytes, shared by the local cleaner and the S3 one. Offsets never change
(gaps are allowed); a batch with nothing removed is kept verbatim; a batch that loses records
is rebuilt with kafka-python's builder, with its codec, producer id, epoch and base sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from .batch import ATTR_LOG_APPEND_TIME, HEADER_SIZE, BatchHeader, parse_header, set_base_offset, stamp_log_append_time
from .txn_index import AbortedTxn

KeyMap = dict[bytes, int]
# producer id -> [(first offset, marker offset)] of its aborted transactions
AbortedRanges = dict[int, list[tuple[int, int]]]


def aborted_ranges(entries: Iterable[AbortedTxn]) -> AbortedRanges:
    out: AbortedRanges = {}
    for entry in entries:
        out.setdefault(entry.producer_id, []).append((entry.first_offset, entry.last_offset))
    return out


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
          aborted: AbortedRanges | None = None) -> tuple[bytes, int]:
    """The batches of data without superseded records, tombstones older than the cutoff and
    records of aborted transactions.

    Returns (cleaned bytes, records removed). Records without a key are kept (Kafka refuses
    them on compacted topics; a topic that changed policy may hold some).
    """
    out = bytearray()
    removed = 0
    view = memoryview(data)
    for pos, header in iter_batches(view):
        raw = bytes(view[pos:pos + header.length])
        if header.is_control:
            out += raw
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

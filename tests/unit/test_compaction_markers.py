"""Transaction markers in compaction (log/compaction.py), as Kafka's cleaner removes them."""

from __future__ import annotations

from kafka.record.default_records import DefaultRecordBatchBuilder
from strata_broker.log.batch import ATTR_DELETE_HORIZON, build_control_batch, parse_header, set_base_offset
from strata_broker.log.compaction import Markers, aborted_ranges, clean, iter_batches, latest_offsets
from strata_broker.log.txn_index import AbortedTxn

PID = 7


def data(base: int, keys: list[bytes], transactional: bool = True) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=transactional,
                                        producer_id=PID, producer_epoch=0, base_sequence=base, batch_size=1 << 20)
    for i, key in enumerate(keys):
        builder.append(i, timestamp=1_000 + base + i, key=key, value=b"v%d" % (base + i), headers=[])
    out = bytearray(builder.build())
    set_base_offset(out, 0, base)
    return bytes(out)


def marker(offset: int, commit: bool) -> bytes:
    out = bytearray(build_control_batch(PID, 0, commit, 0, 2_000 + offset))
    set_base_offset(out, 0, offset)
    return bytes(out)


# 0-1: committed (a, b), superseded by 3-4; 2: commit. 3-4: committed (a, b); 5: commit.
# 6-7: aborted (a, b); 8: abort. 9: an open transaction's record (no marker yet).
LOG = (data(0, [b"a", b"b"]) + marker(2, True) + data(3, [b"a", b"b"]) + marker(5, True)
       + data(6, [b"a", b"b"]) + marker(8, False) + data(9, [b"c"]))
ABORTED = aborted_ranges([AbortedTxn(PID, 6, 8, 9)])


def run(log: bytes, now_ms: int, retention_ms: int = 100) -> tuple[bytes, Markers]:
    markers = Markers(now_ms, retention_ms)
    latest = latest_offsets([log], 0, aborted=ABORTED)
    cleaned, _ = clean(log, latest, 0, ABORTED, markers)
    return cleaned, markers


def offsets(log: bytes) -> list[tuple[int, bool, bool]]:
    """(base offset, is control, has a delete horizon) of each batch."""
    return [(h.base_offset, h.is_control, bool(h.attributes & ATTR_DELETE_HORIZON)) for _, h in iter_batches(log)]


def test_markers_stay_while_records_remain_then_for_the_retention() -> None:
    first, markers = run(LOG, now_ms=10_000)
    # Superseded and aborted records go; the markers of transactions left empty get the horizon.
    assert offsets(first) == [(2, True, True), (3, False, False), (5, True, False), (8, True, True),
                              (9, False, False)]
    assert markers.removed == 0 and markers.next_due_ms == 10_100 and markers.kept_aborts == {8}
    horizon = parse_header(first, 0).base_timestamp
    assert horizon == 10_100
    # Before the horizon: nothing changes (the stamped markers are kept as they are).
    again, markers = run(first, now_ms=10_099)
    assert again == first and markers.removed == 0
    # After it: the two markers go, with the abort's index entry; the committed one stays.
    last, markers = run(first, now_ms=10_100)
    assert offsets(last) == [(3, False, False), (5, True, False), (9, False, False)]
    assert markers.removed == 2 and markers.kept_aborts == set() and markers.next_due_ms is None


def test_markers_are_kept_when_the_pass_does_not_see_the_whole_log() -> None:
    markers = Markers(10_000, 0, enabled=False)
    cleaned, _ = clean(LOG, latest_offsets([LOG], 0, aborted=ABORTED), 0, ABORTED, markers)
    assert [o for o, control, _ in offsets(cleaned) if control] == [2, 5, 8]
    assert all(not horizon for *_, horizon in offsets(cleaned))
    assert markers.kept_aborts == {8}

"""The aborted-transaction index of a partition (Kafka's `.txnindex`, one file per segment).

An entry is written when an abort marker is appended: the producer id, the first offset of
the aborted transaction in this partition, the offset of the marker (last offset) and the last
stable offset at that moment. A read_committed Fetch returns the entries whose transaction
overlaps the fetched range, so the consumer can drop the aborted records. Entries live in the
file of the segment that holds the marker; the file is uploaded with the segment for tiered
topics. Layout per entry, as Kafka's: int16 version (0), int64 producer id, int64 first offset,
int64 last offset, int64 last stable offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

_ENTRY = struct.Struct(">hqqqq")
ENTRY_SIZE = _ENTRY.size
SUFFIX = ".txnindex"


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    producer_id: int
    first_offset: int
    last_offset: int  # the offset of the abort marker
    last_stable_offset: int

    def encode(self) -> bytes:
        return _ENTRY.pack(0, self.producer_id, self.first_offset, self.last_offset, self.last_stable_offset)


def decode(data: bytes | bytearray | memoryview) -> list[AbortedTxn]:
    """Every whole entry of a `.txnindex` file's bytes (a torn last entry is ignored)."""
    out = []
    for pos in range(0, len(data) - ENTRY_SIZE + 1, ENTRY_SIZE):
        _, pid, first, last, lso = _ENTRY.unpack_from(data, pos)
        out.append(AbortedTxn(pid, first, last, lso))
    return out


def index_path(directory: str, base_offset: int) -> str:
    return os.path.join(directory, f"{base_offset:020d}{SUFFIX}")


def read_index(path: str) -> list[AbortedTxn]:
    try:
        with open(path, "rb") as f:
            return decode(f.read())
    except FileNotFoundError:
        return []


def append_entry(path: str, entry: AbortedTxn) -> None:
    """Append one entry (made durable with the segment's next fsync: the marker it follows is
    rebuilt into the index by recovery if the broker dies first)."""
    with open(path, "ab") as f:
        f.write(entry.encode())


def write_index(path: str, entries: list[AbortedTxn]) -> None:
    """Replace the file (recovery); no file when there is nothing to say."""
    if not entries:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(e.encode() for e in entries))
    os.replace(tmp, path)


def overlapping(entries: list[AbortedTxn], fetch_offset: int, upper_offset: int) -> list[AbortedTxn]:
    """The aborted transactions a read of [fetch_offset, upper_offset) must report: those whose
    marker is at or after the fetch offset and which began before the end of the read."""
    return [e for e in entries if e.last_offset >= fetch_offset and e.first_offset < upper_offset]

"""Sparse offset and time indexes of one segment, append-only files mirrored in memory.

`.index` entries: relative offset int32, file position int32 (8 bytes).
`.timeindex` entries: max timestamp so far int64, relative offset int32 (12 bytes).
Both are searched with a binary search; both are rebuilt from the log when in doubt. The entry
formats (`OFFSET_ENTRY`, `TIME_ENTRY`) and `read_offset_entries`/`read_time_entries` are the one
definition of these files: remote storage parses the uploaded copies with them too.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right

from .files import fsync_fd

OFFSET_ENTRY = struct.Struct(">ii")  # relative offset, file position
TIME_ENTRY = struct.Struct(">qi")  # max timestamp so far, relative offset


def read_offset_entries(data: bytes) -> tuple[list[int], list[int]]:
    """(relative offsets, positions) of an `.index` file's bytes; a torn last entry is left out."""
    rels, positions = [], []
    for rel, pos in OFFSET_ENTRY.iter_unpack(data[: len(data) - len(data) % OFFSET_ENTRY.size]):
        rels.append(rel)
        positions.append(pos)
    return rels, positions


def read_time_entries(data: bytes) -> tuple[list[int], list[int]]:
    """(timestamps, relative offsets) of a `.timeindex` file's bytes; a torn last entry is left out."""
    stamps, rels = [], []
    for ts, rel in TIME_ENTRY.iter_unpack(data[: len(data) - len(data) % TIME_ENTRY.size]):
        stamps.append(ts)
        rels.append(rel)
    return stamps, rels


class _AppendOnlyFile:
    """Entries are buffered in memory and written out (open, write, close) by `flush()`: at fsync,
    seal, close and when the segment gives its descriptors back, so an append costs no syscall
    here and an idle index holds no descriptor. After a crash the indexes of every partition
    written since the last clean shutdown are rebuilt from the log, so unwritten entries are never
    trusted."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pending = bytearray()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))  # exists from the start, as its log does

    def write(self, data: bytes) -> None:
        self._pending += data

    def flush(self, sync: bool = False) -> None:
        if not self._pending and not sync:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if self._pending:
                os.write(fd, self._pending)
                self._pending = bytearray()
            if sync:
                fsync_fd(fd)
        finally:
            os.close(fd)

    def truncate(self, size: int) -> None:
        self._pending = bytearray()
        os.truncate(self.path, size)

    def fsync(self) -> None:
        self.flush(sync=True)

    def close(self) -> None:
        """Write buffered entries out; when that fails (out of descriptors), they stay buffered for
        the next flush (the segment is reopened, synced or closed later)."""
        try:
            self.flush()
        except OSError:
            pass


class OffsetIndex:
    def __init__(self, path: str) -> None:
        self.relative_offsets = array("q")
        self.positions = array("q")
        self._file = _AppendOnlyFile(path)

    @property
    def path(self) -> str:
        return self._file.path

    def load(self, log_size: int) -> bool:
        """Read the file; False (and nothing loaded) when it is not plausible for a log of log_size."""
        with open(self.path, "rb") as f:
            data = f.read()
        if len(data) % OFFSET_ENTRY.size:
            return False
        last_rel, last_pos = -1, -1
        for rel, pos in OFFSET_ENTRY.iter_unpack(data):
            if rel <= last_rel or pos <= last_pos or pos >= log_size:
                return False
            self.relative_offsets.append(rel)
            self.positions.append(pos)
            last_rel, last_pos = rel, pos
        return True

    def append(self, relative_offset: int, position: int) -> None:
        self.relative_offsets.append(relative_offset)
        self.positions.append(position)
        self._file.write(OFFSET_ENTRY.pack(relative_offset, position))

    def floor(self, relative_offset: int) -> tuple[int, int]:
        """The last (relative offset, position) at or before relative_offset, or (0, 0)."""
        i = bisect_right(self.relative_offsets, relative_offset)
        if i == 0:
            return 0, 0
        return self.relative_offsets[i - 1], self.positions[i - 1]

    def reset(self) -> None:
        self.relative_offsets = array("q")
        self.positions = array("q")
        self._file.truncate(0)

    def fsync(self) -> None:
        self._file.fsync()

    def close(self) -> None:
        self._file.close()


class TimeIndex:
    def __init__(self, path: str) -> None:
        self.timestamps = array("q")
        self.relative_offsets = array("q")
        self._file = _AppendOnlyFile(path)

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def last_timestamp(self) -> int:
        return self.timestamps[-1] if self.timestamps else -1

    def load(self) -> bool:
        with open(self.path, "rb") as f:
            data = f.read()
        if len(data) % TIME_ENTRY.size:
            return False
        last_ts, last_rel = -1 << 63, -1
        for ts, rel in TIME_ENTRY.iter_unpack(data):
            if ts < last_ts or rel < last_rel:
                return False
            self.timestamps.append(ts)
            self.relative_offsets.append(rel)
            last_ts, last_rel = ts, rel
        return True

    def maybe_append(self, max_timestamp: int, relative_offset: int) -> None:
        if max_timestamp > self.last_timestamp:
            self.timestamps.append(max_timestamp)
            self.relative_offsets.append(relative_offset)
            self._file.write(TIME_ENTRY.pack(max_timestamp, relative_offset))

    def start_before(self, timestamp: int) -> int:
        """A relative offset from which a scan finds the first record with ts >= timestamp.

        An entry (T, O) says every record up to the batch starting at O is at most T, so the
        last entry with T < timestamp is a safe place to start.
        """
        i = bisect_right(self.timestamps, timestamp - 1)
        if i == 0:
            return 0
        return self.relative_offsets[i - 1]

    def reset(self) -> None:
        self.timestamps = array("q")
        self.relative_offsets = array("q")
        self._file.truncate(0)

    def fsync(self) -> None:
        self._file.fsync()

    def close(self) -> None:
        self._file.close()

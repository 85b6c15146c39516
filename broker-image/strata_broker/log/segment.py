"""One log segment: `<base-offset:020d>.log` plus its `.index` and `.timeindex`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from .batch import HEADER_SIZE, LOG_OVERHEAD, BatchHeader, batch_is_intact, parse_header, peek_length
from .handles import HandleCache
from .index import OffsetIndex, TimeIndex

log = logging.getLogger(__name__)

# How much of the log a header walk reads per syscall.
_WALK_CHUNK = 64 * 1024
# writev() takes at most this many buffers per call.
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Segment:
    """Its files are open only while it is among the recently used segments of `handles` (a
    bounded cache shared by the broker's logs); `_use()` reopens them before any file access."""

    def __init__(self, directory: str, base_offset: int, index_interval_bytes: int,
                 handles: HandleCache | None = None) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self._handles = handles
        stem = os.path.join(directory, segment_name(base_offset))
        self.log_path = stem + ".log"
        self._fd_write = -1
        self._fd_read = -1
        self.closed = False
        self.offset_index = OffsetIndex(stem + ".index")
        try:
            self.time_index = TimeIndex(stem + ".timeindex")
        except OSError:
            self.offset_index.close()
            raise
        try:
            self._use()
        except OSError:  # out of descriptors: give back what was opened
            self.offset_index.close()
            self.time_index.close()
            raise
        self.size = os.fstat(self._fd_read).st_size
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.created_ms = int(time.time() * 1000)
        self._bytes_since_index = 0
        self.dirty = False

    # ---- descriptors ---------------------------------------------------------------------

    def _use(self) -> None:
        """Open the files if they were given back, and count this as a use (on the loop's thread)."""
        if self.closed:
            return
        if self._fd_read < 0:
            # One descriptor reads and writes (appends go with pwritev at the known end).
            self._fd_read = self._fd_write = os.open(self.log_path, os.O_RDWR | os.O_CREAT, 0o644)
        if self._handles is not None:
            self._handles.touch(self)

    def release_files(self) -> None:
        """Give the descriptor back (the handle cache evicts this segment); reopened on next use.
        Written data stays in the page cache: a later fsync of the file makes it durable. Buffered
        index entries stay buffered (they hold no descriptor) until the next fsync or close."""
        if self._fd_read >= 0:
            os.close(self._fd_read)
        self._fd_write = self._fd_read = -1

    def pin(self) -> None:
        """Open, and not evicted until unpin(): a worker thread is about to use the descriptors."""
        self._use()
        if self._handles is not None:
            self._handles.pin(self)

    def pin_if_open(self) -> bool:
        """pin() without opening: False (nothing pinned) when the files are not open."""
        if self.closed or self._fd_write < 0:
            return False
        if self._handles is not None:
            self._handles.touch(self)
            self._handles.pin(self)
        return True

    def unpin(self) -> None:
        if self._handles is not None:
            self._handles.unpin(self)

    # ---- opening -------------------------------------------------------------------------

    def load(self) -> None:
        """Trust the indexes (they were fsynced with the log) and walk only the tail after the last entry."""
        self._use()
        if not (self.offset_index.load(self.size) and self.time_index.load()):
            log.warning("rebuilding indexes of %s", self.log_path)
            self.rebuild()
            return
        _, position = self.offset_index.floor(1 << 62)
        self.max_timestamp = self.time_index.last_timestamp
        for pos, header in self.walk(position):
            self._observe(header, pos, index=False)

    def recover(self) -> list[BatchHeader]:
        """Validate every batch (CRC included), truncate at the first torn one, rebuild indexes."""
        self._use()
        self.offset_index.reset()
        self.time_index.reset()
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self._bytes_since_index = 0
        headers: list[BatchHeader] = []
        valid_end = 0
        pos = 0
        while pos < self.size:
            chunk_header = os.pread(self._fd_read, HEADER_SIZE, pos)
            if len(chunk_header) < HEADER_SIZE:
                break
            length = parse_header(chunk_header).length
            if length < HEADER_SIZE or pos + length > self.size:
                break
            data = os.pread(self._fd_read, length, pos)
            header = batch_is_intact(data, 0, len(data))
            if header is None or header.base_offset < self.next_offset:
                break
            self._observe(header, pos, index=True)
            headers.append(header)
            pos += length
            valid_end = pos
        if valid_end < self.size:
            log.warning("truncating %s from %d to %d bytes (torn or corrupt tail)", self.log_path, self.size,
                        valid_end)
            self.truncate_bytes(valid_end)
        return headers

    def rebuild(self) -> None:
        self._use()
        self.offset_index.reset()
        self.time_index.reset()
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self._bytes_since_index = 0
        for pos, header in self.walk(0):
            self._observe(header, pos, index=True)

    # ---- writing -------------------------------------------------------------------------

    def append(self, data: bytes | bytearray, headers: list[BatchHeader]) -> None:
        self.append_pieces([data], headers)

    def append_pieces(self, pieces: list[bytes | bytearray | memoryview], headers: list[BatchHeader]) -> None:
        """append() of the concatenation of pieces, written with pwritev at the end (no joined copy)."""
        self._use()
        start = self.size
        try:
            pending = [p if isinstance(p, memoryview) else memoryview(p) for p in pieces]
            at = start
            while pending:
                batch = pending[:_IOV_MAX]
                written = os.pwritev(self._fd_write, batch, at)
                at += written
                # Drop what was written; a short write resumes inside the piece it stopped in.
                while pending and written >= len(pending[0]):
                    written -= len(pending[0])
                    pending.pop(0)
                if written:
                    pending[0] = pending[0][written:]
        except OSError:
            # A full disk must not leave half a batch that a later append would follow.
            os.ftruncate(self._fd_write, start)
            raise
        position = start
        for header in headers:
            self._observe(header, position, index=True)
            position += header.length
        self.dirty = True

    def _observe(self, header: BatchHeader, position: int, index: bool) -> None:
        if index and (position == 0 or self._bytes_since_index >= self.index_interval_bytes):
            relative = header.base_offset - self.base_offset
            if position > 0:  # position 0 is implied: floor() falls back to it
                self.offset_index.append(relative, position)
            self.time_index.maybe_append(max(self.max_timestamp, header.max_timestamp), relative)
            self._bytes_since_index = 0
        self._bytes_since_index += header.length
        self.max_timestamp = max(self.max_timestamp, header.max_timestamp)
        self.next_offset = header.next_offset
        if position + header.length > self.size:
            self.size = position + header.length

    def seal(self) -> None:
        """Before a roll: the final time index entry covers the whole segment, then fsync all."""
        self._use()
        if self.max_timestamp > self.time_index.last_timestamp:
            self.time_index.maybe_append(self.max_timestamp, self.next_offset - 1 - self.base_offset)
        self.fsync()

    def fsync(self) -> None:
        if self.closed:
            return
        self._use()
        os.fsync(self._fd_write)
        self.offset_index.fsync()
        self.time_index.fsync()

    def sync_log(self, pinned: bool = True) -> None:
        """Group commit: only the log must be durable. After a crash recovery rebuilds the tail
        segment's indexes anyway; seal() and close() still fsync them. Not pinned (its files were
        given back): through a descriptor of its own, the same file's data made durable."""
        if self.closed:
            return
        if pinned:
            os.fdatasync(self._fd_write)
            return
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def truncate_bytes(self, size: int) -> None:
        self._use()
        os.ftruncate(self._fd_write, size)
        self.size = size

    # ---- reading -------------------------------------------------------------------------

    def walk(self, position: int, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of each complete batch from position on, reading headers only."""
        end = self.size if end is None else end
        self._use()
        buf = b""
        buf_start = position
        pos = position
        while pos + HEADER_SIZE <= end:
            if pos + HEADER_SIZE > buf_start + len(buf):
                if self._fd_read < 0:  # evicted while a caller held this generator
                    self._use()
                buf = os.pread(self._fd_read, _WALK_CHUNK, pos)
                buf_start = pos
                if len(buf) < HEADER_SIZE:
                    return
            header = parse_header(buf, pos - buf_start)
            if header.length < HEADER_SIZE or pos + header.length > end:
                return
            yield pos, header
            pos += header.length

    def find(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose last offset is >= offset."""
        self._use()
        _, start = self.offset_index.floor(offset - self.base_offset)
        for pos, header in self.walk(start):
            if header.last_offset >= offset:
                return pos, header
        return None

    def read_from(self, offset: int, max_bytes: int, always_one: bool) -> bytes:
        """Whole batches starting at the one holding offset, up to max_bytes (one at least if asked).

        One read of the bytes that can be returned, whose batch boundaries are then found in memory
        (a fetch of many partitions with little data each costs one pread per partition here)."""
        self._use()
        found = self.find(offset)
        if found is None:
            return b""
        start, first = found
        want = max_bytes if not always_one else max(max_bytes, first.length)
        data = os.pread(self._fd_read, min(self.size - start, want), start)
        end = 0
        while end + LOG_OVERHEAD <= len(data):
            _, length = peek_length(data, end)
            if length < HEADER_SIZE or end + length > len(data):
                break
            end += length
        if end == len(data):
            return data
        return data[:end]

    def read_batch(self, position: int, length: int) -> bytes:
        self._use()
        return os.pread(self._fd_read, length, position)

    def read_file(self, position: int, length: int) -> bytes:
        """read_batch for a worker thread: through a descriptor of its own, never the cached ones."""
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            return os.pread(fd, length, position)
        finally:
            os.close(fd)

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.release_files()
        self.offset_index.close()
        self.time_index.close()
        if self._handles is not None:
            self._handles.forget(self)

    def delete(self) -> None:
        self.close()
        for path in (self.log_path, self.offset_index.path, self.time_index.path,
                     self.log_path[:-4] + ".txnindex"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

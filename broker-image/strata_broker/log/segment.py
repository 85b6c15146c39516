"""One log segment: `<base-offset:020d>.log` plus its `.index` and `.timeindex`."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Iterator

from .batch import HEADER_SIZE, LOG_OVERHEAD, BatchHeader, batch_is_intact, parse_header, peek_length
from .files import fsync_fd
from .handles import HandleCache
from .index import OffsetIndex, TimeIndex

log = logging.getLogger(__name__)

# How much of the log a header walk reads per syscall.
_WALK_CHUNK = 64 * 1024
# writev() takes at most this many buffers per call.
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


# A sync of at least this many segments at once (a group-commit round after writes spread over many
# partitions) is one syncfs() of their filesystem: one journal commit instead of one per segment,
# which at 50,000 partitions is the difference between a round of a second and one of minutes
# (and between appends that wait behind a journal commit and appends that do not).
SYNCFS_MIN_SEGMENTS = 256


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def sync_filesystem(path: str) -> bool:
    """syncfs(2) of the filesystem holding `path` (on a worker thread: ctypes releases the GIL):
    the data and metadata of every file on it made durable. False when the call is not available."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
    return True


class AppendBuffers:
    """Write-behind for the broker's active segments: an append is copied into its segment's
    in-memory buffer, and the buffer is written to the file in one pwrite later, so a produce
    request spread over many partitions costs no system call per partition.

    A segment's buffer is written out (to the page cache, not fsynced) when it reaches
    `segment_bytes`, when all buffers together reach `total_bytes`, `max_ms` after the first
    append buffered since the last write-out, before every fsync (a group-commit round: acks=all
    and the background flush), before a roll, a close, or the segment giving its descriptor back.
    Reads of the unwritten tail are answered from the buffer. Appends write through (no buffer)
    when `max_ms` is 0, or when no event loop runs on this thread (tools, recovery).

    Everything here runs on the event loop's thread."""

    def __init__(self, max_ms: int, segment_bytes: int = 128 * 1024, total_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_ms = max_ms
        self.segment_bytes = segment_bytes
        self.total_bytes = total_bytes
        self.buffered = 0  # bytes in all buffers
        self.write_outs = 0
        self._pending: dict[Segment, None] = {}  # segments with a buffer, oldest first
        self._timer: asyncio.TimerHandle | None = None

    def enabled(self) -> bool:
        if self.max_ms <= 0:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def grew(self, segment: Segment, added: int) -> None:
        """`segment` buffered `added` more bytes (on the loop's thread)."""
        self._pending[segment] = None
        self.buffered += added
        if self.buffered >= self.total_bytes:
            self.write_out_all()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_ms / 1000, self._on_timer)

    def written(self, segment: Segment, count: int) -> None:
        """`segment` wrote its buffer (`count` bytes) or dropped it."""
        self.buffered -= count
        self._pending.pop(segment, None)
        self.write_outs += 1

    def _on_timer(self) -> None:
        self._timer = None
        self.write_out_all()

    def write_out_all(self) -> None:
        """Write every buffer out; a failing one stays buffered (it is retried, and its segment's
        next append, fsync or close reports the error)."""
        for segment in list(self._pending):
            try:
                segment.write_out()
            except OSError:
                pass  # logged by write_out
        if self._pending and self._timer is None:  # failed ones: tried again later
            self._timer = asyncio.get_running_loop().call_later(self.max_ms / 1000, self._on_timer)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Segment:
    """Its files are open only while it is among the recently used segments of `handles` (a
    bounded cache shared by the broker's logs); `_use()` reopens them before any file access.

    With the broker's AppendBuffers (`handles.buffers`), appends go to an in-memory buffer that
    holds the file's bytes from `_written` to `size`; a segment with a buffer always has its
    descriptor open (giving it back writes the buffer out first)."""

    def __init__(self, directory: str, base_offset: int, index_interval_bytes: int,
                 handles: HandleCache | None = None) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self._handles = handles
        self._buffers: AppendBuffers | None = getattr(handles, "buffers", None)
        self._buf: bytearray | None = None  # appended bytes not written yet: file positions _written..size
        self._write_error: OSError | None = None
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
        self._written = self.size
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
        The append buffer is written out first (kept, with the descriptor, if that fails). Written
        data stays in the page cache: a later fsync of the file makes it durable. Buffered index
        entries stay buffered (they hold no descriptor) until the next fsync or close."""
        if self._buf:
            try:
                self.write_out()
            except OSError:
                return
        if self._fd_read >= 0:
            os.close(self._fd_read)
        self._fd_write = self._fd_read = -1

    def pin(self) -> None:
        """Open, and not evicted until unpin(): a worker thread is about to use the descriptors."""
        self._use()
        if self._handles is not None:
            self._handles.pin(self)

    def pin_if_open(self) -> bool:
        """pin() without opening: False (nothing pinned) when the files are not open. Called on the
        loop's thread right before a worker thread syncs the segment (sync_log): the append buffer
        is written out here first (an OSError if that fails), so the sync covers it."""
        if self.closed or self._fd_write < 0:
            return False
        if self._buf:
            self.write_out()
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
            chunk_header = self._pread(HEADER_SIZE, pos)
            if len(chunk_header) < HEADER_SIZE:
                break
            length = parse_header(chunk_header).length
            if length < HEADER_SIZE or pos + length > self.size:
                break
            data = self._pread(length, pos)
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
        """append() of the concatenation of pieces: into the append buffer (copied: the pieces may
        point into a request's memory), or written through with pwritev at the end (no joined copy)."""
        self._use()
        if self._write_error is not None:
            self.write_out()  # a write-out failed: this append fails too unless it succeeds now
        buffers = self._buffers
        if buffers is not None and buffers.enabled():
            buf = self._buf
            if buf is None:
                buf = self._buf = bytearray()
            before = len(buf)
            for piece in pieces:
                buf += piece
            position = self.size
            for header in headers:
                self._observe(header, position, index=True)
                position += header.length
            self.dirty = True
            buffers.grew(self, len(buf) - before)
            if len(buf) >= buffers.segment_bytes:
                self.write_out()
            return
        if self._buf:
            self.write_out()
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
        self._written = self.size
        self.dirty = True

    def write_out(self) -> None:
        """Write the append buffer to the file (one pwrite; not fsynced). On failure (a full disk)
        the file is cut back to what was written before, the buffer is kept and the error raised
        (and raised again by the next append unless a retry succeeds)."""
        buf = self._buf
        if not buf:
            return
        start = at = self._written
        data: bytes | bytearray = buf
        try:
            while data:
                count = os.pwrite(self._fd_write, data, at)
                at += count
                data = data[count:] if count < len(data) else b""
        except OSError as exc:
            try:
                os.ftruncate(self._fd_write, start)
            except OSError:
                pass
            if self._write_error is None:
                log.error("writing %d buffered bytes to %s failed: %s", len(buf), self.log_path, exc)
            self._write_error = exc
            raise
        self._buf = None
        self._written = at
        self._write_error = None
        if self._buffers is not None:
            self._buffers.written(self, len(buf))

    def _drop_buffer(self) -> None:
        buf, self._buf = self._buf, None
        self._write_error = None
        if buf is not None and self._buffers is not None:
            self._buffers.written(self, len(buf))

    def _pread(self, length: int, position: int) -> bytes:
        """The file's bytes, the unwritten tail from the append buffer."""
        buf = self._buf
        if buf is None or position + length <= self._written:
            return os.pread(self._fd_read, length, position)
        written = self._written
        if position >= written:
            start = position - written
            return bytes(buf[start:start + length])
        head = os.pread(self._fd_read, written - position, position)
        return head + bytes(buf[:position + length - written])

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
        self.write_out()
        fsync_fd(self._fd_write)
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
        self.write_out()
        os.ftruncate(self._fd_write, size)
        self.size = self._written = size

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
                buf = self._pread(min(_WALK_CHUNK, end - pos), pos)
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
        data = self._pread(min(self.size - start, want), start)
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
        return self._pread(length, position)

    def read_file(self, position: int, length: int) -> bytes:
        """read_batch for a worker thread: through a descriptor of its own, never the cached ones
        (for a closed segment: an active one's append buffer is not seen)."""
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            return os.pread(fd, length, position)
        finally:
            os.close(fd)

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Write the append buffer out and give everything back (an OSError if the write fails)."""
        if self.closed:
            return
        if self._buf:
            self._use()
            self.write_out()
        self.closed = True
        self.release_files()
        self.offset_index.close()
        self.time_index.close()
        if self._handles is not None:
            self._handles.forget(self)

    def delete(self) -> None:
        self._drop_buffer()
        self.close()
        for path in (self.log_path, self.offset_index.path, self.time_index.path,
                     self.log_path[:-4] + ".txnindex"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

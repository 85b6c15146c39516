"""A bounded on-disk LRU of remote chunks, with a few hot chunks kept in memory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import mmap
import os
import shutil
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

# O_DIRECT wants the buffer, the file offset and the length aligned; 4 KiB covers the usual
# logical block sizes.
_ALIGN = 4096


# How many chunk names are remembered for admission (see ChunkCache.admit_after): a few hundred
# bytes each, and with 8 MiB chunks a window of 8 GiB of downloads.
_SEEN_NAMES = 1024


class ChunkCache:
    def __init__(self, directory: str, capacity_bytes: int, memory_chunks: int = 8, admit_after: int = 1) -> None:
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        # A chunk's file is written on its admit_after-th download among the last _SEEN_NAMES
        # downloads. With 2, a replay read once, from start to end, writes nothing to the local disk.
        # Writing it pushed every chunk that is read again out of the LRU, took the disk's write
        # bandwidth (the hot log's), and cost the cold replay 18-33% of its rate (bench/tiered.py,
        # admit=1).
        self.admit_after = admit_after
        self._seen: OrderedDict[str, int] = OrderedDict()
        # A cache, not a store: what a previous run left is dropped rather than trusted.
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_bytes = 0
        # Chunks are bytes, or read-only views of the downloader's shared memory (tier/downloader.py).
        self._memory: OrderedDict[str, bytes | memoryview] = OrderedDict()
        self.memory_chunks = memory_chunks
        # Chunks in memory that were read ahead (a prefetch) and that no reader has taken yet: the
        # memory LRU evicts them last, so that several sequential readers' read-ahead is not pushed
        # out by one another before it is used (each such chunk was downloaded again, cost a second
        # GET, and was read back from its cache file after that).
        self._unread: set[str] = set()
        # Chunks a sequential reader has read to their end: the first to leave memory.
        self._finished: set[str] = set()
        self.hits = 0
        self.misses = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-cache")
        self._pending: set[str] = set()
        # Used by the writer thread only. Chunks are written with O_DIRECT from this one aligned
        # buffer: a buffered write copies every byte into newly allocated page-cache pages, and on a
        # VM the first touch of such pages costs several times the copy (measured here: 0.3 to 2.5
        # CPU-seconds per GB buffered, 0.25 direct; a cold replay's broker CPU fell by a fifth). The
        # chunk is in memory while it is hot and read back from its file only after it has left
        # memory, so the page cache gains nothing from holding it twice.
        self._direct = DirectWriter() if hasattr(os, "O_DIRECT") else None

    @staticmethod
    def _name(key: str, chunk: int) -> str:
        return f"{hashlib.sha1(key.encode()).hexdigest()}-{chunk}"

    async def get(self, key: str, chunk: int) -> bytes | memoryview | None:
        name = self._name(key, chunk)
        data = self._memory.get(name)
        if data is not None:
            self._memory.move_to_end(name)
            self._unread.discard(name)
            self._finished.discard(name)
            self.hits += 1
            return data
        if name in self._disk:
            # Off the loop: the files are written with O_DIRECT, so reading one back is a disk read
            # of a whole chunk, and every other connection would wait for it.
            try:
                data = await asyncio.to_thread(_read_file, os.path.join(self.directory, name))
            except FileNotFoundError:
                self._drop(name)
            else:
                if name in self._disk:
                    self._disk.move_to_end(name)
                self._remember(name, data)
                self.hits += 1
                return data
        self.misses += 1
        return None

    def contains(self, key: str, chunk: int) -> bool:
        name = self._name(key, chunk)
        return name in self._memory or name in self._disk

    def put(self, key: str, chunk: int, data: bytes) -> None:
        """A downloaded chunk: kept in memory, and on disk when the cache admits it."""
        self._remember(self._name(key, chunk), data)
        self.write(key, chunk, data, self.reserve_file(key, chunk, len(data)))

    def write(self, key: str, chunk: int, data: bytes, path: str | None) -> None:
        """Writes the chunk's file where reserve_file() said (nothing when it said None)."""
        if path is None:
            return
        # The write happens on a worker thread: a 4 MiB write on the event loop stalls every client.
        future = asyncio.get_running_loop().run_in_executor(self._writer, write_chunk_file, path, data, self._direct)
        future.add_done_callback(
            lambda f: self.stored(key, chunk, len(data), not f.cancelled() and f.exception() is None))

    def remember(self, key: str, chunk: int, data: bytes | memoryview, unread: bool = False) -> None:
        """Keep a chunk in memory only (its file, if any, is written by someone else: see reserve_file).
        unread: read ahead of its reader, kept until a get() takes it unless nothing else can go."""
        name = self._name(key, chunk)
        if unread:
            self._unread.add(name)
        else:
            self._unread.discard(name)
        self._remember(name, data)

    def taken(self, key: str, chunk: int) -> None:
        """A reader has the chunk (it waited for its download rather than asking get())."""
        self._unread.discard(self._name(key, chunk))

    def finished(self, key: str, chunk: int) -> None:
        """A sequential reader has read past the end of the chunk: it leaves memory first."""
        name = self._name(key, chunk)
        if name in self._memory:
            self._finished.add(name)

    @property
    def unread_chunks(self) -> int:
        """Chunks read ahead and held in memory that no reader has taken yet."""
        return len(self._unread)

    def reserve_file(self, key: str, chunk: int, size: int) -> str | None:
        """Where the chunk's file is to be written, when the disk cache takes it (None: it does not).
        Called once for each download of the chunk, which counts towards its admission. The writer
        reports back with stored()."""
        name = self._name(key, chunk)
        if self.capacity_bytes <= 0 or size > self.capacity_bytes or name in self._disk or name in self._pending:
            return None
        if not self._admitted(name):
            return None
        self._pending.add(name)
        return os.path.join(self.directory, name)

    def stored(self, key: str, chunk: int, size: int, ok: bool) -> None:
        """The file reserve_file() named is written (ok) or given up. Runs on the loop, so the
        bookkeeping stays single-threaded."""
        name = self._name(key, chunk)
        self._pending.discard(name)
        if not ok:
            return
        self._disk[name] = size
        self._disk_bytes += size
        while self._disk_bytes > self.capacity_bytes and self._disk:
            oldest = next(iter(self._disk))
            self._drop(oldest)

    def _admitted(self, name: str) -> bool:
        """Counts a download of the chunk: True when this one is the admit_after-th."""
        downloads = self._seen.pop(name, 0) + 1
        if downloads >= self.admit_after:
            return True
        self._seen[name] = downloads
        while len(self._seen) > _SEEN_NAMES:
            self._seen.popitem(last=False)
        return False

    @property
    def size_bytes(self) -> int:
        return self._disk_bytes

    def _remember(self, name: str, data: bytes | memoryview) -> None:
        self._memory[name] = data
        self._memory.move_to_end(name)
        if len(self._memory) <= self.memory_chunks:
            return
        # Chunks read to their end go first, then the least recently used of those a reader is
        # in, and only when nothing else is left unread read-ahead (oldest first in each group).
        for group in (self._finished, None):
            excess = len(self._memory) - self.memory_chunks
            if excess <= 0:
                return
            if group is None:
                olds = [n for n in self._memory if n not in self._unread and n != name][:excess]
            else:
                olds = [n for n in self._memory if n in group and n != name][:excess]
            for old in olds:
                del self._memory[old]
                self._finished.discard(old)
        while len(self._memory) > self.memory_chunks:
            old, _ = self._memory.popitem(last=False)
            self._unread.discard(old)
            self._finished.discard(old)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def _drop(self, name: str) -> None:
        size = self._disk.pop(name, 0)
        self._disk_bytes -= size
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass


class DirectWriter:
    """Writes whole files with O_DIRECT, through one reusable page-aligned buffer unless the data
    is already in one."""

    def __init__(self) -> None:
        self._buffer = mmap.mmap(-1, _ALIGN)
        self.working = True

    def write(self, path: str, data: bytes | memoryview, aligned: mmap.mmap | None = None) -> None:
        size = len(data)
        if aligned is None:
            padded = -(-size // _ALIGN) * _ALIGN
            if padded > len(self._buffer):
                self._buffer.close()
                self._buffer = mmap.mmap(-1, padded)
            self._buffer[:size] = data
            aligned = self._buffer
        _write_aligned(path, aligned, size)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_aligned(path: str, buffer: mmap.mmap, size: int) -> None:
    """The first size bytes of a page-aligned buffer (an mmap at least size rounded up to 4 KiB
    long) to a new file, with O_DIRECT. Raises OSError(EINVAL) where the file system refuses it."""
    padded = -(-size // _ALIGN) * _ALIGN
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        with memoryview(buffer) as whole, whole[:padded] as view:
            written = 0
            while written < padded:
                written += os.write(fd, view[written:])
        os.ftruncate(fd, size)  # the padding goes
    finally:
        os.close(fd)


def write_chunk_file(path: str, data: bytes | memoryview, direct: DirectWriter | None = None,
                     aligned: mmap.mmap | None = None) -> None:
    """A chunk's cache file, written whole under a temporary name and then renamed. aligned: a
    page-aligned buffer whose first len(data) bytes are data (a downloader slot), written from
    directly."""
    tmp = path + ".tmp"
    try:
        if direct is not None and direct.working:
            try:
                direct.write(tmp, data, aligned)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This file system has no O_DIRECT (older tmpfs, some overlays): buffered from now on.
                direct.working = False
                log.info("chunk cache: O_DIRECT writes unavailable in %s (%s); using buffered writes",
                         os.path.dirname(path), exc)
            else:
                os.replace(tmp, path)
                return
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not also leak the half-written file
            os.unlink(tmp)
        raise

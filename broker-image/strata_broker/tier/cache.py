"""A bounded on-disk LRU of remote chunks, with a few hot chunks kept in memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor


class ChunkCache:
    def __init__(self, directory: str, capacity_bytes: int, memory_chunks: int = 8) -> None:
        self.directory = directory
        self.capacity_bytes = capacity_bytes
        # A cache, not a store: what a previous run left is dropped rather than trusted.
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_bytes = 0
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_chunks = memory_chunks
        self.hits = 0
        self.misses = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-cache")
        self._pending: set[str] = set()

    @staticmethod
    def _name(key: str, chunk: int) -> str:
        return f"{hashlib.sha1(key.encode()).hexdigest()}-{chunk}"

    def get(self, key: str, chunk: int) -> bytes | None:
        name = self._name(key, chunk)
        data = self._memory.get(name)
        if data is not None:
            self._memory.move_to_end(name)
            self.hits += 1
            return data
        if name in self._disk:
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                self._drop(name)
            else:
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
        name = self._name(key, chunk)
        self._remember(name, data)
        if (self.capacity_bytes <= 0 or len(data) > self.capacity_bytes or name in self._disk
                or name in self._pending):
            return
        # The write happens on a worker thread: a 4 MiB write on the event loop stalls every client.
        self._pending.add(name)
        path = os.path.join(self.directory, name)
        future = asyncio.get_running_loop().run_in_executor(self._writer, _write_file, path, data)
        future.add_done_callback(lambda f: self._written(name, len(data), f))

    def _written(self, name: str, size: int, future: asyncio.Future[None]) -> None:
        # Runs on the loop, so the bookkeeping stays single-threaded.
        self._pending.discard(name)
        if future.cancelled() or future.exception() is not None:
            return
        self._disk[name] = size
        self._disk_bytes += size
        while self._disk_bytes > self.capacity_bytes and self._disk:
            oldest = next(iter(self._disk))
            self._drop(oldest)

    @property
    def size_bytes(self) -> int:
        return self._disk_bytes

    def _remember(self, name: str, data: bytes) -> None:
        self._memory[name] = data
        self._memory.move_to_end(name)
        while len(self._memory) > self._memory_chunks:
            self._memory.popitem(last=False)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def _drop(self, name: str) -> None:
        size = self._disk.pop(name, 0)
        self._disk_bytes -= size
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass


def _write_file(path: str, data: bytes) -> None:
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)

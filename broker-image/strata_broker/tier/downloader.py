"""Cold chunks are received by a child process, into memory the broker shares with it.

Receiving an S3 body through aiobotocore costs about as much CPU per byte as serving it again
(socket reads, aiohttp's body handling, botocore's checksum), so on the broker's one event loop a
cold replay was bound by one core. A child process with its own aiobotocore client receives the
chunks into slots of a memfd that both processes map, and writes the chunk-cache files from there;
the broker serves fetches from read-only views of the slots, with no copy of its own.

One request is one ranged GET for a run of consecutive chunks of one object (a sequential
reader's prefetch), streamed into one slot per chunk: each chunk is usable as soon as its own
bytes are in, and the object store sees one request per run rather than per chunk.

Protocol (one JSON object per line). The broker writes {"id", "key", "parts": [[slot, start, end,
path], ...], "whole"} to the child's stdin (path: the cache file to write, or null; whole: the
parts are the whole object). The child answers each
part twice on stdout: {"id", "part", "size"} or {"id", "part", "error"} once the bytes are in the
slot (or not), then {"id", "part", "done", "stored"} when it no longer touches the slot. Every
answer carries "requests" and "failures", the child's running totals of S3 attempts and failed
attempts. The child says {"ready": true} once it reads requests, and exits when its stdin closes,
so it never outlives the broker, even one killed with SIGKILL.

A slot is free when the child is done with it and nothing in the broker still holds a view of it
(the memory cache, a fetch response being written): its mmap's reference count says so. With no
slot free, or no child, the reader downloads in-process as before.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.selector_events as selector_events
import itertools
import json
import logging
import mmap
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .cache import DirectWriter, write_chunk_file
from .store import ObjectStore, S3Unavailable

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
# A child that dies this soon after its start twice in a row is not started again.
_MIN_LIFETIME = 5.0
_RECEIVE_BYTES = 1 << 20

# What the reader gives for each chunk of a run: (start, end, cache file path or None, stored(ok)).
Part = tuple[int, int, str | None, Callable[[bool], None]]


def _map_slots(fd: int, count: int, slot_bytes: int) -> list[mmap.mmap]:
    # Populated up front: faulting the pages in one by one as bytes arrive costs more CPU than
    # receiving them (measured here), and each process would pay it again for every page.
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return [mmap.mmap(fd, slot_bytes, flags=flags, offset=i * slot_bytes) for i in range(count)]


def _child_environment() -> dict[str, str]:
    # aiohttp's C response parser copies every piece of a body it is handed (it slices a char
    # pointer into new bytes); its pure-Python parser passes a received buffer that is all body on
    # as it is. The child parses one header block per multi-MiB GET and moves nothing but bodies,
    # so the Python parser saves a copy of every cold byte (measured: bench/tiered.py's A/B).
    return {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}


def _receive_in_large_reads() -> None:
    # asyncio reads a socket 256 KiB at a time, and each read costs the child a trip through the
    # event loop, aiohttp's parser and its stream (Python, per read) besides the copy. Its only
    # socket transports are its S3 connections, so it reads 1 MiB at a time: a fifth less CPU per
    # GB in the A/B (4 MiB reads measured worse than 256 KiB).
    selector_events._SelectorSocketTransport.max_size = _RECEIVE_BYTES


class SharedSlots:
    """Fixed-size slots in one memfd, each mapped on its own (a slot's mmap object is its handle)."""

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.slot_bytes = -(-slot_bytes // _PAGE) * _PAGE
        self.count = count
        self.fd = os.memfd_create("strata-cold-chunks", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, count * self.slot_bytes)
        self.maps = _map_slots(self.fd, count, self.slot_bytes)
        self.held = [False] * count  # by the child: it is receiving into or writing from the slot
        self._free_refs = sys.getrefcount(self.maps[0])  # measured the way free() measures

    def free(self, slot: int) -> bool:
        # The list's reference and the argument's: anything more is a view somebody still holds.
        return not self.held[slot] and sys.getrefcount(self.maps[slot]) <= self._free_refs

    def take(self, wanted: int) -> list[int]:
        """Up to `wanted` free slots, now held."""
        taken = []
        for slot in range(self.count):
            if len(taken) == wanted:
                break
            if self.free(slot):
                self.held[slot] = True
                taken.append(slot)
        return taken

    def view(self, slot: int, size: int) -> memoryview:
        return memoryview(self.maps[slot])[:size].toreadonly()

    def close(self) -> None:
        for m in self.maps:
            try:
                m.close()
            except BufferError:
                pass  # a view still exists: the mapping goes with it
        os.close(self.fd)


class ChunkDownloader:
    """The broker's side: one child process, started by the first cold read (a broker that serves
    none never pays for it), restarted if it dies."""

    def __init__(self, store: ObjectStore, slots: int, slot_bytes: int) -> None:
        self.store = store
        self.slot_count = slots
        self.slot_bytes = slot_bytes
        self.slots: SharedSlots | None = None  # mapped with the first child
        self.enabled = True
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._answers: asyncio.Task[None] | None = None
        # (request id, part) -> (its future, its slot, what is told when the child is done with the slot)
        self._pending: dict[tuple[int, int], tuple[asyncio.Future[memoryview], int, Callable[[bool], None]]] = {}
        self._ids = itertools.count(1)
        self._quick_deaths = 0
        self._started_at = 0.0
        self._seen = (0, 0)  # the child's S3 attempts and failed attempts, as last reported
        self._ready = False  # the child has said it reads requests
        self.downloads = 0  # chunks the child received
        self.fallbacks = 0  # chunks left to the broker (no slot free, child not ready or not running)

    async def start(self) -> None:
        """Map the slots and start the child now rather than on the first cold read (it takes
        about a second to import aiobotocore; until then the broker downloads itself)."""
        self._ensure_started()
        if self._starting is not None:
            await asyncio.wait([self._starting])  # a failure is logged, and the broker downloads

    @property
    def ready(self) -> bool:
        return self._ready and self._proc is not None and self._proc.returncode is None

    def download_run(self, key: str, parts: list[Part], object_size: int) -> list[asyncio.Future[memoryview]]:
        """One ranged GET for consecutive parts of key, each received into a slot of its own: a
        future per part, resolving to a read-only view of the part's bytes. The futures cover the
        first k parts (k < len(parts) when too few slots are free; 0 when the child is not ready):
        the caller downloads the rest itself. stored(ok) of every part taken is called once the
        child is done with its slot. A run that is the whole object is asked for as such."""
        self._ensure_started()
        slots = self.slots
        if not self.ready or slots is None or any(end - start > slots.slot_bytes for start, end, _, _ in parts):
            self.fallbacks += len(parts)
            return []
        taken = slots.take(len(parts))
        self.fallbacks += len(parts) - len(taken)
        if not taken:
            return []
        self.downloads += len(taken)
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        futures = []
        for i, slot in enumerate(taken):
            future: asyncio.Future[memoryview] = loop.create_future()
            # A reader that gave up (its fetch timed out) leaves a failure unread: not an error.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending[(request_id, i)] = (future, slot, parts[i][3])
            futures.append(future)
        wire = [[slot, start, end, path] for slot, (start, end, path, _) in zip(taken, parts, strict=False)]
        whole = wire[0][1] == 0 and wire[-1][2] == object_size
        proc.stdin.write(json.dumps({"id": request_id, "key": key, "parts": wire, "whole": whole}).encode() + b"\n")
        return futures

    def _ensure_started(self) -> None:
        running = self._proc is not None and self._proc.returncode is None
        if self.enabled and not running and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._spawn())
            self._starting.add_done_callback(self._spawned)

    def _spawned(self, task: asyncio.Task[None]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("cold chunk downloader did not start (%s); downloading in the broker", task.exception())
            self._count_death(0.0)

    async def _spawn(self) -> None:
        store = self.store
        if self.slots is None:
            self.slots = SharedSlots(self.slot_count, self.slot_bytes)
        slots = self.slots
        settings = {"fd": slots.fd, "slot_bytes": slots.slot_bytes, "slots": slots.count,
                    "bucket": store.bucket, "endpoint": store.endpoint or "", "region": store.region,
                    "call_timeout": store.call_timeout, "attempt_timeout": store.attempt_timeout,
                    "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata_broker.tier.downloader", json.dumps(settings),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(slots.fd,),
            limit=1 << 20, env=_child_environment())
        self._proc = proc
        self._started_at = time.monotonic()
        self._seen = (0, 0)
        self._ready = False
        self._answers = asyncio.get_running_loop().create_task(self._read_answers(proc))
        log.info("cold chunk downloader started (pid %d, %d slots of %d bytes)", proc.pid, slots.count,
                 slots.slot_bytes)

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                self._answer(json.loads(line))
        finally:
            await proc.wait()
            self._child_gone(proc)

    def _answer(self, msg: dict[str, Any]) -> None:
        if msg.get("ready"):
            self._ready = True
            log.info("cold chunk downloader ready")
            return
        store, slots = self.store, self.slots
        assert slots is not None
        requests, failures = msg["requests"], msg["failures"]
        for _ in range(requests - self._seen[0]):
            store.requests["get_object"] += 1
            if store.on_request is not None:
                store.on_request("get_object", msg.get("key"), 0)
        store.failures += failures - self._seen[1]
        self._seen = (max(requests, self._seen[0]), max(failures, self._seen[1]))
        entry = self._pending.get((msg["id"], msg["part"]))
        if entry is None:
            return
        future, slot, stored = entry
        if "size" in msg:
            store.healthy = True
            store.bytes["get"] += msg["size"]
            if store.on_downloaded is not None:
                store.on_downloaded(msg["key"], msg["size"])
            if not future.done():
                future.set_result(slots.view(slot, msg["size"]))
        elif "error" in msg:
            if msg.get("unavailable"):
                store.healthy = False
            if not future.done():
                future.set_exception(S3Unavailable(msg["error"]))
        if "done" in msg:
            del self._pending[(msg["id"], msg["part"])]
            slots.held[slot] = False
            stored(bool(msg.get("stored")))

    def _child_gone(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc:
            self._proc = None
            self._ready = False
        pending, self._pending = self._pending, {}
        if self.enabled:
            log.warning("cold chunk downloader (pid %d) exited with %s after %.1fs; %d download(s) failed",
                        proc.pid, proc.returncode, time.monotonic() - self._started_at, len(pending))
            self._count_death(time.monotonic() - self._started_at)
        for future, slot, stored in pending.values():
            if self.slots is not None:
                self.slots.held[slot] = False
            if not future.done():
                future.set_exception(S3Unavailable("the cold chunk downloader exited"))
            stored(False)

    def _count_death(self, lifetime: float) -> None:
        self._quick_deaths = self._quick_deaths + 1 if lifetime < _MIN_LIFETIME else 0
        if self._quick_deaths >= 2 and self.enabled:
            self.enabled = False
            log.warning("cold chunk downloader keeps exiting; cold chunks are downloaded in the broker from now on")

    async def close(self) -> None:
        self.enabled = False
        if self._starting is not None:
            await asyncio.wait([self._starting], timeout=5)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()  # the child's signal to finish
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
        if self._answers is not None:
            await asyncio.wait([self._answers], timeout=5)
        if self.slots is not None:
            self.slots.close()


# ---- the child ---------------------------------------------------------------------------------


async def _child(settings: dict[str, Any]) -> None:
    _receive_in_large_reads()
    maps = _map_slots(settings["fd"], settings["slots"], settings["slot_bytes"])
    store = ObjectStore(settings["bucket"], settings["endpoint"], settings["region"], settings["call_timeout"],
                        settings["attempt_timeout"])
    await store.open()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    out = sys.stdout.buffer
    tasks: set[asyncio.Task[None]] = set()
    direct = DirectWriter()  # cache files are written straight from the slots

    def send(msg: dict[str, Any]) -> None:
        msg.update(requests=store.requests["get_object"], failures=store.failures)  # totals: the broker diffs
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    async def handle(req: dict[str, Any]) -> None:
        key, parts, request_id = req["key"], req["parts"], req["id"]
        writes: list[asyncio.Future[bool]] = []

        def filled(i: int, size: int) -> None:
            send({"id": request_id, "part": i, "key": key, "size": size})
            slot, _, _, path = parts[i]
            if path:  # its file is written while the next part arrives
                writes.append(loop.run_in_executor(None, _store_file, path, maps[slot], size, direct))
            else:
                writes.append(loop.create_future())
                writes[-1].set_result(False)

        try:
            await store.get_into(key, parts[0][1], parts[-1][2],
                                 [(maps[slot], end - start) for slot, start, end, _ in parts], filled,
                                 whole=req["whole"])
        except Exception as exc:  # noqa: BLE001 - every failure is the broker's to report
            for i in range(len(writes), len(parts)):
                send({"id": request_id, "part": i, "key": key, "error": f"{exc.__class__.__name__}: {exc}"[:500],
                      "unavailable": isinstance(exc, S3Unavailable)})
        for i in range(len(parts)):
            stored = await writes[i] if i < len(writes) else False
            send({"id": request_id, "part": i, "done": True, "stored": stored})

    send({"ready": True})
    try:
        while line := await stdin.readline():
            task = loop.create_task(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await store.close()


def _store_file(path: str, slot: mmap.mmap, size: int, direct: DirectWriter) -> bool:
    try:
        write_chunk_file(path, memoryview(slot)[:size], direct, aligned=slot)
    except OSError as exc:
        log.warning("chunk cache: could not write %s: %s", path, exc)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="strata-broker's cold chunk downloader (started by the broker)")
    parser.add_argument("settings", help="JSON: fd, slot_bytes, slots, bucket, endpoint, region, timeouts, log_level")
    args = parser.parse_args()
    settings = json.loads(args.settings)
    logging.basicConfig(level=settings["log_level"], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[downloader]: %(message)s")
    asyncio.run(_child(settings))


if __name__ == "__main__":
    main()

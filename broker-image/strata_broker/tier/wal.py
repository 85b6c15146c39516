"""strata.durability=s3: acks=all is answered once the batch is in S3.

Batches of every partition that asks for it gather for tiered.s3.commit.interval.ms and go
to S3 as one object (group commit across partitions). An entry stays queued until a write
carrying it succeeds; a producer whose round failed gets a retriable error, and its retry
(recognised as a duplicate by the idempotent producer state) waits for the same entry.
Objects are deleted once segment uploads cover everything in them; a broker that lost its
disk replays the remaining ones after restoring from the manifests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strata_contract.layout import wal_root

from ..errors import ErrorCode, KafkaProtocolError
from ..log.partition import AppendResult, OffsetInRemoteStorage, PartitionLog
from .store import ObjectStore

if TYPE_CHECKING:
    from ..log.manager import LogManager

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_READ_CACHE_BYTES = 256 << 20
PartitionKey = tuple[str, int]


@dataclass
class _Entry:
    topic: str
    partition: int
    base_offset: int
    last_offset: int
    data: bytes
    epoch: int = 0  # cluster mode: the leader epoch the batch was written at


@dataclass
class _Written:
    key: str
    last_offsets: dict[PartitionKey, int]


def encode_entries(entries: list[_Entry]) -> bytes:
    out = bytearray()
    for e in entries:
        header = json.dumps({"topic": e.topic, "partition": e.partition, "base": e.base_offset,
                             "last": e.last_offset, "size": len(e.data), "epoch": e.epoch}).encode()
        out += _LEN.pack(len(header)) + header + e.data
    return bytes(out)


def decode_entries(blob: bytes) -> Iterator[_Entry]:
    pos = 0
    while pos + 4 <= len(blob):
        (n,) = _LEN.unpack_from(blob, pos)
        header = json.loads(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
        data = blob[pos:pos + header["size"]]
        pos += header["size"]
        yield _Entry(header["topic"], header["partition"], header["base"], header["last"], data,
                     int(header.get("epoch", 0)))


class S3CommitLog:
    def __init__(self, store: ObjectStore, prefix: str, cluster: str, broker_id: int, interval_ms: int) -> None:
        self.store = store
        self.root = wal_root(prefix, cluster, broker_id)
        self.cluster_root = self.root[:self.root.rstrip("/").rindex("/") + 1]  # every broker's commit log
        self.interval = interval_ms / 1000.0
        self._queue: list[_Entry] = []
        self._durable: dict[PartitionKey, int] = {}
        self._waiters: list[tuple[PartitionKey, int, asyncio.Future[None]]] = []
        self._written: list[_Written] = []
        self._task: asyncio.Task[None] | None = None
        self._sequence = time.time_ns()
        self.rounds = 0
        self.failed_rounds = 0
        # Cluster mode, taking partitions over: other brokers' commit-log objects already read.
        self._read_cache: OrderedDict[str, list[_Entry]] = OrderedDict()
        self._read_cache_bytes = 0
        # Partitions this broker sealed and handed over: all it wrote of them is in uploaded segments.
        self.handed_over: set[PartitionKey] = set()
        self._reading: dict[str, asyncio.Future[bytes | None]] = {}
        self.wait_timeout = 30.0

    def durable_offset(self, key: PartitionKey) -> int:
        return self._durable.get(key, -1)

    def mark_durable_up_to(self, key: PartitionKey, last_offset: int) -> None:
        """What is already in S3 another way (uploaded segments, or restored) needs no commit-log write."""
        if last_offset > self._durable.get(key, -1):
            self._durable[key] = last_offset
            self._release()

    def commit_append(self, plog: PartitionLog, result: AppendResult) -> Awaitable[None]:
        """Answered once a batch just appended to `plog` is in S3. A retried duplicate waits too,
        and re-sends the stored batch in case its first commit failed."""
        topic = plog.topic
        if not result.duplicate:
            return self.commit(topic, plog.partition, result.base_offset, result.last_offset, result.data,
                               plog.leader_epoch)
        if self.durable_offset((topic, plog.partition)) >= result.last_offset:
            return self.wait_durable(topic, plog.partition, result.last_offset)
        try:
            stored = plog.read(result.base_offset, 1)  # exactly the batch the producer retried
        except OffsetInRemoteStorage:
            return self.wait_durable(topic, plog.partition, result.last_offset)  # uploaded: durable already
        return self.commit(topic, plog.partition, result.base_offset, result.last_offset, stored, plog.leader_epoch)

    async def commit(self, topic: str, partition: int, base_offset: int, last_offset: int, data: bytes,
                     epoch: int = 0) -> None:
        self._queue.append(_Entry(topic, partition, base_offset, last_offset, bytes(data), epoch))
        await self.wait_durable(topic, partition, last_offset)

    async def wait_durable(self, topic: str, partition: int, last_offset: int) -> None:
        key = (topic, partition)
        if self._durable.get(key, -1) >= last_offset:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((key, last_offset, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait_timeout)
        except TimeoutError:
            raise KafkaProtocolError(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, "not yet durable in S3") from None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        round_started = loop.time()
        while self._waiters or self._queue:
            # One round per interval, counting the PUT's own time in it.
            await asyncio.sleep(max(0.0, round_started + self.interval - loop.time()))
            round_started = loop.time()
            entries = self._queue[:]
            if not entries:
                self._release()
                continue
            self._sequence += 1
            key = f"{self.root}{self._sequence:020d}.wal"
            try:
                await self.store.put(key, encode_entries(entries), deadline=10)
            except Exception as exc:
                self.failed_rounds += 1
                log.warning("S3 commit of %d batch(es) failed (%s); producers will retry", len(entries), exc)
                self._fail_waiters(KafkaProtocolError(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                                                      "not yet durable in S3"))
                continue
            self.rounds += 1
            del self._queue[:len(entries)]
            lasts: dict[PartitionKey, int] = {}
            for e in entries:
                lasts[(e.topic, e.partition)] = max(lasts.get((e.topic, e.partition), -1), e.last_offset)
            self._written.append(_Written(key, lasts))
            for k, last in lasts.items():
                if last > self._durable.get(k, -1):
                    self._durable[k] = last
            self._release()

    def _release(self) -> None:
        still = []
        for key, last, future in self._waiters:
            if future.done():
                continue
            if self._durable.get(key, -1) >= last:
                future.set_result(None)
            else:
                still.append((key, last, future))
        self._waiters = still

    def _fail_waiters(self, error: Exception) -> None:
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []

    async def trim(self, remote_end: dict[PartitionKey, int]) -> None:
        """Delete commit-log objects whose every batch is now inside uploaded segments."""
        done = [w for w in self._written
                if all(k in self.handed_over or remote_end.get(k, 0) > last for k, last in w.last_offsets.items())]
        if not done:
            return
        try:
            await self.store.delete_many([w.key for w in done])
        except Exception as exc:
            log.debug("commit log trim postponed: %s", exc)
            return
        self._written = [w for w in self._written if w not in done]

    async def replay(self, logs: LogManager) -> int:
        """After a restore: append what the commit log holds beyond the restored log ends."""
        objects, _ = await self.store.list(self.root)
        replayed = 0
        for obj in sorted(objects, key=lambda o: o["Key"]):
            blob = await self.store.get(obj["Key"])
            lasts: dict[PartitionKey, int] = {}
            for entry in decode_entries(blob):
                topic = logs.topics.get(entry.topic)
                if topic is None or entry.partition >= len(topic.partitions):
                    continue
                plog = topic.partitions[entry.partition]
                replayed += plog.append_restored(entry.data)
                key = (entry.topic, entry.partition)
                lasts[key] = max(lasts.get(key, -1), entry.last_offset)
            self._written.append(_Written(obj["Key"], lasts))
            for key, last in lasts.items():
                self.mark_durable_up_to(key, last)
        if replayed:
            log.info("replayed %d batch(es) from the S3 commit log", replayed)
        return replayed

    async def chain_for(self, topic: str, partition: int, start: int, max_epoch: int) -> list[_Entry]:
        """Cluster mode, taking a partition over: the batches any broker committed for it from
        `start` on, at epochs up to `max_epoch`. Where leaders overlap, the newer epoch wins: a
        leader starts writing where what it took over ends, so anything an older leader wrote
        past that point was never acknowledged (that leader had lost its lease)."""
        objects, _ = await self.store.list(self.cluster_root)
        keys = sorted(o["Key"] for o in objects)
        limit = asyncio.Semaphore(16)

        async def entries_of(key: str) -> list[_Entry]:
            async with limit:
                return await self._entries_of(key)

        by_base: dict[int, _Entry] = {}
        for entries in await asyncio.gather(*(entries_of(k) for k in keys)):
            for entry in entries:
                if entry.topic != topic or entry.partition != partition or entry.epoch > max_epoch:
                    continue
                if entry.last_offset < start:
                    continue
                held = by_base.get(entry.base_offset)
                if held is None or entry.epoch > held.epoch:
                    by_base[entry.base_offset] = entry
        chain: list[_Entry] = []
        position = start
        while True:
            candidates = [e for e in by_base.values() if e.base_offset <= position <= e.last_offset]
            if not candidates:
                return chain
            best = max(candidates, key=lambda e: (e.epoch, -e.base_offset))
            if best.base_offset != position:
                return chain  # only whole batches continue a log
            chain.append(best)
            position = best.last_offset + 1

    async def _entries_of(self, key: str) -> list[_Entry]:
        """A commit-log object's batches. Objects never change, so they are kept (up to a bound):
        when several partitions are taken over at once each object is fetched once."""
        cached = self._read_cache.get(key)
        if cached is not None:
            self._read_cache.move_to_end(key)
            return cached
        pending = self._reading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self.store.get_or_none(key))
            self._reading[key] = pending
        try:
            blob = await asyncio.shield(pending)
        finally:
            self._reading.pop(key, None)
        if key in self._read_cache:  # another take-over decoded it meanwhile
            return self._read_cache[key]
        entries = list(decode_entries(blob)) if blob is not None else []
        self._read_cache[key] = entries
        self._read_cache_bytes += sum(len(e.data) for e in entries)
        while self._read_cache_bytes > _READ_CACHE_BYTES and len(self._read_cache) > 1:
            _, dropped = self._read_cache.popitem(last=False)
            self._read_cache_bytes -= sum(len(e.data) for e in dropped)
        return entries

"""The replica layer: one per-partition interface for the request handlers and the group coordinator.

After Kafka's ReplicaManager: a handler asks for `partition(caller, topic, p, operation)` and gets
the partition log with authorization and leadership checked once; it appends through `append`,
whose answer carries the one durable-append path (`Appended.durable`: fsync of the segment, or the
S3 commit for partitions that commit there, then the cluster fence), and reads through `read` and
`offset_for_timestamp`, which fall back to remote storage below the local log start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka.record.memory_records import MemoryRecords

from ..errors import ErrorCode, KafkaProtocolError
from ..log.manager import LogManager, Topic, is_internal_name
from ..log.partition import AppendResult, OffsetInRemoteStorage, PartitionLog
from ..log.txn_index import AbortedTxn
from ..security.acl import RES_TOPIC
from .leadership import Leadership


class Caller(Protocol):
    """Whoever a request comes from: the handlers' RequestContext."""

    def authorize(self, operation: int, resource_type: int, name: str) -> bool: ...


class RemoteLog(Protocol):
    """Remote storage as the replica layer uses it (tier/manager.py TierManager)."""

    async def read(self, topic: Topic, plog: PartitionLog, offset: int, max_bytes: int,
                   always_one: bool) -> bytes | memoryview: ...

    async def offset_for_timestamp(self, topic: Topic, plog: PartitionLog,
                                   timestamp: int) -> tuple[int, int] | None: ...

    def commit(self, plog: PartitionLog, result: AppendResult) -> Awaitable[None]:
        """Make an appended batch durable in S3 (the commit log); a retried duplicate waits for
        (or re-sends) the stored batch."""

    async def publish_log_start(self, plog: PartitionLog) -> None:
        """Record a moved log start offset (DeleteRecords) in the partition's remote manifest."""


@dataclass
class Appended:
    """A batch appended to the local log, and how to wait until it may be acknowledged."""

    result: AppendResult
    plog: PartitionLog
    epoch: int
    manager: ReplicaManager

    def durable(self) -> Awaitable[None]:
        return self.manager.durable(self)


class ReplicaManager:
    def __init__(self, logs: LogManager, leadership: Leadership, remote: RemoteLog | None) -> None:
        self.logs = logs
        self.leadership = leadership
        self.remote = remote

    def partition(self, caller: Caller, topic: str, partition: int, operation: int) -> PartitionLog:
        """The partition a request names: the caller may do `operation` on the topic, the
        partition exists and this broker leads it. Raises the Kafka error a client expects."""
        return self.partition_of(self.topic(caller, topic, operation), partition)

    def topic(self, caller: Caller, topic: str, operation: int) -> Topic:
        """partition()'s checks that concern the whole topic (authorization, existence), for a
        handler that asks about many of its partitions: then partition_of() for each."""
        if not caller.authorize(operation, RES_TOPIC, topic):
            raise KafkaProtocolError(ErrorCode.TOPIC_AUTHORIZATION_FAILED, f"not authorized for topic {topic}")
        return self.logs.get_topic(topic)

    def partition_of(self, topic: Topic, partition: int) -> PartitionLog:
        """The rest of partition(): the partition exists and this broker leads it."""
        if not 0 <= partition < len(topic.partitions):
            raise KafkaProtocolError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic.name} has no partition {partition}")
        self.leadership.check_leader(topic.name, partition)
        return topic.partitions[partition]

    # ---- writes ---------------------------------------------------------------------------

    def append(self, plog: PartitionLog, records: bytes) -> Appended:
        """Append now (no await: pipelined requests are applied in the order they arrived)."""
        epoch = plog.leader_epoch
        return Appended(plog.append(records), plog, epoch, self)

    def append_marker(self, plog: PartitionLog, producer_id: int, producer_epoch: int, commit: bool,
                      coordinator_epoch: int = 0) -> Appended:
        """A transaction marker (control batch), written by the transaction coordinator; made
        durable like any append."""
        epoch = plog.leader_epoch
        return Appended(plog.append_marker(producer_id, producer_epoch, commit, coordinator_epoch), plog, epoch, self)

    def commits_to_s3(self, plog: PartitionLog) -> bool:
        """acks=all waits for S3 rather than fsync: strata.durability=s3, and the broker's own
        internal topics whenever there is a bucket (a broker that loses its disk still knows
        where every group was)."""
        return (self.remote is not None and plog.remote is not None
                and (plog.config.durability == "s3" or is_internal_name(plog.topic)))

    async def durable(self, appended: Appended) -> None:
        """durable_all() of one append: raises the Kafka error to answer instead of an ack."""
        (outcome,) = await self.durable_all([appended])
        if outcome is not None:
            raise outcome

    async def durable_all(self, appends: list[Appended]) -> list[BaseException | None]:
        """The one durable-append path, for one append or a produce request's many: each batch is on
        disk (fsync; all local ones share one group-commit round) or in S3, and, in a cluster, this
        broker still leads the partition at the epoch it appended at. Each append's outcome: None
        (it may be acknowledged) or the Kafka error to answer instead."""
        outcomes: list[BaseException | None] = [None] * len(appends)
        to_s3 = [i for i, a in enumerate(appends) if self.remote is not None and self.commits_to_s3(a.plog)]
        remote = self.remote
        waits: list[Awaitable[object]] = []
        if remote is not None:
            waits += [remote.commit(appends[i].plog, appends[i].result) for i in to_s3]
        segments = {a.result.segment for i, a in enumerate(appends) if i not in to_s3 and a.result.segment is not None}
        if segments:
            waits.append(self.logs.group_commit.sync_many(segments))
        results: list[object]
        if len(waits) == 1:  # the usual case (one kind of wait): no gather task between it and the answer
            try:
                results = [await waits[0]]
            except Exception as exc:
                results = [exc]
        else:
            results = list(await asyncio.gather(*waits, return_exceptions=True))
        for i, result in zip(to_s3, results, strict=False):
            if isinstance(result, BaseException):
                outcomes[i] = result
        local_failure = results[-1] if segments and isinstance(results[-1], BaseException) else None
        for i, appended in enumerate(appends):
            if outcomes[i] is not None:
                continue
            if local_failure is not None and i not in to_s3 and appended.result.segment is not None:
                outcomes[i] = local_failure
            elif not self.leadership.may_ack(appended.plog.topic, appended.plog.partition, appended.epoch):
                outcomes[i] = KafkaProtocolError(ErrorCode.NOT_LEADER_OR_FOLLOWER,
                                                 f"{appended.plog.topic}-{appended.plog.partition} "
                                                 "moved to another broker")
        return outcomes

    async def delete_records(self, plog: PartitionLog, offset: int) -> int:
        """DeleteRecords: move the log start offset up to `offset` (never down), locally and in
        the bucket's manifest of a tiered partition. Returns the new log start offset."""
        if offset > plog.log_start_offset:
            plog.advance_log_start(offset)
            if self.remote is not None and plog.remote is not None:
                await self.remote.publish_log_start(plog)
        return plog.log_start_offset

    # ---- reads ----------------------------------------------------------------------------

    def read_local(self, plog: PartitionLog, offset: int, max_bytes: int, always_one: bool) -> bytes | None:
        """The local bytes at `offset`; None when they are below the local log start, in remote
        storage (`read_remote` gets them, so a handler can run many remote reads concurrently)."""
        try:
            return plog.read(offset, max_bytes, always_one)
        except OffsetInRemoteStorage:
            if self.remote is None:
                raise
            return None

    async def read_remote(self, plog: PartitionLog, offset: int, max_bytes: int,
                          always_one: bool) -> bytes | memoryview:
        assert self.remote is not None
        return await self.remote.read(self.logs.get_topic(plog.topic), plog, offset, max_bytes, always_one)

    async def read(self, plog: PartitionLog, offset: int, max_bytes: int,
                   always_one: bool = True) -> bytes | memoryview:
        """The bytes at `offset`, from the local log or else from remote storage."""
        found = self.read_local(plog, offset, max_bytes, always_one)
        if found is None:
            return await self.read_remote(plog, offset, max_bytes, always_one)
        return found

    async def aborted_transactions(self, plog: PartitionLog, fetch_offset: int,
                                   upper_offset: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping [fetch_offset, upper_offset): from the remote segments'
        `.txnindex` files for the part below the local log, then the local index."""
        found: list[AbortedTxn] = []
        remote_index = getattr(self.remote, "aborted_transactions", None)
        if remote_index is not None and plog.remote is not None and fetch_offset < plog.local_start_offset:
            found = await remote_index(self.logs.get_topic(plog.topic), plog, fetch_offset, upper_offset)
        seen = {(a.producer_id, a.last_offset) for a in found}
        found += [a for a in plog.aborted_between(fetch_offset, upper_offset)
                  if (a.producer_id, a.last_offset) not in seen]
        return found

    async def replay(self, plog: PartitionLog) -> AsyncIterator[tuple[Any, list[Any]]]:
        """Every batch of the partition from its log start to its end, local or remote, each with
        its records at or after the log start: what a loader (offsets, transactions) replays."""
        position = plog.log_start_offset
        while position < plog.log_end_offset:
            data = await self.read(plog, position, 1 << 20, always_one=True)
            if not data:
                return
            records = MemoryRecords(bytes(data))
            while records.has_next():
                batch = records.next_batch()
                if batch is None:
                    break
                yield batch, [record for record in batch if record.offset >= position]
                position = max(position, batch.next_offset)

    async def offset_for_timestamp(self, plog: PartitionLog, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after `timestamp`: the remote time
        index first (it covers the older data), then the local one."""
        found = None
        if self.remote is not None and plog.remote is not None:
            found = await self.remote.offset_for_timestamp(self.logs.get_topic(plog.topic), plog, timestamp)
        if found is None:
            found = plog.offset_for_timestamp(timestamp)
        return found

"""Fetch: long poll with min_bytes / max_wait_ms, byte budgets, many partitions per request."""

from __future__ import annotations

import asyncio
import logging
import time

from kafka.protocol.consumer import FetchRequest, FetchResponse

from ..errors import KafkaProtocolError
from ..log.batch import LOG_OVERHEAD, peek_length
from ..log.partition import PartitionLog
from ..security.acl import OP_READ
from .context import RequestContext
from .registry import api

_TopicResponse = FetchResponse.FetchableTopicResponse
_PartitionData = _TopicResponse.PartitionData
_Aborted = _PartitionData.AbortedTransaction
READ_COMMITTED = 1


def _below(records: bytes | memoryview, limit: int) -> bytes | memoryview:
    """The whole batches of `records` that start below `limit` (the last stable offset): a
    transaction's batches all start at or after its first offset, so none straddles it."""
    pos = 0
    total = len(records)
    while pos + LOG_OVERHEAD <= total:
        base, length = peek_length(records, pos)
        if base >= limit:
            break
        pos += length
    return records if pos >= total else records[:pos]


def _end_offset(records: bytes | memoryview, fetch_offset: int) -> int:
    """One past the last offset the batches in `records` cover (fetch_offset when empty)."""
    pos = 0
    end = fetch_offset
    total = len(records)
    view = memoryview(records)
    while pos + 61 <= total:
        base, length = peek_length(view, pos)
        last_delta = int.from_bytes(view[pos + 23:pos + 27], "big", signed=True)
        end = max(end, base + last_delta + 1)
        pos += length
    return end

log = logging.getLogger(__name__)

_MAX_WAIT_MS = 60_000


@api(FetchRequest, FetchResponse, 4, 12)
async def handle_fetch(ctx: RequestContext, request: FetchRequest) -> FetchResponse:
    logs = ctx.services.logs
    # Clients wait 0.1-1 s; the cap keeps a nonsense value from parking a request for days.
    max_wait = min(max(0, request.max_wait_ms), _MAX_WAIT_MS) / 1000.0
    deadline = time.monotonic() + max_wait
    while True:
        topics, total, errors = await _read_all(ctx, request)
        remaining = deadline - time.monotonic()
        if total >= max(1, request.min_bytes) or errors or remaining <= 0 or ctx.services.closing:
            break
        waiter = asyncio.get_running_loop().create_future()
        watched = []
        for topic in request.topics:
            for part in topic.partitions:
                try:
                    plog = logs.get_partition(topic.topic, part.partition)
                except KafkaProtocolError:
                    continue
                plog.add_waiter(waiter)
                watched.append(plog)
        ctx.services.lifecycle.add_shutdown_waiter(waiter)
        try:
            await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            pass
        finally:
            for plog in watched:
                plog.remove_waiter(waiter)
            ctx.services.lifecycle.remove_shutdown_waiter(waiter)
    return FetchResponse(version=ctx.api_version, throttle_time_ms=0, error_code=0, session_id=0, responses=topics)


async def _read_all(ctx: RequestContext, request: FetchRequest) -> tuple[list[_TopicResponse], int, bool]:
    replicas = ctx.services.replicas
    budget = request.max_bytes if ctx.api_version >= 3 else 1 << 31
    total = 0
    errors = False
    topics = []
    committed = ctx.api_version >= 4 and request.isolation_level == READ_COMMITTED
    # Reads below the local log start go to S3; they run concurrently, under one timeout.
    remote: dict[int, asyncio.Task[bytes | memoryview]] = {}
    slots: list[_PartitionData] = []
    plog_by_slot: dict[int, PartitionLog] = {}
    offsets_by_slot: dict[int, int] = {}
    for topic in request.topics:
        partitions = []
        for part in topic.partitions:
            data = _PartitionData(partition_index=part.partition, error_code=0, high_watermark=-1,
                                  last_stable_offset=-1, log_start_offset=-1, aborted_transactions=None,
                                  preferred_read_replica=-1, records=b"")
            try:
                plog = replicas.partition(ctx, topic.topic, part.partition, OP_READ)
                data.high_watermark = plog.high_watermark
                lso = data.last_stable_offset = plog.last_stable_offset
                data.log_start_offset = plog.log_start_offset
                limit = min(part.partition_max_bytes, budget - total)
                if limit > 0 or total == 0:
                    # KIP-74: the first batch of the response is returned whole even past the limits,
                    # so a batch larger than max bytes never stalls a consumer.
                    records = replicas.read_local(plog, part.fetch_offset, max(limit, 0), always_one=(total == 0))
                    if records is None:  # below the local log start: read from S3, concurrently
                        remote[id(data)] = asyncio.get_running_loop().create_task(replicas.read_remote(
                            plog, part.fetch_offset, min(part.partition_max_bytes, budget), True))
                        slots.append(data)
                        plog_by_slot[id(data)] = plog
                        offsets_by_slot[id(data)] = part.fetch_offset
                        records = b""
                    elif committed:
                        records = _below(records, lso)
                        data.aborted_transactions = [
                            _Aborted(producer_id=a.producer_id, first_offset=a.first_offset)
                            for a in plog.aborted_between(part.fetch_offset, _end_offset(records, part.fetch_offset))]
                    data.records = records
                    total += len(records)
                    if records:
                        ctx.services.meter.fetched(ctx.principal, ctx.client_id, topic.topic, records)
            except KafkaProtocolError as exc:
                data.error_code = int(exc.code)
                # As Kafka: a partition in error carries no offsets (-1), whatever was read before.
                data.high_watermark = data.last_stable_offset = data.log_start_offset = -1
                errors = True
            partitions.append(data)
        topics.append(_TopicResponse(topic=topic.topic, partitions=partitions))
    if remote:
        timeout = ctx.services.config["tiered.fetch.timeout.ms"] / 1000.0
        done, _ = await asyncio.wait(remote.values(), timeout=timeout)
        for data in slots:
            task = remote[id(data)]
            if task not in done:
                log.warning("remote read of partition %d timed out; the consumer will retry", data.partition_index)
                continue
            if task.exception() is not None:
                log.warning("remote read of partition %d failed: %s", data.partition_index, task.exception())
                continue
            records = task.result()
            if committed:
                plog = plog_by_slot[id(data)]
                records = _below(records, data.last_stable_offset)
                fetch_offset = offsets_by_slot[id(data)]
                found = await replicas.aborted_transactions(plog, fetch_offset, _end_offset(records, fetch_offset))
                data.aborted_transactions = [_Aborted(producer_id=a.producer_id, first_offset=a.first_offset)
                                             for a in found]
            if total + len(records) > budget and total > 0:
                continue  # over the response budget: this partition's turn comes in the next fetch
            data.records = records
            total += len(records)
            ctx.services.meter.fetched(ctx.principal, ctx.client_id, plog_by_slot[id(data)].topic, records)
    return topics, total, errors

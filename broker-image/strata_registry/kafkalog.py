"""`_schemas` through the Kafka protocol (librdkafka via confluent-kafka).

- `SchemasLog.produce`: acks=all writes, each answered with its offset.
- A tail consumer (assigned partition 0, no group) reads the topic from the start, forever, and hands
  every record to `State.apply` on the event loop; `caught_up()` waits until everything written
  before the call has been applied.
- An election consumer joins the consumer group `group_id` subscribed to `_schemas` (one partition):
  the member the group assigns partition 0 is the candidate leader (as Confluent's registry elects
  through a group). It never reads records itself (its partition is paused).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from .state import EPOCH_HEADER

log = logging.getLogger(__name__)

TOPIC = "_schemas"


class SchemasLog:
    def __init__(self, bootstrap: str, client_config: dict[str, str], group_id: str,
                 on_record: Callable[[int, bytes | None, bytes | None, int | None], None],
                 on_candidate: Callable[[bool], None]) -> None:
        self.loop = asyncio.get_running_loop()
        base = {"bootstrap.servers": bootstrap, **client_config}
        self.producer = Producer({**base, "acks": "all", "linger.ms": 0, "message.max.bytes": 8 * 1024 * 1024,
                                  "client.id": "strata-registry"})
        self._base = base
        self.group_id = group_id
        self._on_record = on_record
        self._on_candidate = on_candidate
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._watermarks: Consumer | None = None  # asks the broker for the end of _schemas
        self._watermarks_lock = threading.Lock()
        self.next_offset = 0  # the offset the tail reads next
        self.candidate = False

    # ---- writes ---------------------------------------------------------------------------------

    async def produce(self, key: bytes, value: bytes | None, epoch: int | None, timeout: float = 15.0) -> int:
        """Write one record; its offset once the broker has it (acks=all)."""
        future: asyncio.Future[int] = self.loop.create_future()

        def delivered(err: KafkaError | None, msg: Any) -> None:
            def settle() -> None:
                if future.done():
                    return
                if err is not None:
                    future.set_exception(RuntimeError(str(err)))
                else:
                    future.set_result(msg.offset())
            self.loop.call_soon_threadsafe(settle)

        headers = [(EPOCH_HEADER, str(epoch).encode())] if epoch is not None else None
        self.producer.produce(TOPIC, value=value, key=key, partition=0, headers=headers, on_delivery=delivered)
        self.producer.poll(0)
        deadline = time.monotonic() + timeout
        while not future.done():
            await asyncio.sleep(0.005)
            self.producer.poll(0)
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not acknowledge the write to _schemas in time")
        return future.result()

    # ---- the tail -------------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._tail, "registry-tail"), (self._elect, "registry-election")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _tail(self) -> None:
        consumer = Consumer({**self._base, "group.id": "strata-registry-tail", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50,
                             "fetch.message.max.bytes": 8 * 1024 * 1024, "topic.metadata.refresh.interval.ms": 1000})
        consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                messages = consumer.consume(500, 0.2)
                batch = []
                for msg in messages:
                    if msg.error() is not None:
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.debug("tail: %s", msg.error())
                        continue
                    epoch = None
                    for name, raw in msg.headers() or []:
                        if name == EPOCH_HEADER and raw:
                            epoch = int(raw)
                    batch.append((msg.offset(), msg.key(), msg.value(), epoch))
                if batch:
                    self.loop.call_soon_threadsafe(self._deliver, batch)
        finally:
            consumer.close()

    def _deliver(self, batch: list[tuple[int, bytes | None, bytes | None, int | None]]) -> None:
        for offset, key, value, epoch in batch:
            if offset < self.next_offset:
                continue
            self._on_record(offset, key, value, epoch)
            self.next_offset = offset + 1
        still = []
        for offset, future in self._applied_waiters:
            if self.next_offset > offset:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((offset, future))
        self._applied_waiters = still

    async def wait_applied(self, offset: int, timeout: float = 15.0) -> None:
        """Until the record at `offset` has been applied."""
        if self.next_offset > offset:
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._applied_waiters.append((offset, future))
        await asyncio.wait_for(future, timeout)

    async def end_offset(self) -> int:
        """The partition's high watermark now (the offset the next write gets)."""
        def query() -> int:
            with self._watermarks_lock:
                if self._watermarks is None:
                    self._watermarks = Consumer({**self._base, "group.id": "strata-registry-watermarks"})
                _low, high = self._watermarks.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10,
                                                                    cached=False)
                return int(high)
        return await asyncio.to_thread(query)

    async def caught_up(self, timeout: float = 15.0) -> None:
        """Until every record written before this call has been applied."""
        end = await self.end_offset()
        if end > 0:
            await self.wait_applied(end - 1, timeout)

    # ---- the election ---------------------------------------------------------------------------

    def _elect(self) -> None:
        consumer = Consumer({**self._base, "group.id": self.group_id, "enable.auto.commit": False,
                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                             "max.poll.interval.ms": 60000, "partition.assignment.strategy": "range",
                             "topic.metadata.refresh.interval.ms": 1000})

        def assigned(c: Consumer, partitions: list[TopicPartition]) -> None:
            ours = any(p.topic == TOPIC and p.partition == 0 for p in partitions)
            if partitions:
                c.pause(partitions)
            self._set_candidate(ours)

        def revoked(c: Consumer, partitions: list[TopicPartition]) -> None:
            self._set_candidate(False)

        consumer.subscribe([TOPIC], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
        try:
            while not self._stop.is_set():
                consumer.poll(0.2)
        finally:
            try:
                self._set_candidate(False)
            except RuntimeError:  # the event loop is closed already
                pass
            consumer.close()

    def _set_candidate(self, value: bool) -> None:
        if value != self.candidate:
            self.candidate = value
            self.loop.call_soon_threadsafe(self._on_candidate, value)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.producer.flush(5)
        with self._watermarks_lock:
            if self._watermarks is not None:
                self._watermarks.close()
                self._watermarks = None

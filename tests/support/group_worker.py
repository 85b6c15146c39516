"""A group member in its own process, for consumer group tests: `python group_worker.py CLIENT BOOTSTRAP TOPIC GROUP`.

It subscribes TOPIC as a member of GROUP, processes every record (prints it), and commits
what it processed after each batch and before giving partitions up (commit-after-process).
It prints one JSON object per line on stdout:

    {"event": "assigned", "partitions": [0, 3, 5]}
    {"event": "records", "records": [[partition, offset, value], ...]}
    {"event": "closed"}

SIGTERM closes the consumer cleanly (LeaveGroup); SIGKILL from the test is the crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500

stop = False


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _on_term(*_: object) -> None:
    global stop
    stop = True


class Tracker:
    def __init__(self) -> None:
        self.assigned: list[int] | None = None
        self.processed: dict[int, int] = {}  # partition -> next offset to commit

    def assignment(self, partitions: set[int]) -> None:
        current = sorted(partitions)
        if current != self.assigned:
            self.assigned = current
            emit("assigned", partitions=current)

    def process(self, records: list[tuple[int, int, bytes | None]]) -> None:
        if not records:
            return
        emit("records", records=[[p, o, (v or b"").decode()] for p, o, v in records])
        for p, o, _ in records:
            self.processed[p] = max(self.processed.get(p, 0), o + 1)

    def take(self, partitions: set[int] | None = None) -> dict[int, int]:
        chosen = {p: o for p, o in self.processed.items() if partitions is None or p in partitions}
        for p in chosen:
            del self.processed[p]
        return chosen


def run_kafka_python(bootstrap: str, topic: str, group: str, instance: str | None) -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition

    tracker = Tracker()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=SESSION_TIMEOUT_MS,
                             heartbeat_interval_ms=HEARTBEAT_MS, group_instance_id=instance,
                             client_id=f"kp-{group}")

    def commit(partitions: set[int] | None = None) -> None:
        offsets = tracker.take(partitions)
        if offsets:
            try:
                consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
            except Exception as exc:
                emit("commit_failed", error=repr(exc))

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
            commit({tp.partition for tp in revoked})

        def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
            pass

    # kafka-python 3.x: a member that joins before it has the topic's metadata rejoins at once,
    # and after that immediate rejoin the client sometimes stops heartbeating and fetching (seen
    # under CPU load: the broker answers everything, the client goes silent). Having the metadata
    # before subscribing avoids the rejoin.
    consumer.partitions_for_topic(topic)
    consumer.subscribe([topic], listener=Listener())
    while not stop:
        batch = consumer.poll(timeout_ms=200)
        tracker.assignment({tp.partition for tp in consumer.assignment()})
        records = [(r.partition, r.offset, r.value) for recs in batch.values() for r in recs]
        tracker.process(records)
        commit()
    commit()
    consumer.close(autocommit=False)
    emit("closed")


def run_confluent(bootstrap: str, topic: str, group: str, instance: str | None) -> None:
    import confluent_kafka

    tracker = Tracker()
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS, "client.id": f"ck-{group}"}
    if instance:
        conf["group.instance.id"] = instance
    consumer = confluent_kafka.Consumer(conf)

    def commit(partitions: set[int] | None = None) -> None:
        offsets = tracker.take(partitions)
        if offsets:
            try:
                consumer.commit(offsets=[confluent_kafka.TopicPartition(topic, p, o) for p, o in offsets.items()],
                                asynchronous=False)
            except Exception as exc:
                emit("commit_failed", error=repr(exc))

    def on_revoke(c, partitions):  # type: ignore[no-untyped-def]
        commit({tp.partition for tp in partitions})

    consumer.subscribe([topic], on_revoke=on_revoke)
    while not stop:
        msgs = consumer.consume(num_messages=500, timeout=0.2)
        tracker.assignment({tp.partition for tp in consumer.assignment()})
        tracker.process([(m.partition(), m.offset(), m.value()) for m in msgs if m.error() is None])
        commit()
    commit()
    consumer.close()
    emit("closed")


async def run_aiokafka(bootstrap: str, topic: str, group: str, instance: str | None) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    tracker = Tracker()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False, session_timeout_ms=SESSION_TIMEOUT_MS,
                                heartbeat_interval_ms=HEARTBEAT_MS, client_id=f"ak-{group}",
                                group_instance_id=instance)

    async def commit(partitions: set[int] | None = None) -> None:
        offsets = tracker.take(partitions)
        if offsets:
            try:
                await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()})
            except Exception as exc:
                emit("commit_failed", error=repr(exc))

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
            await commit({tp.partition for tp in revoked})

        async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
            pass

    await consumer.start()
    consumer.subscribe([topic], listener=Listener())
    while not stop:
        batch = await consumer.getmany(timeout_ms=200)
        tracker.assignment({tp.partition for tp in consumer.assignment()})
        tracker.process([(r.partition, r.offset, r.value) for recs in batch.values() for r in recs])
        await commit()
    await commit()
    await consumer.stop()
    emit("closed")


def main() -> None:
    client, bootstrap, topic, group = sys.argv[1:5]
    if os.environ.get("GROUP_WORKER_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format=f"%(asctime)s {os.getpid()} %(threadName)s %(name)s %(message)s")
    instance = sys.argv[5] if len(sys.argv) > 5 else None
    signal.signal(signal.SIGTERM, _on_term)
    if client == "kafka-python":
        run_kafka_python(bootstrap, topic, group, instance)
    elif client == "confluent":
        run_confluent(bootstrap, topic, group, instance)
    elif client == "aiokafka":
        asyncio.run(run_aiokafka(bootstrap, topic, group, instance))
    else:
        raise SystemExit(f"unknown client {client}")


if __name__ == "__main__":
    main()

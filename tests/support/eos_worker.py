"""An exactly-once consume-process-produce service in its own process, for the SIGKILL loop
(eos_killloop.py): `python eos_worker.py BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP TXN_ID [BATCH [PROCESS_MS]]`.

It is the loop of Kafka's exactly-once pattern with confluent-kafka (librdkafka): a transactional
producer (transactional.id TXN_ID, so a restart fences the previous incarnation and aborts the
transaction it left open) and a read_committed consumer subscribed to IN_TOPIC as a static member
of GROUP (group.instance.id TXN_ID: a restarted process takes its predecessor's place at once
instead of waiting for its session to time out). Each batch it consumes (at most BATCH records,
default 50) becomes one transaction:
every record is copied to the same partition of OUT_TOPIC ("processing", which takes PROCESS_MS
more, default 0, with the records sent and the transaction open: a kill then often lands inside
a transaction), the consumer's positions are added with send_offsets_to_transaction, and the
transaction is committed.

An abortable error aborts the transaction and rewinds the consumer to the group's committed
offsets; a retriable commit error retries the commit; anything else exits with status 3 (the
driver restarts the process, which is the recovery under test anyway). One JSON object per line on
stdout:

    {"event": "ready"}                      # init_transactions done, subscribed
    {"event": "committed", "records": 40}   # one transaction committed
    {"event": "aborted", "error": "..."}    # an abortable error: aborted and rewound
    {"event": "fatal", "error": "..."}      # exiting with status 3

SIGTERM ends the loop between transactions and closes the consumer.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

stop = False


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _on_term(*_: object) -> None:
    global stop
    stop = True


def rewind(consumer: Consumer) -> None:
    """Seek every assigned partition back to the group's committed offset (the start of the
    aborted transaction's input)."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.committed(assignment, 30):
        consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))


def process_batch(producer: Producer, consumer: Consumer, out_topic: str, batch: list, process_ms: int) -> None:
    """One transaction: the batch copied to OUT_TOPIC and the consumer's positions, committed."""
    producer.begin_transaction()
    for msg in batch:
        producer.produce(out_topic, key=msg.key(), value=msg.value(), partition=msg.partition())
    if process_ms:
        producer.flush(30)
        time.sleep(process_ms / 1000.0)
    positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
    while True:
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as exc:
            if exc.args[0].retriable():
                continue
            raise


def main(argv: list[str]) -> int:
    bootstrap, in_topic, out_topic, group, txn_id = argv[:5]
    batch_size = int(argv[5]) if len(argv) > 5 else 50
    process_ms = int(argv[6]) if len(argv) > 6 else 0
    signal.signal(signal.SIGTERM, _on_term)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 2,
                         "transaction.timeout.ms": 60000})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.instance.id": txn_id,
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                         "heartbeat.interval.ms": 500})
    try:
        producer.init_transactions(60)
        consumer.subscribe([in_topic])
        emit("ready")
        while not stop:
            batch = [m for m in consumer.consume(batch_size, 0.2) if not m.error()]
            if not batch:
                continue
            try:
                process_batch(producer, consumer, out_topic, batch, process_ms)
            except KafkaException as exc:
                error = exc.args[0]
                if not error.txn_requires_abort():
                    emit("fatal", error=str(error))
                    return 3
                producer.abort_transaction(30)
                rewind(consumer)
                emit("aborted", error=str(error))
                continue
            emit("committed", records=len(batch))
    except KafkaException as exc:  # init, abort or rewind failed (e.g. the broker went away)
        emit("fatal", error=str(exc.args[0]))
        return 3
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

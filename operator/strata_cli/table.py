"""`strata table`: a compacted topic materialized as a key -> latest value table.

The table-stream duality in one command: every event upserts its key, a tombstone (null
value) deletes it. Without `--output` the table is printed; with `--output FILE.sqlite` it is
written to SQLite (table `entities`: key, value, partition, offset, timestamp; keys and values
that are valid UTF-8 are stored as TEXT, anything else as BLOB). `--follow` keeps applying new
events until interrupted (SQLite is committed at least once a second).
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import click
import confluent_kafka
from rich.console import Console
from rich.table import Table

_QUIET_LIBRDKAFKA = {"log_level": 2}


@dataclass(frozen=True)
class Event:
    key: bytes
    value: bytes | None
    partition: int
    offset: int
    timestamp: int


def _text_or_bytes(data: bytes | None) -> str | bytes | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def events(bootstrap: str, topic: str, follow: bool, stop: list[bool]) -> Iterator[Event | None]:
    """Every keyed event from the beginning; up to the end offsets seen at start unless following.

    None marks a quiet moment (nothing arrived for a while): a sink's cue to flush.
    """
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"strata-table-{topic}",
                                         "enable.auto.commit": False, "enable.partition.eof": True,
                                         **_QUIET_LIBRDKAFKA})
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise click.ClickException(f"topic {topic!r} is not available: {info.error if info else 'unknown'}")
        partitions = sorted(info.partitions)
        ends = {p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=15)[1]
                for p in partitions}
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in partitions])
        pending = {p for p in partitions if ends[p] > 0}
        while not stop[0] and (follow or pending):
            batch = consumer.consume(1000, 0.5)
            if not batch:
                yield None
            for msg in batch:
                if msg.error():
                    if msg.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise click.ClickException(f"fetch failed: {msg.error()}")
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    pending.discard(msg.partition())
                if msg.key() is not None:
                    yield Event(msg.key(), msg.value(), msg.partition(), msg.offset(), msg.timestamp()[1])
    finally:
        consumer.close()


class SqliteTable:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS entities (key PRIMARY KEY, value, partition INTEGER, "
                        "offset INTEGER, timestamp INTEGER)")
        self._last_commit = time.monotonic()

    def apply(self, event: Event) -> None:
        key = _text_or_bytes(event.key)
        if event.value is None:
            self.db.execute("DELETE FROM entities WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO entities VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                            "value = excluded.value, partition = excluded.partition, offset = excluded.offset, "
                            "timestamp = excluded.timestamp",
                            (key, _text_or_bytes(event.value), event.partition, event.offset, event.timestamp))
        if time.monotonic() - self._last_commit >= 1.0:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        self.commit()
        self.db.close()


@click.command()
@click.option("--bootstrap", required=True, help="HOST:PORT of a broker.")
@click.option("--topic", required=True, help="A compacted (entity) topic.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write a SQLite file here.")
@click.option("--follow", is_flag=True, help="Keep applying new events until interrupted.")
def table(bootstrap: str, topic: str, output: str | None, follow: bool) -> None:
    """Materialize a compacted topic into a key -> latest value table."""
    stop = [False]

    def interrupted(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    err = Console(stderr=True)
    if output:
        sink = SqliteTable(output)
        count = 0
        try:
            for event in events(bootstrap, topic, follow, stop):
                if event is None:
                    sink.commit()
                    continue
                sink.apply(event)
                count += 1
        finally:
            sink.close()
        rows = sqlite3.connect(output).execute("SELECT COUNT(*) FROM entities").fetchone()[0]
        err.print(f"{count} event(s) applied; {rows} key(s) in {output}")
        return
    state: dict[bytes, Event] = {}
    for event in events(bootstrap, topic, follow, stop):
        if event is None:
            continue
        if follow:
            shown = _text_or_bytes(event.value)
            click.echo(f"{'delete' if event.value is None else 'upsert'} {_text_or_bytes(event.key)!s}"
                       + ("" if event.value is None else f" = {shown!s}"))
        if event.value is None:
            state.pop(event.key, None)
        else:
            state[event.key] = event
    if not follow:
        view = Table(title=f"{topic}: {len(state)} key(s)")
        for column in ("key", "value", "partition", "offset"):
            view.add_column(column)
        for key in sorted(state):
            e = state[key]
            view.add_row(str(_text_or_bytes(key)), str(_text_or_bytes(e.value)), str(e.partition), str(e.offset))
        Console(file=sys.stdout, width=200).print(view)

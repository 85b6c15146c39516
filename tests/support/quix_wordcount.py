"""A stateful word count with quixstreams, in its own process: `python quix_wordcount.py BOOTSTRAP
IN_TOPIC OUT_TOPIC GROUP GUARANTEE STATE_DIR`, GUARANTEE being `exactly-once` or `at-least-once`.

It runs under the interpreter of the quixstreams virtualenv (`make quixstreams`: quixstreams pins
an older confluent-kafka than the project, so it cannot share the project's venv); it imports
nothing of the project.

Each input record's value is a line of text (string). The line is split into words, the stream
is re-keyed by word (`group_by`: an internal repartition topic), and a stateful step (RocksDB,
backed by a compacted changelog topic) counts each word; every occurrence produces one output
record, key the word, value `{"word": w, "count": n}` (JSON), n being the word's running count.
In exactly-once mode each commit is one Kafka transaction over the repartition, changelog and
output topics and the consumer offsets.

The process uses a stable `transactional.id` and `group.instance.id` (both GROUP + "-app"), so
a restart after a SIGKILL fences the dead process's transaction and takes its place in the group
at once. SIGTERM stops it cleanly (quixstreams' own handler).
"""

from __future__ import annotations

import sys

from quixstreams import Application  # type: ignore[import-not-found]


def count_word(word: str, state) -> dict:  # noqa: ANN001 - quixstreams' State
    """The word's running count, kept in the state store under the word's key."""
    n = (state.get("count") or 0) + 1
    state.set("count", n)
    return {"word": word, "count": n}


def main(argv: list[str]) -> int:
    bootstrap, in_topic, out_topic, group, guarantee, state_dir = argv
    instance = f"{group}-app"
    app = Application(
        broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
        processing_guarantee=guarantee, state_dir=state_dir, commit_interval=0.3, loglevel="INFO",
        consumer_extra_config={"group.instance.id": instance, "session.timeout.ms": 10000},
        producer_extra_config={"transactional.id": instance} if guarantee == "exactly-once" else {},
    )
    source = app.topic(in_topic, value_deserializer="str")
    sink = app.topic(out_topic, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda line: line.split(), expand=True)
    sdf = sdf.group_by(lambda word: word, name="word")
    sdf = sdf.apply(count_word, stateful=True)
    sdf.to_topic(sink)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Produce throughput on a schema-checked topic against an unchecked one, in the same run.

    python bench/schema_check.py [--records 50000] [--rounds 3] [--value-bytes 1024] [--compression none]

Starts its own broker (schema.registry.principal set) and `strata-registry` on loopback, registers an
Avro schema through confluent-kafka's AvroSerializer, serializes records of about --value-bytes, then
produces the same records alternately to `checked` (strata.value.schema.validation=true) and `plain`,
--rounds times each, and prints records/s and MB/s per round, the medians and their ratio (the
issue's bar: checked >= 0.9x plain).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import confluent_kafka
from _common import HOST, create_topic, free_port, strata_broker, wait_for_port
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = json.dumps({"type": "record", "name": "Event", "namespace": "bench",
                     "fields": [{"name": "id", "type": "long"}, {"name": "body", "type": "string"}]})


def produce(bootstrap: str, topic: str, values: list[bytes], records: int, compression: str) -> float:
    """Seconds to produce `records` values (acks=all, all delivered, every delivery checked)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1 << 20,
                                         "acks": "all", "compression.type": compression,
                                         "queue.buffering.max.kbytes": 256 * 1024})
    failed: list[str] = []

    def on_delivery(err, _msg):  # type: ignore[no-untyped-def]
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value=values[i % len(values)], on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(300) != 0:
        raise RuntimeError(f"{topic}: records left undelivered")
    elapsed = time.monotonic() - started
    if failed:
        raise RuntimeError(f"{topic}: {len(failed)} records refused, e.g. {failed[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--compression", default="none", choices=["none", "lz4", "zstd", "snappy", "gzip"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="strata-bench-schema-") as work:
        port, registry_port = free_port(), free_port()
        broker = strata_broker(Path(work) / "data", port, Path(work) / "broker.log",
                               "schema.registry.principal=User:ANONYMOUS")
        broker.start()
        registry = None
        try:
            with open(Path(work) / "registry.log", "ab") as log:
                registry = subprocess.Popen([sys.executable, "-m", "strata_registry.cli", "--bootstrap",
                                             broker.bootstrap, "--listen", f"{HOST}:{registry_port}",
                                             "--log-level", "WARNING"],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            wait_for_port(registry_port, 60, registry)
            url = f"http://{HOST}:{registry_port}"
            deadline = time.monotonic() + 60
            while not json.load(urllib.request.urlopen(f"{url}/v1/strata/leader", timeout=5))["leader"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the registry did not take the lead")
                time.sleep(0.2)
            create_topic(broker.bootstrap, "checked", 1, config={"strata.value.schema.validation": "true"})
            create_topic(broker.bootstrap, "plain", 1)
            serializer = AvroSerializer(SchemaRegistryClient({"url": url}), SCHEMA)
            body = "x" * max(0, args.value_bytes - 16)
            values = [serializer({"id": i, "body": body}, SerializationContext("checked", MessageField.VALUE))
                      for i in range(64)]
            size = sum(map(len, values)) / len(values)
            produce(broker.bootstrap, "plain", values, 2000, args.compression)  # warm-up, both topics
            produce(broker.bootstrap, "checked", values, 2000, args.compression)
            rates: dict[str, list[float]] = {"plain": [], "checked": []}
            print(f"{args.records} serialized records of {size:.0f} bytes per round, compression "
                  f"{args.compression}, acks=all, one partition each")
            for r in range(args.rounds):
                for topic in ("plain", "checked") if r % 2 == 0 else ("checked", "plain"):
                    seconds = produce(broker.bootstrap, topic, values, args.records, args.compression)
                    rate = args.records / seconds
                    rates[topic].append(rate)
                    print(f"  round {r + 1} {topic:8s} {rate:10,.0f} records/s {rate * size / 1e6:8.1f} MB/s")
            plain, checked = statistics.median(rates["plain"]), statistics.median(rates["checked"])
            print(f"median: plain {plain:,.0f} records/s, checked {checked:,.0f} records/s, "
                  f"checked/plain = {checked / plain:.2f}x (bar: >= 0.90x)")
        finally:
            if registry is not None:
                registry.terminate()
                registry.wait(20)
            broker.stop()


if __name__ == "__main__":
    main()

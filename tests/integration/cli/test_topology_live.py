"""`strata topology` from a live workload: a real broker with SASL/SCRAM principals, real clients
(confluent-kafka), two teams and four services. `billing` also writes `orders`, which it does not
declare (the authorizer is off, so nothing stops it); `ledger` declares that it reads `invoices`
but never runs. The broker's own usage files (metering snapshots every 500 ms and at shutdown) are
the only source of traffic; the JSON must list exactly the expected edges, with byte counts
matching what the clients sent and received, and exactly the expected findings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
import pytest
import secutil
from brokerproc import BrokerProcess
from confluent_kafka.admin import AdminClient, NewTopic
from topology_scenario import MANIFESTS

VALUE = 4096  # large values keep the record batch framing to a few percent
USERS = {"shop.checkout": "pw-checkout", "shop.fulfilment": "pw-fulfilment", "finance.billing": "pw-billing",
         "finance.ledger": "pw-ledger"}
ORDERS, INVOICES, STRAY = 120, 40, 10  # records: checkout -> orders, billing -> invoices, billing -> orders


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    creds = tmp_path / "users.json"
    secutil.write_credentials(creds, {**USERS, "intruder": "pw-intruder"})  # intruder: no Microservice
    proc = BrokerProcess(tmp_path / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "num.partitions": "1",
        "metering.snapshot.interval.ms": "500", "metering.sample.interval.ms": "200"}).start()
    yield proc
    if proc.alive():
        proc.kill()


def conf(broker: BrokerProcess, user: str, **extra: object) -> dict[str, object]:
    auth = secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", user, USERS[user])
    return {**secutil.confluent(broker.address("SASL_PLAINTEXT"), auth), "client.id": user.split(".")[1], **extra}


def produce(broker: BrokerProcess, user: str, topic: str, n: int, start: int = 0) -> int:
    producer = confluent_kafka.Producer(conf(broker, user, **{"linger.ms": 20}))
    for i in range(start, start + n):
        producer.produce(topic, key=str(i).encode(), value=bytes([65 + i % 26]) * VALUE)
        producer.poll(0)
    assert producer.flush(60) == 0
    return n * VALUE


def consume(broker: BrokerProcess, user: str, topic: str, expected: int) -> int:
    """Read `expected` records as a member of the service's consumer group, commit, leave; the bytes read."""
    consumer = confluent_kafka.Consumer(conf(broker, user, **{
        "group.id": user, "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 90
    try:
        while got < expected * VALUE and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            got += len(msg.value() or b"")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert got == expected * VALUE
    return got


def test_topology_of_a_live_workload(broker: BrokerProcess, tmp_path: Path) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic("orders", 1, 1), NewTopic("invoices", 1, 1)]).values():
        future.result(30)
    sent = {
        ("checkout", "orders"): produce(broker, "shop.checkout", "orders", ORDERS),
        ("billing", "invoices"): produce(broker, "finance.billing", "invoices", INVOICES),
        ("billing", "orders"): produce(broker, "finance.billing", "orders", STRAY, start=ORDERS),  # undeclared
    }
    received = {
        ("fulfilment", "orders"): consume(broker, "shop.fulfilment", "orders", ORDERS + STRAY),
        ("billing", "orders"): consume(broker, "finance.billing", "orders", ORDERS + STRAY),
    }
    time.sleep(1.5)  # a few snapshots with the committed offsets (lag records)
    broker.stop()  # and the last snapshot, on shutdown

    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(MANIFESTS)
    today = datetime.now(UTC).date().isoformat()
    done = subprocess.run([sys.executable, "-m", "strata_cli", "topology", "--from", today, "--to", today,
                           "-f", str(manifests), "--usage", str(broker.data_dir / "usage"), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    doc = json.loads(done.stdout)
    edges = {e["id"]: e for e in doc["edges"]}
    assert set(edges) == {
        "write:service:shop.checkout->orders", "write:service:finance.billing->orders",
        "write:service:finance.billing->invoices", "read:service:shop.fulfilment->orders",
        "read:service:finance.billing->orders", "read:service:finance.ledger->invoices"}
    records = {("checkout", "orders"): ORDERS, ("billing", "invoices"): INVOICES, ("billing", "orders"): STRAY}
    for (service, topic), nbytes in sent.items():
        namespace = "shop" if service == "checkout" else "finance"
        edge = edges[f"write:service:{namespace}.{service}->{topic}"]
        # Stored record batches: the values plus keys, record headers and batch headers.
        assert nbytes <= edge["bytes"] <= nbytes * 1.03, (service, topic, edge["bytes"], nbytes)
        assert edge["records"] == records[(service, topic)] and edge["observed"]
    for (service, topic), nbytes in received.items():
        namespace = "shop" if service == "fulfilment" else "finance"
        edge = edges[f"read:service:{namespace}.{service}->{topic}"]
        assert nbytes <= edge["bytes"] <= nbytes * 1.03, (service, topic, edge["bytes"], nbytes)
        assert edge["records"] == ORDERS + STRAY and edge["declared"]
        # The group committed everything it read: the last lag snapshot is 0.
        assert [(lag["group"], lag["last"]) for lag in edge["lag"]] == [(f"{namespace}.{service}", 0)]
    idle = edges["read:service:finance.ledger->invoices"]
    assert (idle["observed"], idle["bytes"], idle["declared"]) == (False, 0, True)
    assert edges["write:service:finance.billing->orders"]["declared"] is False

    findings = [(f["kind"], f["subject"]) for f in doc["findings"]]
    assert findings == [
        ("undeclared-writer", "write:service:finance.billing->orders"),
        ("multiple-writers", "topic:orders"),
        ("idle-declared-edge", "read:service:finance.ledger->invoices"),
        ("unread-topic", "topic:invoices"),
    ]


def test_a_consumer_falling_behind_is_found(broker: BrokerProcess, tmp_path: Path) -> None:
    """fulfilment reads and commits a little, then stops while checkout keeps writing through several
    snapshots: its group's lag grows from one `group` record to the next -> a growing-lag finding;
    billing, which has read everything, has none. An unknown principal's reads are unowned traffic."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic("orders", 1, 1), NewTopic("invoices", 1, 1)]).values():
        future.result(30)
    produce(broker, "shop.checkout", "orders", 20)
    consume(broker, "shop.fulfilment", "orders", 20)
    produce(broker, "finance.billing", "invoices", 5)
    for step in range(6):  # ~3 s: several 500 ms snapshots, each with a larger lag
        produce(broker, "shop.checkout", "orders", 10, start=20 + 10 * step)
        time.sleep(0.6)
    consume(broker, "finance.billing", "orders", 80)
    auth = secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", "intruder", "pw-intruder")
    sneak = confluent_kafka.Consumer({**secutil.confluent(broker.address("SASL_PLAINTEXT"), auth),
                                      "group.id": "sneak", "client.id": "sneak", "enable.auto.commit": False})
    sneak.assign([confluent_kafka.TopicPartition("invoices", 0, confluent_kafka.OFFSET_BEGINNING)])
    read = 0
    deadline = time.monotonic() + 60
    while read < 5 and time.monotonic() < deadline:
        msg = sneak.poll(1.0)
        if msg is not None and not msg.error():
            read += 1
    sneak.close()
    assert read == 5
    time.sleep(1.2)
    broker.stop()

    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(MANIFESTS)
    today = datetime.now(UTC).date().isoformat()
    done = subprocess.run([sys.executable, "-m", "strata_cli", "topology", "--from", today, "--to", today,
                           "-f", str(manifests), "--usage", str(broker.data_dir / "usage"), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    edges = {e["id"]: e for e in doc["edges"]}
    lag = edges["read:service:shop.fulfilment->orders"]["lag"]
    assert len(lag) == 1 and lag[0]["group"] == "shop.fulfilment" and lag[0]["last"] == 60
    assert lag[0]["first"] < lag[0]["last"] and lag[0]["samples"] >= 3
    assert [(x["group"], x["last"]) for x in edges["read:service:finance.billing->orders"]["lag"]] == \
        [("finance.billing", 0)]
    findings = [(f["kind"], f["subject"]) for f in doc["findings"]]
    assert findings == [
        ("idle-declared-edge", "read:service:finance.ledger->invoices"),
        ("unowned-traffic", "principal:User:intruder"),
        ("growing-lag", "read:service:shop.fulfilment->orders"),
    ]

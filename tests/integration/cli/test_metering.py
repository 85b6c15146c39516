"""Metering end to end: real clients -> broker usage records -> `strata cost report`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from kafkaclients import METERED_VALUE as VALUE
from kafkaclients import consume_confluent, create_topic, produce_as
from s3server import CREDENTIALS
from strata_operator.billing.usage import read_dir

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def usage_totals(usage_dir: Path) -> dict[tuple[str, str | None], tuple[int, int]]:
    out: dict[tuple[str, str | None], tuple[int, int]] = {}
    for record in read_dir(usage_dir).records:
        if record.kind == "client" and record.topic:
            key = (record.client_id or "", record.topic)
            produced, fetched = out.get(key, (0, 0))
            out[key] = (produced + record.produced_bytes, fetched + record.fetched_bytes)
    return out


def test_usage_matches_what_clients_sent_and_received_across_a_restart(broker_factory, s3):
    settings = s3.broker_settings(**{"metering.snapshot.interval.ms": "500", "metering.sample.interval.ms": "200",
                                     "tiered.upload.interval.ms": "1000"})
    broker = broker_factory(settings, env=CREDENTIALS)
    create_topic(broker.bootstrap, "order-events", 3, {"retention.ms": "-1"})
    create_topic(broker.bootstrap, "shipment-events", 1, {"retention.ms": "-1"})
    sent_orders = produce_as(broker.bootstrap, "order-service", "order-events", 400)
    sent_shipments = produce_as(broker.bootstrap, "shipping-service", "shipment-events", 150)
    # A restart in the middle of the period: the usage before it must be neither lost nor counted twice.
    broker.stop()
    broker.start()
    sent_orders += produce_as(broker.bootstrap, "order-service", "order-events", 300)
    received = consume_confluent(broker.bootstrap, "order-events", 3, expected=700, timeout=60,
                                 **{"client.id": "shipping-service"})
    received_bytes = sum(len(r.value) for r in received)
    assert received_bytes == 700 * VALUE
    time.sleep(1.5)
    broker.stop()  # the final snapshot is written on shutdown

    usage_dir = broker.data_dir / "usage"
    totals = usage_totals(usage_dir)
    produced_orders, fetched_orders = totals[("order-service", "order-events")]
    assert abs(produced_orders - sent_orders) / sent_orders < 0.01
    assert abs(totals[("shipping-service", "shipment-events")][0] - sent_shipments) / sent_shipments < 0.01
    assert abs(totals[("shipping-service", "order-events")][1] - received_bytes) / received_bytes < 0.01
    # The bucket holds the same records (uploaded), and the reader counts each once.
    keys = [k for k in s3.objects() if "/usage/" in k and k.endswith(".jsonl")]
    assert len(keys) == 2, keys  # one file per broker process
    # The report: team rows sum exactly to the total, and the bytes are the clients' bytes.
    today = datetime.now(UTC).date()
    done = subprocess.run([sys.executable, "-m", "strata_cli", "cost", "report",
                           "--from", str(today), "--to", str(today + timedelta(days=1)), "--format", "json",
                           "--usage", str(usage_dir), "-f", str(EXAMPLES)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    teams = {name: entry for step in report["data"] for name, entry in step.items()}
    assert {"orders", "shipping"} <= set(teams)
    total = sum(Decimal(entry["x_totalCost"]) for step in report["data"] for entry in step.values())
    assert total == Decimal(report["x_strata"]["totalCost"])
    produced_by_orders = sum(step["orders"]["x_producedBytes"] for step in report["data"] if "orders" in step)
    assert abs(produced_by_orders - sent_orders) / sent_orders < 0.01
    fetched_by_shipping = sum(step["shipping"]["x_fetchedBytes"] for step in report["data"] if "shipping" in step)
    assert abs(fetched_by_shipping - received_bytes) / received_bytes < 0.01

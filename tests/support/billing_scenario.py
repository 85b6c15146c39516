"""The hand-computed billing day of test_billing_golden.py (its expected figures are worked out in
the comment there): a price file, the Topic and Microservice manifests that own the traffic, and one
broker's usage records for 2025-03-01. Also written to disk for the `strata cost report` tests."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

GIB = 1 << 30
DAY = date(2025, 3, 1)

PRICE_FILE = """
hours_per_month: 730
prices:
  ingress_gib: 0.01
  egress_gib: 0.02
  disk_gib_month: 0.08
  s3_storage_gib_month: 0.023
  s3_put_per_1000: 0.005
  s3_get_per_1000: 0.0004
  vcpu_hour: 0.03
  ram_gib_hour: 0.004
platform: {operator_cpu: 0.5, operator_memory_gib: 0, broker_cpu: 2, broker_memory_gib: 8}
fixed_monthly: {monitoring: 73}
tax: {policy: proportional, weights: {payments: 3, data: 1}}
"""

MANIFESTS = """
apiVersion: strata.dev/v1alpha1
kind: Topic
metadata: {name: orders, namespace: shop}
spec: {brokerRef: {name: events}, team: payments, partitions: 3}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: order-service, namespace: shop}
spec: {brokerRef: {name: events}, team: payments, image: shop/orders:1, produces: [orders]}
---
apiVersion: strata.dev/v1alpha1
kind: Microservice
metadata: {name: analytics, namespace: data}
spec: {brokerRef: {name: events}, team: data, image: data/analytics:1, consumes: [orders]}
"""


def _rec(id_: str, kind: str, **fields: object) -> dict[str, object]:
    return {"v": 1, "id": id_, "kind": kind, "cluster": "events", "broker": "0",
            "window_start": "2025-03-01T00:00:00Z", "window_end": "2025-03-01T12:00:00Z", **fields}


def scenario_records() -> list[dict[str, object]]:
    """The day's usage records, as a broker writes them (one JSON object per record)."""
    return [
        _rec("r1", "client", principal="User:shop.order-service", client_id="orders-1", topic="orders",
             produced_bytes=100 * GIB, produced_records=1000, produce_requests=10),
        _rec("r2", "client", principal="User:ANONYMOUS", client_id="rdkafka", topic="orders",
             produced_bytes=10 * GIB),
        # principal unknown before authentication: the client id names the service
        _rec("r3", "client", principal="User:ANONYMOUS", client_id="analytics-7f9c", topic="orders",
             fetched_bytes=150 * GIB, fetched_records=1500, fetch_requests=40),
        _rec("r4", "topic", topic="orders", hot_byte_hours=730 * GIB, cold_byte_hours=73000 * GIB),
        _rec("r5", "s3", op="PUT", topic="orders", requests=20000, bytes=5 * GIB),
        _rec("r6", "s3", op="GET", topic="orders", principal="User:data.analytics", requests=50000, bytes=0),
        _rec("r7", "s3", op="PUT", requests=2000, bytes=1000),
        _rec("r8", "broker", uptime_seconds=86400, connection_seconds=7200,
             disk_capacity_byte_hours=2190 * GIB),
    ]


def write_scenario(root: Path) -> tuple[Path, Path, Path]:
    """The scenario under `root`: (usage dir, price file, manifests dir)."""
    (root / "usage").mkdir(parents=True)
    usage_file = root / "usage" / "0-1740787200.jsonl"
    usage_file.write_text("".join(json.dumps(r) + "\n" for r in scenario_records()))
    price_file = root / "prices.yaml"
    price_file.write_text(PRICE_FILE)
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "shop.yaml").write_text(MANIFESTS)
    return usage_file.parent, price_file, manifests

"""The usage-record format: what the broker's metering writes and the cost report reads.

Specified in docs/billing.md ("Usage records"): one JSON object per line, `v` = FORMAT_VERSION,
a globally unique `id`, a `kind` (`client`, `topic`, `s3`, `broker`, `group`), the window
`[window_start, window_end)` in UTC, and the counters of that window only (deltas, never running
totals). Files live under `[<prefix>/]clusters/<cluster>/usage/<yyyy>/<mm>/<dd>/<broker>-<epoch>.jsonl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from .layout import usage_root

FORMAT_VERSION = 1
KINDS = ("client", "topic", "s3", "broker", "group")
S3_OPS = ("PUT", "GET", "LIST", "DELETE")

# Fields per kind: name -> type ("str", "str?", "int", "dec"). Counters default to 0.
COMMON_FIELDS = {"v": "int", "id": "str", "kind": "str", "cluster": "str", "broker": "str",
           "window_start": "time", "window_end": "time"}
KIND_FIELDS: dict[str, dict[str, str]] = {
    "client": {"principal": "str", "client_id": "str", "topic": "str?",
               "produced_bytes": "int", "produced_records": "int", "produce_requests": "int",
               "fetched_bytes": "int", "fetched_records": "int", "fetch_requests": "int",
               "other_requests": "int"},
    "topic": {"topic": "str", "hot_byte_hours": "dec", "cold_byte_hours": "dec"},
    "s3": {"op": "str", "topic": "str?", "principal": "str?", "client_id": "str?",
           "requests": "int", "bytes": "int"},
    "broker": {"connection_seconds": "dec", "uptime_seconds": "dec",
               "requested_cpu_core_hours": "dec", "requested_memory_byte_hours": "dec",
               "disk_capacity_byte_hours": "dec"},
    "group": {"group": "str", "topic": "str", "client_id": "str?", "lag": "int"},
}
REQUIRED_FIELDS = {"client": ("principal", "client_id"), "topic": ("topic",), "s3": ("op",), "broker": (),
             "group": ("group", "topic")}


@dataclass(frozen=True)
class UsageRecord:
    """One usage record. Fields that do not apply to `kind` keep their zero/None default."""

    id: str
    kind: str
    cluster: str
    broker: str
    window_start: datetime
    window_end: datetime
    v: int = FORMAT_VERSION
    principal: str | None = None
    client_id: str | None = None
    topic: str | None = None
    produced_bytes: int = 0
    produced_records: int = 0
    produce_requests: int = 0
    fetched_bytes: int = 0
    fetched_records: int = 0
    fetch_requests: int = 0
    other_requests: int = 0
    hot_byte_hours: Decimal = Decimal(0)
    cold_byte_hours: Decimal = Decimal(0)
    op: str | None = None
    requests: int = 0
    bytes: int = 0
    connection_seconds: Decimal = Decimal(0)
    uptime_seconds: Decimal = Decimal(0)
    requested_cpu_core_hours: Decimal = Decimal(0)
    requested_memory_byte_hours: Decimal = Decimal(0)
    disk_capacity_byte_hours: Decimal = Decimal(0)
    group: str | None = None
    lag: int = 0

    @property
    def day(self) -> date:
        """The UTC day the record is billed to: the day its window starts."""
        return self.window_start.astimezone(UTC).date()

    def to_json(self) -> str:
        """The record as one line of the usage format (only the fields its kind defines)."""
        out: dict[str, Any] = {}
        names = list(COMMON_FIELDS) + list(KIND_FIELDS[self.kind])
        for name in names:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            elif isinstance(value, Decimal):
                value = int(value) if value == value.to_integral_value() else float(value)
            if value is None:
                continue
            out[name] = value
        return json.dumps(out, separators=(",", ":"))


def usage_prefix(cluster: str, prefix: str = "") -> str:
    """The key prefix of a cluster's usage files in the bucket (layout.usage_root)."""
    return usage_root(prefix, cluster)

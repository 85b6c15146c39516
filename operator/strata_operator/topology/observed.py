"""What each Microservice was observed to produce and consume lately: the shape of a Microservice's
`status.observed`, from usage records (pure; the operator reads the records and patches the status).

    {"since": "...Z", "until": "...Z",
     "produces": [{"topic": "orders", "bytes": 123, "records": 4, "declared": true}, ...],
     "consumes": [{"topic": "orders", "bytes": 456, "records": 8, "declared": true}, ...]}

A record counts when its window ends after `now - hours` and starts before `now`. Declared topics
without traffic are listed with 0 bytes (a stale permission shows); observed topics the service
does not declare are listed with `declared: false`. Records are matched to services as everywhere
else (`Ownership.resolve`); internal topics (`__*`) are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..billing.ownership import Ownership
from ..billing.usage import UsageRecord


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observed_by_service(records: Iterable[UsageRecord], owners: Ownership, now: datetime,
                        hours: int = 24) -> dict[str, dict[str, Any]]:
    """`<namespace>.<name>` -> that Microservice's observed produce/consume over the last `hours`."""
    since = now - timedelta(hours=hours)
    # (service, "produces"|"consumes", topic) -> [bytes, records]
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    resolved: dict[tuple[str | None, str | None], str | None] = {}
    for r in records:
        if r.kind != "client" or not r.topic or r.topic.startswith("__"):
            continue
        if r.window_end <= since or r.window_start >= now:
            continue
        who = (r.principal, r.client_id)
        if who not in resolved:
            service = owners.resolve(r.principal, r.client_id)
            resolved[who] = service.qualified if service else None
        name = resolved[who]
        if name is None:
            continue
        if r.produce_requests or r.produced_bytes:
            entry = sums[(name, "produces", r.topic)]
            entry[0] += r.produced_bytes
            entry[1] += r.produced_records
        if r.fetch_requests or r.fetched_bytes:
            entry = sums[(name, "consumes", r.topic)]
            entry[0] += r.fetched_bytes
            entry[1] += r.fetched_records
    out: dict[str, dict[str, Any]] = {}
    for service in owners.services:
        declared = {"produces": set(service.produces), "consumes": set(service.consumes)}
        status: dict[str, Any] = {"since": _iso(since), "until": _iso(now)}
        for direction in ("produces", "consumes"):
            topics = declared[direction] | {t for (s, d, t) in sums if s == service.qualified and d == direction}
            status[direction] = [
                {"topic": topic, "bytes": sums.get((service.qualified, direction, topic), [0, 0])[0],
                 "records": sums.get((service.qualified, direction, topic), [0, 0])[1],
                 "declared": topic in declared[direction]}
                for topic in sorted(topics)]
        out[service.qualified] = status
    return out

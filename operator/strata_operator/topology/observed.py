"""What each Microservice was observed to produce and consume lately: the shape of a Microservice's
`status.observed`, from usage records (pure; handlers/observed.py reads the records and the
Microservice handler patches the status).

    {"window": "24h",
     "topics": [{"topic": "orders", "direction": "produce", "bytes": 123, "records": 4, "declared": true,
                 "lastSeen": "2026-12-03T10:15:00Z"},
                {"topic": "orders", "direction": "consume", "bytes": 0, "records": 0, "declared": true}, ...]}

A record counts when its window ends after `now - hours` and starts before `now`. Declared topics
without traffic are listed with 0 bytes (a stale permission shows); observed topics the service
does not declare are listed with `declared: false`. `lastSeen` is the end of the latest window with
a request among all the records given (possibly before the counted span: traffic that stopped), and
is absent when there is none. Nothing in the result moves with `now` alone, so a status patched with
it changes only when the traffic does. Records are matched to services as everywhere else
(`Ownership.resolve`); internal topics (`__*`) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..billing.ownership import Ownership
from ..billing.usage import UsageRecord

DIRECTIONS = (("produce", "produces"), ("consume", "consumes"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observed_by_service(records: Iterable[UsageRecord], owners: Ownership, now: datetime,
                        hours: int = 24) -> dict[str, dict[str, Any]]:
    """`<namespace>.<name>` -> that Microservice's observed produce/consume over the last `hours`."""
    since = now - timedelta(hours=hours)
    # (service, "produce"|"consume", topic) -> [bytes, records, last window end with a request or None]
    sums: dict[tuple[str, str, str], list[Any]] = {}
    resolved: dict[tuple[str | None, str | None], str | None] = {}
    for r in records:
        if r.kind != "client" or not r.topic or r.topic.startswith("__"):
            continue
        who = (r.principal, r.client_id)
        if who not in resolved:
            service = owners.resolve(r.principal, r.client_id)
            resolved[who] = service.qualified if service else None
        name = resolved[who]
        if name is None:
            continue
        counted = r.window_end > since and r.window_start < now
        for direction, requests, nbytes, nrecords in (
                ("produce", r.produce_requests, r.produced_bytes, r.produced_records),
                ("consume", r.fetch_requests, r.fetched_bytes, r.fetched_records)):
            if not (requests or nbytes):
                continue
            entry = sums.get((name, direction, r.topic))
            if entry is None:
                entry = sums[(name, direction, r.topic)] = [0, 0, None, False]
            if counted:
                entry[0] += nbytes
                entry[1] += nrecords
                entry[3] = True
            if entry[2] is None or r.window_end > entry[2]:
                entry[2] = r.window_end
    out: dict[str, dict[str, Any]] = {}
    for service in owners.services:
        topics: list[dict[str, Any]] = []
        for direction, field in DIRECTIONS:
            declared = set(getattr(service, field))
            seen = {t for (s, d, t), e in sums.items() if s == service.qualified and d == direction and e[3]}
            for topic in sorted(declared | seen):
                entry = sums.get((service.qualified, direction, topic), [0, 0, None, False])
                item: dict[str, Any] = {"topic": topic, "direction": direction, "bytes": entry[0],
                                        "records": entry[1], "declared": topic in declared}
                if entry[2] is not None:
                    item["lastSeen"] = _iso(entry[2])
                topics.append(item)
        out[service.qualified] = {"window": f"{hours}h", "topics": topics}
    return out

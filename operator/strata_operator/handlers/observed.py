"""A Microservice's `status.observed`: what the brokers' metering saw it produce and consume over the last
day (topology/observed.py computes it; the Microservice handler patches it).

Usage records come from where the cost report reads them: the usage source of the broker's first
CostReport (by namespace and name; its `spec.usageSource` over the broker's tieredStorage), else the
EventBroker's tieredStorage bucket and cluster.id. A broker with neither has no observed status.

One shared read per broker, not one per Microservice: the first Microservice reconciled after
`max_age` seconds lists the CostReports, Topics and Microservices and the
usage files of the last days, and computes every service's status at once; the others take theirs
from that result (while a refresh is under way, from the previous one: a slow bucket holds up no
reconcile but the first). Files are fetched again only when their size changed (the brokers append to a
day's file and upload it again), so a refresh costs one LIST per day plus the files that grew.
A refresh that fails (bucket or API server unreachable) is logged and keeps the previous result.

Setting (environment, read at import):

  STRATA_OPERATOR_OBSERVED_INTERVAL  seconds between two reads of a broker's usage, default 300; never
                                     less than the reconcile interval (the counts move with the brokers'
                                     metering snapshots and uploads anyway, a minute or more apart)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import costreports, logic
from ..billing import BillingError, usage
from ..billing.usage import UsageRecord
from ..topology.observed import observed_by_service
from .common import kube
from .costreport import _list_everywhere
from .settings import SETTINGS

log = logging.getLogger(__name__)

HOURS = 24  # the span of status.observed
INTERVAL = float(os.environ.get("STRATA_OPERATOR_OBSERVED_INTERVAL", "300"))


@dataclass
class BrokerUsage:
    """One broker's usage records as last read, and every service's observed status from them."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    at: float | None = None  # time.monotonic() of the last refresh (successful or not)
    source: costreports.UsageSource | None = None
    files: dict[str, tuple[int, list[UsageRecord]]] = field(default_factory=dict)  # key -> (size, client records)
    result: dict[str, dict[str, Any]] | None = None  # `<namespace>.<name>` -> status.observed
    refreshes: int = 0  # refreshes attempted (the once-per-interval promise is checked against it)
    fetched: int = 0  # files fetched from the bucket


_brokers: dict[tuple[str, str], BrokerUsage] = {}


async def observed_status(body: Any, broker: dict[str, Any], max_age: float | None = None) -> dict[str, Any] | None:
    """This Microservice's `status.observed` from its broker's shared usage read (refreshed when older
    than `max_age`, default STRATA_OPERATOR_OBSERVED_INTERVAL but at least the reconcile interval);
    None when there is none to show (no usage source, or the service is newer than the last read)."""
    md = body["metadata"]
    key = logic.broker_key(body)
    entry = _brokers.setdefault(key, BrokerUsage())
    age = max(SETTINGS.interval, INTERVAL) if max_age is None else max_age
    if entry.lock.locked() and entry.result is not None:
        return entry.result.get(f"{md['namespace']}.{md['name']}")  # a refresh is under way: the last result
    async with entry.lock:
        if entry.at is None or time.monotonic() - entry.at >= age:
            entry.at = time.monotonic()
            entry.refreshes += 1
            try:
                await _refresh(entry, key, broker, md["namespace"])
            except costreports.Problem as exc:
                quiet = exc.reason == "NoUsageSource"  # an external broker without a CostReport: nothing to show
                log.log(logging.DEBUG if quiet else logging.WARNING,
                        "observed traffic of broker %s/%s not refreshed: %s", *key, exc.message)
                if exc.reason in ("NoUsageSource", "OwnershipInvalid"):
                    entry.result = None
            except Exception as exc:  # the API server or the bucket: a status detail, never a failed reconcile
                log.warning("observed traffic of broker %s/%s not refreshed: %s", *key, exc)
    if entry.result is None:
        return None
    return entry.result.get(f"{md['namespace']}.{md['name']}")


async def _refresh(entry: BrokerUsage, key: tuple[str, str], broker: dict[str, Any], namespace: str) -> None:
    scope = {namespace, key[0]}
    reports = sorted((r for r in await _list_everywhere("CostReport", scope) if _of_broker(r, key)),
                     key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"]))
    holder = reports[0] if reports else {"metadata": {"namespace": key[0], "name": key[1]}, "spec": {}}
    source = costreports.usage_source(holder, broker)
    secret = await kube().get("v1", "Secret", source.secret.namespace, source.secret.name) if source.secret else None
    creds = costreports.credentials(source.secret, secret)
    owners = costreports.ownership_of(key, await _list_everywhere("Topic", scope),
                                      await _list_everywhere("Microservice", scope))
    if source != entry.source:
        entry.files.clear()
        entry.source = source
    now = datetime.now(tz=UTC)
    fetched = entry.fetched
    await _read_new_files(entry, source, creds, now)
    records = [r for _, recs in entry.files.values() for r in recs]
    entry.result = observed_by_service(records, owners, now, HOURS)
    log.info("observed traffic of broker %s/%s: read %s (%d usage file(s), %d fetched), %d service(s)", *key,
             source.uri(usage.usage_prefix(source.cluster, source.prefix)), len(entry.files), entry.fetched - fetched,
             len(entry.result))


def _of_broker(item: dict[str, Any], key: tuple[str, str]) -> bool:
    try:
        return not item["metadata"].get("deletionTimestamp") and logic.broker_key(item) == key
    except KeyError:
        return False


async def _read_new_files(entry: BrokerUsage, source: costreports.UsageSource, creds: dict[str, str],
                          now: datetime) -> None:
    """Bring `entry.files` up to the bucket: the usage files of the last day (with a day's slack on each
    side, as files are named by the day they were written), fetching only new or grown ones."""
    start = (now - timedelta(hours=HOURS)).date()
    listed: dict[str, int] = {}
    try:
        async with costreports._client(source, creds) as client:
            for key_prefix in usage.day_prefixes(source.cluster, start, now.date() + timedelta(days=1), source.prefix):
                paginator = client.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=source.bucket, Prefix=key_prefix):
                    listed.update((o["Key"], int(o["Size"])) for o in page.get("Contents", [])
                                  if o["Key"].endswith(".jsonl"))
            for key in sorted(listed):
                if key in entry.files and entry.files[key][0] == listed[key]:
                    continue
                response = await client.get_object(Bucket=source.bucket, Key=key)
                async with response["Body"] as stream:
                    body = await stream.read()
                entry.fetched += 1
                try:
                    parsed = usage.read_lines([(source.uri(key), body.decode("utf-8", errors="replace"))])
                except BillingError as exc:
                    log.warning("observed traffic: %s", exc)
                    parsed = usage.UsageSet()
                entry.files[key] = (len(body), [r for r in parsed.records if r.kind == "client"])
    except Exception as exc:
        where = source.uri(usage.usage_prefix(source.cluster, source.prefix))
        raise costreports.Problem("BucketUnavailable", f"cannot read usage from {where}: {exc}") from None
    for key in set(entry.files) - set(listed):  # days that left the span
        del entry.files[key]


def forget() -> None:
    """Drop every broker's cached read (tests; a restarted operator starts empty anyway)."""
    _brokers.clear()

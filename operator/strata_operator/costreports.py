"""CostReport: the billing core (`billing/`) run by the operator on a schedule.

Pure decisions (periods, schedule, where usage lives, the price model, ownership, status) plus two
small async S3 helpers (read usage, write the report). The kopf handlers in `handlers/costreport.py` fetch
what these need from the API server and apply what they return.

Settings (environment variables, read at import):

  STRATA_OPERATOR_COSTREPORT_INTERVAL  seconds between recomputations of a CostReport without
                                       spec.interval, default 3600; the timer that checks whether
                                       a report is due ticks every min(60, this) seconds
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from strata_contract.layout import cluster_root
from strata_contract.s3 import S3Settings, async_client

from . import logic, resources
from .billing import BillingError, allocation, ownership, prices, report, usage
from .crds import API_VERSION
from .durations import duration_ms
from .topology import model as topology_model
from .topology import render as topology_render

DEFAULT_INTERVAL = float(os.environ.get("STRATA_OPERATOR_COSTREPORT_INTERVAL", "3600"))
TICK = max(0.5, min(60.0, DEFAULT_INTERVAL))
PERIODS = ("daily", "weekly", "monthly")
DEFAULT_PRICE_KEY = "prices.yaml"
MAX_WARNINGS = 20
CONTENT_TYPES = {"json": "application/json", "html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8"}


class Problem(Exception):
    """Why a report could not be computed: becomes Ready=False with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- periods and schedule ----------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    name: str  # 2025-03, 2025-W11, 2025-03-14
    start: date  # inclusive
    end: date  # exclusive

    def through(self, today: date) -> date:
        """The exclusive end of the days reported as of `today` (the period to date)."""
        return min(self.end, today + timedelta(days=1))


def period_containing(kind: str, day: date) -> Period:
    if kind == "daily":
        return Period(day.isoformat(), day, day + timedelta(days=1))
    if kind == "weekly":
        start = day - timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        return Period(f"{year}-W{week:02d}", start, start + timedelta(days=7))
    if kind == "monthly":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        return Period(f"{start:%Y-%m}", start, end)
    raise Problem("InvalidSpec", f"spec.period must be one of {', '.join(PERIODS)}, got {kind!r}")


def periods_to_compute(kind: str, today: date, last_period: str | None) -> list[Period]:
    """The current period, preceded by the previous one when the last report was of it (its final
    report: the days after the last computation are still to be counted)."""
    current = period_containing(kind, today)
    previous = period_containing(kind, current.start - timedelta(days=1))
    return [previous, current] if last_period == previous.name else [current]


def interval_seconds(spec: dict[str, Any], default: float = DEFAULT_INTERVAL) -> float:
    text = spec.get("interval")
    if not text:
        return default
    try:
        ms = duration_ms(str(text))
    except ValueError as exc:
        raise Problem("InvalidSpec", f"spec.interval: {exc}") from None
    if ms <= 0:
        raise Problem("InvalidSpec", f"spec.interval must be positive, got {text!r}")
    return ms / 1000


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def due(status: dict[str, Any] | None, spec: dict[str, Any], now: datetime,
        default: float = DEFAULT_INTERVAL) -> bool:
    """Whether a report should be (re)computed now: never computed, failed since (Ready is not
    True), or older than its interval. An invalid interval is due (so the problem is reported)."""
    status = status or {}
    last = _parse_time(status.get("lastComputed") or "")
    ready = logic.condition(status.get("conditions"), "Ready") or {}
    if last is None or ready.get("status") != "True":
        return True
    try:
        interval = interval_seconds(spec, default)
    except Problem:
        return True
    return (now - last).total_seconds() >= interval - 0.05


# -- where usage lives -------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class UsageSource:
    bucket: str
    cluster: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    secret: Secret | None = None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def report_keys(self, namespace: str, name: str, period: str) -> dict[str, str]:
        """ext -> key: `[<prefix>/]clusters/<cluster>/reports/<namespace>/<name>/<period>.<ext>`."""
        base = cluster_root(self.prefix, self.cluster)
        return {ext: f"{base}reports/{namespace}/{name}/{period}.{ext}" for ext in ("json", "html", "csv")}


def _secret_ref(ref: dict[str, Any] | None, namespace: str) -> Secret | None:
    if not ref or not ref.get("name"):
        return None
    return Secret(namespace, ref["name"], ref.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID",
                  ref.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY")


def usage_source(costreport: dict[str, Any], broker: dict[str, Any]) -> UsageSource:
    """spec.usageSource field by field over the EventBroker's tieredStorage and cluster.id."""
    own = costreport["spec"].get("usageSource") or {}
    tiered = broker.get("spec", {}).get("tieredStorage") or {}
    props = resources.broker_properties(broker)
    bucket = own.get("bucket") or tiered.get("bucket")
    if not bucket:
        ns, name = broker["metadata"]["namespace"], broker["metadata"]["name"]
        raise Problem("NoUsageSource", f"EventBroker {ns}/{name} has no tieredStorage bucket and spec.usageSource "
                                       "names none: there is nowhere to read usage from")
    secret = _secret_ref(own.get("credentialsSecret"), costreport["metadata"]["namespace"]) \
        or _secret_ref(tiered.get("credentialsSecret"), broker["metadata"]["namespace"])
    return UsageSource(
        bucket=bucket,
        cluster=own.get("clusterId") or props["cluster.id"],
        prefix=own["prefix"] if "prefix" in own else props.get("tiered.s3.prefix", ""),
        endpoint=own.get("endpoint") or tiered.get("endpoint") or None,
        region=own.get("region") or tiered.get("region") or "us-east-1",
        secret=secret)


def credentials(secret: Secret | None, obj: dict[str, Any] | None) -> dict[str, str]:
    """S3 client credentials (strata_contract.s3.S3Settings) from the Secret (none: the operator's own identity)."""
    if secret is None:
        return {}
    if obj is None:
        raise Problem("BucketUnavailable", f"Secret {secret.namespace}/{secret.name} (S3 credentials) does not exist")
    out = {}
    for arg, key in (("aws_access_key_id", secret.access_key_id_key),
                     ("aws_secret_access_key", secret.secret_access_key_key)):
        if (obj.get("stringData") or {}).get(key):
            out[arg] = str(obj["stringData"][key])
        elif (obj.get("data") or {}).get(key):
            out[arg] = base64.b64decode(obj["data"][key]).decode().strip()
        else:
            raise Problem("BucketUnavailable", f"Secret {secret.namespace}/{secret.name} has no key {key!r}")
    return out


# -- price model and ownership -----------------------------------------------------------


def price_ref(spec: dict[str, Any]) -> tuple[str, str] | None:
    ref = spec.get("priceModelRef")
    return (ref["name"], ref.get("key") or DEFAULT_PRICE_KEY) if ref and ref.get("name") else None


def price_model(spec: dict[str, Any], namespace: str, configmap: dict[str, Any] | None) -> prices.PriceModel:
    """Defaults <- the referenced ConfigMap's price file <- spec (prices, policy, weights, currency)."""
    try:
        base = prices._load_yaml(prices.default_text(), prices.DEFAULT_FILE)
        source = prices.DEFAULT_FILE
        ref = price_ref(spec)
        if ref is not None:
            name, key = ref
            source = f"ConfigMap {namespace}/{name} key {key}"
            if configmap is None:
                raise BillingError(f"{source}: the ConfigMap does not exist")
            text = (configmap.get("data") or {}).get(key)
            if text is None:
                keys = ", ".join(sorted(configmap.get("data") or {})) or "none"
                raise BillingError(f"{source}: no such key (keys: {keys})")
            base = prices._merge(base, prices._load_yaml(text, source), source)
        overrides = prices.from_costreport_spec(spec)
        if overrides:
            base = prices._merge(base, overrides, "CostReport spec")
        return prices.parse(base, source)
    except BillingError as exc:
        raise Problem("PriceModelInvalid", str(exc)) from None


def ownership_of(broker_key: tuple[str, str], topics: list[dict[str, Any]],
                 microservices: list[dict[str, Any]]) -> ownership.Ownership:
    """Topic and Microservice CRs of this broker -> topic/principal -> team."""
    objects = []
    for kind, items in (("Topic", topics), ("Microservice", microservices)):
        for item in items:
            if (item.get("metadata") or {}).get("deletionTimestamp") or not isinstance(item.get("spec"), dict):
                continue
            try:
                if logic.broker_key(item) != broker_key:
                    continue
            except KeyError:
                continue
            objects.append({**item, "apiVersion": item.get("apiVersion") or API_VERSION, "kind": kind})
    try:
        return ownership.Ownership.from_objects(objects, source="the cluster")
    except BillingError as exc:
        raise Problem("OwnershipInvalid", str(exc)) from None


# -- computing ---------------------------------------------------------------------------


@dataclass
class Computed:
    period: Period
    through: date
    report: report.Report
    objects: dict[str, tuple[bytes, str]]  # key -> (body, content type)
    status: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "NoUsage" if self.report.empty else "Computed"

    def message(self, source: UsageSource) -> str:
        days = f"{self.period.start} .. {self.through - timedelta(days=1)}"
        if self.report.empty:
            return (f"no usage records for {self.period.name} ({days}) under "
                    f"{source.uri(usage.usage_prefix(source.cluster, source.prefix))}: an empty report "
                    "(is metering on, and are bucket and clusterId right?)")
        return (f"{self.period.name} ({days}): total {self.status['total']} {self.status['currency']} "
                f"over {len(self.status['teams'])} row(s); report in {self.status['reports']['html']}")


def _iso_day(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def team_rows(rep: report.Report) -> list[dict[str, Any]]:
    """One entry per team (plus `unowned` and `idle`); their totals add up to `rep.total` exactly."""
    rows = []
    for group, totals in report.totals_by_group(rep).items():
        rows.append({"team": group[0], "direct": report.money(totals.direct),
                     "shared": report.money(totals.families["tax"]), "total": report.money(totals.total),
                     "producedBytes": totals.produced_bytes, "fetchedBytes": totals.fetched_bytes})
    return rows


def compute(usage_set: usage.UsageSet, model: prices.PriceModel, owners: ownership.Ownership, period: Period,
            today: date, source: UsageSource, namespace: str, name: str, now: str) -> Computed:
    """Usage x prices x ownership -> the report of `period` to date, its objects and the status."""
    through = period.through(today)
    try:
        alloc = allocation.allocate(usage_set.records, model, owners, period.start, through)
    except BillingError as exc:
        # the only errors left here are the price model's (e.g. weights naming an unknown team)
        raise Problem("PriceModelInvalid", str(exc)) from None
    alloc.warnings[:0] = usage_set.warnings
    if usage_set.duplicates:
        alloc.warnings.append(f"{usage_set.duplicates} duplicate usage record(s) ignored (same id seen again)")
    rep = report.build(alloc, by="team", cluster=source.cluster, billing=model.billing)
    teams = team_rows(rep)
    assert sum((Decimal(t["total"]) for t in teams), Decimal(0)) == rep.total
    keys = source.report_keys(namespace, name, period.name)
    bodies = {"json": report.render_json(rep), "html": report.render_html(rep, topology_svg=_topology_svg(
              usage_set, model, owners, period.start, through, source.cluster)), "csv": report.render_focus(rep)}
    objects = {keys[ext]: (text.encode("utf-8"), CONTENT_TYPES[ext]) for ext, text in bodies.items()}
    status = {
        "period": period.name,
        "periodStart": _iso_day(period.start),
        "periodEnd": _iso_day(period.end),
        "lastComputed": now,
        "currency": rep.currency,
        "total": report.money(rep.total),
        "sharedCost": report.money(sum((Decimal(t["shared"]) for t in teams), Decimal(0))),
        "teams": teams,
        "reports": {ext: source.uri(key) for ext, key in keys.items()},
        "warnings": [w if len(w) <= 300 else w[:297] + "..." for w in alloc.warnings[:MAX_WARNINGS]],
    }
    return Computed(period, through, rep, objects, status, list(alloc.warnings))


def _topology_svg(usage_set: usage.UsageSet, model: prices.PriceModel, owners: ownership.Ownership, start: date,
                  end: date, cluster: str) -> str:
    """The business topology of the period as SVG, for the report's HTML (docs/topology.md)."""
    topo = topology_model.build(usage_set.records, owners, model, start, end, cluster=cluster,
                                schema_subjects=owners.schema_subjects)
    return topology_render.render_svg(topo) if not topo.empty else ""


# -- S3 ----------------------------------------------------------------------------------


def _client(source: UsageSource, creds: dict[str, str]) -> Any:
    return async_client(S3Settings(source.endpoint, source.region, creds, read_timeout=30, max_attempts=2))


async def read_usage(source: UsageSource, creds: dict[str, str], start: date, end: date) -> usage.UsageSet:
    """The usage records of days [start, end) (de-duplicated); Problem BucketUnavailable on S3 errors,
    UsageInvalid on a malformed record."""
    where = source.uri(usage.usage_prefix(source.cluster, source.prefix))
    texts: list[tuple[str, str]] = []
    try:
        async with _client(source, creds) as client:
            prefixes = usage.day_prefixes(source.cluster, start, end, source.prefix)
            texts = await usage.read_s3_texts(client, source.bucket, prefixes, errors="replace")
    except Exception as exc:  # botocore raises many types; the status needs the message
        raise Problem("BucketUnavailable", f"cannot read usage from {where}: {exc}") from None
    try:
        return usage.read_lines(texts)
    except BillingError as exc:
        raise Problem("UsageInvalid", str(exc)) from None


async def write_objects(source: UsageSource, creds: dict[str, str], objects: dict[str, tuple[bytes, str]]) -> None:
    try:
        async with _client(source, creds) as client:
            for key, (body, content_type) in objects.items():
                await client.put_object(Bucket=source.bucket, Key=key, Body=body, ContentType=content_type)
    except Exception as exc:
        raise Problem("BucketUnavailable", f"cannot write the report to s3://{source.bucket}/: {exc}") from None


def today_utc() -> date:
    return datetime.now(tz=UTC).date()

"""A rounded report and its formats: table, CSV, OpenCost-shaped JSON, FOCUS 1.2, HTML.

`build` rounds an `Allocation` once for the chosen view (`team`, `microservice`, `topic`):
rows first, then days, then cost types, so every format adds up to the same total to the
$0.0001. The formats only sum rounded leaves; none of them rounds again.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .allocation import Allocation, family, round_cells
from .ownership import IDLE, UNOWNED

VIEWS = ("team", "microservice", "topic")
FAMILIES = ("network", "storage", "s3", "tax", "idle")
ZERO = Decimal("0.0000")

FOCUS_MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)
FOCUS_CUSTOM = ("x_Team", "x_Microservice", "x_Topic", "x_CostType", "x_Cluster", "x_AllocationPolicy")

COST_TYPE_TEXT = {
    "network.ingress": "Produce traffic (ingress)",
    "network.egress": "Fetch traffic (egress)",
    "storage.hot": "Hot storage on broker disk",
    "storage.cold": "Cold storage in S3",
    "s3.put": "S3 PUT requests",
    "s3.get": "S3 GET requests (cold reads)",
    "s3.list": "S3 LIST requests",
    "s3.delete": "S3 DELETE requests",
    "s3.transfer": "S3 data transfer (cold reads)",
    "tax.compute.cpu": "Platform tax: broker CPU requests",
    "tax.compute.memory": "Platform tax: broker memory requests",
    "tax.operator.cpu": "Platform tax: operator CPU requests",
    "tax.operator.memory": "Platform tax: operator memory requests",
    "tax.connections": "Platform tax: client connections",
    "tax.s3": "Platform tax: S3 requests of no topic",
    "tax.idle": "Platform tax: idle broker disk",
    "idle.disk": "Idle broker disk (provisioned, unused)",
}


def describe(cost_type: str) -> str:
    if cost_type.startswith("tax.fixed."):
        return f"Platform tax: {cost_type.removeprefix('tax.fixed.')} (fixed monthly)"
    return COST_TYPE_TEXT.get(cost_type, cost_type)


def service_category(cost_type: str) -> str:
    if cost_type.startswith(("network.", "tax.connections")):
        return "Networking"
    if cost_type.startswith(("tax.compute", "tax.operator")):
        return "Compute"
    if cost_type.startswith("tax.fixed."):
        return "Management and Governance"
    return "Storage"


@dataclass(frozen=True)
class Row:
    """One rounded leaf: a team's (service's, topic's) cost of one type on one day."""

    day: date
    team: str
    microservice: str
    topic: str
    cost_type: str
    quantity: Fraction
    unit: str
    raw: int
    cost: Decimal


@dataclass
class Report:
    allocation: Allocation
    by: str
    cluster: str
    rows: list[Row] = field(default_factory=list)
    total: Decimal = ZERO
    billing: dict[str, str] = field(default_factory=dict)
    only_teams: frozenset[str] | None = None

    def restrict(self, teams: set[str]) -> Report:
        """The rows of some teams only (amounts as in the full report; total = their sum)."""
        rows = [r for r in self.rows if r.team in teams]
        return Report(allocation=self.allocation, by=self.by, cluster=self.cluster, rows=rows,
                      total=sum((r.cost for r in rows), ZERO), billing=self.billing, only_teams=frozenset(teams))

    @property
    def start(self) -> date:
        return self.allocation.start

    @property
    def end(self) -> date:
        return self.allocation.end

    @property
    def currency(self) -> str:
        return self.allocation.currency

    @property
    def empty(self) -> bool:
        return self.allocation.empty

    def group(self, row: Row) -> tuple[str, ...]:
        return group_of(self.by, row.team, row.microservice, row.topic, row.cost_type)

    def groups(self) -> list[tuple[str, ...]]:
        """Every row of the view in display order; teams, `unowned` and `idle` always present."""
        seen = {self.group(r) for r in self.rows}
        if self.by == "team":
            seen |= {(t,) for t in self.allocation.teams} | {(UNOWNED,), (IDLE,)}
        elif self.by == "microservice":
            seen |= {(UNOWNED, "(unknown)"), (IDLE, "(idle)")}
        else:
            seen |= {("(idle)",)}
        if self.only_teams is not None:
            teams = self.only_teams
            seen = {g for g in seen if (g[0] in teams if self.by != "topic" else
                                        any(self.group(r) == g for r in self.rows))}
        special = (UNOWNED, IDLE, "(idle)", "(platform tax)", "(topics)", "(unknown)")
        return sorted(seen, key=lambda g: (g[0] in special, any(x in special for x in g), g))


def group_of(by: str, team: str, microservice: str, topic: str, cost_type: str) -> tuple[str, ...]:
    fam = family(cost_type)
    if by == "team":
        return (team,)
    if by == "microservice":
        if team == IDLE:
            return (IDLE, "(idle)")
        if microservice:
            return (team, microservice)
        if fam == "tax":
            return (team, "(platform tax)")
        return (team, "(unknown)" if team == UNOWNED else "(topics)")
    if topic:
        return (topic,)
    return ("(idle)",) if fam == "idle" else ("(platform tax)",) if fam == "tax" else ("(no topic)",)


def group_label(by: str, group: tuple[str, ...]) -> str:
    return " / ".join(group) if by == "microservice" else group[0]


def build(alloc: Allocation, by: str = "team", cluster: str = "", billing: dict[str, str] | None = None) -> Report:
    if by not in VIEWS:
        raise ValueError(f"unknown view {by!r}")
    costs: dict[tuple, Fraction] = defaultdict(Fraction)
    quantities: dict[tuple, Fraction] = defaultdict(Fraction)
    raws: dict[tuple, int] = defaultdict(int)
    units: dict[tuple, str] = {}
    for c in alloc.charges:
        costs[c.key] += c.cost
        quantities[c.key] += c.quantity
        raws[c.key] += c.raw
        units[c.key] = c.unit
    rounded = round_cells(dict(costs), [
        lambda k: group_of(by, k[1], k[2], k[3], k[4]),
        lambda k: k[0],
        lambda k: k[4],
    ])
    rows = [Row(day=k[0], team=k[1], microservice=k[2], topic=k[3], cost_type=k[4], quantity=quantities[k],
                unit=units[k], raw=raws[k], cost=rounded[k]) for k in sorted(costs)]
    total = sum((r.cost for r in rows), ZERO)
    return Report(allocation=alloc, by=by, cluster=cluster, rows=rows, total=total, billing=dict(billing or {}))


# -- aggregation helpers ---------------------------------------------------------------------

@dataclass
class Totals:
    families: dict[str, Decimal] = field(default_factory=lambda: {f: ZERO for f in FAMILIES})
    produced_bytes: int = 0
    fetched_bytes: int = 0

    def add(self, row: Row) -> None:
        self.families[family(row.cost_type)] += row.cost
        if row.cost_type == "network.ingress":
            self.produced_bytes += row.raw
        elif row.cost_type == "network.egress":
            self.fetched_bytes += row.raw

    @property
    def direct(self) -> Decimal:
        return self.families["network"] + self.families["storage"] + self.families["s3"]

    @property
    def total(self) -> Decimal:
        return sum(self.families.values(), ZERO)


def totals_by_group(report: Report) -> dict[tuple[str, ...], Totals]:
    out = {g: Totals() for g in report.groups()}
    for row in report.rows:
        out[report.group(row)].add(row)
    return out


def totals_by_day_group(report: Report) -> dict[tuple[date, tuple[str, ...]], Totals]:
    out: dict[tuple[date, tuple[str, ...]], Totals] = {}
    for day in report.allocation.metered_days:
        for g in report.groups():
            out[(day, g)] = Totals()
    for row in report.rows:
        out.setdefault((row.day, report.group(row)), Totals()).add(row)
    return dict(sorted(out.items()))


def money(value: Decimal) -> str:
    return f"{value:.4f}"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def period_text(report: Report) -> str:
    return f"{report.start} .. {report.end - timedelta(days=1)}"


def _iso(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _quantity(q: Fraction) -> str:
    text = f"{Decimal(q.numerator) / Decimal(q.denominator):.10f}".rstrip("0").rstrip(".")
    return text or "0"


# -- table -----------------------------------------------------------------------------------

def render_table(report: Report, console: Console) -> None:
    title = f"Strata cost report · {report.cluster or 'cluster'} · {period_text(report)} · by {report.by}"
    if report.empty:
        console.print(f"[bold]{title}[/bold]")
        console.print(f"No usage records in {period_text(report)}: empty report, "
                      f"total {money(ZERO)} {report.currency}.")
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, show_footer=True,
                  caption=f"{report.currency}; tax policy {report.allocation.policy}; "
                          "idle = provisioned broker disk nobody used")
    head = {"team": ["Team"], "microservice": ["Team", "Microservice"], "topic": ["Topic"]}[report.by]
    grand = Totals()
    for row in report.rows:
        grand.add(row)
    shown = ("network", "storage", "s3", "tax")
    body = [[*g, human_bytes(t.produced_bytes), human_bytes(t.fetched_bytes),
             *(money(t.families[f]) for f in shown), money(t.total)] for g, t in totals_by_group(report).items()]
    footer = ["Total"] + [""] * (len(head) - 1) + [human_bytes(grand.produced_bytes), human_bytes(grand.fetched_bytes),
                                                   *(money(grand.families[f]) for f in shown), money(report.total)]
    names = [*head, "Produced", "Fetched", "Net", "Storage", "S3", "Tax", "Total"]
    for i, name in enumerate(names):
        numeric = i >= len(head)
        width = max(len(r[i]) for r in [*body, footer]) if numeric else None
        table.add_column(name, footer=footer[i], justify="right" if numeric else "left", min_width=width,
                         no_wrap=numeric, overflow="fold", style="bold" if name == "Total" else None)
    for r in body:
        table.add_row(*r)
    console.print(table)


def warnings_text(report: Report) -> list[str]:
    return list(report.allocation.warnings)


# -- CSV (daily) -----------------------------------------------------------------------------

def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = {"team": ["team"], "microservice": ["team", "microservice"], "topic": ["topic"]}[report.by]
    writer.writerow(["date", *head, "produced_bytes", "fetched_bytes", *FAMILIES, "direct", "total", "currency"])
    for (day, g), t in totals_by_day_group(report).items():
        writer.writerow([day.isoformat(), *g, t.produced_bytes, t.fetched_bytes,
                         *(money(t.families[f]) for f in FAMILIES), money(t.direct), money(t.total), report.currency])
    return out.getvalue()


# -- JSON shaped like OpenCost's /allocation API (step = 1 day, accumulate = false) -------------

def _opencost_name(by: str, group: tuple[str, ...]) -> str:
    if group[0] == IDLE or group == ("(idle)",):
        return "__idle__"
    if group[0] == UNOWNED and by != "topic":
        return "__unallocated__" if by == "team" else f"__unallocated__/{group[1]}"
    return "/".join(group)


def render_json(report: Report) -> str:
    data: list[dict[str, Any]] = []
    per_day: dict[date, dict[tuple[str, ...], dict[str, Decimal]]] = defaultdict(dict)
    for day in report.allocation.metered_days:
        for g in report.groups():
            per_day[day][g] = defaultdict(lambda: ZERO)
    for row in report.rows:
        cell = per_day[row.day].setdefault(report.group(row), defaultdict(lambda: ZERO))
        fam = family(row.cost_type)
        slot = {"network": "networkCost", "tax": "sharedCost", "idle": "pvCost"}.get(fam)
        if slot is None:
            slot = "pvCost" if row.cost_type == "storage.hot" else "externalCost"
        cell[slot] += row.cost
        cell["totalCost"] += row.cost
        if row.cost_type == "network.ingress":
            cell["x_producedBytes"] += row.raw
        elif row.cost_type == "network.egress":
            cell["x_fetchedBytes"] += row.raw
    for day in sorted(per_day):
        step: dict[str, Any] = {}
        window = {"start": _iso(day), "end": _iso(day + timedelta(days=1))}
        for g, c in per_day[day].items():
            name = _opencost_name(report.by, g)
            props: dict[str, Any] = {"cluster": report.cluster}
            if report.by == "team":
                props["labels"] = {"team": g[0]}
            elif report.by == "microservice":
                props["labels"] = {"team": g[0]}
                props["controller"] = g[1]
            else:
                props["labels"] = {"topic": g[0]}
            step[name] = {
                "name": name, "properties": props, "window": window,
                "start": window["start"], "end": window["end"], "minutes": 1440.0,
                "cpuCost": 0.0, "gpuCost": 0.0, "ramCost": 0.0,
                "pvCost": float(c["pvCost"]), "networkCost": float(c["networkCost"]),
                "loadBalancerCost": 0.0, "sharedCost": float(c["sharedCost"]),
                "externalCost": float(c["externalCost"]), "totalCost": float(c["totalCost"]),
                "x_totalCost": money(c["totalCost"]),
                "x_producedBytes": int(c["x_producedBytes"]), "x_fetchedBytes": int(c["x_fetchedBytes"]),
            }
        data.append(step)
    doc = {"code": 200, "status": "success", "data": data, "x_strata": {
        "cluster": report.cluster, "aggregate": report.by, "currency": report.currency,
        "window": {"start": _iso(report.start), "end": _iso(report.end)},
        "sharedCostPolicy": report.allocation.policy, "totalCost": money(report.total),
        "warnings": report.allocation.warnings,
        "totals": {_opencost_name(report.by, g): money(t.total) for g, t in totals_by_group(report).items()},
    }}
    return json.dumps(doc, indent=2) + "\n"


# -- FOCUS 1.2 -------------------------------------------------------------------------------

def focus_rows(report: Report) -> list[dict[str, str]]:
    account_id = report.billing.get("account_id") or report.cluster or "strata"
    account_name = report.billing.get("account_name") or f"Strata cluster {account_id}"
    out = []
    for row in report.rows:
        text = describe(row.cost_type)
        if row.topic:
            text += f" on topic {row.topic}"
        if row.microservice:
            text += f" by {row.microservice}"
        cost = money(row.cost)
        out.append({
            "BilledCost": cost, "BillingAccountId": account_id, "BillingAccountName": account_name,
            "BillingCurrency": report.currency,
            "BillingPeriodEnd": _iso(report.end), "BillingPeriodStart": _iso(report.start),
            "ChargeCategory": "Usage", "ChargeClass": "", "ChargeDescription": text,
            "ChargePeriodEnd": _iso(row.day + timedelta(days=1)), "ChargePeriodStart": _iso(row.day),
            "ContractedCost": cost, "EffectiveCost": cost,
            "InvoiceIssuerName": report.billing.get("invoice_issuer") or "Strata platform team",
            "ListCost": cost, "PricingQuantity": _quantity(row.quantity), "PricingUnit": row.unit,
            "ProviderName": report.billing.get("provider") or "Strata",
            "PublisherName": report.billing.get("publisher") or "Strata",
            "ServiceCategory": service_category(row.cost_type), "ServiceName": "Strata Event Streaming",
            "x_Team": row.team, "x_Microservice": row.microservice, "x_Topic": row.topic,
            "x_CostType": row.cost_type, "x_Cluster": report.cluster,
            "x_AllocationPolicy": report.allocation.policy if row.cost_type.startswith("tax.") else "",
        })
    return out


def render_focus(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*FOCUS_MANDATORY, *FOCUS_CUSTOM], lineterminator="\n")
    writer.writeheader()
    writer.writerows(focus_rows(report))
    return out.getvalue()


# -- HTML ------------------------------------------------------------------------------------

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
GREY = "#9e9e9e"


def _color(i: int, name: str) -> str:
    if name in (UNOWNED, IDLE, "(idle)", "(platform tax)") or name.startswith((UNOWNED + " ", IDLE + " ")):
        return GREY if name != UNOWNED else "#c9c9c9"
    return PALETTE[i % len(PALETTE)]


def _svg_stacked_days(report: Report) -> str:
    width, height, left, bottom, top = 760, 320, 70, 40, 10
    days = report.allocation.metered_days
    groups = report.groups()
    cells = totals_by_day_group(report)
    day_totals = {d: sum((cells[(d, g)].total for g in groups if (d, g) in cells), ZERO) for d in days}
    peak = max(day_totals.values(), default=ZERO) or Decimal(1)
    plot_h = height - bottom - top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width + 200} {height}" '
             f'role="img" aria-label="cost per {report.by} per day">']
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" stroke="#333"/>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{money(peak)}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>')
    slot = (width - left) / max(len(days), 1)
    bar = max(slot * 0.7, 1)
    for i, d in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for j, g in enumerate(groups):
            value = cells.get((d, g))
            if value is None or value.total <= 0:
                continue
            h = float(value.total / peak) * plot_h
            y -= h
            label = html.escape(group_label(report.by, g))
            parts.append(f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{h:.2f}" '
                         f'fill="{_color(j, g[0])}"><title>{d} {label}: {money(value.total)}</title></rect>')
        if len(days) <= 16 or i % max(len(days) // 8, 1) == 0:
            parts.append(f'<text x="{x + bar / 2:.2f}" y="{top + plot_h + 16}" text-anchor="middle" '
                         f'font-size="10">{d:%m-%d}</text>')
    for j, g in enumerate(groups):
        y = top + 14 * j
        parts.append(f'<rect x="{width + 10}" y="{y}" width="10" height="10" fill="{_color(j, g[0])}"/>'
                     f'<text x="{width + 24}" y="{y + 9}" font-size="11">'
                     f'{html.escape(group_label(report.by, g))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_hbars(items: list[tuple[str, Decimal]], label: str) -> str:
    width, row_h, left = 760, 22, 260
    height = max(row_h * len(items) + 10, 40)
    peak = max((v for _, v in items), default=ZERO) or Decimal(1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{html.escape(label)}">']
    if not items:
        parts.append('<text x="10" y="24" font-size="12">no data in this period</text>')
    for i, (name, value) in enumerate(items):
        y = 5 + i * row_h
        w = float(value / peak) * (width - left - 90)
        parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" font-size="11">{html.escape(name)}</text>'
                     f'<rect class="bar" x="{left}" y="{y}" width="{w:.2f}" height="{row_h - 6}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"><title>{html.escape(name)}: {money(value)}</title></rect>'
                     f'<text x="{left + w + 6:.2f}" y="{y + 14}" font-size="11">{money(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, top_n: int = 10, topology_svg: str = "") -> str:
    """A self-contained page (no script); `topology_svg`, when given, is shown under the charts as
    the business topology of the period (the operator's CostReport passes it)."""
    esc = html.escape
    by_type: dict[str, Decimal] = defaultdict(lambda: ZERO)
    by_topic: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for row in report.rows:
        by_type[row.cost_type] += row.cost
        if row.topic:
            by_topic[row.topic] += row.cost
    types = sorted(((describe(k), v) for k, v in by_type.items() if v > 0), key=lambda kv: -kv[1])
    topics = sorted(by_topic.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    totals = totals_by_group(report)
    head = {"team": ["Team"], "microservice": ["Team", "Microservice"], "topic": ["Topic"]}[report.by]
    table = ["<table><thead><tr>", *(f"<th>{h}</th>" for h in head),
             "<th>Produced</th><th>Fetched</th>", *(f"<th>{f}</th>" for f in FAMILIES),
             "<th>Total</th></tr></thead><tbody>"]
    for g, t in totals.items():
        table.append("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in g)
                     + f'<td class="n">{human_bytes(t.produced_bytes)}</td>'
                     + f'<td class="n">{human_bytes(t.fetched_bytes)}</td>'
                     + "".join(f'<td class="n">{money(t.families[f])}</td>' for f in FAMILIES)
                     + f'<td class="n">{money(t.total)}</td></tr>')
    table.append(f'</tbody><tfoot><tr><td colspan="{len(head) + 2 + len(FAMILIES)}">Total ({esc(report.currency)})'
                 f'</td><td class="n">{money(report.total)}</td></tr></tfoot></table>')
    empty = ('<p class="empty">No usage records in this period: empty report, total '
             f'{money(ZERO)}.</p>') if report.empty else ""
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.allocation.warnings)
    title = f"Strata cost report: {report.cluster or 'cluster'}, {period_text(report)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1000px}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem}}
table{{border-collapse:collapse;font-size:.85rem}} td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}} figure{{margin:0}} svg{{width:100%;height:auto}}
.empty{{font-weight:bold}}
</style></head><body>
<h1>{esc(title)}</h1>
<p>By {esc(report.by)} · tax policy {esc(report.allocation.policy)} · total
<strong>{money(report.total)} {esc(report.currency)}</strong></p>
{empty}
{"".join(table)}
<h2>Cost per {esc(report.by)} per day</h2>
<figure class="chart" data-view="per-day">{_svg_stacked_days(report)}</figure>
<h2>Breakdown by cost type</h2>
<figure class="chart" data-view="cost-type">{_svg_hbars(types, "breakdown by cost type")}</figure>
<h2>Top topics</h2>
<figure class="chart" data-view="top-topics">{_svg_hbars(topics, "top topics")}</figure>
{_topology_section(topology_svg)}
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
</body></html>
"""


def _topology_section(svg: str) -> str:
    if not svg:
        return ""
    return ('<h2>Business topology</h2><p>Who writes (left) and reads (right) which topic (middle), by team; '
            'dashed: declared without traffic, red: undeclared write. Details: <code>strata topology</code>.</p>'
            f'<figure class="topology" data-view="topology">{svg}</figure>')

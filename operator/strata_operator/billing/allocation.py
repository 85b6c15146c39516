"""Usage x prices x ownership -> charges per team; the tax split; exact rounding.

Everything here is a pure function. Money is exact: prices and usage are Decimals, every
product and share is a `Fraction`, and the only rounding is `round_cells`, which rounds to
$0.0001 with the largest-remainder method, top-down, so that each level of a report (rows,
then days, then cost types) sums exactly to the level above and the grand total is the exact
total rounded half-up. Nothing is dropped: usage no team owns is billed to `unowned`,
provisioned disk nobody used to `idle`.

Cost types (the `cost_type` of a charge):

    network.ingress   produced bytes            -> producer's team        ingress_gib
    network.egress    fetched bytes             -> consumer's team        egress_gib
    storage.hot       hot byte-hours            -> topic owner            disk_gib_month
    storage.cold      cold (S3) byte-hours      -> topic owner            s3_storage_gib_month
    s3.put/list/delete S3 requests of a topic   -> topic owner            s3_*_per_1000
    s3.get            S3 GETs                   -> the reader (else owner) s3_get_per_1000
    s3.transfer       S3 GET bytes              -> as s3.get              s3_transfer_gib
    tax.compute.cpu|memory   brokers' requested CPU/RAM hours              vcpu_hour, ram_gib_hour
    tax.operator.cpu|memory  operator's requested CPU/RAM, per metered day vcpu_hour, ram_gib_hour
    tax.connections   connection-hours                                     connection_hour
    tax.s3            S3 requests of no topic (manifests, offsets, usage)  s3_*_per_1000
    tax.fixed.<name>  fixed monthly lines, per metered day                 fixed_monthly
    tax.idle          idle disk, when share_idle is true
    idle.disk         provisioned disk - hot bytes, per broker             disk_gib_month
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

from . import BillingError
from .ownership import IDLE, UNOWNED, Ownership
from .prices import PriceModel
from .usage import UsageRecord

GIB = 1 << 30
UNIT = Fraction(1, 10_000)  # $0.0001
QUANTUM = Decimal("0.0001")
HOURS_PER_DAY = 24


def frac(value: Decimal | int) -> Fraction:
    return Fraction(value)


@dataclass(frozen=True)
class Charge:
    """One exact line: what one team (or `unowned`/`idle`) owes for one cost type on one day."""

    day: date
    team: str
    microservice: str  # "" when the cost is not a service's (topic storage with no single writer, tax)
    topic: str  # "" when the cost is not a topic's
    cost_type: str
    quantity: Fraction  # in `unit`
    unit: str
    cost: Fraction
    raw: int = 0  # bytes for network charges, requests for S3 request charges

    @property
    def key(self) -> tuple[date, str, str, str, str]:
        return (self.day, self.team, self.microservice, self.topic, self.cost_type)


@dataclass
class Allocation:
    start: date  # inclusive
    end: date  # exclusive
    currency: str
    policy: str
    teams: list[str]  # known teams (ownership), sorted
    charges: list[Charge] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metered_days: list[date] = field(default_factory=list)

    @property
    def total(self) -> Fraction:
        return sum((c.cost for c in self.charges), Fraction(0))

    @property
    def empty(self) -> bool:
        return not self.metered_days


def family(cost_type: str) -> str:
    """network | storage | s3 | tax | idle."""
    return cost_type.split(".", 1)[0]


def is_direct(cost_type: str) -> bool:
    return family(cost_type) in ("network", "storage", "s3")


# -- rounding --------------------------------------------------------------------------------

def round_half_up_units(value: Fraction) -> int:
    """A non-negative amount in units of $0.0001, rounded half up."""
    units = value / UNIT
    return int(units + Fraction(1, 2)) if units >= 0 else -int(-units + Fraction(1, 2))


def apportion(values: Sequence[Fraction], total_units: int) -> list[int]:
    """Largest remainder: integers (units of $0.0001) with floor(v) <= n <= ceil(v) that sum to
    `total_units`. Ties go to the larger exact value, then to the earlier entry. Values >= 0."""
    if any(v < 0 for v in values):
        raise ValueError("cannot apportion negative amounts")
    units = [v / UNIT for v in values]
    floors = [int(u) for u in units]
    extra = total_units - sum(floors)
    if not values:
        if total_units:
            raise ValueError("nothing to apportion a non-zero total to")
        return []
    if extra < 0 or extra > len(values):
        raise ValueError(f"total {total_units} is not reachable from {values}")
    order = sorted(range(len(values)), key=lambda i: (-(units[i] - floors[i]), -units[i], i))
    for i in order[:extra]:
        floors[i] += 1
    return floors


def split_even(amount_units: int, count: int) -> list[int]:
    """$amount over `count` parties: the golden case $10 / 3 -> 3.3334, 3.3333, 3.3333."""
    return apportion([Fraction(amount_units, count) * UNIT] * count, amount_units)


def round_cells(cells: dict[tuple, Fraction], levels: Sequence[Callable[[tuple], Hashable]]) -> dict[tuple, Decimal]:
    """Round exact amounts to $0.0001 so every grouping in `levels` (outermost first) sums exactly
    to its parent, and the sum of everything is the exact total rounded half up."""
    result: dict[tuple, Decimal] = {}

    def descend(keys: list[tuple], units: int, depth: int) -> None:
        if depth == len(levels):
            amounts = apportion([cells[k] for k in keys], units)
            for key, n in zip(keys, amounts, strict=True):
                result[key] = (Decimal(n) * QUANTUM).quantize(QUANTUM)
            return
        groups: dict[Hashable, list[tuple]] = defaultdict(list)
        for key in keys:
            groups[levels[depth](key)].append(key)
        names = sorted(groups, key=_sort_key)
        sums = [sum((cells[k] for k in groups[n]), Fraction(0)) for n in names]
        for name, n in zip(names, apportion(sums, units), strict=True):
            descend(sorted(groups[name], key=_sort_key), n, depth + 1)

    keys = sorted(cells, key=_sort_key)
    descend(keys, round_half_up_units(sum(cells.values(), Fraction(0))), 0)
    return result


def _sort_key(value: Hashable) -> tuple:
    # unowned and idle sort after the teams, so teams get the tie-breaks first
    if isinstance(value, tuple):
        return tuple(_sort_key(v) for v in value)
    text = str(value)
    return (1 if text in (UNOWNED, IDLE) else 0, text)


# -- tax policy ------------------------------------------------------------------------------

def tax_weights(policy: str, teams: Sequence[str], direct: dict[str, Fraction], active: set[str],
                declared: dict[str, Decimal]) -> tuple[dict[str, Fraction], str]:
    """Who carries the tax, and with what weight; plus the rule that applied.

    Fallbacks (Chitragupta's order): proportional with no direct cost -> even over active teams
    -> even over all known teams -> `unowned`. weighted with no positive weight -> the same chain.
    """
    if policy == "proportional":
        weights = {t: direct.get(t, Fraction(0)) for t in teams if direct.get(t, Fraction(0)) > 0}
        if weights:
            return weights, "proportional"
    elif policy == "weighted":
        weights = {t: frac(declared[t]) for t in teams if declared.get(t, Decimal(0)) > 0}
        if weights:
            return weights, "weighted"
    elif policy != "even":
        raise BillingError(f"unknown tax policy {policy!r}")
    live = [t for t in teams if t in active]
    if live:
        return {t: Fraction(1) for t in live}, "even over active teams"
    if teams:
        return {t: Fraction(1) for t in teams}, "even over all teams"
    return {UNOWNED: Fraction(1)}, "unowned (no teams)"


def split_exact(amount: Fraction, weights: dict[str, Fraction]) -> dict[str, Fraction]:
    total = sum(weights.values(), Fraction(0))
    return {team: amount * w / total for team, w in weights.items()}


# -- usage -> charges ------------------------------------------------------------------------

def _days(start: date, end: date) -> Iterable[date]:
    day = start
    while day < end:
        yield day
        day += timedelta(days=1)


def allocate(records: Iterable[UsageRecord], prices: PriceModel, ownership: Ownership,
             start: date, end: date) -> Allocation:
    """Charges for the UTC days [start, end). Records outside the period are ignored."""
    if end <= start:
        raise BillingError(f"empty period: --to must not be before --from ({start} .. {end - timedelta(days=1)})")
    teams = ownership.teams
    unknown = sorted(set(prices.weights) - set(teams))
    if unknown:
        known = ", ".join(teams) if teams else "none (pass -f MANIFESTS)"
        raise BillingError(f"tax weights name unknown team(s) {', '.join(unknown)}; known teams: {known}")
    p = {k: frac(v) for k, v in prices.prices.items()}
    plat = {k: frac(v) for k, v in prices.platform.items()}
    month = frac(prices.hours_per_month)
    alloc = Allocation(start=start, end=end, currency=prices.currency, policy=prices.policy, teams=teams)
    alloc.warnings.extend(ownership.warnings)
    charges: list[Charge] = []
    hot_by_broker: dict[tuple[date, str], Fraction] = defaultdict(Fraction)
    capacity_by_broker: dict[tuple[date, str], Fraction] = defaultdict(Fraction)
    days: set[date] = set()
    unresolved: set[str] = set()
    unowned_topics: set[str] = set()

    def add(day: date, team: str, ms: str, topic: str, cost_type: str, quantity: Fraction, unit: str,
            price: Fraction, raw: int = 0) -> None:
        if quantity or raw:
            charges.append(Charge(day, team, ms, topic, cost_type, quantity, unit, quantity * price, raw))

    for r in records:
        if not start <= r.day < end:
            continue
        day = r.day
        days.add(day)
        if r.kind == "client":
            service = ownership.resolve(r.principal, r.client_id)
            if service is None:
                unresolved.add(f"{r.principal}/{r.client_id}")
            team, ms = (service.team, service.name) if service else (UNOWNED, "")
            topic = r.topic or ""
            add(day, team, ms, topic, "network.ingress", Fraction(r.produced_bytes, GIB), "GiB",
                p["ingress_gib"], r.produced_bytes)
            add(day, team, ms, topic, "network.egress", Fraction(r.fetched_bytes, GIB), "GiB",
                p["egress_gib"], r.fetched_bytes)
        elif r.kind == "topic":
            team, ms = _topic_owner(ownership, r.topic, unowned_topics)
            add(day, team, ms, r.topic or "", "storage.hot", frac(r.hot_byte_hours) / GIB, "GiB-Hours",
                p["disk_gib_month"] / month)
            add(day, team, ms, r.topic or "", "storage.cold", frac(r.cold_byte_hours) / GIB, "GiB-Hours",
                p["s3_storage_gib_month"] / month)
            hot_by_broker[(day, r.broker)] += frac(r.hot_byte_hours)
        elif r.kind == "s3":
            op = (r.op or "").lower()
            price = p[f"s3_{op}_per_1000"] / 1000
            if not r.topic:
                add(day, "", "", "", "tax.s3", Fraction(r.requests), "Requests", price, r.requests)
                continue
            if op == "get" and (r.principal or r.client_id):
                service = ownership.resolve(r.principal, r.client_id)
                team, ms = (service.team, service.name) if service else (UNOWNED, "")
            else:
                team, ms = _topic_owner(ownership, r.topic, unowned_topics)
            add(day, team, ms, r.topic, f"s3.{op}", Fraction(r.requests), "Requests", price, r.requests)
            if op == "get":
                add(day, team, ms, r.topic, "s3.transfer", Fraction(r.bytes, GIB), "GiB",
                    p["s3_transfer_gib"], r.bytes)
        elif r.kind == "broker":
            uptime_hours = frac(r.uptime_seconds) / 3600
            cpu = frac(r.requested_cpu_core_hours) or plat["broker_cpu"] * uptime_hours
            mem_gib = frac(r.requested_memory_byte_hours) / GIB or plat["broker_memory_gib"] * uptime_hours
            add(day, "", "", "", "tax.compute.cpu", cpu, "vCPU-Hours", p["vcpu_hour"])
            add(day, "", "", "", "tax.compute.memory", mem_gib, "GiB-Hours", p["ram_gib_hour"])
            add(day, "", "", "", "tax.connections", frac(r.connection_seconds) / 3600, "Hours",
                p["connection_hour"])
            capacity_by_broker[(day, r.broker)] += frac(r.disk_capacity_byte_hours)

    # Idle disk: what each broker provisioned and no topic used.
    for (day, broker), capacity in sorted(capacity_by_broker.items()):
        idle = max(Fraction(0), capacity - hot_by_broker.get((day, broker), Fraction(0)))
        cost_type = "tax.idle" if prices.share_idle else "idle.disk"
        add(day, "" if prices.share_idle else IDLE, "", "", cost_type, idle / GIB, "GiB-Hours",
            p["disk_gib_month"] / month)

    # Platform lines accrue on metered days.
    for day in sorted(days):
        add(day, "", "", "", "tax.operator.cpu", plat["operator_cpu"] * HOURS_PER_DAY, "vCPU-Hours",
            p["vcpu_hour"])
        add(day, "", "", "", "tax.operator.memory", plat["operator_memory_gib"] * HOURS_PER_DAY, "GiB-Hours",
            p["ram_gib_hour"])
        for name, monthly in sorted(prices.fixed_monthly.items()):
            if monthly:
                add(day, "", "", "", f"tax.fixed.{name}", Fraction(HOURS_PER_DAY), "Hours", frac(monthly) / month)

    alloc.charges = _split_tax(charges, prices, teams)
    alloc.metered_days = sorted(days)
    missing = [d for d in _days(start, end) if d not in days]
    if days and missing:
        alloc.warnings.append(f"no usage records on {len(missing)} day(s) of the period "
                              f"(first: {missing[0]}); platform lines accrue on metered days only")
    if unresolved:
        sample = ", ".join(sorted(unresolved)[:5])
        alloc.warnings.append(f"{len(unresolved)} principal/client id pair(s) match no Microservice, billed to "
                              f"`{UNOWNED}`: {sample}{' ...' if len(unresolved) > 5 else ''}")
    if unowned_topics:
        sample = ", ".join(sorted(unowned_topics)[:5])
        alloc.warnings.append(f"{len(unowned_topics)} topic(s) have no Topic resource with a team, billed to "
                              f"`{UNOWNED}`: {sample}{' ...' if len(unowned_topics) > 5 else ''}")
    return alloc


def _topic_owner(ownership: Ownership, topic: str | None, unowned_topics: set[str]) -> tuple[str, str]:
    team = ownership.topic_team(topic)
    if team is None:
        if topic:
            unowned_topics.add(topic)
        return UNOWNED, ""
    writer = ownership.writer_of(topic)
    return team, writer.name if writer else ""


def _split_tax(charges: list[Charge], prices: PriceModel, teams: list[str]) -> list[Charge]:
    """Replace team-less tax charges by each team's exact share (per day, per tax type)."""
    out = [c for c in charges if c.team]
    by_day: dict[date, list[Charge]] = defaultdict(list)
    for c in charges:
        if not c.team:
            by_day[c.day].append(c)
    for day, pool in sorted(by_day.items()):
        direct: dict[str, Fraction] = defaultdict(Fraction)
        active: set[str] = set()
        for c in out:
            if c.day == day and c.team not in (UNOWNED, IDLE) and is_direct(c.cost_type):
                direct[c.team] += c.cost
                active.add(c.team)
        weights, _rule = tax_weights(prices.policy, teams, direct, active, prices.weights)
        total_weight = sum(weights.values(), Fraction(0))
        for c in pool:
            for team, w in weights.items():
                share = w / total_weight
                out.append(Charge(day, team, "", "", c.cost_type, c.quantity * share, c.unit, c.cost * share, 0))
    return out

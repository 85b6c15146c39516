"""The business topology as data: services and topics grouped by team, declared and observed edges.

Pure functions (no network, no Kubernetes). Inputs are what `strata cost report` reads:

- ownership (`billing.ownership.Ownership`): Topic resources (topic -> team) and Microservices
  (team, `produces`, `consumes`, principal);
- usage records (`billing.usage`): `client` records give who wrote and read which topic, with
  bytes, records and requests; `group` records give a consumer group's lag on a topic at the end
  of each metering window;
- the price model (`billing.prices`): an edge costs what the cost report bills for it, its
  bytes x `ingress_gib` for a write and x `egress_gib` for a read (network.ingress/egress).

Who is behind a usage record is decided exactly as in the cost report (`Ownership.resolve`:
principal, then client id). Traffic that resolves to no Microservice gets a node of kind
`principal` in the team `unowned`, one per principal (per client id for `User:ANONYMOUS`).

An edge is *observed* when the window has at least one Produce (write) or Fetch (read) request
for it, even one that moved no bytes (a consumer polling an empty topic uses its permission).
Topics whose name starts with `__` (the broker's own) are left out.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from ..billing.ownership import ANONYMOUS, UNOWNED, Microservice, Ownership
from ..billing.prices import PriceModel
from ..billing.usage import UsageRecord

GIB = 1 << 30
QUANTUM = Decimal("0.0001")
FORMAT = "strata.topology/v1"
FINDING_KINDS = ("undeclared-writer", "multiple-writers", "idle-declared-edge", "unread-topic",
                 "unowned-traffic", "growing-lag")
MIN_LAG_SAMPLES = 3
LAG_TREND = 0.8  # Spearman's rank correlation of lag with time that counts as growing


@dataclass
class Node:
    """A service (Microservice), a topic, or a principal no Microservice owns."""

    id: str
    kind: str  # service | topic | principal
    name: str
    team: str
    namespace: str = ""
    principal: str = ""
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    declared: bool = True  # topic: has a Topic resource; principal: False
    schema_subject: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "name": self.name, "team": self.team}
        if self.kind == "service":
            out.update(namespace=self.namespace, principal=self.principal, produces=list(self.produces),
                       consumes=list(self.consumes))
        elif self.kind == "topic":
            out.update(declared=self.declared)
            if self.schema_subject:
                out["schema_subject"] = self.schema_subject
        else:
            out.update(principal=self.principal)
        return out


@dataclass
class LagSample:
    at: datetime
    lag: int


@dataclass
class Edge:
    """A write (service -> topic) or a read (topic -> service) with its traffic in the window."""

    source: str  # the service/principal node id
    topic: str  # topic name
    kind: str  # write | read
    declared: bool = False
    requests: int = 0
    bytes: int = 0
    records: int = 0
    cost: Fraction = Fraction(0)
    groups: dict[str, list[LagSample]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.source}->{self.topic}"

    @property
    def observed(self) -> bool:
        return self.requests > 0 or self.bytes > 0

    def to_json(self, days: int, currency: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "service": self.source, "topic": self.topic,
            "declared": self.declared, "observed": self.observed, "requests": self.requests,
            "bytes": self.bytes, "records": self.records,
            "bytes_per_day": round(self.bytes / days, 1) if days else 0.0,
            "records_per_day": round(self.records / days, 1) if days else 0.0,
            "cost": money(self.cost), "currency": currency,
        }
        if self.kind == "read":
            out["lag"] = [{"group": group, "first": samples[0].lag, "last": samples[-1].lag,
                           "max": max(s.lag for s in samples), "samples": len(samples)}
                          for group, samples in sorted(self.groups.items())]
        return out


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str  # a node or edge id
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message}


@dataclass
class Topology:
    start: date  # first day, inclusive
    end: date  # exclusive
    currency: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[str, Edge] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cluster: str = ""

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def empty(self) -> bool:
        return not self.nodes

    @property
    def teams(self) -> list[str]:
        names = {n.team for n in self.nodes.values()}
        return sorted(names, key=lambda t: (t == UNOWNED, t))

    def services(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind != "topic"]

    def topics(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "topic"]

    def edges_of(self, node_id: str) -> list[Edge]:
        node = self.nodes[node_id]
        if node.kind == "topic":
            return [e for e in self.edges.values() if e.topic == node.name]
        return [e for e in self.edges.values() if e.source == node_id]

    def node_cost(self, node_id: str) -> Fraction:
        return sum((e.cost for e in self.edges_of(node_id)), Fraction(0))

    def to_json(self) -> dict[str, Any]:
        teams = []
        for team in self.teams:
            members = [n for n in self.nodes.values() if n.team == team]
            teams.append({"name": team,
                          "services": sorted(n.id for n in members if n.kind != "topic"),
                          "topics": sorted(n.id for n in members if n.kind == "topic")})
        return {
            "format": FORMAT,
            "cluster": self.cluster,
            "window": {"from": self.start.isoformat(), "to": (self.end - timedelta(days=1)).isoformat(),
                       "days": self.days},
            "currency": self.currency,
            "teams": teams,
            "nodes": [self.nodes[k].to_json() for k in sorted(self.nodes)],
            "edges": [self.edges[k].to_json(self.days, self.currency) for k in sorted(self.edges)],
            "findings": [f.to_json() for f in self.findings],
            "warnings": list(self.warnings),
        }


def money(value: Fraction) -> str:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return str(exact.quantize(QUANTUM, rounding=ROUND_HALF_UP))


def service_id(service: Microservice) -> str:
    return f"service:{service.qualified}"


def topic_id(topic: str) -> str:
    return f"topic:{topic}"


def principal_id(principal: str | None, client_id: str | None) -> str:
    principal = principal or ANONYMOUS
    if principal == ANONYMOUS:
        return f"principal:{principal}/{client_id or ''}"
    return f"principal:{principal}"


def internal(topic: str) -> bool:
    return topic.startswith("__")


def build(records: Iterable[UsageRecord], owners: Ownership, prices: PriceModel, start: date, end: date,
          *, cluster: str = "", schema_subjects: dict[str, str] | None = None) -> Topology:
    """The topology of the UTC days [start, end). Records outside the window are ignored.

    The cyclic garbage collector is paused meanwhile (as while reading usage): with a month of
    records alive, each collection the lag samples trigger would rescan all of them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(records, owners, prices, start, end, cluster=cluster, schema_subjects=schema_subjects)
    finally:
        if was_enabled:
            gc.enable()


def _build(records: Iterable[UsageRecord], owners: Ownership, prices: PriceModel, start: date, end: date,
           *, cluster: str, schema_subjects: dict[str, str] | None) -> Topology:
    topo = Topology(start=start, end=end, currency=prices.currency, cluster=cluster)
    topo.warnings.extend(owners.warnings)
    subjects = schema_subjects or {}
    price = {"write": Fraction(prices.prices["ingress_gib"]), "read": Fraction(prices.prices["egress_gib"])}

    def add_topic(name: str) -> None:
        if topic_id(name) not in topo.nodes:
            team = owners.topics.get(name)
            topo.nodes[topic_id(name)] = Node(id=topic_id(name), kind="topic", name=name, team=team or UNOWNED,
                                              declared=team is not None, schema_subject=subjects.get(name, ""))

    def edge(source: str, topic: str, kind: str) -> Edge:
        key = f"{kind}:{source}->{topic}"
        found = topo.edges.get(key)
        if found is None:
            found = topo.edges[key] = Edge(source=source, topic=topic, kind=kind)
        return found

    for topic in owners.topics:
        if not internal(topic):
            add_topic(topic)
    for service in owners.services:
        sid = service_id(service)
        topo.nodes[sid] = Node(id=sid, kind="service", name=service.name, team=service.team,
                               namespace=service.namespace, principal=service.principal,
                               produces=service.produces, consumes=service.consumes)
        for kind, topics in (("write", service.produces), ("read", service.consumes)):
            for topic in topics:
                add_topic(topic)
                edge(sid, topic, kind).declared = True

    metered = False
    group_samples: list[UsageRecord] = []
    # Sum the counters per (principal, client id, topic) first: a month of snapshots is many
    # records for few distinct keys.
    first = datetime(start.year, start.month, start.day, tzinfo=UTC)
    after = datetime(end.year, end.month, end.day, tzinfo=UTC)
    totals: dict[tuple[str | None, str | None, str], list[int]] = {}
    for r in records:
        if not first <= r.window_start < after:  # the record's day (that of its window start) is in the window
            continue
        metered = True
        kind = r.kind
        if kind == "group":
            group_samples.append(r)
            continue
        topic = r.topic
        if kind != "client" or not topic:
            continue
        key = (r.principal, r.client_id, topic)
        sums = totals.get(key)
        if sums is None:
            sums = totals[key] = [0, 0, 0, 0, 0, 0]
        sums[0] += r.produce_requests
        sums[1] += r.produced_bytes
        sums[2] += r.produced_records
        sums[3] += r.fetch_requests
        sums[4] += r.fetched_bytes
        sums[5] += r.fetched_records

    for (principal, client_id, topic), sums in totals.items():
        if internal(topic):
            continue
        service = owners.resolve(principal, client_id)
        if service is not None:
            source = service_id(service)
        else:
            source = principal_id(principal, client_id)
            if source not in topo.nodes:
                label = (principal or ANONYMOUS) if not source.startswith(f"principal:{ANONYMOUS}/") \
                    else f"{ANONYMOUS} ({client_id or 'no client id'})"
                topo.nodes[source] = Node(id=source, kind="principal", name=label, team=UNOWNED,
                                          principal=principal or ANONYMOUS, declared=False)
        add_topic(topic)
        for kind, (requests, nbytes, nrecords) in (("write", sums[0:3]), ("read", sums[3:6])):
            if requests or nbytes:
                e = edge(source, topic, kind)
                e.requests += requests
                e.bytes += nbytes
                e.records += nrecords

    for e in topo.edges.values():
        e.cost = Fraction(e.bytes, GIB) * price[e.kind]

    _attach_lag(topo, owners, group_samples)
    if not metered:
        topo.warnings.append(f"no usage records between {start} and {end - timedelta(days=1)}: "
                             "the graph shows declared edges only")
    topo.findings = findings(topo)
    return topo


def _attach_lag(topo: Topology, owners: Ownership, samples: list[UsageRecord]) -> None:
    """Each group record's lag goes to the read edge of the service the group belongs to: the
    service whose consumer group it is (spec.consumerGroup, else `<namespace>.<name>`), else the
    one its member client id resolves to, else the one the group id names as a client id would."""
    unmatched: set[str] = set()
    by_group = {s.consumer_group: s for s in owners.services}
    owner_of: dict[tuple[str, str | None], Microservice | None] = {}
    for r in sorted(samples, key=lambda r: r.window_end):
        if not r.topic or internal(r.topic) or not r.group:
            continue
        key = (r.group, r.client_id)
        if key not in owner_of:
            found = by_group.get(r.group)
            found = found or (owners.resolve(None, r.client_id) if r.client_id else None)
            owner_of[key] = found or owners.resolve(None, r.group)
        service = owner_of[key]
        if service is None:
            unmatched.add(r.group)
            continue
        e = topo.edges.get(f"read:{service_id(service)}->{r.topic}")
        if e is None:
            continue
        e.groups.setdefault(r.group, []).append(LagSample(r.window_end, r.lag))
    if unmatched:
        topo.warnings.append(f"lag of consumer group(s) no Microservice owns not shown: {', '.join(sorted(unmatched))}")


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation; 0 when either side is constant."""
    rx, ry = _ranks(xs), _ranks(ys)
    n = len(xs)
    mean = (n + 1) / 2
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mean) ** 2 for a in rx)
    vy = sum((b - mean) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else 0.0


def lag_grows(samples: list[LagSample]) -> bool:
    """At least MIN_LAG_SAMPLES snapshots, the last lag above the first, and either the net growth
    at least as large as all the drops together (a rise with plateaus and small dips) or lag rising
    with time overall (Spearman's rank correlation >= LAG_TREND: a noisy but steady climb). A lag
    that jitters, or falls back whenever the consumer catches up, is not growing."""
    if len(samples) < MIN_LAG_SAMPLES or samples[-1].lag <= samples[0].lag:
        return False
    drops = sum(max(0, a.lag - b.lag) for a, b in zip(samples, samples[1:], strict=False))
    if samples[-1].lag - samples[0].lag >= drops:
        return True
    return spearman([s.at.timestamp() for s in samples], [float(s.lag) for s in samples]) >= LAG_TREND


def findings(topo: Topology) -> list[Finding]:
    """The six kinds of FINDING_KINDS, in that order, each sorted by subject."""
    out: list[Finding] = []
    edges = sorted(topo.edges.values(), key=lambda e: e.id)
    name = {nid: n.name for nid, n in topo.nodes.items()}
    for e in edges:
        node = topo.nodes[e.source]
        if e.kind == "write" and e.observed and not e.declared and node.kind == "service":
            out.append(Finding("undeclared-writer", e.id,
                               f"{node.name} ({node.team}) writes {e.topic} but does not declare it in produces"))
    writers: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        if e.kind == "write" and e.observed:
            writers[e.topic].append(e.source)
    for topic, sources in sorted(writers.items()):
        if len(sources) > 1:
            out.append(Finding("multiple-writers", topic_id(topic),
                               f"{topic} has {len(sources)} writers: {', '.join(name[s] for s in sources)}"))
    for e in edges:
        if e.declared and not e.observed:
            verb = "writes" if e.kind == "write" else "reads"
            out.append(Finding("idle-declared-edge", e.id,
                               f"{name[e.source]} declares it {verb} {e.topic}; no traffic in the window"))
    read = {e.topic for e in edges if e.kind == "read" and e.observed}
    for node in sorted(topo.topics(), key=lambda n: n.id):
        if node.name not in read:
            out.append(Finding("unread-topic", node.id, f"nobody read {node.name} in the window"))
    for node in sorted(topo.services(), key=lambda n: n.id):
        if node.kind == "principal":
            touched = sorted({e.topic for e in edges if e.source == node.id})
            out.append(Finding("unowned-traffic", node.id,
                               f"{node.name} is no Microservice's principal; it used {', '.join(touched)}"))
    for e in edges:
        for group, samples in sorted(e.groups.items()):
            if lag_grows(samples):
                out.append(Finding("growing-lag", e.id,
                                   f"group {group} of {name[e.source]} on {e.topic}: lag grew from "
                                   f"{samples[0].lag} to {samples[-1].lag} over {len(samples)} snapshots"))
    return out

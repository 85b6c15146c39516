"""Property tests: rounded allocations always sum to the rounded total exactly and never go negative."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from strata_operator.billing import allocation, ownership, prices, report, usage
from strata_operator.billing.allocation import apportion, round_cells, round_half_up_units

amounts = st.fractions(min_value=0, max_value=10_000, max_denominator=10**9)


@settings(max_examples=300, deadline=None)
@given(st.lists(amounts, min_size=1, max_size=30))
def test_apportion_sums_exactly_and_stays_within_one_unit(values: list[Fraction]) -> None:
    total = round_half_up_units(sum(values, Fraction(0)))
    units = apportion(values, total)
    assert sum(units) == total
    for v, n in zip(values, units, strict=True):
        assert n >= 0 and abs(Fraction(n) - v * 10_000) < 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from("abcd"), st.integers(0, 3), st.sampled_from("xyz")),
                       amounts, min_size=1, max_size=40))
def test_round_cells_every_level_sums_to_its_parent(cells: dict[tuple, Fraction]) -> None:
    rounded = round_cells(cells, [lambda k: k[0], lambda k: k[1]])
    total = Decimal(round_half_up_units(sum(cells.values(), Fraction(0)))) / 10_000
    assert sum(rounded.values()) == total
    assert all(v >= 0 for v in rounded.values())
    for team in "abcd":
        exact = sum((v for k, v in cells.items() if k[0] == team), Fraction(0))
        got = sum((v for k, v in rounded.items() if k[0] == team), Decimal(0))
        assert abs(Fraction(got) - exact) < Fraction(1, 10_000)


teams = st.sampled_from(["alpha", "beta", "gamma"])
record = st.fixed_dictionaries({
    "kind": st.sampled_from(["client", "topic", "s3", "broker"]),
    "who": st.sampled_from(["alpha-svc", "beta-svc", "gamma-svc", "stranger"]),
    "topic": st.sampled_from(["t-alpha", "t-beta", "t-gamma", "t-orphan", None]),
    "n": st.integers(0, 5 * (1 << 30)),
    "m": st.integers(0, 10**6),
    "hour": st.integers(0, 71),
})


def _to_record(i: int, d: dict) -> usage.UsageRecord:
    start = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(hours=d["hour"])
    common = {"id": str(i), "kind": d["kind"], "cluster": "c", "broker": str(i % 2), "window_start": start,
              "window_end": start + timedelta(hours=1)}
    if d["kind"] == "client":
        return usage.UsageRecord(**common, principal="User:ANONYMOUS", client_id=d["who"], topic=d["topic"],
                                 produced_bytes=d["n"], fetched_bytes=d["m"] * 1000)
    if d["kind"] == "topic":
        return usage.UsageRecord(**common, topic=d["topic"] or "t-orphan", hot_byte_hours=Decimal(d["n"]),
                                 cold_byte_hours=Decimal(d["m"]) * 1000)
    if d["kind"] == "s3":
        return usage.UsageRecord(**common, op="GET" if d["m"] % 2 else "PUT", topic=d["topic"],
                                 requests=d["m"], bytes=d["n"])
    return usage.UsageRecord(**common, uptime_seconds=Decimal(d["m"] % 3601),
                             disk_capacity_byte_hours=Decimal(d["n"]) * 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(record, max_size=25), st.sampled_from(prices.POLICIES), st.sampled_from(report.VIEWS),
       st.booleans())
def test_reports_sum_to_total_and_never_go_negative(raw: list[dict], policy: str, by: str, share_idle: bool) -> None:
    own = ownership.Ownership(
        topics={"t-alpha": "alpha", "t-beta": "beta", "t-gamma": "gamma"},
        services=[ownership.Microservice(f"{t}-svc", "ns", t) for t in ("alpha", "beta", "gamma")])
    model = prices.parse({"prices": {"ingress_gib": 0.01, "egress_gib": 0.02, "disk_gib_month": 0.08,
                                     "s3_storage_gib_month": 0.023, "s3_put_per_1000": 0.005,
                                     "s3_get_per_1000": 0.0004, "vcpu_hour": 0.031611, "ram_gib_hour": 0.004237},
                          "platform": {"operator_cpu": 0.1, "broker_cpu": 1, "broker_memory_gib": 2},
                          "fixed_monthly": {"monitoring": 100},
                          "tax": {"policy": policy, "weights": {"alpha": 2, "beta": 1}, "share_idle": share_idle}},
                         "test")
    records = [_to_record(i, d) for i, d in enumerate(raw)]
    alloc = allocation.allocate(records, model, own, date(2025, 3, 1), date(2025, 3, 4))
    rep = report.build(alloc, by=by)
    exact_units = round_half_up_units(alloc.total)
    assert rep.total == Decimal(exact_units) / 10_000
    group_totals = report.totals_by_group(rep)
    assert sum(t.total for t in group_totals.values()) == rep.total
    assert all(r.cost >= 0 for r in rep.rows)
    assert all(t.total >= 0 for t in group_totals.values())
    if by == "team":
        assert {("unowned",), ("idle",)} <= set(group_totals)

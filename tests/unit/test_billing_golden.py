"""Golden cases of the billing core: REFERENCE.md's two chargeback cases and a hand-computed day."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from billing_scenario import DAY, GIB, write_scenario
from strata_operator.billing import BillingError, allocation, ownership, prices, report, usage
from strata_operator.billing.allocation import UNIT, apportion, round_cells, split_even


def D(text: str) -> Decimal:
    return Decimal(text)


# -- REFERENCE.md: Chitragupta's golden cases -------------------------------------------------

def test_ten_dollars_evenly_by_three() -> None:
    units = split_even(100_000, 3)  # $10 in units of $0.0001
    assert [Decimal(u) * UNIT.numerator / UNIT.denominator for u in units] == [D("3.3334"), D("3.3333"), D("3.3333")]
    assert sum(units) == 100_000


def test_ten_dollars_evenly_by_three_through_the_tax() -> None:
    # Three teams, no direct cost, $10 of fixed platform line on one day -> even over all teams.
    own = ownership.Ownership(topics={"a": "team-a", "b": "team-b", "c": "team-c"})
    model = prices.parse({"hours_per_month": 24, "fixed_monthly": {"monitoring": 10},
                          "prices": {}, "tax": {"policy": "even"}}, "test")
    records = [usage.UsageRecord(id="x", kind="client", cluster="c", broker="0",
                                 window_start=datetime(2025, 3, 1, tzinfo=UTC),
                                 window_end=datetime(2025, 3, 1, 1, tzinfo=UTC), principal="p", client_id="c")]
    alloc = allocation.allocate(records, model, own, DAY, date(2025, 3, 2))
    rep = report.build(alloc, by="team")
    totals = {g[0]: t.total for g, t in report.totals_by_group(rep).items()}
    assert [totals["team-a"], totals["team-b"], totals["team-c"]] == [D("3.3334"), D("3.3333"), D("3.3333")]
    assert totals["unowned"] == 0 and totals["idle"] == 0 and rep.total == D("10.0000")


@pytest.mark.parametrize("amount, expected", [
    (Fraction(1), ["0.3330", "0.3330", "0.3340"]),
    (Fraction(10), ["3.3300", "3.3300", "3.3400"]),
    # $0.01 split 333/333/334: exact 0.00333, 0.00333, 0.00334 -> floors 33+33+33 units, the one left
    # over goes to the largest remainder (team c, .4 of a unit).
    (Fraction(1, 100), ["0.0033", "0.0033", "0.0034"]),
])
def test_usage_split_333_333_334(amount: Fraction, expected: list[str]) -> None:
    weights, rule = allocation.tax_weights("proportional", ["a", "b", "c"],
                                           {"a": Fraction(333), "b": Fraction(333), "c": Fraction(334)}, set(), {})
    assert rule == "proportional"
    shares = allocation.split_exact(amount, weights)
    rounded = round_cells({(t,): v for t, v in shares.items()}, [lambda k: k[0]])
    assert [str(rounded[(t,)]) for t in "abc"] == expected
    assert sum(rounded.values()) == Decimal(str(amount.numerator / amount.denominator)).quantize(D("0.0001"))


def test_apportion_refuses_negative_and_keeps_sum() -> None:
    with pytest.raises(ValueError):
        apportion([Fraction(-1)], 0)
    assert apportion([Fraction(1, 30000)] * 3, 0) == [0, 0, 0]


# -- a hand-computed day ------------------------------------------------------------------------
#
# Price file (below): ingress $0.01/GiB, egress $0.02/GiB, disk $0.08/GiB-month, S3 $0.023/GiB-month,
# PUT $0.005/1000, GET $0.0004/1000, vCPU $0.03/h, RAM $0.004/GiB-h, 730 h/month,
# operator 0.5 vCPU + 0 GiB, broker default 2 vCPU + 8 GiB, monitoring $73/month.
#
# Usage on 2025-03-01 (one broker, up all day):
#   line                          quantity                           cost       billed to
#   ingress  order-service        100 GiB x 0.01                     1.0000     payments
#   ingress  rdkafka (no service)  10 GiB x 0.01                     0.1000     unowned
#   egress   analytics            150 GiB x 0.02                     3.0000     data
#   hot      orders               730 GiB-h x 0.08/730               0.0800     payments (topic owner)
#   cold     orders             73000 GiB-h x 0.023/730              2.3000     payments
#   PUT      orders             20000 x 0.005/1000                   0.1000     payments
#   GET      orders by analytics 50000 x 0.0004/1000                 0.0200     data (the reader)
#   idle disk  2190 - 730 = 1460 GiB-h x 0.08/730                    0.1600     idle
#   tax: broker CPU   2 x 24 h x 0.03                                1.4400
#        broker RAM   8 x 24 h x 0.004                               0.7680
#        operator CPU 0.5 x 24 h x 0.03                              0.3600
#        monitoring   73 x 24/730                                    2.4000
#        S3 PUT of no topic  2000 x 0.005/1000                       0.0100
#        pool                                                        4.9780
# direct: payments 1.00+0.08+2.30+0.10 = 3.48, data 3.00+0.02 = 3.02 (unowned carries no tax)
#
#   policy        payments tax                     data tax                          check
#   proportional  4.978 x 3.48/6.50 = 2.66514461.. 4.978 x 3.02/6.50 = 2.31285538..  sum 4.978
#   even          2.489                            2.489
#   weighted 3:1  3.7335                           1.2445
#
#   proportional totals: payments 6.14514461.. -> 6.1451; data 5.33285538.. -> 5.3329 (largest
#   remainder: 6.1451+5.3328+0.1+0.16 = 11.7379, the last unit goes to data's .55 remainder);
#   unowned 0.1000; idle 0.1600; total 11.7380 = 3.48 + 3.02 + 0.10 + 0.16 + 4.978.
#   (The day's prices, manifests and usage records: tests/support/billing_scenario.py.)

def run_scenario(tmp_path: Path, policy: str | None = None, by: str = "team") -> report.Report:
    usage_dir, price_file, manifests = write_scenario(tmp_path)
    model = prices.load(price_file, policy=policy)
    own = ownership.load_manifests([manifests])
    records = usage.read_dir(usage_dir)
    alloc = allocation.allocate(records.records, model, own, DAY, date(2025, 3, 2))
    return report.build(alloc, by=by, cluster="events")


def team_totals(rep: report.Report) -> dict[str, report.Totals]:
    return {g[0]: t for g, t in report.totals_by_group(rep).items()}


def test_hand_computed_day_proportional(tmp_path: Path) -> None:
    rep = run_scenario(tmp_path)
    t = team_totals(rep)
    assert t["payments"].families == {"network": D("1.0000"), "storage": D("2.3800"), "s3": D("0.1000"),
                                      "tax": D("2.6651"), "idle": D("0")}
    assert t["data"].families == {"network": D("3.0000"), "storage": D("0"), "s3": D("0.0200"),
                                  "tax": D("2.3129"), "idle": D("0")}
    assert t["payments"].total == D("6.1451") and t["data"].total == D("5.3329")
    assert t["unowned"].total == D("0.1000") and t["idle"].total == D("0.1600")
    assert rep.total == D("11.7380") == sum(x.total for x in t.values())
    assert t["payments"].produced_bytes == 100 * GIB and t["data"].fetched_bytes == 150 * GIB
    assert t["unowned"].produced_bytes == 10 * GIB


@pytest.mark.parametrize("policy, payments, data", [
    ("even", D("3.48") + D("2.489"), D("3.02") + D("2.489")),
    ("weighted", D("3.48") + D("3.7335"), D("3.02") + D("1.2445")),
])
def test_hand_computed_day_other_policies(tmp_path: Path, policy: str, payments: Decimal, data: Decimal) -> None:
    rep = run_scenario(tmp_path, policy=policy)
    t = team_totals(rep)
    assert (t["payments"].total, t["data"].total) == (payments, data)
    assert rep.total == D("11.7380") == sum(x.total for x in t.values())


@pytest.mark.parametrize("by", report.VIEWS)
def test_every_view_and_format_adds_up_to_the_same_total(tmp_path: Path, by: str) -> None:
    rep = run_scenario(tmp_path, by=by)
    assert rep.total == D("11.7380")
    assert sum(t.total for t in report.totals_by_group(rep).values()) == rep.total
    daily = report.render_csv(rep).splitlines()[1:]
    assert sum(Decimal(line.split(",")[-2]) for line in daily) == rep.total
    focus = report.focus_rows(rep)
    assert sum(Decimal(r["BilledCost"]) for r in focus) == rep.total
    doc = json.loads(report.render_json(rep))
    assert sum(Decimal(a["x_totalCost"]) for step in doc["data"] for a in step.values()) == rep.total


def test_unknown_weight_team_is_a_clear_error(tmp_path: Path) -> None:
    usage_dir, _, manifests = write_scenario(tmp_path)
    model = prices.parse({"tax": {"policy": "weighted", "weights": {"nobody": 1}}}, "test")
    with pytest.raises(BillingError, match="unknown team.*nobody.*known teams: data, payments"):
        allocation.allocate(usage.read_dir(usage_dir).records, model, ownership.load_manifests([manifests]),
                            DAY, date(2025, 3, 2))


def test_tax_fallbacks() -> None:
    # proportional with no direct cost -> even over active teams -> even over all -> unowned
    assert allocation.tax_weights("proportional", ["a", "b"], {}, {"b"}, {})[1] == "even over active teams"
    assert allocation.tax_weights("proportional", ["a", "b"], {}, set(), {})[1] == "even over all teams"
    assert allocation.tax_weights("weighted", ["a", "b"], {}, set(), {"a": D(0)})[1] == "even over all teams"
    assert allocation.tax_weights("even", [], {}, set(), {}) == ({"unowned": Fraction(1)}, "unowned (no teams)")


def test_defaults_and_costreport_overrides() -> None:
    model = prices.load()
    assert model.prices["s3_storage_gib_month"] == D("0.023") and model.prices["vcpu_hour"] == D("0.031611")
    assert model.policy == "proportional" and model.hours_per_month == 730
    spec = {"prices": {"s3GbMonth": "0.021", "networkGb": "0"}, "sharedCostPolicy": "weighted",
            "weights": {"orders": 2}}
    model = prices.load(overrides=prices.from_costreport_spec(spec))
    assert model.prices["s3_storage_gib_month"] == D("0.021") and model.prices["egress_gib"] == 0
    assert model.policy == "weighted" and model.weights == {"orders": D(2)}
    assert model.prices["disk_gib_month"] == D("0.08")  # untouched keys keep the defaults

"""CostReport: the operator computes the microservice tax on a schedule.

Pure parts (periods, schedule, usage source, price model, ownership) directly; then end to end:
`strata operator` against kmock's emulated API, a real broker with tiered storage (moto) and
metering, real clients whose client ids match Microservice CRs -> per-team totals in status
that add up to the total exactly, and the report (JSON, HTML, FOCUS CSV) in the bucket.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from brokerproc import free_port
from kafkaclients import consume_confluent, produce_as
from kmockserver import KubeEmulatorProcess
from s3server import CREDENTIALS
from strata_operator import costreports
from strata_operator.costreports import Problem
from test_operator_reconcile import API, broker_cr, cond, eventually

REPORT_INTERVAL = 1.0  # STRATA_OPERATOR_COSTREPORT_INTERVAL for the operator under test


# -- pure parts ----------------------------------------------------------------------------


def test_periods():
    assert costreports.period_containing("monthly", date(2025, 12, 31)) == costreports.Period(
        "2025-12", date(2025, 12, 1), date(2026, 1, 1))
    assert costreports.period_containing("weekly", date(2025, 3, 14)) == costreports.Period(
        "2025-W11", date(2025, 3, 10), date(2025, 3, 17))
    assert costreports.period_containing("daily", date(2025, 3, 14)).name == "2025-03-14"
    march = costreports.period_containing("monthly", date(2025, 3, 14))
    assert march.through(date(2025, 3, 14)) == date(2025, 3, 15)
    assert march.through(date(2025, 5, 1)) == date(2025, 4, 1)
    # the first run of a new period writes the previous period's final report first
    assert [p.name for p in costreports.periods_to_compute("monthly", date(2025, 4, 1), "2025-03")] == [
        "2025-03", "2025-04"]
    assert [p.name for p in costreports.periods_to_compute("monthly", date(2025, 4, 2), "2025-04")] == ["2025-04"]
    assert [p.name for p in costreports.periods_to_compute("monthly", date(2025, 4, 2), None)] == ["2025-04"]
    with pytest.raises(Problem) as err:
        costreports.period_containing("hourly", date(2025, 3, 14))
    assert err.value.reason == "InvalidSpec"


def test_schedule():
    now = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
    ready = [{"type": "Ready", "status": "True", "reason": "Computed"}]
    assert costreports.due({}, {}, now, default=3600)
    fresh = {"lastComputed": "2025-03-14T11:30:00Z", "conditions": ready}
    assert not costreports.due(fresh, {}, now, default=3600)
    assert costreports.due(fresh, {"interval": "15m"}, now, default=3600)
    assert costreports.due({**fresh, "conditions": [{"type": "Ready", "status": "False"}]}, {}, now, default=3600)
    assert costreports.interval_seconds({"interval": "1h30m"}) == 5400
    with pytest.raises(Problem):
        costreports.interval_seconds({"interval": "soon"})


def _broker(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "strata", "name": "events"}, "spec": spec}


def _report(namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": "monthly"},
            "spec": {"brokerRef": {"name": "events", "namespace": "strata"}, **spec}}


def test_usage_source_defaults_to_the_brokers_and_can_be_overridden():
    broker = _broker(image="x", tieredStorage={"bucket": "b", "prefix": "p", "endpoint": "http://s3:9000",
                                               "credentialsSecret": {"name": "s3"}})
    source = costreports.usage_source(_report(), broker)
    assert (source.bucket, source.cluster, source.prefix, source.endpoint) == ("b", "strata.events", "p",
                                                                               "http://s3:9000")
    assert source.secret == costreports.Secret("strata", "s3")  # the broker's Secret, in its namespace
    assert source.report_keys("team-a", "monthly", "2025-03")["html"] == \
        "p/clusters/strata.events/reports/team-a/monthly/2025-03.html"
    own = costreports.usage_source(_report(usageSource={"bucket": "other", "clusterId": "c1", "prefix": "",
                                                        "credentialsSecret": {"name": "mine"}}), broker)
    assert (own.bucket, own.cluster, own.prefix) == ("other", "c1", "")
    assert own.secret == costreports.Secret("team-a", "mine")
    with pytest.raises(Problem) as err:
        costreports.usage_source(_report(), _broker(external={"bootstrapServers": "h:9092"}))
    assert err.value.reason == "NoUsageSource"
    secret = {"data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"id").decode(),
                       "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"key").decode()}}
    assert costreports.credentials(own.secret, secret) == {"aws_access_key_id": "id", "aws_secret_access_key": "key"}
    assert costreports.credentials(None, None) == {}
    with pytest.raises(Problem, match="does not exist"):
        costreports.credentials(own.secret, None)


def test_price_model_layers_and_errors():
    cm = {"data": {"prices.yaml": "currency: EUR\nprices: {s3_storage_gib_month: 0.02}\n"
                                  "fixed_monthly: {monitoring: 100}\n"}}
    spec = {"priceModelRef": {"name": "prices"}, "prices": {"networkGb": "0.02"}, "sharedCostPolicy": "even"}
    model = costreports.price_model(spec, "ns", cm)
    assert model.currency == "EUR" and model.price("s3_storage_gib_month") == Decimal("0.02")
    assert model.price("ingress_gib") == model.price("egress_gib") == Decimal("0.02")
    assert model.fixed_monthly == {"monitoring": Decimal("100")} and model.policy == "even"
    assert costreports.price_model({"currency": "USD"}, "ns", None).currency == "USD"
    for configmap, expect in [(None, "does not exist"), ({"data": {"other": "x"}}, "no such key"),
                              ({"data": {"prices.yaml": "prices: {s3_storage_gib_month: -1}"}},
                               "s3_storage_gib_month"),
                              ({"data": {"prices.yaml": "prices: [1"}}, "not valid YAML"),
                              ({"data": {"prices.yaml": "pricez: {}"}}, "pricez")]:
        with pytest.raises(Problem, match=expect) as err:
            costreports.price_model({"priceModelRef": {"name": "prices"}}, "ns", configmap)
        assert err.value.reason == "PriceModelInvalid"


def test_ownership_only_from_the_reports_broker():
    def cr(kind: str, name: str, team: str, broker: str = "events", ns: str = "strata") -> dict[str, Any]:
        return {"metadata": {"namespace": ns, "name": name},
                "spec": {"brokerRef": {"name": broker}, "team": team, "image": "x"}}

    owners = costreports.ownership_of(
        ("strata", "events"),
        [cr("Topic", "orders", "a"), cr("Topic", "other", "z", broker="elsewhere")],
        [cr("Microservice", "svc", "b"), cr("Microservice", "svc2", "z", ns="else")])
    assert owners.topics == {"orders": "a"} and [s.name for s in owners.services] == ["svc"]
    with pytest.raises(Problem) as err:
        costreports.ownership_of(("strata", "events"), [cr("Topic", "t", "idle")], [])
    assert err.value.reason == "OwnershipInvalid"


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path) -> Iterator[KubeEmulatorProcess]:
    emulator = KubeEmulatorProcess(tmp_path).start()
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    log = tmp_path / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # S3 keys come from a Secret
    env.update({"KUBECONFIG": str(emulator.kubeconfig()), "STRATA_OPERATOR_RECONCILE_INTERVAL": "5",
                "STRATA_OPERATOR_RETRY_DELAY": "1", "STRATA_OPERATOR_BROKER_TIMEOUT": "3",
                "STRATA_OPERATOR_COSTREPORT_INTERVAL": str(REPORT_INTERVAL)})
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness",
                             f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    emulator.operator_log = log  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        emulator.stop()
    assert proc.returncode in (0, -15), log.read_text()[-3000:]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_costreport_per_team_totals_and_report_in_the_bucket(kube, broker_factory, s3):
    settings = s3.broker_settings(**{"metering.snapshot.interval.ms": "500", "metering.sample.interval.ms": "200",
                                     "tiered.upload.interval.ms": "1000", "auto.create.topics.enable": "false"})
    broker = broker_factory(settings, env=CREDENTIALS)
    broker_cr(kube, "events", broker.bootstrap)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"}, "data": {
        "AWS_ACCESS_KEY_ID": _b64("testing"), "AWS_SECRET_ACCESS_KEY": _b64("testing")}})
    for name, team, tiered in (("order-events", "orders", True), ("shipment-events", "shipping", False)):
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "events"}, "team": team, "partitions": 2, "tiered": tiered,
                              "retention": "forever"}})
    for name, team, produces, consumes in (("order-service", "orders", ["order-events"], []),
                                           ("shipping-service", "shipping", ["shipment-events"], ["order-events"])):
        kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "events"}, "team": team, "image": f"example/{name}:1",
                              "produces": produces, "consumes": consumes}})
    for name in ("order-events", "shipment-events"):
        eventually(lambda n=name: cond(kube.get("Topic", n), "Ready").get("status") == "True", f"Topic {name}",
                   kube=kube)

    sent_orders = produce_as(broker.bootstrap, "order-service", "order-events", 300)
    sent_shipments = produce_as(broker.bootstrap, "shipping-service", "shipment-events", 100)
    received = consume_confluent(broker.bootstrap, "order-events", 2, expected=300, timeout=30,
                                 **{"client.id": "shipping-service"})
    received_bytes = sum(len(r.value) for r in received)
    assert received_bytes == sent_orders

    usage_source = {"bucket": s3.name, "endpoint": s3.server.endpoint, "clusterId": "strata-local",
                    "credentialsSecret": {"name": "s3-keys"}}
    kube.create({"apiVersion": API, "kind": "CostReport", "metadata": {"name": "monthly"},
                 "spec": {"brokerRef": {"name": "events"}, "period": "monthly", "usageSource": usage_source,
                          "sharedCostPolicy": "proportional"}})

    def settled() -> dict[str, Any] | None:
        cr = kube.get("CostReport", "monthly")
        teams = {t["team"]: t for t in (cr.get("status") or {}).get("teams") or []}
        if cond(cr, "Ready").get("reason") != "Computed" or not {"orders", "shipping"} <= set(teams):
            return None
        produced, fetched = teams["orders"]["producedBytes"], teams["shipping"]["fetchedBytes"]
        if abs(produced - sent_orders) > sent_orders / 100 or abs(fetched - received_bytes) > received_bytes / 100:
            return None  # the last snapshots are not in the bucket yet
        return cr

    cr = eventually(settled, "per-team totals matching the clients' bytes", timeout=30, kube=kube)
    status = cr["status"]
    teams = {t["team"]: t for t in status["teams"]}
    assert {"orders", "shipping", "unowned", "idle"} <= set(teams)
    assert abs(teams["shipping"]["producedBytes"] - sent_shipments) <= sent_shipments / 100
    assert sum(Decimal(t["total"]) for t in status["teams"]) == Decimal(status["total"])
    assert sum(Decimal(t["shared"]) for t in status["teams"]) == Decimal(status["sharedCost"])
    for t in status["teams"]:
        assert Decimal(t["direct"]) + Decimal(t["shared"]) <= Decimal(t["total"])
    assert Decimal(status["total"]) > 0 and Decimal(teams["orders"]["total"]) > 0
    assert Decimal(teams["shipping"]["total"]) > 0
    assert status["currency"] == "USD" and status["lastComputed"]
    today = datetime.now(UTC).date()
    assert status["period"] == f"{today:%Y-%m}" and status["periodStart"] == f"{today:%Y-%m}-01T00:00:00Z"
    ready = cond(cr, "Ready")
    assert ready["status"] == "True" and status["total"] in ready["message"]

    # the full report, in the bucket next to the usage
    base = f"clusters/strata-local/reports/default/monthly/{today:%Y-%m}"
    assert status["reports"] == {ext: f"s3://{s3.name}/{base}.{ext}" for ext in ("json", "html", "csv")}
    objects = s3.objects(prefix="clusters/strata-local/reports/")
    assert {f"{base}.json", f"{base}.html", f"{base}.csv"} <= set(objects)
    doc = json.loads(s3.read(f"{base}.json"))
    assert sum(Decimal(v) for v in doc["x_strata"]["totals"].values()) == Decimal(doc["x_strata"]["totalCost"])
    assert {"orders", "shipping"} <= set(doc["x_strata"]["totals"])
    focus = s3.read(f"{base}.csv").decode()
    assert focus.startswith("BilledCost,BillingAccountId,") and "x_Team" in focus.splitlines()[0]
    page = s3.read(f"{base}.html").decode()
    assert "<svg" in page
    # the business topology of the period: the services and the topics they wrote and read
    assert '<figure class="topology"' in page
    for node in ("service:default.order-service", "service:default.shipping-service",
                 "topic:order-events", "topic:shipment-events"):
        assert f'data-id="{node}"' in page
    assert 'data-id="write:service:default.order-service-&gt;order-events"' in page

    # a bad price model is a condition, not a crash; fixing it recovers on the next tick
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prices"},
                 "data": {"prices.yaml": "prices:\n  s3_storage_gib_month: -1\n"}})
    kube.create({"apiVersion": API, "kind": "CostReport", "metadata": {"name": "priced"},
                 "spec": {"brokerRef": {"name": "events"}, "period": "daily", "usageSource": usage_source,
                          "priceModelRef": {"name": "prices"}}})
    bad = eventually(lambda: (c := cond(kube.get("CostReport", "priced"), "Ready")).get("reason")
                     == "PriceModelInvalid" and c, "PriceModelInvalid", timeout=15, kube=kube)
    assert bad["status"] == "False" and "s3_storage_gib_month" in bad["message"] and "negative" in bad["message"]
    good = "currency: EUR\nprices:\n  s3_storage_gib_month: 0.02\n"
    kube.patch("ConfigMap", "prices", {"data": {"prices.yaml": good}})
    fixed = eventually(lambda: (c := kube.get("CostReport", "priced")) and cond(c, "Ready").get("reason")
                       == "Computed" and c, "recomputed after the fix", timeout=15, kube=kube)
    assert fixed["status"]["currency"] == "EUR" and fixed["status"]["period"] == today.isoformat()
    assert sum(Decimal(t["total"]) for t in fixed["status"]["teams"]) == Decimal(fixed["status"]["total"])

    # a usage source with nothing in it: an explicit empty report
    kube.create({"apiVersion": API, "kind": "CostReport", "metadata": {"name": "elsewhere"},
                 "spec": {"brokerRef": {"name": "events"}, "usageSource": {**usage_source, "clusterId": "nobody"}}})
    empty = eventually(lambda: (c := kube.get("CostReport", "elsewhere")) and cond(c, "Ready").get("reason")
                       == "NoUsage" and c, "NoUsage", timeout=15, kube=kube)
    assert empty["status"]["total"] == "0.0000"

    # the schedule: lastComputed moves on the timer
    first = kube.get("CostReport", "monthly")["status"]["lastComputed"]
    eventually(lambda: kube.get("CostReport", "monthly")["status"]["lastComputed"] != first, "a timed recompute",
               timeout=10, kube=kube)
    assert date.fromisoformat(status["periodEnd"][:10]) - timedelta(days=1) >= today

    # deleting a CostReport stops its timer and keeps the reports already written
    kube.delete("CostReport", "monthly")
    eventually(lambda: kube.get("CostReport", "monthly") is None, "CostReport gone", timeout=15, kube=kube)
    assert f"{base}.json" in s3.objects(prefix="clusters/strata-local/reports/")

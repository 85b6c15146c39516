"""`strata topology` on recorded usage: edges, traffic, cost, the six findings, every format, bad input.

The usage files are written in the brokers' format (billing.usage); the live-broker version of
this scenario is tests/integration/cli/test_topology_live.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kmockserver import KubeEmulatorProcess
from s3server import CREDENTIALS, S3Bucket
from strata_cli.main import main
from strata_operator.billing import ownership
from strata_operator.billing.usage import UsageRecord
from strata_operator.topology.model import LagSample, lag_grows
from strata_operator.topology.observed import observed_by_service
from topology_scenario import MANIFESTS

DAY = datetime(2025, 3, 1, tzinfo=UTC)
WINDOW = ["--from", "2025-03-01", "--to", "2025-03-02"]  # two days



class Records:
    """Usage records of the test, in the brokers' format."""

    def __init__(self) -> None:
        self.items: list[UsageRecord] = []

    def client(self, principal: str, topic: str, *, hour: int = 10, day: int = 0, client_id: str = "app",
               produced: tuple[int, int, int] = (0, 0, 0), fetched: tuple[int, int, int] = (0, 0, 0)) -> None:
        start = DAY + timedelta(days=day, hours=hour)
        self.items.append(UsageRecord(
            id=f"r{len(self.items)}", kind="client", cluster="c", broker="0", window_start=start,
            window_end=start + timedelta(hours=1), principal=principal, client_id=client_id, topic=topic,
            produced_bytes=produced[0], produced_records=produced[1], produce_requests=produced[2],
            fetched_bytes=fetched[0], fetched_records=fetched[1], fetch_requests=fetched[2]))

    def lag(self, group: str, topic: str, lag: int, hour: int) -> None:
        start = DAY + timedelta(hours=hour)
        self.items.append(UsageRecord(id=f"r{len(self.items)}", kind="group", cluster="c", broker="0",
                                      window_start=start, window_end=start + timedelta(hours=1),
                                      group=group, topic=topic, lag=lag))

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0-1.jsonl").write_text("".join(r.to_json() + "\n" for r in self.items))
        return folder


def scenario(tmp_path: Path) -> tuple[Path, Path]:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(MANIFESTS)
    rec = Records()
    rec.client("User:shop.checkout", "orders", produced=(2_000_000, 20_000, 40))
    rec.client("User:shop.checkout", "orders", day=1, produced=(1_000_000, 10_000, 20))
    rec.client("User:shop.fulfilment", "orders", fetched=(2_500_000, 25_000, 90))
    rec.client("User:finance.billing", "orders", fetched=(3_000_000, 30_000, 90))
    rec.client("User:finance.billing", "invoices", produced=(400_000, 4_000, 10))
    rec.client("User:finance.billing", "orders", produced=(1_000, 10, 1))  # writes a topic it does not declare
    rec.client("User:intruder", "invoices", fetched=(50_000, 400, 5))  # no Microservice's principal
    rec.client("User:shop.checkout", "__consumer_offsets", fetched=(10, 1, 1))  # internal: left out
    for hour, lag in ((10, 5), (11, 50), (12, 500)):
        rec.lag("shop.fulfil", "orders", lag, hour)
    for hour, lag in ((10, 30), (11, 0), (12, 0)):
        rec.lag("finance.billing", "orders", lag, hour)
    return manifests, rec.write(tmp_path / "usage")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["topology", *args])


def topo_json(tmp_path: Path, *extra: str) -> dict[str, Any]:
    manifests, usage = scenario(tmp_path)
    result = run(*WINDOW, "-f", str(manifests), "--usage", str(usage), "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_edges_carry_traffic_per_day_cost_and_lag(tmp_path: Path) -> None:
    doc = topo_json(tmp_path)
    edges = {e["id"]: e for e in doc["edges"]}
    assert set(edges) == {
        "write:service:shop.checkout->orders", "read:service:shop.fulfilment->orders",
        "read:service:finance.billing->orders", "write:service:finance.billing->invoices",
        "write:service:finance.billing->orders", "read:service:finance.ledger->invoices",
        "read:principal:User:intruder->invoices"}
    w = edges["write:service:shop.checkout->orders"]
    assert (w["bytes"], w["records"], w["requests"], w["declared"]) == (3_000_000, 30_000, 60, True)
    assert w["bytes_per_day"] == 1_500_000 and w["records_per_day"] == 15_000
    assert w["cost"] == "0.0000"  # 3 MB at $0.01/GiB rounds to nothing
    undeclared = edges["write:service:finance.billing->orders"]
    assert undeclared["declared"] is False and undeclared["observed"] is True
    idle = edges["read:service:finance.ledger->invoices"]
    assert (idle["declared"], idle["observed"], idle["bytes"]) == (True, False, 0)
    lag = edges["read:service:shop.fulfilment->orders"]["lag"]
    assert lag == [{"group": "shop.fulfil", "first": 5, "last": 500, "max": 500, "samples": 3}]
    assert doc["window"] == {"from": "2025-03-01", "to": "2025-03-02", "days": 2}
    assert {t["name"]: t["services"] for t in doc["teams"]} == {
        "finance": ["service:finance.billing", "service:finance.ledger"],
        "shop": ["service:shop.checkout", "service:shop.fulfilment"],
        "unowned": ["principal:User:intruder"]}
    topics = {n["id"]: n for n in doc["nodes"] if n["kind"] == "topic"}
    assert set(topics) == {"topic:orders", "topic:invoices"}
    assert topics["topic:invoices"]["schema_subject"] == "invoices-value"
    assert "schema_subject" not in topics["topic:orders"]


def test_costs_follow_the_price_model(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("prices: {ingress_gib: 1000, egress_gib: 2000}\n")
    edges = {e["id"]: e for e in topo_json(tmp_path, "--prices", str(prices))["edges"]}
    # 3,000,000 B / 2^30 x $1000 = 2.79396...; reads at $2000/GiB
    assert edges["write:service:shop.checkout->orders"]["cost"] == "2.7940"
    assert edges["read:service:finance.billing->orders"]["cost"] == "5.5879"


def test_exactly_the_expected_findings(tmp_path: Path) -> None:
    findings = [(f["kind"], f["subject"]) for f in topo_json(tmp_path)["findings"]]
    assert findings == [
        ("undeclared-writer", "write:service:finance.billing->orders"),
        ("multiple-writers", "topic:orders"),
        ("idle-declared-edge", "read:service:finance.ledger->invoices"),
        ("unowned-traffic", "principal:User:intruder"),
        ("growing-lag", "read:service:shop.fulfilment->orders"),
    ]


def test_unread_topic_is_found(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    extra = tmp_path / "more.yaml"
    extra.write_text("apiVersion: strata.dev/v1alpha1\nkind: Topic\nmetadata: {name: audit}\nspec: {team: shop}\n")
    result = run(*WINDOW, "-f", str(manifests), "-f", str(extra), "--usage", str(usage), "--format", "json")
    kinds = [(f["kind"], f["subject"]) for f in json.loads(result.stdout)["findings"]]
    assert ("unread-topic", "topic:audit") in kinds
    assert [k for k in kinds if k[0] == "unread-topic"] == [("unread-topic", "topic:audit")]


@pytest.mark.parametrize("fmt, checks", [
    ("dot", ["digraph topology", '"service:shop.checkout" -> "topic:orders"', "style=dashed", "color=red"]),
    ("mermaid", ["flowchart LR", 'subgraph', "-.->", '[["orders"]]']),
    ("svg", ['<svg xmlns="http://www.w3.org/2000/svg"', 'data-id="topic:orders"', 'class="edge"']),
    ("html", ["Content-Security-Policy", "default-src 'none'", "undeclared-writer", 'id="topology-data"']),
    ("table", ["checkout", "Findings (5)", "undeclared-writer"]),
])
def test_formats(tmp_path: Path, fmt: str, checks: list[str]) -> None:
    manifests, usage = scenario(tmp_path)
    result = run(*WINDOW, "-f", str(manifests), "--usage", str(usage), "--format", fmt)
    assert result.exit_code == 0, result.output
    for text in checks:
        assert text in result.stdout, text


def test_svg_has_one_node_per_service_and_topic_and_one_path_per_edge(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    svg = run(*WINDOW, "-f", str(manifests), "--usage", str(usage), "--format", "svg").stdout
    assert svg.count('<g class="node"') == 5 + 2  # 4 services + 1 unowned principal, 2 topics
    assert svg.count('<path class="edge"') == 7


def test_output_file(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    out = tmp_path / "t.html"
    result = run(*WINDOW, "-f", str(manifests), "--usage", str(usage), "--format", "html", "-o", str(out))
    assert result.exit_code == 0 and "wrote" in result.stderr and out.read_text().startswith("<!DOCTYPE html>")


# -- bad input: one line, no traceback ------------------------------------------------------------

def one_line_error(result: Result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr


def test_manifest_that_is_not_yaml(tmp_path: Path) -> None:
    _, usage = scenario(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Topic\nmetadata: {name: [unclosed\n")
    result = run(*WINDOW, "-f", str(bad), "--usage", str(usage))
    one_line_error(result, "is not valid YAML")


def test_usage_records_of_another_format_version(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    (usage / "future.jsonl").write_text('{"v":2,"id":"x","kind":"client"}\n')
    result = run(*WINDOW, "-f", str(manifests), "--usage", str(usage))
    one_line_error(result, "unsupported usage record version v=2")


def test_usage_file_that_is_not_json(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    (usage / "garbage.jsonl").write_text("this is not json\n{}\n")
    one_line_error(run(*WINDOW, "-f", str(manifests), "--usage", str(usage)), "not valid JSON")


def test_missing_usage_dir_and_backwards_window(tmp_path: Path) -> None:
    manifests, _ = scenario(tmp_path)
    one_line_error(run(*WINDOW, "-f", str(manifests), "--usage", str(tmp_path / "nope")), "does not exist")
    result = run("--from", "2025-03-02", "--to", "2025-03-01", "-f", str(manifests), "--usage", str(tmp_path))
    assert result.exit_code == 2 and "is before --from" in result.output and "Traceback" not in result.output


def test_window_with_no_data_is_the_declared_graph_with_a_warning(tmp_path: Path) -> None:
    manifests, usage = scenario(tmp_path)
    result = run("--from", "2024-01-01", "--to", "2024-01-07", "-f", str(manifests), "--usage", str(usage),
                 "--format", "json")
    assert result.exit_code == 0
    assert "warning: no usage records between 2024-01-01 and 2024-01-07" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["warnings"] and all(not e["observed"] for e in doc["edges"])
    assert len(doc["edges"]) == 5  # the declared ones


def test_no_manifests_no_data_is_an_empty_graph_with_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "none.yaml").write_text("# nothing here\n")
    for fmt in ("json", "html", "svg", "dot", "mermaid", "table"):
        result = run("--from", "2024-01-01", "--to", "2024-01-01", "-f", str(tmp_path / "none.yaml"),
                     "--usage", str(empty), "--format", fmt)
        assert result.exit_code == 0, (fmt, result.output)
        assert "warning: no usage records" in result.stderr
    doc = json.loads(run("--from", "2024-01-01", "--to", "2024-01-01", "-f", str(tmp_path / "none.yaml"),
                         "--usage", str(empty), "--format", "json").stdout)
    assert doc["nodes"] == [] and doc["edges"] == [] and doc["findings"] == []


def test_without_manifests_and_without_a_cluster_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run(*WINDOW, "--usage", str(tmp_path))
    one_line_error(result, "cannot read Topic/Microservice resources from the cluster")


# -- growing lag ---------------------------------------------------------------------------------

def samples(lags: list[int]) -> list[LagSample]:
    return [LagSample(DAY + timedelta(minutes=i), lag) for i, lag in enumerate(lags)]


@pytest.mark.parametrize("lags, grows", [
    ([5, 50, 500], True),
    ([0, 10, 12, 30, 25, 60, 80, 120], True),  # rising with a dip
    ([0, 0, 0, 0], False),  # caught up all along
    ([3, 17, 2, 19, 0, 11, 6, 14], False),  # jitter around a small lag
    ([100, 900, 0, 800, 0, 950, 0, 120], False),  # sawtooth: falls back whenever the consumer catches up
    ([500, 50, 5], False),  # shrinking
    ([5, 500], False),  # too few snapshots to call it a trend
    ([0, 0, 10, 20, 30, 40, 50, 60] + [60] * 40, True),  # grew, then a long plateau
    ([0] * 30 + [10, 20, 30, 40, 50, 60], True),  # a long calm, then growth
    ([i + (25 if i % 2 else -25) for i in range(0, 400, 2)], True),  # a noisy but steady climb
])
def test_lag_grows(lags: list[int], grows: bool) -> None:
    assert lag_grows(samples(lags)) is grows


# -- a Microservice's observed produce/consume (for its status) ---------------------------------------

def test_observed_produce_and_consume_of_the_last_day(tmp_path: Path) -> None:
    manifests, _ = scenario(tmp_path)
    owners = ownership.load_manifests([manifests])
    rec = Records()
    rec.client("User:finance.billing", "orders", hour=9, fetched=(700, 7, 3))  # more than a day before `now`
    rec.client("User:finance.billing", "orders", day=1, hour=9, fetched=(300, 3, 2))
    rec.client("User:finance.billing", "orders", day=1, hour=9, produced=(50, 1, 1))  # undeclared
    rec.client("User:finance.billing", "invoices", day=1, hour=10, produced=(80, 2, 1))
    rec.client("User:finance.billing", "__consumer_offsets", day=1, hour=10, fetched=(9, 9, 9))
    now = DAY + timedelta(days=1, hours=12)
    status = observed_by_service(rec.items, owners, now)
    assert set(status) == {"shop.checkout", "shop.fulfilment", "finance.billing", "finance.ledger"}
    billing = status["finance.billing"]
    assert billing["window"] == "24h"
    assert billing["topics"] == [
        {"topic": "invoices", "direction": "produce", "bytes": 80, "records": 2, "declared": True,
         "lastSeen": "2025-03-02T11:00:00Z"},
        {"topic": "orders", "direction": "produce", "bytes": 50, "records": 1, "declared": False,
         "lastSeen": "2025-03-02T10:00:00Z"},
        # the read of the day before is not counted, but the last one is when it was seen
        {"topic": "orders", "direction": "consume", "bytes": 300, "records": 3, "declared": True,
         "lastSeen": "2025-03-02T10:00:00Z"}]
    assert status["finance.ledger"]["topics"] == [
        {"topic": "invoices", "direction": "consume", "bytes": 0, "records": 0, "declared": True}]
    # traffic that stopped more than a day ago: 0 in the window, still when it was last seen
    later = observed_by_service(rec.items, owners, now + timedelta(days=1))["finance.billing"]["topics"]
    assert [(t["topic"], t["direction"], t["bytes"], t.get("lastSeen")) for t in later] == [
        ("invoices", "produce", 0, "2025-03-02T11:00:00Z"), ("orders", "consume", 0, "2025-03-02T10:00:00Z")]
    # nothing in it moves with the clock alone
    assert observed_by_service(rec.items, owners, now + timedelta(minutes=5)) == status


# -- the cluster's resources as the source (no -f) -----------------------------------------------------

def test_resources_from_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -f the Topics and Microservices come from the API server the kubeconfig names (here
    the emulated one), across namespaces; -n restricts to one."""
    _, usage = scenario(tmp_path)
    kube = KubeEmulatorProcess(tmp_path).start()
    try:
        for doc in yaml.safe_load_all(MANIFESTS):
            kube.create(doc)
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig()))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        result = run(*WINDOW, "--usage", str(usage), "--format", "json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert {n["id"] for n in doc["nodes"] if n["kind"] == "service"} == {
            "service:shop.checkout", "service:shop.fulfilment", "service:finance.billing", "service:finance.ledger"}
        assert [f["kind"] for f in doc["findings"]] == [
            "undeclared-writer", "multiple-writers", "idle-declared-edge", "unowned-traffic", "growing-lag"]
        only_shop = json.loads(run(*WINDOW, "--usage", str(usage), "--format", "json", "-n", "shop").stdout)
        assert {n["id"] for n in only_shop["nodes"] if n["kind"] == "service"} == {
            "service:shop.checkout", "service:shop.fulfilment"}
    finally:
        kube.stop()


# -- usage from the bucket ----------------------------------------------------------------------------

def test_usage_from_the_bucket(tmp_path: Path, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """--bucket reads `clusters/<cluster>/usage/<yyyy>/<mm>/<dd>/*.jsonl`, as the brokers upload them."""
    manifests, usage = scenario(tmp_path)
    client = s3.server.client()
    body = (usage / "0-1.jsonl").read_bytes()
    client.put_object(Bucket=s3.name, Key="p/clusters/events/usage/2025/03/01/0-1.jsonl", Body=body)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    args = [*WINDOW, "-f", str(manifests), "--bucket", s3.name, "--endpoint", s3.server.endpoint, "--prefix", "p",
            "--cluster", "events", "--format", "json"]
    from_bucket = json.loads(run(*args).stdout)
    from_dir = json.loads(run(*WINDOW, "-f", str(manifests), "--usage", str(usage), "--format", "json",
                              "--cluster", "events").stdout)
    assert from_bucket == from_dir and len(from_bucket["edges"]) == 7
    missing = run(*[a if a != s3.name else "no-such-bucket" for a in args])
    one_line_error(missing, "cannot read usage from s3://no-such-bucket/")
    # --upload (the chart's Topology CronJob): the page goes into the bucket, nothing to stdout
    key = "p/clusters/events/topology/topology.html"
    uploaded = run(*args[:-2], "--format", "html", "--upload", key)
    assert uploaded.exit_code == 0, uploaded.output
    assert uploaded.stdout == "" and f"wrote s3://{s3.name}/{key}" in uploaded.stderr
    page = client.get_object(Bucket=s3.name, Key=key)
    assert page["ContentType"].startswith("text/html") and b'data-id="topic:orders"' in page["Body"].read()
    one_line_error(run(*args, "--format", "table", "--upload", key),
                   "--upload needs --bucket and a --format other than table")
    assert json.loads(run("--to", "2025-03-02", "--days", "2", *args[4:]).stdout) == from_bucket

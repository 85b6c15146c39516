"""`strata cost report` end to end on recorded usage: formats, FOCUS columns, HTML, clear errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from billing_scenario import write_scenario
from click.testing import CliRunner, Result
from strata_cli.main import main
from strata_operator.billing import report

PERIOD = ["--from", "2025-03-01", "--to", "2025-03-01"]


@pytest.fixture
def scenario(tmp_path: Path) -> dict[str, str]:
    usage_dir, price_file, manifests = write_scenario(tmp_path)
    return {"usage": str(usage_dir), "prices": str(price_file), "manifests": str(manifests), "tmp": str(tmp_path)}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["cost", "report", *args], catch_exceptions=False)


def base(s: dict[str, str]) -> list[str]:
    return [*PERIOD, "--usage", s["usage"], "--prices", s["prices"], "-f", s["manifests"], "--cluster", "events"]


def test_table_by_team(scenario: dict[str, str]) -> None:
    result = run(*base(scenario))
    assert result.exit_code == 0, result.output
    for text in ("payments", "data", "unowned", "idle", "6.1451", "5.3329", "11.7380"):
        assert text in result.stdout
    assert "match no Microservice" in result.stderr  # rdkafka


def test_csv_has_a_date_on_every_row(scenario: dict[str, str]) -> None:
    result = run(*base(scenario), "--format", "csv", "--by", "microservice")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and all(r["date"] == "2025-03-01" for r in rows)
    assert sum(Decimal(r["total"]) for r in rows) == Decimal("11.7380")
    services = {(r["team"], r["microservice"]) for r in rows}
    assert {("payments", "order-service"), ("data", "analytics"), ("unowned", "(unknown)")} <= services


def test_json_is_shaped_like_opencost(scenario: dict[str, str]) -> None:
    doc = json.loads(run(*base(scenario), "--format", "json").stdout)
    assert doc["code"] == 200 and len(doc["data"]) == 1
    step = doc["data"][0]
    assert {"payments", "data", "__unallocated__", "__idle__"} <= set(step)
    for alloc in step.values():
        assert {"name", "properties", "window", "totalCost", "sharedCost", "networkCost", "pvCost"} <= set(alloc)
    assert doc["x_strata"]["totalCost"] == "11.7380"


def test_focus_has_every_mandatory_column(scenario: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "focus.csv"
    result = run(*base(scenario), "--format", "focus", "--output", str(out))
    assert result.exit_code == 0
    reader = csv.DictReader(io.StringIO(out.read_text()))
    assert set(report.FOCUS_MANDATORY) <= set(reader.fieldnames or [])
    assert len(report.FOCUS_MANDATORY) == 21
    extra = set(reader.fieldnames or []) - set(report.FOCUS_MANDATORY)
    assert extra and all(c.startswith("x_") for c in extra)
    rows = list(reader)
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal("11.7380")
    for r in rows:
        assert r["BillingCurrency"] == "USD" and r["ChargeCategory"] == "Usage" and r["ChargeClass"] == ""
        assert r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] == r["ContractedCost"]
        assert r["ChargePeriodStart"] == "2025-03-01T00:00:00Z" and r["ChargePeriodEnd"] == "2025-03-02T00:00:00Z"
        assert all(r[c] != "" for c in report.FOCUS_MANDATORY if c != "ChargeClass")


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: list[str] = []
        self.svgs = 0
        self.rects_in_figure: dict[str, int] = {}
        self.external: list[str] = []
        self.scripts = 0
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._figure = a.get("data-view") or ""
            self.figures.append(self._figure)
            self.rects_in_figure[self._figure] = 0
        elif tag == "svg":
            self.svgs += 1
        elif tag == "rect" and self._figure is not None:
            self.rects_in_figure[self._figure] += 1
        elif tag in ("script", "link", "img", "iframe"):
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None


def test_html_is_self_contained_with_one_chart_per_view(scenario: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert run(*base(scenario), "--format", "html", "--output", str(out)).exit_code == 0
    page = _Structure()
    page.feed(out.read_text())
    assert page.figures == ["per-day", "cost-type", "top-topics"]
    assert page.svgs == 3
    assert all(n > 0 for n in page.rects_in_figure.values())
    assert page.scripts == 0 and page.external == []
    assert "11.7380" in out.read_text()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("`chromium` is not installed: HTML checked structurally only, no screenshot")
    shot = Path("test-artifacts") / "cost-report.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot.resolve()}",
                    "--window-size=1100,1400", out.resolve().as_uri()], check=True, timeout=60,
                   capture_output=True)
    assert shot.stat().st_size > 0


def test_empty_period_is_an_explicit_empty_report(scenario: dict[str, str]) -> None:
    args = ["--from", "2024-01-01", "--to", "2024-01-31", "--usage", scenario["usage"], "-f", scenario["manifests"]]
    result = run(*args)
    assert result.exit_code == 0 and "No usage records in 2024-01-01 .. 2024-01-31: empty report" in result.stdout
    doc = json.loads(run(*args, "--format", "json").stdout)
    assert doc["data"] == [] and doc["x_strata"]["totalCost"] == "0.0000"
    html = run(*args, "--format", "html").stdout
    assert html.count("<svg") == 3 and "empty report" in html


@pytest.mark.parametrize("content, message", [
    ("prices: {s3_storage_gib_month: -1}\n", "prices.s3_storage_gib_month: must not be negative"),
    ("prices: {s3_storage_gb_month: 0.02}\n", "unknown key(s) s3_storage_gb_month"),
    ("prices: {vcpu_hour: cheap}\n", "prices.vcpu_hour: expected a number"),
    ("prices: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("tax: {policy: random}\n", "tax.policy must be one of"),
])
def test_malformed_price_file_is_a_clear_error(scenario: dict[str, str], tmp_path: Path, content: str,
                                               message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = run(*PERIOD, "--usage", scenario["usage"], "--prices", str(bad))
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--team", "marketing"], "unknown team(s) marketing; known teams: data, payments"),
    (["--prices", "/nonexistent/prices.yaml"], "cannot read price file /nonexistent/prices.yaml"),
    (["-f", "/nonexistent"], "manifest path /nonexistent does not exist"),
])
def test_bad_arguments_are_clear_errors(scenario: dict[str, str], args: list[str], message: str) -> None:
    result = run(*PERIOD, "--usage", scenario["usage"], "-f", scenario["manifests"], *args)
    assert result.exit_code == 1 and message in result.stderr


def test_usage_source_and_dates_are_checked(scenario: dict[str, str]) -> None:
    assert "exactly one usage source" in run(*PERIOD).output
    result = run("--from", "2025-03-02", "--to", "2025-03-01", "--usage", scenario["usage"])
    assert result.exit_code == 2 and "is before --from" in result.output
    assert run("--from", "March", "--to", "2025-03-01", "--usage", scenario["usage"]).exit_code == 2


def test_team_filter_keeps_the_full_reports_amounts(scenario: dict[str, str]) -> None:
    result = run(*base(scenario), "--team", "data", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["team"] for r in rows] == ["data"] and rows[0]["total"] == "5.3329"


def test_console_script_runs_without_a_traceback(scenario: dict[str, str]) -> None:
    strata = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "strata"
    if not strata.exists():
        pytest.skip("no .venv/bin/strata console script")
    bad = Path(scenario["tmp"]) / "bad.yaml"
    bad.write_text("prices: {vcpu_hour: -3}\n")
    proc = subprocess.run([str(strata), "cost", "report", *PERIOD, "--usage", scenario["usage"], "--prices",
                           str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "must not be negative" in proc.stderr

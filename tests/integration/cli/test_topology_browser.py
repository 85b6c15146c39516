"""The topology HTML in a real browser (Debian's headless Chromium) from a file URL: one SVG node per
service and topic, one edge per flow, the click panel, and no network request, all read from the
DOM the browser serialized after running the page's script; a 50-service, 100-topic topology is
interactive in under 2 s. A screenshot is kept in test-artifacts/topology.png.
"""

from __future__ import annotations

import importlib.util
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import headless
import pytest
from click.testing import CliRunner
from strata_cli.main import main
from test_topology import WINDOW, scenario

pytestmark = pytest.mark.skipif(headless.chromium() is None,
                                reason="chromium is not installed (Debian package `chromium`)")


class Dom(HTMLParser):
    """What the test reads from the dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, str] = {}  # data-id -> data-kind of <g class="node">
        self.edges: dict[str, dict[str, str]] = {}  # data-id -> attributes of <path class="edge">
        self.selected: list[str] = []
        self.panel_edges: list[str] = []
        self.csp: str | None = None
        self.body: dict[str, str] = {}
        self._in_name = False
        self.selected_name = ""
        self.facts: list[str] = []
        self._in_facts = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "g" and "node" in classes:
            self.nodes[a["data-id"]] = a["data-kind"]
            if "selected" in classes:
                self.selected.append(a["data-id"])
        elif tag == "path" and "edge" in classes:
            self.edges[a["data-id"]] = a
        elif tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.csp = a["content"]
        elif tag == "body":
            self.body = a
        elif tag == "tr" and "data-edge" in a:
            self.panel_edges.append(a["data-edge"])
        elif tag == "h2" and a.get("id") == "selected-name":
            self._in_name = True
        elif tag == "table" and a.get("id") == "selected-facts":
            self._in_facts = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_name = False
        elif tag == "table":
            self._in_facts = False

    def handle_data(self, data: str) -> None:
        if self._in_name:
            self.selected_name += data
        elif self._in_facts and data.strip():
            self.facts.append(data.strip())


def page(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    manifests, usage = scenario(tmp_path)
    html = tmp_path / "topology.html"
    args = ["topology", *WINDOW, "-f", str(manifests), "--usage", str(usage)]
    assert CliRunner().invoke(main, [*args, "--format", "html", "-o", str(html)]).exit_code == 0
    doc = json.loads(CliRunner().invoke(main, [*args, "--format", "json"]).stdout)
    return html, doc


def test_browser_renders_every_node_and_edge_offline(tmp_path: Path) -> None:
    html, doc = page(tmp_path)
    shot = Path("test-artifacts") / "topology.png"
    shot.parent.mkdir(exist_ok=True)
    url = html.resolve().as_uri() + "#node=" + quote("topic:orders", safe="")
    loaded = headless.load(url, tmp_path / "chromium", screenshot=shot.resolve())
    dom = Dom()
    dom.feed(loaded.dom)
    assert dom.body.get("data-ready") == "true", "the page's script did not run"
    # One SVG node per service, principal and topic; one edge per flow (declared or observed).
    assert dom.nodes == {n["id"]: n["kind"] for n in doc["nodes"]}
    assert set(dom.edges) == {e["id"] for e in doc["edges"]} and len(dom.edges) == 7
    for e in doc["edges"]:
        attrs = dom.edges[e["id"]]
        assert attrs["data-observed"] == str(e["observed"]).lower()
        assert attrs["data-declared"] == str(e["declared"]).lower()
    # The click panel, opened by #node=: its edges, owner and cost.
    assert dom.selected == ["topic:orders"] and dom.selected_name == "orders"
    assert sorted(dom.panel_edges) == sorted(e["id"] for e in doc["edges"] if e["topic"] == "orders")
    assert "shop" in dom.facts and "(none)" in dom.facts and any(f.endswith(" USD") for f in dom.facts)
    # Offline: the policy forbids every fetch, and the browser's network log shows none from the page.
    assert dom.csp is not None and dom.csp.startswith("default-src 'none';")
    assert headless.page_requests(loaded.netlog) == []
    assert shot.stat().st_size > 10_000


def test_the_network_check_sees_a_page_request(tmp_path: Path) -> None:
    """Control: a page that does load something is caught by `page_requests`."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://cdn.invalid/x.png"></body></html>')
    loaded = headless.load(leaky.resolve().as_uri(), tmp_path / "chromium")
    assert headless.page_requests(loaded.netlog) == ["http://cdn.invalid/x.png"]


def test_clicking_a_service_shows_its_edges(tmp_path: Path) -> None:
    """`#node=<id>` dispatches a click on that node: the panel then lists the service's edges."""
    html, doc = page(tmp_path)
    url = html.resolve().as_uri() + "#node=" + quote("service:finance.billing", safe="")
    loaded = headless.load(url, tmp_path / "chromium")
    dom = Dom()
    dom.feed(loaded.dom)
    assert dom.selected == ["service:finance.billing"] and dom.selected_name == "billing"
    mine = sorted(e["id"] for e in doc["edges"] if e["service"] == "service:finance.billing")
    assert sorted(dom.panel_edges) == mine and len(mine) == 3
    assert "finance" in dom.facts and "User:finance.billing" in dom.facts


def _bench() -> Any:
    """bench/topology.py (its synthetic topology), loaded by path."""
    path = Path(__file__).resolve().parents[3] / "bench" / "topology.py"
    spec = importlib.util.spec_from_file_location("bench_topology", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fifty_services_and_a_hundred_topics_render_in_under_two_seconds(tmp_path: Path) -> None:
    bench = _bench()
    bench.synthesize(tmp_path, services=50, topics=100, days=1, per_day=4)
    html = tmp_path / "big.html"
    args = ["topology", "--from", "2025-03-01", "--to", "2025-03-01", "-f", str(tmp_path / "manifests.yaml"),
            "--usage", str(tmp_path / "usage")]
    assert CliRunner().invoke(main, [*args, "--format", "html", "-o", str(html)]).exit_code == 0
    doc = json.loads(CliRunner().invoke(main, [*args, "--format", "json"]).stdout)
    assert sum(n["kind"] == "service" for n in doc["nodes"]) == 50
    assert sum(n["kind"] == "topic" for n in doc["nodes"]) == 100
    loaded = headless.load(html.resolve().as_uri(), tmp_path / "chromium")
    dom = Dom()
    dom.feed(loaded.dom)
    assert dom.nodes == {n["id"]: n["kind"] for n in doc["nodes"]}
    assert set(dom.edges) == {e["id"] for e in doc["edges"]} and len(dom.edges) == 300
    assert int(dom.body["data-render-ms"]) < 2000
    assert headless.page_requests(loaded.netlog) == []

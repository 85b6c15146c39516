"""Renderings of a Topology: JSON, Graphviz dot, Mermaid, SVG, and a self-contained HTML page.

The SVG has one `<g class="node">` per service, principal and topic (with `data-id`,
`data-kind`, `data-team`) and one `<path class="edge">` per edge (`data-id`, `data-kind`
write|read, `data-declared`, `data-observed`). Writes are grey, reads blue; observed edges are drawn
with a width growing with their bytes (square root of the share of the largest edge); declared
edges without traffic are dashed; observed writes a service did not declare are red.

The HTML embeds that SVG, the JSON, a small script and its styles, and nothing else: its
Content-Security-Policy is `default-src 'none'` with the script and style allowed by their
sha256 hashes, so a browser makes no network request for it. Clicking a node (opening the page
with `#node=<id>` clicks it) lists its edges, owner, schema subject and cost in the side panel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from html import escape

from ..billing.ownership import UNOWNED
from .layout import Layout, layout
from .model import Edge, Topology, money, topic_id

TEAM_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#e15759",
               "#bab0ac", "#ff9da7")


def render_json(topo: Topology) -> str:
    return json.dumps(topo.to_json(), indent=2) + "\n"


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _edge_label(e: Edge, days: int) -> str:
    if not e.observed:
        return "declared, no traffic"
    per_day = e.bytes / days if days else 0
    return f"{human_bytes(per_day)}/day, {e.records / days if days else 0:.0f} rec/day"


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(topo: Topology) -> str:
    lines = ["digraph topology {", "  rankdir=LR;", '  node [fontname="sans-serif", fontsize=10];']
    for i, team in enumerate(topo.teams):
        lines.append(f"  subgraph {_dot_id('cluster_' + team)} {{")
        lines.append(f"    label={_dot_id(team)}; color={_dot_id(_team_color(topo, team))};")
        for node in sorted((n for n in topo.nodes.values() if n.team == team), key=lambda n: n.id):
            shape = "box" if node.kind == "topic" else ("ellipse" if node.kind == "service" else "octagon")
            lines.append(f"    {_dot_id(node.id)} [label={_dot_id(node.name)}, shape={shape}];")
        lines.append("  }")
        del i
    for e in sorted(topo.edges.values(), key=lambda e: e.id):
        a, b = (e.source, topic_id(e.topic)) if e.kind == "write" else (topic_id(e.topic), e.source)
        style = "dashed" if not e.observed else "solid"
        color = "red" if e.observed and not e.declared and e.kind == "write" else "black"
        lines.append(f"  {_dot_id(a)} -> {_dot_id(b)} [label={_dot_id(_edge_label(e, topo.days))}, "
                     f"style={style}, color={color}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_id(index: dict[str, str], node_id: str) -> str:
    return index.setdefault(node_id, f"n{len(index)}")


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def render_mermaid(topo: Topology) -> str:
    index: dict[str, str] = {}
    lines = ["flowchart LR"]
    for team in topo.teams:
        lines.append(f'  subgraph {_mermaid_id(index, "team:" + team)}["{_mermaid_text(team)}"]')
        for node in sorted((n for n in topo.nodes.values() if n.team == team), key=lambda n: n.id):
            ident = _mermaid_id(index, node.id)
            label = _mermaid_text(node.name)
            lines.append(f'    {ident}[["{label}"]]' if node.kind == "topic" else f'    {ident}("{label}")')
        lines.append("  end")
    for e in sorted(topo.edges.values(), key=lambda e: e.id):
        a, b = (e.source, topic_id(e.topic)) if e.kind == "write" else (topic_id(e.topic), e.source)
        arrow = "-.->" if not e.observed else "-->"
        lines.append(f'  {_mermaid_id(index, a)} {arrow}|"{_mermaid_text(_edge_label(e, topo.days))}"| '
                     f"{_mermaid_id(index, b)}")
    return "\n".join(lines) + "\n"


def _team_color(topo: Topology, team: str) -> str:
    if team == UNOWNED:
        return "#888888"
    teams = [t for t in topo.teams if t != UNOWNED]
    return TEAM_COLORS[teams.index(team) % len(TEAM_COLORS)] if team in teams else "#888888"


def _width(e: Edge, largest: int) -> float:
    """1 px for an edge without bytes, up to 6 px for the graph's largest (square root scale)."""
    if not e.observed or e.bytes <= 0 or largest <= 0:
        return 1.0
    return 1.0 + 5.0 * math.sqrt(e.bytes / largest)


def render_svg(topo: Topology, lay: Layout | None = None) -> str:
    lay = lay or layout(topo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="topology" width="{lay.width:.0f}" '
           f'height="{lay.height:.0f}" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" '
           f'font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" markerHeight="9" '
           'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           '<g class="teams">']
    for block in lay.blocks:
        color = _team_color(topo, block.team)
        out.append(f'<g class="team" data-team="{escape(block.team)}"><rect x="{block.x:.1f}" y="{block.y:.1f}" '
                   f'width="{block.w:.1f}" height="{block.h:.1f}" rx="6" fill="{color}" fill-opacity="0.08" '
                   f'stroke="{color}" stroke-opacity="0.5"/><text x="{block.x + 8:.1f}" y="{block.y + 15:.1f}" '
                   f'fill="{color}" font-weight="bold">{escape(block.team)}</text></g>')
    out.append('</g><g class="edges" fill="none">')
    largest = max((e.bytes for e in topo.edges.values()), default=0)
    for e in sorted(topo.edges.values(), key=lambda e: e.id):
        s, t = lay.boxes[e.source], lay.boxes[topic_id(e.topic)]
        if s.x < t.x:
            x1, x2 = s.x + s.w, t.x
        else:
            x1, x2 = s.x, t.x + t.w
        y1, y2 = s.y + s.h / 2, t.y + t.h / 2
        if e.kind == "read":
            x1, y1, x2, y2 = x2, y2, x1, y1
        bend = max(40.0, abs(x2 - x1) / 2)
        c1 = x1 + bend if x2 > x1 else x1 - bend
        c2 = x2 - bend if x2 > x1 else x2 + bend
        if e.observed and not e.declared and e.kind == "write":
            color = "#d62728"
        else:
            color = "#555555" if e.kind == "write" else "#1f77b4"
        dash = ' stroke-dasharray="5,4"' if not e.observed else ""
        title = f"{e.kind} {topo.nodes[e.source].name} {'->' if e.kind == 'write' else '<-'} {e.topic}: " \
                f"{_edge_label(e, topo.days)}, {money(e.cost)} {topo.currency}"
        out.append(f'<path class="edge" data-id="{escape(e.id)}" data-kind="{e.kind}" '
                   f'data-source="{escape(e.source)}" data-topic="{escape(topic_id(e.topic))}" '
                   f'data-declared="{str(e.declared).lower()}" data-observed="{str(e.observed).lower()}" '
                   f'd="M{x1:.1f},{y1:.1f} C{c1:.1f},{y1:.1f} {c2:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
                   f'stroke="{color}" stroke-opacity="0.45" stroke-width="{_width(e, largest):.2f}"{dash} '
                   f'marker-end="url(#arrow)"><title>{escape(title)}</title></path>')
    out.append('</g><g class="nodes">')
    for node_id, box in sorted(lay.boxes.items()):
        node = topo.nodes[node_id]
        color = _team_color(topo, node.team)
        rx = 3 if node.kind == "topic" else 11
        fill = "#ffffff" if node.kind != "principal" else "#fde0e0"
        label = node.name if len(node.name) <= 32 else node.name[:31] + "…"
        out.append(f'<g class="node" data-id="{escape(node.id)}" data-kind="{node.kind}" '
                   f'data-team="{escape(node.team)}" tabindex="0"><rect x="{box.x:.1f}" y="{box.y:.1f}" '
                   f'width="{box.w:.1f}" height="{box.h:.1f}" rx="{rx}" fill="{fill}" stroke="{color}" '
                   f'stroke-width="1.5"/><text x="{box.x + 8:.1f}" y="{box.y + 15:.1f}">{escape(label)}</text>'
                   f'<title>{escape(node.kind)} {escape(node.name)} ({escape(node.team)})</title></g>')
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


_STYLE = """
body { font-family: sans-serif; margin: 0; color: #222; }
header { padding: 10px 16px; border-bottom: 1px solid #ddd; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
main { display: flex; align-items: flex-start; }
#graph { flex: 1; overflow: auto; max-height: 85vh; }
#panel { width: 360px; padding: 10px 14px; border-left: 1px solid #ddd; font-size: 13px; max-height: 85vh;
         overflow: auto; }
#panel table, #findings table { border-collapse: collapse; }
#panel td, #panel th, #findings td, #findings th { border-bottom: 1px solid #eee; padding: 2px 6px;
         text-align: left; vertical-align: top; }
.node { cursor: pointer; }
.node.selected rect { stroke-width: 3.5; }
.edge.dim { stroke-opacity: 0.08; }
.edge.hot { stroke-opacity: 1; }
#findings { padding: 10px 16px; font-size: 13px; }
.warn { color: #a15c00; }
"""

_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('topology-data').textContent);
  var nodes = {}; data.nodes.forEach(function (n) { nodes[n.id] = n; });
  var panel = document.getElementById('panel');
  function el(tag, text) { var e = document.createElement(tag); if (text !== undefined) e.textContent = text;
    return e; }
  function bytes(n) { var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : n.toFixed(0)) + ' ' + u[i]; }
  function select(id) {
    var node = nodes[id]; if (!node) return;
    document.querySelectorAll('.node.selected').forEach(function (g) { g.classList.remove('selected'); });
    var g = document.querySelector('.node[data-id="' + CSS.escape(id) + '"]'); if (g) g.classList.add('selected');
    var edges = data.edges.filter(function (e) { return node.kind === 'topic' ? 'topic:' + e.topic === id
      : e.service === id; });
    var ids = {}; edges.forEach(function (e) { ids[e.id] = true; });
    document.querySelectorAll('.edge').forEach(function (p) {
      var on = !!ids[p.getAttribute('data-id')]; p.classList.toggle('hot', on); p.classList.toggle('dim', !on); });
    panel.textContent = '';
    var h = el('h2', node.name); h.id = 'selected-name'; panel.appendChild(h);
    var facts = el('table'); facts.id = 'selected-facts';
    var cost = edges.reduce(function (a, e) { return a + parseFloat(e.cost); }, 0);
    var rows = [['kind', node.kind], ['owner (team)', node.team]];
    if (node.namespace) rows.push(['namespace', node.namespace]);
    if (node.principal) rows.push(['principal', node.principal]);
    if (node.kind === 'topic') rows.push(['schema subject', node.schema_subject || '(none)']);
    rows.push(['cost of its edges', cost.toFixed(4) + ' ' + data.currency]);
    rows.forEach(function (r) { var tr = el('tr'); tr.appendChild(el('th', r[0])); tr.appendChild(el('td', r[1]));
      facts.appendChild(tr); });
    panel.appendChild(facts);
    panel.appendChild(el('h3', 'Edges (' + edges.length + ')'));
    var list = el('table'); list.id = 'selected-edges';
    edges.forEach(function (e) {
      var tr = el('tr'); tr.setAttribute('data-edge', e.id);
      var other = node.kind === 'topic' ? (nodes[e.service] || {}).name : e.topic;
      tr.appendChild(el('td', e.kind)); tr.appendChild(el('td', other));
      tr.appendChild(el('td', e.observed ? bytes(e.bytes_per_day) + '/day, ' + e.records_per_day + ' rec/day'
        : 'declared, no traffic'));
      tr.appendChild(el('td', e.cost + ' ' + data.currency));
      var lag = (e.lag || []).map(function (l) { return l.group + ' lag ' + l.last; }).join('; ');
      tr.appendChild(el('td', (e.declared ? 'declared' : 'UNDECLARED') + (lag ? '; ' + lag : '')));
      list.appendChild(tr); });
    panel.appendChild(list);
  }
  document.querySelectorAll('.node').forEach(function (g) {
    g.addEventListener('click', function () { select(g.getAttribute('data-id')); });
    g.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') select(g.getAttribute('data-id')); });
  });
  // #node=<id> opens the page with that node clicked (a real click event, through the handler).
  var m = /^#node=(.+)$/.exec(location.hash);
  if (m) { var target = document.querySelector('.node[data-id="' + CSS.escape(decodeURIComponent(m[1])) + '"]');
    if (target) target.dispatchEvent(new MouseEvent('click', {bubbles: true})); }
  document.body.setAttribute('data-ready', 'true');
  document.body.setAttribute('data-render-ms', String(Math.round(performance.now())));
})();
"""


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def csp() -> str:
    """The page's Content-Security-Policy: nothing from anywhere; the inline script and style by hash."""
    return f"default-src 'none'; script-src '{_hash(_SCRIPT)}'; style-src '{_hash(_STYLE)}'"


def counts(topo: Topology) -> str:
    """`4 services, 1 unowned principal, 2 topics, 7 edges, 3 teams`."""
    services = sum(1 for n in topo.nodes.values() if n.kind == "service")
    principals = sum(1 for n in topo.nodes.values() if n.kind == "principal")
    text = f"{services} services, "
    if principals:
        text += f"{principals} unowned principal{'s' if principals != 1 else ''}, "
    return text + f"{len(topo.topics())} topics, {len(topo.edges)} edges, {len(topo.teams)} teams"


def render_html(topo: Topology) -> str:
    doc = topo.to_json()
    data = json.dumps(doc).replace("</", "<\\/")
    title = f"Strata topology · {topo.cluster or 'cluster'} · {doc['window']['from']} .. {doc['window']['to']}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{escape(csp(), quote=False)}">',
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<header><h1>{escape(title)}</h1><div>{counts(topo)}. "
             "Writers left, topics middle, readers right; grey: write, blue: read, "
             "dashed: declared without traffic, red: undeclared write. Click a node.</div>"]
    for warning in topo.warnings:
        parts.append(f'<div class="warn">warning: {escape(warning)}</div>')
    parts.append('</header><main><div id="graph">')
    parts.append(render_svg(topo) if not topo.empty else "<p>Empty topology: no services, topics or traffic.</p>")
    parts.append('</div><aside id="panel"><p>Click a service or topic to see its edges, owner and cost.</p>'
                 "</aside></main>")
    parts.append(f'<section id="findings"><h2>Findings ({len(topo.findings)})</h2><table>'
                 "<tr><th>kind</th><th>subject</th><th>what</th></tr>")
    for f in topo.findings:
        parts.append(f'<tr class="finding" data-kind="{escape(f.kind)}"><td>{escape(f.kind)}</td>'
                     f"<td>{escape(f.subject)}</td><td>{escape(f.message)}</td></tr>")
    parts.append("</table></section>")
    parts.append(f'<script type="application/json" id="topology-data">{data}</script>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {"json": render_json, "dot": render_dot, "mermaid": render_mermaid, "svg": render_svg,
             "html": render_html}

"""A layered layout: writers left, topics in the middle, readers right, each column grouped by team.

Services (and unowned principals) that write anything go in the left column; those that only
read go in the right one. Inside a column, nodes are grouped by team (teams in name order,
`unowned` last) and, inside a team, ordered by the barycenter of their neighbours in the column
laid out before (topics follow their writers, readers follow their topics), which keeps most
edges short and uncrossed. Coordinates are plain numbers for the SVG renderer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..billing.ownership import UNOWNED
from .model import Topology, topic_id

NODE_W = 210
NODE_H = 22
GAP = 6
TEAM_GAP = 26  # space for the team label above a team's block
COLUMN_GAP = 200
MARGIN = 20


@dataclass
class Box:
    id: str
    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H


@dataclass
class TeamBlock:
    team: str
    column: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class Layout:
    width: float
    height: float
    boxes: dict[str, Box] = field(default_factory=dict)
    blocks: list[TeamBlock] = field(default_factory=list)


def _team_key(team: str) -> tuple[bool, str]:
    return (team == UNOWNED, team)


def layout(topo: Topology) -> Layout:
    """Positions of every node and team block."""
    writes: dict[str, set[str]] = defaultdict(set)  # source -> topic ids
    reads: dict[str, set[str]] = defaultdict(set)
    for e in topo.edges.values():
        (writes if e.kind == "write" else reads)[e.source].add(topic_id(e.topic))
    left = [n for n in topo.services() if writes.get(n.id)]
    right = [n for n in topo.services() if not writes.get(n.id)]
    middle = topo.topics()

    position: dict[str, float] = {}
    columns: list[list[str]] = []
    for index, nodes in enumerate((left, middle, right)):
        if index == 0:
            def weight(node_id: str) -> float:
                return 0.0
        elif index == 1:
            writers_of: dict[str, list[float]] = defaultdict(list)
            for source, topics in writes.items():
                for t in topics:
                    if source in position:
                        writers_of[t].append(position[source])

            def weight(node_id: str, w: dict[str, list[float]] = writers_of) -> float:
                values = w.get(node_id)
                return sum(values) / len(values) if values else float("inf")
        else:
            def weight(node_id: str) -> float:
                values = [position[t] for t in reads.get(node_id, ()) if t in position]
                return sum(values) / len(values) if values else float("inf")
        by_team: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            by_team[node.team].append(node.id)
        order: list[str] = []
        for team in sorted(by_team, key=_team_key):
            order.extend(sorted(by_team[team], key=lambda i: (weight(i), topo.nodes[i].name)))
        for rank, node_id in enumerate(order):
            position[node_id] = float(rank)
        columns.append(order)

    result = Layout(width=0, height=0)
    height = 0.0
    for index, order in enumerate(columns):
        x = MARGIN + index * (NODE_W + COLUMN_GAP)
        y = float(MARGIN)
        team = None
        block: TeamBlock | None = None
        for node_id in order:
            node_team = topo.nodes[node_id].team
            if node_team != team:
                team = node_team
                y += TEAM_GAP
                block = TeamBlock(team=team, column=index, x=x - 8, y=y - TEAM_GAP + 4, w=NODE_W + 16, h=0)
                result.blocks.append(block)
            result.boxes[node_id] = Box(node_id, x, y)
            y += NODE_H + GAP
            assert block is not None
            block.h = y - block.y + 2
        if order:
            y += 10
        height = max(height, y)
    result.width = MARGIN * 2 + 3 * NODE_W + 2 * COLUMN_GAP
    result.height = max(height + MARGIN, 120.0)
    return result

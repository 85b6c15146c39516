"""The business topology: who writes and reads which topic, declared (Microservices) and observed
(metered usage), grouped by team, with traffic, cost and findings.

- `model`   usage records x ownership x prices -> nodes, edges, findings (pure)
- `layout`  the layered layout (writers | topics | readers, grouped by team)
- `render`  JSON, dot, Mermaid, SVG and a self-contained offline HTML page
- `observed` a Microservice's observed produce/consume of the last day (the shape of a status field)
"""

from __future__ import annotations

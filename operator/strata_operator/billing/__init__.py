"""The microservice tax: usage snapshots x a price model x ownership -> per-team cost report.

Pure core (no Kubernetes, no network) except `usage.read_s3`:

- `usage`       the usage-record format the brokers write (JSON lines) and its reader
- `prices`      the price model (YAML), defaults from public list prices
- `ownership`   topic -> team, principal/client id -> Microservice -> team
- `allocation`  usage x prices x ownership -> exact per-team charges; largest-remainder rounding
- `report`      table, CSV, OpenCost-shaped JSON, FOCUS 1.2 rows, self-contained HTML
"""

from __future__ import annotations


class BillingError(Exception):
    """A user-facing problem (bad price file, unreadable usage, unknown team): shown without a traceback."""

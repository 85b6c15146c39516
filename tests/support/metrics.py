"""A broker's /metrics, read by the tests and benchmarks instead of its log (`metrics.listen`)."""

from __future__ import annotations

import urllib.request


def scrape(metrics: str | int, token: str | None = None, scheme: str = "http") -> str:
    """The exposition text of /metrics; `metrics` is the broker's metrics.listen setting or its port."""
    port = int(str(metrics).rpartition(":")[2])
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition text: name with its labels, as printed -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(metrics: str | int, name: str, default: float | None = None) -> float:
    """One sample (`name` with its labels as printed, e.g. 'strata_s3_requests_total{operation="get_object"}'),
    or `default` when the broker does not export it (AssertionError without a default)."""
    value = samples(scrape(metrics)).get(name, default)
    if value is None:
        raise AssertionError(f"{name} not in /metrics")
    return value


def open_connections(metrics_listen: str) -> int:
    """The broker's own count of connections holding a slot (strata_connections_open)."""
    return int(metric(metrics_listen, "strata_connections_open"))

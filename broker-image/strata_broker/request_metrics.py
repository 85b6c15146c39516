"""How long the broker takes over each request, per request type (Kafka's RequestMetrics TotalTimeMs).

A request's time runs from the moment its last byte was read (its frame complete in the
connection's buffer) to the moment its response was handed to the transport (after the
responses queued before it on the same connection; for acks=0 produce, which has no response,
to the end of its handling). Produce requests are counted by their acks, so acks=all, which
includes the group commit's fdatasync, can be told from acks=1.

Exported on /metrics as the histogram `strata_request_seconds{request, acks}` (acks is "" for
every other request type). Observing one request costs two clock reads, a bisection of
BUCKETS and two additions, all on the event loop's thread; the scrape thread only reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily

# Upper bounds (seconds) of the buckets: fine below a few ms, where an acks=all produce at a
# moderate rate lies (an fdatasync on a quick disk is 0.1-0.3 ms), coarse up to request timeouts.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.00035, 0.0004, 0.0005, 0.0006, 0.00075,
    0.001, 0.00125, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

ACKS_LABELS = {-1: "all", 0: "0", 1: "1"}


class RequestTimer:
    """The histogram of one (request type, acks): counts per bucket of BUCKETS, the last one +Inf."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class RequestMetrics:
    """Every request type's RequestTimer, made on its first request."""

    def __init__(self) -> None:
        self._timers: dict[tuple[str, str], RequestTimer] = {}

    def timer(self, request: str, acks: int | None = None) -> RequestTimer:
        """The timer of `request` (an API name such as "Produce"); `acks` for Produce ("all", "0", "1"
        or "invalid")."""
        # Any acks but -1, 0 and 1 (refused with INVALID_REQUIRED_ACKS) is one label: the value comes
        # from the client, and a label per value would let one client grow /metrics without bound.
        key = (request, "" if acks is None else ACKS_LABELS.get(acks, "invalid"))
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = RequestTimer()
        return timer

    def families(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("strata_request_seconds",
                                       "Time from a request's last byte read to its response written, "
                                       "by request type (and acks for Produce)",
                                       labels=["request", "acks"])
        for (request, acks), timer in sorted(list(self._timers.items())):
            counts = list(timer.counts)  # one copy: the loop keeps counting meanwhile
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([request, acks], buckets, timer.sum)
        yield family

"""Client byte-rate quotas per user and client id, with Kafka's throttle_time_ms semantics.

Quotas are set with AlterClientQuotas on entities {user, client-id} (a name, or None = default)
and resolved in Kafka's order of precedence: user+client-id, user+default client-id, user,
default user+client-id, default user+default client-id, default user, client-id, default client-id.
Usage is measured per bucket - the matched entity's (user, client-id), so a user-level quota is
shared by all of that user's clients - over `quota.window.num` samples of
`quota.window.size.seconds`. When a request takes a bucket over its quota the broker answers it
with throttle_time_ms = the time needed for the rate to fall back to the quota, and then does not
read from that connection for as long (KIP-219). A throttled Fetch is answered empty.

Unlike Kafka, a bucket's first sample counts as a whole window rather than ten: a new client may
burst one window's worth of bytes, not ten, so the measured rate tracks the quota from the start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..log.files import read_json, write_json_atomic

PRODUCER = "producer_byte_rate"
CONSUMER = "consumer_byte_rate"
REQUEST_PERCENTAGE = "request_percentage"  # accepted and stored; not enforced
KEYS = (PRODUCER, CONSUMER, REQUEST_PERCENTAGE)
ENTITY_TYPES = ("user", "client-id")

log = logging.getLogger(__name__)

Entity = tuple[tuple[str, str | None], ...]  # sorted ((type, name or None for default), ...)


def make_entity(pairs: dict[str, str | None]) -> Entity:
    return tuple(sorted(pairs.items()))


@dataclass
class _Sensor:
    samples: deque[list[float]] = field(default_factory=deque)  # [start, bytes]

    def _roll(self, now: float, window: float, num: int) -> None:
        while self.samples and self.samples[0][0] <= now - window * num:
            self.samples.popleft()
        if not self.samples or now - self.samples[-1][0] >= window:
            self.samples.append([now, 0.0])

    def record(self, now: float, amount: float, window: float, num: int) -> None:
        self._roll(now, window, num)
        self.samples[-1][1] += amount

    def total_and_elapsed(self, now: float, window: float, num: int) -> tuple[float, float]:
        self._roll(now, window, num)
        return sum(s[1] for s in self.samples), max(now - self.samples[0][0], window)


class QuotaManager:
    def __init__(self, meta_dir: str | None, window_s: float = 1.0, num: int = 11) -> None:
        self.window = window_s
        self.num = num
        self._path = os.path.join(meta_dir, "quotas.json") if meta_dir else None
        self.entries: dict[Entity, dict[str, float]] = {}
        self._sensors: dict[tuple[str, str, str], _Sensor] = {}
        self.throttled_ms_total = 0
        # Cluster mode: told after every change, so the change reaches the other brokers.
        self.on_change: Callable[[], None] | None = None
        if self._path:
            for item in read_json(self._path) or []:
                entity = make_entity({k: v for k, v in item["entity"].items() if k in ENTITY_TYPES})
                values = {k: float(v) for k, v in item["values"].items() if k in KEYS}
                if entity and values:
                    self.entries[entity] = values

    @property
    def active(self) -> bool:
        return bool(self.entries)

    def save(self, notify: bool = True) -> None:
        if self._path:
            write_json_atomic(self._path, [{"entity": dict(e), "values": v} for e, v in sorted(
                self.entries.items(), key=lambda kv: str(kv[0]))])
        if notify and self.on_change is not None:
            self.on_change()

    # ---- cluster mode: the same quotas on every broker ---------------------------------------

    def shared_entries(self) -> dict[str, Any]:
        return {json.dumps([list(pair) for pair in entity]): dict(values) for entity, values in self.entries.items()}

    def load_shared(self, entries: dict[str, Any]) -> None:
        loaded: dict[Entity, dict[str, float]] = {}
        for key, values in entries.items():
            try:
                entity = make_entity({k: v for k, v in json.loads(key) if k in ENTITY_TYPES})
                vals = {k: float(v) for k, v in values.items() if k in KEYS}
            except (TypeError, ValueError, AttributeError) as exc:
                log.error("ignoring a shared quota %r: %s", key, exc)
                continue
            if entity and vals:
                loaded[entity] = vals
        if loaded != self.entries:
            self.entries = loaded
            self._sensors = {}
            self.save(notify=False)

    def resolve(self, key: str, user: str, client_id: str) -> tuple[float, tuple[str, str]] | None:
        """(quota, bucket) for this user and client id, or None when no quota applies."""
        candidates: list[dict[str, str | None]] = [
            {"user": user, "client-id": client_id}, {"user": user, "client-id": None}, {"user": user},
            {"user": None, "client-id": client_id}, {"user": None, "client-id": None}, {"user": None},
            {"client-id": client_id}, {"client-id": None},
        ]
        for pairs in candidates:
            values = self.entries.get(make_entity(pairs))
            if values and key in values:
                return values[key], (user if "user" in pairs else "", client_id if "client-id" in pairs else "")
        return None

    def _sensor(self, key: str, bucket: tuple[str, str]) -> _Sensor:
        sensor = self._sensors.get((key, *bucket))
        if sensor is None:
            if len(self._sensors) > 100_000:  # forget idle buckets rather than grow without bound
                self._sensors.clear()
            sensor = self._sensors[(key, *bucket)] = _Sensor()
        return sensor

    def _throttle_ms(self, sensor: _Sensor, quota: float, now: float) -> int:
        total, elapsed = sensor.total_and_elapsed(now, self.window, self.num)
        if quota <= 0:
            return int(self.window * self.num * 1000)
        if total / elapsed <= quota:
            return 0
        return int(min(total / quota - elapsed, self.window * self.num) * 1000)

    def record_produce(self, user: str, client_id: str, nbytes: int, now: float | None = None) -> int:
        """Count a produce request's bytes; the throttle time (ms) to answer it with."""
        found = self.resolve(PRODUCER, user, client_id)
        if found is None:
            return 0
        quota, bucket = found
        now = time.monotonic() if now is None else now
        sensor = self._sensor(PRODUCER, bucket)
        sensor.record(now, nbytes, self.window, self.num)
        throttle = self._throttle_ms(sensor, quota, now)
        self.throttled_ms_total += throttle
        return throttle

    def fetch_cap(self, user: str, client_id: str) -> int | None:
        """The most bytes one fetch may return under the consumer quota (one window's worth)."""
        found = self.resolve(CONSUMER, user, client_id)
        return None if found is None else max(1, int(found[0] * self.window))

    def record_fetch(self, user: str, client_id: str, nbytes: int, now: float | None = None) -> int:
        """Count a fetch response's bytes; when that breaks the quota, un-count them and return the
        throttle (the caller answers with an empty response, as Kafka does)."""
        found = self.resolve(CONSUMER, user, client_id)
        if found is None:
            return 0
        quota, bucket = found
        now = time.monotonic() if now is None else now
        sensor = self._sensor(CONSUMER, bucket)
        sensor.record(now, nbytes, self.window, self.num)
        throttle = self._throttle_ms(sensor, quota, now)
        if throttle > 0:
            sensor.record(now, -nbytes, self.window, self.num)
            self.throttled_ms_total += throttle
        return throttle

    # ---- admin ------------------------------------------------------------------------------

    def describe(self, components: list[tuple[str, int, str | None]], strict: bool) -> list[tuple[Entity, dict]]:
        """Kafka's DescribeClientQuotas filter: match type 0 = exact name, 1 = default, 2 = any name."""
        out = []
        for entity, values in self.entries.items():
            names = dict(entity)
            ok = True
            for etype, match_type, match in components:
                if etype not in names:
                    ok = False
                elif match_type == 0 and names[etype] != match:
                    ok = False
                elif match_type == 1 and names[etype] is not None:
                    ok = False
                elif match_type == 2 and names[etype] is None:
                    ok = False
            if ok and strict and set(names) != {c[0] for c in components}:
                ok = False
            if ok:
                out.append((entity, dict(values)))
        return sorted(out, key=lambda ev: str(ev[0]))

    def alter(self, entity: Entity, ops: list[tuple[str, float, bool]]) -> None:
        values = dict(self.entries.get(entity, {}))
        for key, value, remove in ops:
            if remove:
                values.pop(key, None)
            else:
                values[key] = value
        if values:
            self.entries[entity] = values
        else:
            self.entries.pop(entity, None)
        self._sensors = {k: s for k, s in self._sensors.items() if self.resolve(k[0], k[1], k[2]) is not None}

"""Usage metering: who produced and fetched how much of which topic, storage byte-hours, S3 requests.

Counters accumulate in memory and are cut into usage records (docs/billing.md, format v1) every
metering.snapshot.interval.ms and at UTC midnight. A snapshot is appended to
`<data-dir>/usage/<yyyy>/<mm>/<dd>/<broker>-<epoch>.jsonl` (fsynced) before it is uploaded to
`clusters/<cluster>/usage/...` in the bucket; every record has a unique id, so an upload
retried or repeated after a restart is never counted twice. What was counted since the last
snapshot when the process dies is lost, never double-counted.

Each snapshot also records, per consumer group with committed offsets on this broker and topic,
the group's lag at the end of the window (`group` records: log end minus committed offset, over
every partition of the topic the group committed; in a cluster the end offsets of partitions other
brokers lead come from their leases, read just before the cut).

Cardinality is bounded whatever clients send: each principal has at most
`metering.client.ids.per.principal` client ids counted under their own name (the ones first seen);
the rest are counted under `other`. A client id not seen for `metering.idle.expiry.ms` is forgotten
(its slot freed, its /metrics series gone); what it used stays in the usage records already cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from strata_contract.principals import ANONYMOUS
from strata_contract.usage import FORMAT_VERSION

from .log.compaction import iter_batches

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .config import BrokerConfig
    from .log.manager import LogManager
    from .tier.manager import TierManager

log = logging.getLogger(__name__)

BEFORE_CUT_TIMEOUT = 3.0  # seconds before_cut may take: a slow bucket never holds up (or loses) a snapshot
OTHER_CLIENTS = "other"  # the client id counted for a principal's client ids beyond the limit
# S3 API calls -> the price classes of the usage format.
_S3_CLASS = {"put_object": "PUT", "upload_part": "PUT", "create_multipart_upload": "PUT",
             "complete_multipart_upload": "PUT", "get_object": "GET", "head_bucket": "GET",
             "list_objects_v2": "LIST", "delete_objects": "DELETE"}


@dataclass
class ClientCounters:
    produced_bytes: int = 0
    produced_records: int = 0
    produce_requests: int = 0
    fetched_bytes: int = 0
    fetched_records: int = 0
    fetch_requests: int = 0
    other_requests: int = 0


@dataclass
class Window:
    start: float  # epoch seconds
    clients: dict[tuple[str, str, str | None], ClientCounters] = field(
        default_factory=lambda: defaultdict(ClientCounters))
    hot_byte_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cold_byte_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    s3: dict[tuple[str, str | None], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    connection_seconds: float = 0.0


def record_count(records: bytes) -> int:
    return sum(header.record_count for _, header in iter_batches(memoryview(records)))


def topic_of_key(key: str) -> str | None:
    """The topic name in an object key `.../topics/<topic>-<uuid>/...`, else None."""
    marker = "/topics/"
    at = key.find(marker)
    if at < 0:
        return None
    part = key[at + len(marker):].split("/", 1)[0]
    return part[:-37] if len(part) > 37 and part[-37] == "-" else None


class Meter:
    def __init__(self, config: BrokerConfig, node_id: int, data_dir: str, logs: LogManager,
                 connections: Callable[[], int], tier: TierManager | None) -> None:
        self.cluster_id = config["cluster.id"]
        self.node_id = node_id
        self.logs = logs
        self.connections = connections  # open client connections now
        self.tier = tier  # usage files go to the bucket when there is one
        self.directory = os.path.join(data_dir, "usage")
        self.epoch_ms = int(time.time() * 1000)
        self.sequence = 0
        self.window = Window(start=time.time())
        self._last_sample = time.monotonic()
        self._uploaded_sizes_path = os.path.join(self.directory, "uploaded.json")
        # Totals since start, for /metrics (client ids idle past the expiry are dropped).
        self.totals: dict[tuple[str, str, str | None], ClientCounters] = defaultdict(ClientCounters)
        self.max_client_ids = config["metering.client.ids.per.principal"]
        self.idle_expiry = config["metering.idle.expiry.ms"] / 1000.0
        # principal -> client id -> when last seen (the sampling clock), least recently seen first
        self._client_ids: dict[str, OrderedDict[str, float]] = {}
        self._clock = time.monotonic()
        # (group, topic, member client id, lag) now, for the `group` records of each snapshot (set by the broker)
        self.group_lag: Callable[[], list[tuple[str, str, str | None, int]]] | None = None
        # awaited before each snapshot's cut, to fetch what group_lag needs from elsewhere (set by the broker)
        self.before_cut: Callable[[], Awaitable[None]] | None = None

    # ---- counting (called on the request path; cheap) ----------------------------------------

    def produced(self, principal: str, client_id: str | None, topic: str, nbytes: int, nrecords: int) -> None:
        # The append already knows the count (offsets are contiguous): no second walk of the batches.
        for counters in self._counters(principal, client_id, topic):
            counters.produced_bytes += nbytes
            counters.produced_records += nrecords
            counters.produce_requests += 1

    def fetched(self, principal: str, client_id: str | None, topic: str, records: bytes) -> None:
        n = record_count(records)
        for counters in self._counters(principal, client_id, topic):
            counters.fetched_bytes += len(records)
            counters.fetched_records += n
            counters.fetch_requests += 1

    def request(self, principal: str, client_id: str | None) -> None:
        for counters in self._counters(principal, client_id, None):
            counters.other_requests += 1

    def s3_call(self, operation: str, key: str | None, nbytes: int) -> None:
        op = _S3_CLASS.get(operation)
        if op is None:
            return
        entry = self.window.s3[(op, topic_of_key(key) if key else None)]
        entry[0] += 1
        entry[1] += nbytes

    def s3_downloaded(self, key: str, nbytes: int) -> None:
        self.window.s3[("GET", topic_of_key(key))][1] += nbytes

    def _counters(self, principal: str, client_id: str | None, topic: str | None) -> tuple[ClientCounters, ...]:
        principal = principal or ANONYMOUS
        key = (principal, self._client_id(principal, client_id or ""), topic)
        return self.window.clients[key], self.totals[key]

    def _client_id(self, principal: str, client_id: str) -> str:
        """`client_id` if it has (or gets) one of the principal's slots, else OTHER_CLIENTS."""
        ids = self._client_ids.get(principal)
        if ids is None:
            ids = self._client_ids[principal] = OrderedDict()
        if client_id in ids:
            if ids[client_id] != self._clock:
                ids[client_id] = self._clock
                ids.move_to_end(client_id)
            return client_id
        if len(ids) >= self.max_client_ids:
            client_id = OTHER_CLIENTS  # tracked like any id, so that it expires too
        ids[client_id] = self._clock
        ids.move_to_end(client_id)
        return client_id

    def expire(self) -> None:
        """Forget client ids idle past the expiry (and their /metrics totals)."""
        horizon = self._clock - self.idle_expiry
        gone: set[tuple[str, str]] = set()
        for principal, ids in list(self._client_ids.items()):
            while ids:
                client_id, seen = next(iter(ids.items()))
                if seen > horizon:
                    break
                del ids[client_id]
                gone.add((principal, client_id))
            if not ids:
                del self._client_ids[principal]
        if gone:
            for key in [k for k in self.totals if (k[0], k[1]) in gone]:
                del self.totals[key]

    # ---- sampling and snapshots -----------------------------------------------------------------

    def sample(self) -> None:
        """Integrate storage bytes and open connections over the time since the last sample."""
        now = time.monotonic()
        dt = now - self._last_sample
        self._last_sample = now
        self._clock = now
        self.expire()
        for topic in list(self.logs.topics.values()):
            hot = sum(p.size_bytes for p in topic.partitions)
            cold = sum(p.remote.size_bytes for p in topic.partitions if p.remote is not None)
            self.window.hot_byte_seconds[topic.name] += hot * dt
            self.window.cold_byte_seconds[topic.name] += cold * dt
        self.window.connection_seconds += self.connections() * dt

    def cut(self, now: float | None = None) -> list[dict[str, Any]]:
        """Close the current window: its records, and a fresh window from now."""
        self.sample()
        now = time.time() if now is None else now
        window, self.window = self.window, Window(start=now)
        self.sequence += 1
        cluster = self.cluster_id
        broker = str(self.node_id)
        common = {"v": FORMAT_VERSION, "cluster": cluster, "broker": broker,
                  "window_start": _rfc3339(window.start), "window_end": _rfc3339(now)}
        out: list[dict[str, Any]] = []

        def add(kind: str, **fields: Any) -> None:
            out.append({"id": f"{cluster}/{broker}/{self.epoch_ms}/{self.sequence}/{len(out)}", "kind": kind,
                        **common, **fields})

        for (principal, client_id, topic), c in sorted(window.clients.items(), key=lambda kv: str(kv[0])):
            add("client", principal=principal, client_id=client_id, topic=topic, **c.__dict__)
        for topic in sorted(set(window.hot_byte_seconds) | set(window.cold_byte_seconds)):
            add("topic", topic=topic, hot_byte_hours=window.hot_byte_seconds[topic] / 3600,
                cold_byte_hours=window.cold_byte_seconds[topic] / 3600)
        for (op, topic), (requests, nbytes) in sorted(window.s3.items(), key=lambda kv: str(kv[0])):
            add("s3", op=op, topic=topic, principal=None, client_id=None, requests=requests, bytes=nbytes)
        if self.group_lag is not None:
            try:
                lags = self.group_lag()
            except Exception as exc:  # lag is informative: never lose a snapshot over it
                log.warning("consumer group lag not metered: %s", exc)
                lags = []
            for group, topic, client_id, lag in lags:
                add("group", group=group, topic=topic, client_id=client_id, lag=lag)
        add("broker", uptime_seconds=now - window.start, connection_seconds=window.connection_seconds)
        return out

    def write(self, records: list[dict[str, Any]], day: datetime) -> str:
        folder = os.path.join(self.directory, day.strftime("%Y"), day.strftime("%m"), day.strftime("%d"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.node_id}-{self.epoch_ms}.jsonl")
        with open(path, "a") as f:
            f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        return path

    async def snapshot(self) -> None:
        """Cut the window (at UTC midnight at the latest), persist it, then upload what is new."""
        now = time.time()
        start_day = datetime.fromtimestamp(self.window.start, UTC).date()
        if datetime.fromtimestamp(now, UTC).date() != start_day:
            midnight = datetime(start_day.year, start_day.month, start_day.day, tzinfo=UTC).timestamp() + 86400
            now = midnight
        if self.before_cut is not None:
            try:
                await asyncio.wait_for(self.before_cut(), BEFORE_CUT_TIMEOUT)
            except Exception as exc:  # lag is informative: never lose a snapshot over it
                log.warning("consumer group lag inputs not refreshed: %s", exc)
        records = self.cut(now)
        self.write(records, datetime.fromtimestamp(self.window.start - 1e-6, UTC))
        await self.upload()

    async def upload(self) -> None:
        tier = self.tier
        if tier is None:
            return
        uploaded = _read_json(self._uploaded_sizes_path) or {}
        changed = False
        for root, _, files in os.walk(self.directory):
            for name in files:
                if not name.endswith(".jsonl"):
                    continue
                path = os.path.join(root, name)
                relative = os.path.relpath(path, self.directory)
                size = os.path.getsize(path)
                if uploaded.get(relative) == size:
                    continue
                with open(path, "rb") as f:
                    body = f.read()
                key = f"{tier.usage_prefix}{relative.replace(os.sep, '/')}"
                try:
                    await tier.store.put(key, body, deadline=30)
                except Exception as exc:
                    log.warning("usage upload postponed: %s", exc)
                    return
                uploaded[relative] = size
                changed = True
        if changed:
            tmp = self._uploaded_sizes_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(uploaded, f)
            os.replace(tmp, self._uploaded_sizes_path)


def _rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None

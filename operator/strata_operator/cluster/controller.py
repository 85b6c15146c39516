"""The cluster controller: leases and topics in the bucket -> liveness -> placement -> publish.

Every tick (0.5 s by default) the controller lists the member leases
(`clusters/<cluster>/members/<id>.json`, strata_contract.lease) and the topics
(`clusters/<cluster>/topics/<name>-<id>/topic.json`), judges liveness, computes the next placement
with `assign.next_placement`, and publishes it through a sink when it changed:

- Liveness is judged by the controller's own monotonic clock, never by timestamps in objects: a
  broker is live while its lease's `renewals` counter has changed within `lease_ms + grace_ms`
  (lease_ms from the lease itself) of the controller's observation. A lease seen for the first
  time counts as just renewed; a missing lease object means "not live" at once (a broker that
  stops cleanly deletes it). If the controller itself could not look for a while (S3 errors,
  a paused process: a gap of more than grace/2 between successful observations) every broker
  that was live when it last looked gets that time back, so brokers are never blamed for the
  controller's blindness; a broker already judged lost stays lost until its lease is renewed. Leases
  are re-read only when their ETag in the listing changes.
- Topics: the listing of `topics/` (one request) finds topic directories; a new directory's
  topic.json is read at once, known ones are re-read every `topic_refresh` seconds (partition
  growth, config changes) and a directory that disappears is a deleted topic. A topic whose
  topic.json is missing is deleted (the broker deletes it first). When two directories carry the
  same name, the one already placed keeps the name (else the oldest). Internal topics
  (`__consumer_offsets`) are placed like any other unless `include_internal=False`.
- Publishing: a sink with `load()` (the last published placement, so epochs continue across
  controller restarts) and `publish(placement)`. `FileSink(path)` (development, tests) writes
  with `write_placement`: atomic replace, fsynced, only when the placement changed (version
  rises), plus once at start-up when the file is missing or unreadable. The Kubernetes sink
  (a ConfigMap) is in `handlers.py`.
- Membership: `members` (ids) or None (every live broker is a member). `members_file`: a file
  re-read every tick, holding ids separated by commas or whitespace (e.g. `0,1,2,3`); while it
  exists it overrides `members`, so a test scales out by rewriting it. A new live member triggers
  a rebalance (scale out); a member removed from the set has its partitions moved (scale in).
- Rebalance: `request_rebalance()`, `tick(rebalance=True)`, or a request file (`rebalance_file`,
  by default `<placement file>.rebalance` in the command-line entry) that the controller deletes
  when it consumes it (after publishing). `strata cluster rebalance --placement FILE` creates it.
- Every move is logged (logger `strata.cluster`, INFO): topic/partition, from, to, epoch, reason.

Command line (what `strata dev` runs in-process, and what tests can run as a process):

    python -m strata_operator.cluster.controller --endpoint http://127.0.0.1:9000 --bucket B \\
        [--prefix P] [--cluster strata-local] --placement /path/placement.json \\
        [--members 0,1,2] [--members-file F] [--grace-ms 3000] [--interval 0.5]

It logs to stderr and stops on SIGTERM/SIGINT. S3 credentials come from the standard AWS chain
(environment variables), like the brokers'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from strata_contract.layout import (
    TOPIC_META,
    members_root,
    parse_reassignment_key,
    parse_topic_dir,
    reassignments_root,
    topics_root,
)
from strata_contract.lease import MemberLease
from strata_contract.manifest import TopicMeta
from strata_contract.placement import BrokerAddress, Placement, read_placement, write_placement
from strata_contract.s3 import S3Settings, async_client, is_not_found

from . import assign

log = logging.getLogger("strata.cluster")

DEFAULT_CLUSTER = "strata-local"  # the broker's default cluster.id
DEFAULT_INTERVAL = 0.5
DEFAULT_GRACE_MS = 3000


# ---- S3 -----------------------------------------------------------------------------------


class BucketReader:
    """What the controller reads from the bucket, over one aiobotocore client it keeps open.
    `credentials`: aws_access_key_id / aws_secret_access_key (none: the standard AWS chain)."""

    def __init__(self, bucket: str, endpoint: str | None = None, region: str = "us-east-1",
                 credentials: Mapping[str, str] | None = None, timeout: float = 10.0,
                 topic_refresh: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = bucket
        self.endpoint = endpoint or None
        self.region = region
        self.credentials = dict(credentials or {})
        self.timeout = timeout
        self.topic_refresh = topic_refresh
        self.clock = clock
        self._client: Any = None
        self._context: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leases: dict[str, tuple[str, MemberLease | None]] = {}  # key -> (etag, lease)
        # topic directory -> (topic info or None when topic.json is missing, its LastModified, read at)
        self._topics: dict[str, tuple[assign.TopicInfo | None, str, float]] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return
        # A client belongs to the event loop that opened it; a new loop (asyncio.run per call) gets its own.
        self._client = self._context = None
        self._loop = loop
        settings = S3Settings(self.endpoint, self.region, self.credentials, connect_timeout=3,
                              read_timeout=self.timeout, max_attempts=2)
        self._context = async_client(settings)
        self._client = await self._context.__aenter__()

    async def close(self) -> None:
        if self._context is not None and self._loop is asyncio.get_running_loop():
            context, self._context, self._client = self._context, None, None
            await context.__aexit__(None, None, None)

    async def _list(self, prefix: str, delimiter: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        await self.open()
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = await asyncio.wait_for(self._client.list_objects_v2(**kwargs), self.timeout)
            objects.extend(page.get("Contents", []))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return objects, prefixes
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, LastModified as text), or None when the object does not exist."""
        await self.open()
        try:
            response = await asyncio.wait_for(self._client.get_object(Bucket=self.bucket, Key=key), self.timeout)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        async with response["Body"] as stream:
            body = await stream.read()
        return body, str(response.get("LastModified", ""))

    async def reassignments(self, prefix: str, cluster: str) -> dict[tuple[str, int], tuple[int, str]]:
        """(topic, partition) -> (target broker, key) for every reassignment request in the bucket."""
        root = reassignments_root(prefix, cluster)
        objects, _ = await self._list(root)
        out: dict[tuple[str, int], tuple[int, str]] = {}
        for obj in objects:
            key = obj["Key"]
            where = parse_reassignment_key(root, key)
            got = await self._get(key) if where is not None else None
            if got is None:
                continue
            try:
                out[where] = (int(json.loads(got[0])["target"]), key)  # type: ignore[index]
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable reassignment s3://%s/%s", self.bucket, key)
        return out

    async def delete(self, key: str) -> None:
        await self.open()
        await asyncio.wait_for(self._client.delete_object(Bucket=self.bucket, Key=key), self.timeout)

    async def members(self, prefix: str, cluster: str) -> dict[int, MemberLease]:
        """id -> lease, for every lease object present now."""
        objects, _ = await self._list(members_root(prefix, cluster))
        seen: dict[str, tuple[str, MemberLease | None]] = {}
        for obj in objects:
            key, etag = obj["Key"], str(obj.get("ETag", ""))
            if not key.endswith(".json"):
                continue
            cached = self._leases.get(key)
            if cached is not None and cached[0] == etag and etag:
                seen[key] = cached
                continue
            got = await self._get(key)
            if got is None:
                continue  # deleted since the listing: the broker stopped
            try:
                lease: MemberLease | None = MemberLease.from_json(got[0])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable lease s3://%s/%s", self.bucket, key)
                lease = None
            seen[key] = (etag, lease)
        self._leases = seen
        return {lease.id: lease for _, lease in seen.values() if lease is not None}

    async def topics(self, prefix: str, cluster: str, include_internal: bool = True,
                     placed: Mapping[str, str] | None = None) -> dict[str, assign.TopicInfo]:
        """Topics by name. Two directories with one name (two brokers created it at once): the one
        already placed (`placed`: name -> id) keeps the name, else the older one; the other is an
        orphan for `strata tier scrub`."""
        root = topics_root(prefix, cluster)
        _, dirs = await self._list(root, delimiter="/")
        now = self.clock()
        fresh: dict[str, tuple[assign.TopicInfo | None, str, float]] = {}
        due: list[str] = []
        for d in dirs:
            cached = self._topics.get(d)
            if cached is not None and now - cached[2] < self.topic_refresh:
                fresh[d] = cached
            else:
                due.append(d)
        limit = asyncio.Semaphore(16)

        async def read(d: str) -> None:
            async with limit:
                got = await self._get(d + TOPIC_META)
            info: assign.TopicInfo | None = None
            modified = ""
            if got is not None:
                modified = got[1]
                try:
                    meta = TopicMeta.from_json(got[0])
                    info = assign.TopicInfo(meta.id, meta.partitions, meta.configs, meta.internal)
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring unreadable s3://%s/%s%s", self.bucket, d, TOPIC_META)
            fresh[d] = (info, modified, now)

        await asyncio.gather(*(read(d) for d in due))
        self._topics = fresh
        out: dict[str, tuple[assign.TopicInfo, str]] = {}
        for d, (info, modified, _) in fresh.items():
            parsed = parse_topic_dir(d[len(root):].rstrip("/"))
            if info is None or parsed is None or (info.internal and not include_internal):
                continue
            name, topic_id = parsed
            if info.id != str(topic_id):
                continue  # topic.json of another incarnation: not this directory's
            held = out.get(name)
            if held is None:
                out[name] = (info, modified)
            elif placed and placed.get(name) in (info.id, held[0].id):
                out[name] = (info, modified) if placed[name] == info.id else held
            elif modified < held[1]:
                out[name] = (info, modified)
        return {name: info for name, (info, _) in out.items()}


# ---- liveness -----------------------------------------------------------------------------


class Liveness:
    """Who is live, by the controller's own clock (see the module docstring)."""

    def __init__(self, grace_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_ms = grace_ms
        self.clock = clock
        self._seen: dict[int, tuple[int, float]] = {}  # id -> (renewals, when the controller saw it change)
        self._last: float | None = None

    def observe(self, leases: Mapping[int, MemberLease]) -> list[BrokerAddress]:
        now = self.clock()
        gap = now - self._last if self._last is not None else 0.0
        blind = self._last is not None and gap > self.grace_ms / 2000
        last = self._last
        self._last = now
        seen: dict[int, tuple[int, float]] = {}
        live = []
        for node, lease in sorted(leases.items()):
            prev = self._seen.get(node)
            deadline = (lease.lease_ms + self.grace_ms) / 1000
            if prev is None or prev[0] != lease.renewals:
                changed_at = now
            elif blind and last is not None and last - prev[1] <= deadline:
                # The controller could not look for a while: a broker live when it last looked
                # gets that time back. One already judged lost stays lost until it renews.
                changed_at = prev[1] + gap
            else:
                changed_at = prev[1]
            seen[node] = (lease.renewals, changed_at)
            if now - changed_at <= deadline:
                live.append(BrokerAddress(lease.id, lease.host, lease.port,
                                          tuple((n, h, p) for n, (h, p) in sorted(lease.endpoints.items()))))
        self._seen = seen
        return live


def bytes_in_of(leases: Mapping[int, MemberLease], placement: Placement | None) -> dict[tuple[str, int], float]:
    """(topic, partition) -> bytes/s, from the lease of the partition's published leader (or any
    lease when there is no placement yet)."""
    out: dict[tuple[str, int], float] = {}
    for node, lease in leases.items():
        for key, rate in lease.bytes_in.items():
            topic, sep, part = key.rpartition("/")
            if not sep or not part.isdigit():
                continue
            tp = (topic, int(part))
            a = placement.assignment(*tp) if placement is not None else None
            if a is None or a.leader == node:
                out[tp] = out.get(tp, 0.0) + rate
    return out


# ---- sinks --------------------------------------------------------------------------------


class PlacementSink(Protocol):
    async def load(self) -> Placement | None: ...

    async def publish(self, placement: Placement) -> None: ...


class FileSink:
    """The placement as a local file (development, tests): atomic replace, fsynced."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def load(self) -> Placement | None:
        return read_placement(self.path)

    async def publish(self, placement: Placement) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        await asyncio.to_thread(write_placement, self.path, placement)


def parse_members(text: str) -> set[int]:
    return {int(x) for x in text.replace(",", " ").split()}


# ---- the controller -----------------------------------------------------------------------


@dataclass
class TickResult:
    decision: assign.Decision
    live: list[BrokerAddress]
    published: bool


class Controller:
    def __init__(self, reader: BucketReader, sink: PlacementSink, *, prefix: str = "",
                 cluster: str = DEFAULT_CLUSTER, members: Collection[int] | None = None,
                 members_file: str | None = None, grace_ms: int = DEFAULT_GRACE_MS,
                 interval: float = DEFAULT_INTERVAL, rebalance_file: str | None = None,
                 include_internal: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.reader = reader
        self.sink = sink
        self.prefix = prefix
        self.cluster = cluster
        self.members: set[int] | None = None if members is None else set(members)
        self.members_file = members_file
        self.interval = interval
        self.rebalance_file = rebalance_file
        self.include_internal = include_internal
        self.liveness = Liveness(grace_ms, clock)
        self.placement: Placement | None = None
        self.live: list[BrokerAddress] = []
        self._loaded = False
        self._must_publish = False
        self._rebalance = False
        self._reassigned_at: dict[str, float] = {}  # request key -> when its move was published
        self._clock = clock
        self._grace_s = grace_ms / 1000.0

    @classmethod
    def for_file(cls, placement_file: str, *, bucket: str, endpoint: str | None = None, region: str = "us-east-1",
                 **kwargs: Any) -> Controller:
        """A controller publishing to a local file; `<file>.rebalance` is its rebalance request file."""
        kwargs.setdefault("rebalance_file", placement_file + ".rebalance")
        return cls(BucketReader(bucket, endpoint, region), FileSink(placement_file), **kwargs)

    def request_rebalance(self) -> None:
        self._rebalance = True

    def set_members(self, members: Collection[int] | None) -> None:
        self.members = None if members is None else set(members)

    def current_members(self) -> set[int] | None:
        if self.members_file:
            try:
                with open(self.members_file) as f:
                    return parse_members(f.read())
            except FileNotFoundError:
                pass
            except ValueError:
                log.warning("%s: expected broker ids separated by commas; keeping the previous members",
                            self.members_file)
        return self.members

    async def tick(self, rebalance: bool = False) -> TickResult:
        """One observation and, when something changed, one publication. Raises on S3 or sink
        errors (nothing is published then; a rebalance request stays pending)."""
        if not self._loaded:
            self.placement = await self.sink.load()
            self._must_publish = self.placement is None
            self._loaded = True
        leases = await self.reader.members(self.prefix, self.cluster)
        placed = {name: t.id for name, t in self.placement.topics.items()} if self.placement else {}
        topics = await self.reader.topics(self.prefix, self.cluster, self.include_internal, placed)
        live = self.liveness.observe(leases)
        self.live = live
        from_file = False
        if self.rebalance_file and os.path.exists(self.rebalance_file):
            from_file = True
        wanted = rebalance or self._rebalance or from_file
        requests = await self.reader.reassignments(self.prefix, self.cluster)
        decision = assign.next_placement(self.placement, members=self.current_members(), live=live, topics=topics,
                                         bytes_in=bytes_in_of(leases, self.placement), rebalance=wanted,
                                         reassign={tp: target for tp, (target, _) in requests.items()})
        published = False
        if decision.changed or self._must_publish:
            await self.sink.publish(decision.placement)
            published = True
            self._must_publish = False
            for move in decision.moves:
                log.info("move %s", move)
            if decision.changed:
                log.info("placement v%d published: %d broker(s) %s, %d topic(s), %d move(s)",
                         decision.placement.version, len(decision.placement.brokers),
                         [b.id for b in decision.placement.brokers], len(decision.placement.topics),
                         len(decision.moves))
        self.placement = decision.placement
        await self._finish_reassignments(requests, leases, topics)
        if wanted:
            self._rebalance = False
            if from_file and self.rebalance_file:
                try:
                    os.unlink(self.rebalance_file)
                except FileNotFoundError:
                    pass
                log.info("rebalance request %s consumed (%d move(s))", self.rebalance_file, len(decision.moves))
        return TickResult(decision, live, published)

    async def _finish_reassignments(self, requests: Mapping[tuple[str, int], tuple[int, str]],
                                    leases: Mapping[int, MemberLease], topics: Mapping[str, Any]) -> None:
        """Delete the requests that are done: the placement names the target and the target leads
        the partition (its lease lists it, or a grace period passed for an empty partition); or
        that cannot be done (no such partition)."""
        now = self._clock()
        for (topic, partition), (target, key) in requests.items():
            placed = self.placement.assignment(topic, partition) if self.placement else None
            info = topics.get(topic)
            if info is None or partition >= info.partitions:
                done = True
            elif placed is None or placed.leader != target:
                self._reassigned_at.pop(key, None)
                continue
            else:
                since = self._reassigned_at.setdefault(key, now)
                lease = leases.get(target)
                held = lease is not None and f"{topic}/{partition}" in lease.end_offsets
                done = held or now - since >= self._grace_s
            if done:
                await self.reader.delete(key)
                self._reassigned_at.pop(key, None)
                log.info("reassignment of %s/%d to broker %d done", topic, partition, target)

    async def run(self, stop: Any = None) -> None:
        """Tick every `interval` until `stop` (anything with is_set(): an asyncio or threading Event)
        is set; errors are logged and the next tick tries again."""
        failing = False
        try:
            while stop is None or not stop.is_set():
                started = time.monotonic()
                try:
                    await self.tick()
                    if failing:
                        log.info("controller recovered")
                    failing = False
                except Exception as exc:
                    if not failing:
                        log.warning("controller tick failed (retrying every %.1fs): %s", self.interval, exc)
                    failing = True
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            await self.reader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_operator.cluster.controller",
                                     description="Place partitions on live brokers; publish to a file.")
    parser.add_argument("--endpoint", default=os.environ.get("STRATA_TIERED_S3_ENDPOINT") or None)
    parser.add_argument("--bucket", default=os.environ.get("STRATA_TIERED_S3_BUCKET"), required=False)
    parser.add_argument("--prefix", default=os.environ.get("STRATA_TIERED_S3_PREFIX", ""))
    parser.add_argument("--region", default=os.environ.get("STRATA_TIERED_S3_REGION", "us-east-1"))
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help="the brokers' cluster.id")
    parser.add_argument("--placement", required=True, help="the placement file to write")
    parser.add_argument("--members", default=None, help="member broker ids, e.g. 0,1,2 (default: every live broker)")
    parser.add_argument("--members-file", default=None, help="re-read every tick; overrides --members while present")
    parser.add_argument("--grace-ms", type=int, default=DEFAULT_GRACE_MS)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between ticks")
    parser.add_argument("--topic-refresh", type=float, default=2.0, help="seconds between re-reads of topic.json")
    parser.add_argument("--exclude-internal", action="store_true", help="do not place internal topics")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.bucket:
        parser.error("--bucket is required")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    reader = BucketReader(args.bucket, args.endpoint, args.region, topic_refresh=args.topic_refresh)
    controller = Controller(reader, FileSink(args.placement), prefix=args.prefix, cluster=args.cluster,
                            members=parse_members(args.members) if args.members else None,
                            members_file=args.members_file, grace_ms=args.grace_ms, interval=args.interval,
                            rebalance_file=args.placement + ".rebalance", include_internal=not args.exclude_internal)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("controller for cluster %r (s3://%s/%s) writing %s", args.cluster, args.bucket, args.prefix,
                 args.placement)
        await controller.run(stop)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`strata tier ls|scrub`: what a cluster keeps in its bucket, and what it no longer references.

The bucket layout and the manifest format come from strata_contract (layout.py, manifest.py: the
one source of them); this module only lists, reads manifests and deletes. The S3 client is
strata_contract.s3's (botocore) with the standard credential chain; when no credentials are found
at all (a laptop talking to `strata local`'s embedded endpoint), requests are sent unsigned, which
moto and public buckets accept.

Options fall back to the broker's own environment variables (`STRATA_TIERED_S3_BUCKET`,
`..._PREFIX`, `..._ENDPOINT`, `..._REGION`), so one environment serves both.

`ls` columns, per partition (offsets are half-open ranges):
  S3 offsets   the offsets covered by segment objects in the bucket (cold)
  log          the broker's earliest..latest offsets (ListOffsets), with --bootstrap
  hot          offsets on the broker's disk: latest - earliest-local (ListOffsets -4, KIP-405)
  S3 only      offsets served only from S3: earliest-local - earliest
  pending      offsets not yet in S3: latest - end of the S3 range

`scrub` reports (and with --delete removes), under the cluster's `topics/` prefix:
  - every object of a topic directory `<topic>-<topic-id>` whose name and id are not a live topic
    (a deleted topic, or an older incarnation of a re-created one), or that does not parse;
  - in a live topic, partition directories beyond its partition count, and objects that neither
    `topic.json` nor the partition's `manifest.json` references, once they are older than the
    grace period (an upload in flight writes its objects before the manifest that lists them).
The bucket is listed before the broker is asked for its topics and before manifests are read, so
an object created meanwhile is never mistaken for an orphan. The commit log (`wal/`) and usage
snapshots are not touched.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from strata_contract.layout import (
    MANIFEST,
    SEGMENT_SUFFIXES,
    TOPIC_META,
    manifest_key,
    parse_segment_name,
    parse_topic_dir,
    topics_root,
)
from strata_contract.manifest import RemoteManifest
from strata_contract.s3 import S3Settings, sync_client
from strata_operator.billing.report import human_bytes

DEFAULT_CLUSTER = "strata-local"  # the broker's default cluster.id


class TierError(Exception):
    """S3 or broker trouble: exit code 1 with the message."""


# ---- S3 -----------------------------------------------------------------------------------


def s3_client(endpoint: str | None, region: str | None) -> Any:
    return sync_client(S3Settings(endpoint, region, unsigned_if_anonymous=True))


@dataclass
class S3Object:
    key: str
    size: int
    last_modified: datetime

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass
class PartitionObjects:
    partition: int
    prefix: str
    objects: list[S3Object] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def log_bytes(self) -> int:
        return sum(o.size for o in self.objects if o.key.endswith(".log"))

    def segment_ranges(self) -> list[tuple[int, int]]:
        """(base, last) of every .log object, sorted (a compacted rewrite and its predecessor count once)."""
        out = set()
        for obj in self.objects:
            parsed = parse_segment_name(obj.name)
            if parsed is not None and parsed[3] == "log":
                out.add((parsed[0], parsed[1]))
        return sorted(out)


@dataclass
class TopicObjects:
    dirname: str
    prefix: str
    topic: str | None
    topic_id: uuid.UUID | None
    partitions: dict[int, PartitionObjects] = field(default_factory=dict)
    other: list[S3Object] = field(default_factory=list)  # topic.json, and anything not in a partition dir

    def all_objects(self) -> list[S3Object]:
        return [*self.other, *(o for p in self.partitions.values() for o in p.objects)]


def list_objects(client: Any, bucket: str, prefix: str) -> list[S3Object]:
    from botocore.exceptions import BotoCoreError, ClientError

    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append(S3Object(obj["Key"], int(obj["Size"]), obj["LastModified"]))
    except ClientError as exc:
        raise TierError(f"cannot list s3://{bucket}/{prefix}: {exc.response.get('Error', {}).get('Message', exc)}"
                        ) from exc
    except BotoCoreError as exc:
        raise TierError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc
    return out


def inventory(client: Any, bucket: str, prefix: str, cluster: str) -> dict[str, TopicObjects]:
    """Every object under the cluster's topics/ prefix, by topic directory and partition."""
    root = topics_root(prefix, cluster)
    topics: dict[str, TopicObjects] = {}
    for obj in list_objects(client, bucket, root):
        rel = obj.key[len(root):]
        dirname, sep, rest = rel.partition("/")
        if dirname not in topics:
            parsed = parse_topic_dir(dirname)
            topics[dirname] = TopicObjects(dirname, f"{root}{dirname}/", parsed[0] if parsed else None,
                                           parsed[1] if parsed else None)
        entry = topics[dirname]
        part, sep2, name = rest.partition("/")
        if sep and sep2 and part.isdigit() and "/" not in name and str(int(part)) == part:
            p = int(part)
            if p not in entry.partitions:
                entry.partitions[p] = PartitionObjects(p, f"{entry.prefix}{p}/")
            entry.partitions[p].objects.append(obj)
        else:
            entry.other.append(obj)
    return topics


def read_manifest(client: Any, bucket: str, partition_prefix: str) -> RemoteManifest | None:
    from botocore.exceptions import BotoCoreError, ClientError

    key = manifest_key(partition_prefix)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise TierError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:
        raise TierError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    try:
        return RemoteManifest.from_json(body)
    except (ValueError, TypeError, KeyError) as exc:
        raise TierError(f"s3://{bucket}/{key} is not a manifest: {exc}") from exc


# ---- broker -------------------------------------------------------------------------------


@dataclass
class LiveTopic:
    name: str
    topic_id: uuid.UUID | None
    partitions: int
    internal: bool = False


@dataclass
class BrokerView:
    cluster_id: str
    topics: dict[str, LiveTopic]
    # (topic, partition) -> (earliest, earliest local, latest)
    offsets: dict[tuple[str, int], tuple[int, int, int]] = field(default_factory=dict)


def broker_view(bootstrap: str, with_offsets: bool, timeout_ms: int = 15000) -> BrokerView:
    """Cluster id, live topics with their ids (Metadata v10+) and, optionally, ListOffsets per partition."""
    from kafka import KafkaAdminClient, TopicPartition
    from kafka.errors import KafkaError
    from kafka.protocol.consumer.offsets import OffsetSpec

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="strata-tier",
                                 request_timeout_ms=timeout_ms)
    except KafkaError as exc:
        raise TierError(f"cannot reach the broker at {bootstrap}: {exc}") from exc
    try:
        cluster_id = admin.describe_cluster()["cluster_id"]
        topics: dict[str, LiveTopic] = {}
        for t in admin.describe_topics():
            if t.get("error_code"):
                continue
            tid = t.get("topic_id")
            topics[t["name"]] = LiveTopic(t["name"], uuid.UUID(str(tid)) if tid else None, len(t["partitions"]),
                                          bool(t.get("is_internal")))
        view = BrokerView(cluster_id, topics)
        if with_offsets and topics:
            tps = [TopicPartition(t.name, p) for t in topics.values() for p in range(t.partitions)]
            got = {spec: admin.list_partition_offsets({tp: spec for tp in tps}, timeout_ms=timeout_ms)
                   for spec in (OffsetSpec.EARLIEST, OffsetSpec.EARLIEST_LOCAL, OffsetSpec.LATEST)}
            for tp in tps:
                view.offsets[(tp.topic, tp.partition)] = (got[OffsetSpec.EARLIEST][tp].offset,
                                                          got[OffsetSpec.EARLIEST_LOCAL][tp].offset,
                                                          got[OffsetSpec.LATEST][tp].offset)
        return view
    except KafkaError as exc:
        raise TierError(f"broker at {bootstrap}: {exc}") from exc
    finally:
        admin.close()


def resolve_cluster(cluster: str | None, view: BrokerView | None, strict: bool) -> str:
    if view is None:
        return cluster or DEFAULT_CLUSTER
    if cluster and cluster != view.cluster_id:
        message = (f"the broker belongs to cluster {view.cluster_id!r}, not {cluster!r}: it cannot tell which "
                   "objects of that cluster are live")
        if strict:
            raise click.UsageError(message)
        Console(stderr=True).print(f"[yellow]warning: {message}[/]")
        return cluster
    return view.cluster_id


# ---- ls -----------------------------------------------------------------------------------


@dataclass
class PartitionRow:
    topic: str
    topic_id: str | None
    partition: int
    status: str  # live | orphan | unknown (no --bootstrap) | empty (live, nothing in S3)
    objects: int = 0
    segments: int = 0
    s3_bytes: int = 0
    log_bytes: int = 0
    s3_start: int | None = None
    s3_end: int | None = None
    earliest: int | None = None
    local_start: int | None = None
    latest: int | None = None

    @property
    def hot_offsets(self) -> int | None:
        return None if self.latest is None or self.local_start is None else self.latest - self.local_start

    @property
    def s3_only_offsets(self) -> int | None:
        return None if self.earliest is None or self.local_start is None else self.local_start - self.earliest

    @property
    def pending_offsets(self) -> int | None:
        if self.latest is None:
            return None
        return self.latest - max(self.s3_end or 0, self.earliest or 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hot_offsets": self.hot_offsets, "s3_only_offsets": self.s3_only_offsets,
                "pending_offsets": self.pending_offsets}


def ls_rows(topics: dict[str, TopicObjects], view: BrokerView | None) -> list[PartitionRow]:
    rows: list[PartitionRow] = []
    seen_live: set[str] = set()
    for entry in sorted(topics.values(), key=lambda t: (t.topic or t.dirname, t.dirname)):
        name = entry.topic or entry.dirname
        if view is None:
            status = "unknown"
        else:
            live = view.topics.get(entry.topic or "")
            status = "live" if live is not None and live.topic_id == entry.topic_id else "orphan"
            if status == "live":
                seen_live.add(name)
        for p in sorted(entry.partitions):
            objs = entry.partitions[p]
            ranges = objs.segment_ranges()
            row = PartitionRow(name, str(entry.topic_id) if entry.topic_id else None, p, status, len(objs.objects),
                               len(ranges), objs.bytes, objs.log_bytes,
                               ranges[0][0] if ranges else None, ranges[-1][1] + 1 if ranges else None)
            if status == "live" and view is not None:
                row.earliest, row.local_start, row.latest = view.offsets.get((name, p), (None, None, None))
            rows.append(row)
        if not entry.partitions and status != "live":  # a live one gets a row per partition below
            rows.append(PartitionRow(name, str(entry.topic_id) if entry.topic_id else None, -1, status,
                                     len(entry.other), s3_bytes=sum(o.size for o in entry.other)))
    if view is not None:  # live topics with nothing in S3 yet (or not tiered); internal ones only if tiered
        for live in sorted(view.topics.values(), key=lambda t: t.name):
            if live.name in seen_live or live.internal:
                continue
            for p in range(live.partitions):
                row = PartitionRow(live.name, str(live.topic_id) if live.topic_id else None, p, "not in S3")
                row.earliest, row.local_start, row.latest = view.offsets.get((live.name, p), (None, None, None))
                rows.append(row)
        # Partitions of a live topic that have no objects yet.
        have = {(r.topic, r.partition) for r in rows}
        for name in seen_live:
            live = view.topics[name]
            for p in range(live.partitions):
                if (name, p) not in have:
                    row = PartitionRow(name, str(live.topic_id), p, "live")
                    row.earliest, row.local_start, row.latest = view.offsets.get((name, p), (None, None, None))
                    rows.append(row)
        rows.sort(key=lambda r: (r.topic, r.topic_id or "", r.partition))
    return rows


def _d(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _range(a: int | None, b: int | None) -> str:
    return "-" if a is None or b is None else f"{a:,}..{b:,}"


def render_ls(rows: list[PartitionRow], bucket: str, root: str, with_broker: bool) -> Table:
    table = Table(title=f"s3://{bucket}/{root}", title_justify="left")
    for name, justify in [("topic", "left"), ("id", "left"), ("part", "right"), ("status", "left"),
                          ("segments", "right"), ("objects", "right"), ("S3 bytes", "right"),
                          ("S3 offsets", "right")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if with_broker:
        for name in ("log offsets", "hot", "S3 only", "pending"):
            table.add_column(name, justify="right")
    styles = {"orphan": "red", "not in S3": "dim"}
    for r in rows:
        cells = [r.topic, (r.topic_id or "?")[:8], "-" if r.partition < 0 else str(r.partition), r.status,
                 _d(r.segments), _d(r.objects), human_bytes(r.s3_bytes) if r.objects else "-",
                 _range(r.s3_start, r.s3_end)]
        if with_broker:
            cells += [_range(r.earliest, r.latest), _d(r.hot_offsets), _d(r.s3_only_offsets), _d(r.pending_offsets)]
        table.add_row(*cells, style=styles.get(r.status))
    total_objects = sum(r.objects for r in rows)
    total_bytes = sum(r.s3_bytes for r in rows)
    table.caption = (f"{len({(r.topic, r.topic_id) for r in rows})} topic(s), {total_objects:,} object(s), "
                     f"{human_bytes(total_bytes)} in S3 (cold)")
    return table


# ---- scrub --------------------------------------------------------------------------------


@dataclass
class Orphan:
    key: str
    size: int
    last_modified: datetime
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "last_modified": self.last_modified.isoformat(),
                "reason": self.reason}


@dataclass
class ScrubResult:
    orphans: list[Orphan] = field(default_factory=list)
    too_young: list[S3Object] = field(default_factory=list)  # unreferenced, but within the grace period
    scanned: int = 0


def _manifest_keys(manifest: RemoteManifest, prefix: str) -> set[str]:
    """Every key a manifest references: its segments' objects, and compaction's not-yet-deletable garbage."""
    keys = {seg.key(prefix, suffix) for seg in manifest.segments for suffix in SEGMENT_SUFFIXES}
    for item in manifest.garbage:
        if item and isinstance(item[0], str):
            # Replaced by compaction; the broker deletes it once no reader can still hold it.
            keys.update((item[0], prefix + item[0]))
    return keys


def find_orphans(client: Any, bucket: str, topics: dict[str, TopicObjects], view: BrokerView, grace_seconds: float,
                 now: datetime | None = None) -> ScrubResult:
    """Objects no live topic references. `topics` must have been listed before `view` was taken."""
    now = now or datetime.now(UTC)
    result = ScrubResult()

    def young(obj: S3Object) -> bool:
        return (now - obj.last_modified).total_seconds() < grace_seconds

    for entry in topics.values():
        objects = entry.all_objects()
        result.scanned += len(objects)
        live = view.topics.get(entry.topic) if entry.topic is not None else None
        if entry.topic is None:
            reason = f"{entry.dirname!r} is not a <topic>-<topic-id> directory"
        elif live is None:
            reason = f"topic {entry.topic} ({entry.topic_id}) does not exist"
        elif live.topic_id != entry.topic_id:
            reason = f"topic {entry.topic} was re-created: the live one is {live.topic_id}, not {entry.topic_id}"
        else:
            reason = ""
        if reason:
            result.orphans += [Orphan(o.key, o.size, o.last_modified, reason) for o in objects]
            continue
        assert live is not None
        for obj in entry.other:
            if obj.name == TOPIC_META and obj.key == entry.prefix + TOPIC_META:
                continue
            if young(obj):
                result.too_young.append(obj)
            else:
                result.orphans.append(Orphan(obj.key, obj.size, obj.last_modified,
                                             "not part of the bucket layout"))
        for p, objs in sorted(entry.partitions.items()):
            if p >= live.partitions:
                result.orphans += [Orphan(o.key, o.size, o.last_modified,
                                          f"topic {entry.topic} has {live.partitions} partition(s)")
                                   for o in objs.objects]
                continue
            manifest = read_manifest(client, bucket, objs.prefix)
            referenced = {manifest_key(objs.prefix)}
            if manifest is not None:
                referenced.update(_manifest_keys(manifest, objs.prefix))
            for obj in objs.objects:
                if obj.key in referenced:
                    continue
                if young(obj):
                    result.too_young.append(obj)
                else:
                    result.orphans.append(Orphan(obj.key, obj.size, obj.last_modified,
                                                 f"not listed in {entry.topic}/{p}/{MANIFEST}"))
    result.orphans.sort(key=lambda o: o.key)
    return result


def delete_objects(client: Any, bucket: str, keys: list[str]) -> list[str]:
    """Delete keys in batches of 1,000; returns the error messages (empty when all went)."""
    from botocore.exceptions import BotoCoreError, ClientError

    errors: list[str] = []
    for i in range(0, len(keys), 1000):
        batch = keys[i:i + 1000]
        try:
            response = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                    "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            errors.append(f"delete of {len(batch)} object(s) failed: {exc}")
            continue
        errors += [f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".strip()
                   for e in response.get("Errors", [])]
    return errors


# ---- commands -----------------------------------------------------------------------------


def _s3_options(f: Any) -> Any:
    for option in reversed([
        click.option("--bucket", required=True, envvar="STRATA_TIERED_S3_BUCKET",
                     help="The tiered-storage bucket (env STRATA_TIERED_S3_BUCKET)."),
        click.option("--prefix", default="", envvar="STRATA_TIERED_S3_PREFIX", show_default=True,
                     help="Key prefix inside the bucket, as the broker's tiered.s3.prefix."),
        click.option("--cluster", default=None,
                     help=f"Cluster id (the broker's cluster.id). Default: the broker's, with --bootstrap; "
                          f"else {DEFAULT_CLUSTER}."),
        click.option("--endpoint", default=None, envvar="STRATA_TIERED_S3_ENDPOINT",
                     help="S3 endpoint URL (e.g. http://127.0.0.1:9000); default AWS."),
        click.option("--region", default=None, envvar="STRATA_TIERED_S3_REGION", help="S3 region."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]):
        f = option(f)
    return f


@click.group("tier")
def tier() -> None:
    """Tiered storage: what is in the bucket, and what no live topic references."""


@tier.command("ls")
@_s3_options
@click.option("--bootstrap", "-b", default=None,
              help="HOST:PORT of a broker: adds live/orphan status and hot vs cold offsets per partition.")
def ls_command(bucket: str, prefix: str, cluster: str | None, endpoint: str | None, region: str | None,
               as_json: bool, bootstrap: str | None) -> None:
    """Objects and bytes in S3 per topic and partition; with --bootstrap, hot vs cold offsets too."""
    try:
        view = broker_view(bootstrap, with_offsets=True) if bootstrap else None
        cluster = resolve_cluster(cluster, view, strict=False)
        topics = inventory(s3_client(endpoint, region), bucket, prefix, cluster)
    except TierError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = ls_rows(topics, view)
    if as_json:
        click.echo(json.dumps({"bucket": bucket, "prefix": prefix, "cluster": cluster,
                               "partitions": [r.to_json() for r in rows],
                               "totals": {"objects": sum(r.objects for r in rows),
                                          "s3_bytes": sum(r.s3_bytes for r in rows)}}, indent=2))
        return
    Console().print(render_ls(rows, bucket, topics_root(prefix, cluster), view is not None))


@tier.command("scrub")
@_s3_options
@click.option("--bootstrap", "-b", required=True, envvar="STRATA_BOOTSTRAP",
              help="HOST:PORT of a broker of the cluster: the source of live topics and their ids.")
@click.option("--grace", "grace_seconds", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds an unreferenced object in a live partition may be in flight before it counts.")
@click.option("--delete", is_flag=True, help="Delete what is found (default: only report it).")
def scrub_command(bucket: str, prefix: str, cluster: str | None, endpoint: str | None, region: str | None,
                  as_json: bool, bootstrap: str, grace_seconds: float, delete: bool) -> None:
    """Find (and with --delete remove) objects that no live topic references."""
    try:
        client = s3_client(endpoint, region)
        # Cluster id first (cheap), then the listing, then the live topics: see the module docstring.
        probe = broker_view(bootstrap, with_offsets=False)
        cluster = resolve_cluster(cluster, probe, strict=True)
        topics = inventory(client, bucket, prefix, cluster)
        view = broker_view(bootstrap, with_offsets=False)
        if view.cluster_id != cluster:
            raise TierError(f"the broker at {bootstrap} changed cluster id to {view.cluster_id!r}")
        result = find_orphans(client, bucket, topics, view, grace_seconds)
        errors = delete_objects(client, bucket, [o.key for o in result.orphans]) if delete and result.orphans else []
    except TierError as exc:
        raise click.ClickException(str(exc)) from exc
    total = sum(o.size for o in result.orphans)
    if as_json:
        click.echo(json.dumps({"bucket": bucket, "prefix": prefix, "cluster": cluster, "scanned": result.scanned,
                               "orphans": [o.to_json() for o in result.orphans],
                               "orphan_bytes": total, "within_grace": [o.key for o in result.too_young],
                               "deleted": delete and not errors, "errors": errors}, indent=2))
    else:
        console = Console()
        if result.orphans:
            table = Table(title=f"objects no live topic references in s3://{bucket}/{topics_root(prefix, cluster)}",
                          title_justify="left")
            table.add_column("key")
            table.add_column("size", justify="right")
            table.add_column("modified")
            table.add_column("reason")
            for o in result.orphans:
                table.add_row(o.key, human_bytes(o.size), o.last_modified.strftime("%Y-%m-%d %H:%M:%S"), o.reason)
            console.print(table)
        console.print(f"scanned {result.scanned:,} object(s): {len(result.orphans):,} orphan(s), "
                      f"{human_bytes(total)}" + (f"; {len(result.too_young)} unreferenced but younger than "
                                                 f"{grace_seconds:.0f}s, left alone" if result.too_young else ""))
        if delete and result.orphans and not errors:
            console.print(f"deleted {len(result.orphans):,} object(s)")
        elif result.orphans and not delete:
            console.print("run again with --delete to remove them")
    if errors:
        raise click.ClickException("some deletes failed:\n  " + "\n  ".join(errors[:20]))

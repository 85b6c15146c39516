"""The broker's side of the schema registry (the registry itself is `strata_registry`, another process).

1. `_schemas` is internal, but the principal named by `schema.registry.principal` (or a super user when
   the authorizer is on) may write it; its first write creates it (one partition, compacted, kept
   forever, tiered like any topic when the broker has a bucket).
2. Schema-checked topics: with `strata.value.schema.validation=true` (or `strata.key.schema.validation`)
   every record's value (key) must start with Confluent's framing, magic byte 0 and a 4-byte schema id,
   and the id must be registered under `<topic>-value` (`<topic>-key`), or the batch is refused with
   INVALID_RECORD naming the record. The ids come from the broker's own copy of `_schemas`, read
   incrementally into a cache: a produce reads `_schemas` only when records were appended to it since
   the last read (then only those), and never calls the registry. The whole topic is read through the
   replica layer (local log, else remote storage) before the broker listens (`load_schema_ids`), so a
   broker restored from the bucket onto an empty disk knows every id the bucket has; a take-over in a
   cluster (the local log starts where the bucket ends) reads the remote part in the background, and
   meanwhile an unknown id is answered with the retriable REQUEST_TIMED_OUT rather than refused.
3. In a cluster `_schemas` is created once, by the placement's controller broker (the lowest broker id),
   after it joins (`ensure_schemas_in_cluster`), and placed like any topic. A broker that does not lead
   `_schemas` has no current copy: it reads `_schemas` from the bucket instead (its manifest's segments,
   then the S3 commit log beyond them, where a registration is before it is answered). A record with an
   id it does not know starts such a read and is answered REQUEST_TIMED_OUT (retriable) until a read that
   began after the record arrived has finished; only then is an unknown id refused. Known ids cost
   nothing; a read every `BUCKET_REFRESH_S` while checked topics take writes picks up deletes.

`gate` is the one call the produce path makes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from kafka.record.default_records import DefaultRecordBatch

from .errors import ErrorCode, KafkaProtocolError
from .log.batch import ATTR_COMPRESSION_MASK, HEADER_SIZE, parse_header
from .log.partition import OffsetInRemoteStorage

try:  # compiled (Cython) record batches when aiokafka has its extension for this platform
    from aiokafka.record._crecords import DefaultRecordBatch as _FastBatch
except ImportError:  # pragma: no cover - the pure-Python walk below
    _FastBatch = None

if TYPE_CHECKING:
    from .log.manager import LogManager
    from .protocol.context import RequestContext
    from .replica.leadership import Leadership
    from .replica.manager import ReplicaManager

log = logging.getLogger(__name__)

SCHEMAS_TOPIC = "_schemas"
SCHEMAS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "max.message.bytes": str(16 * 1024 * 1024),
    "segment.bytes": str(64 * 1024 * 1024),
}
BUCKET_REFRESH_S = 10.0  # cluster mode, not leading _schemas: re-read it from the bucket this often
VALUE_VALIDATION = "strata.value.schema.validation"
KEY_VALIDATION = "strata.key.schema.validation"


def gate(ctx: RequestContext, topic: str, records: bytes | None) -> bool:
    """Called per partition of a produce before the append. Returns True when this write to an internal
    topic is allowed (the registry writing `_schemas`, which is created on its first write); raises
    INVALID_RECORD when a schema-checked topic gets a record without a registered schema id."""
    logs = ctx.services.logs
    if topic == SCHEMAS_TOPIC:
        if not _may_write_schemas(ctx):
            return False
        ensure_schemas_topic(logs)
        return True
    entry = logs.topics.get(topic)
    if entry is None or records is None:
        return False
    values = entry.config.values
    check_value, check_key = values.get(VALUE_VALIDATION, False), values.get(KEY_VALIDATION, False)
    if check_value or check_key:
        try:
            _cache_for(logs, ctx.services.replicas).check(topic, records, check_key, check_value)
        except KafkaProtocolError:
            raise
        except Exception as exc:  # a batch the record readers cannot walk or decompress (bad CRC, lengths)
            raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, f"unreadable records: {exc!r}") from exc
    return False


def ensure_schemas_topic(logs: LogManager) -> None:
    """Create `_schemas` on a single broker (at start-up when `schema.registry.principal` is set: the
    registry's clients look the topic up before they write, and internal topics are never auto-created).
    Not in a cluster (`require_remote`): there `ensure_schemas_in_cluster` creates it once."""
    if SCHEMAS_TOPIC not in logs.topics and not logs.require_remote:
        _create_schemas_topic(logs)


def _create_schemas_topic(logs: LogManager) -> None:
    # The same id on every broker of a cluster (and after a restore), whichever creates it.
    topic_id = uuid.uuid5(uuid.NAMESPACE_URL, f"strata:{logs.config['cluster.id']}:{SCHEMAS_TOPIC}")
    config = dict(SCHEMAS_TOPIC_CONFIG)
    if logs.config["tiered.s3.bucket"]:
        config["strata.durability"] = "s3"  # a registered schema is in the bucket before it is answered
    logs.create_topic(SCHEMAS_TOPIC, 1, config, internal=True, topic_id=topic_id)


async def ensure_schemas_in_cluster(logs: LogManager, cluster: Leadership, poll_s: float = 1.0) -> None:
    """Cluster mode: until `_schemas` is in the placement, the controller broker (the lowest id in the
    placement; another takes its place if it goes) creates it when no broker has (the topic.json in the
    bucket is what the controller places). Runs as a background task from the broker's start-up."""
    while True:
        try:
            if await cluster.exists_elsewhere(SCHEMAS_TOPIC):
                if SCHEMAS_TOPIC in logs.topics:
                    return  # placed, and adopted here
            elif SCHEMAS_TOPIC not in logs.topics and cluster.controller_id() == cluster.node_id:
                _create_schemas_topic(logs)
                await cluster.published(SCHEMAS_TOPIC)
                log.info("created %s for the schema registry (controller broker %d)", SCHEMAS_TOPIC,
                         cluster.node_id)
        except Exception:
            log.exception("creating %s in the cluster", SCHEMAS_TOPIC)
        await asyncio.sleep(poll_s)


async def load_schema_ids(logs: LogManager, replicas: ReplicaManager) -> int:
    """Read all of `_schemas` into the broker's schema-id cache (at start-up, before the broker listens).
    Returns the number of (subject, version) entries known."""
    cache = _cache_for(logs, replicas)
    await cache.load()
    return len(cache._versions)


def _may_write_schemas(ctx: RequestContext) -> bool:
    allowed = ctx.services.config["schema.registry.principal"]
    if allowed and ctx.principal == allowed:
        return True
    authorizer = ctx.services.authorizer
    return bool(authorizer.enabled and ctx.principal in authorizer.super_users)


_caches: weakref.WeakKeyDictionary[Any, SchemaIdCache] = weakref.WeakKeyDictionary()


def _cache_for(logs: LogManager, replicas: ReplicaManager | None) -> SchemaIdCache:
    cache = _caches.get(logs)
    if cache is None:
        cache = _caches[logs] = SchemaIdCache(logs, replicas)
    return cache


class SchemaIdCache:
    """subject -> the schema ids registered (and not deleted) under it, from `_schemas`: the local log as it
    grows (`refresh`, synchronous, on the produce path) and remote storage below it (`load`, through the
    replica layer)."""

    def __init__(self, logs: Any, replicas: ReplicaManager | None = None) -> None:
        self.logs = logs
        self.replicas = replicas
        self.ids: dict[str, set[int]] = {}
        self._versions: dict[tuple[str, int], tuple[int, bool]] = {}  # (subject, version) -> (id, deleted)
        self._next = 0
        self._topic_id: Any = None
        self._epoch = 0
        self._loading: asyncio.Task[None] | None = None
        # Cluster mode, another broker leads _schemas: reads of the bucket (monotonic start of the last
        # finished one, ids first seen unknown -> when).
        self._bucket_loaded_from = -1.0
        self._bucket_started = -1.0
        self._unknown_since: dict[int, float] = {}

    def _elsewhere(self) -> bool:
        """A cluster in which another broker leads `_schemas` (this broker's copy is not current)."""
        replicas = self.replicas
        return (replicas is not None and replicas.remote is not None and self.logs.require_remote
                and not replicas.leadership.leads(SCHEMAS_TOPIC, 0))

    def _partition(self) -> Any:
        """`_schemas`' partition (None while it does not exist); starts over when the topic was recreated."""
        topic = self.logs.topics.get(SCHEMAS_TOPIC)
        if topic is None:
            return None
        if topic.topic_id != self._topic_id:
            self.ids.clear()
            self._versions.clear()
            self._next, self._topic_id, self._epoch = 0, topic.topic_id, 0
        plog = topic.partitions[0]
        self._next = max(self._next, plog.log_start_offset)
        return plog

    @property
    def loading(self) -> bool:
        """Whether a read of the remote part (or of the bucket) is under way."""
        return self._loading is not None and not self._loading.done()

    async def load_from_bucket(self) -> None:
        """Cluster mode, another broker leads `_schemas`: read what the bucket has beyond `_next`, the
        uploaded segments (the manifest) and then the S3 commit log's chain of batches."""
        plog = self._partition()
        tier = self.replicas.remote if self.replicas is not None else None
        if plog is None or tier is None:
            return
        from strata_contract.layout import manifest_key, partition_root
        from strata_contract.manifest import RemoteManifest

        started = time.monotonic()
        self._bucket_started = started
        root = partition_root(tier.prefix, tier.cluster, SCHEMAS_TOPIC, self._topic_id, 0)
        raw = await tier.store.get_or_none(manifest_key(root))
        if raw is not None:
            manifest = RemoteManifest.from_json(raw)
            self._next = max(self._next, manifest.log_start_offset)
            while self._next < manifest.end_offset:
                data = await tier.reader.read(manifest, root, self._next, 1 << 20, True)
                if not data or not self._apply_batches(data):
                    break
        for entry in await tier.commit_log.chain_for(SCHEMAS_TOPIC, 0, self._next, 1 << 31):
            self._apply_batches(entry.data)
        self._bucket_loaded_from = started

    def refresh(self) -> None:
        """Read the `_schemas` records appended to the local log since the last read. Records only in
        remote storage are read by `load`, started here in the background. Not while another broker
        leads `_schemas` (this copy is not current: `load_from_bucket`)."""
        plog = self._partition()
        if plog is None or self._elsewhere():
            return
        while self._next < plog.log_end_offset:
            try:
                data = plog.read(self._next, 1 << 20)
            except OffsetInRemoteStorage:
                self._start_load()
                return
            if not data or not self._apply_batches(data):
                break

    async def load(self) -> None:
        """Read `_schemas` up to its end through the replica layer: the local log, else remote storage."""
        plog = self._partition()
        if plog is None:
            return
        while self._next < plog.log_end_offset:
            if self.replicas is None:
                data: bytes | memoryview | None = plog.read(self._next, 1 << 20)
            else:
                data = await self.replicas.read(plog, self._next, 1 << 20, always_one=True)
            if not data or not self._apply_batches(data):
                break

    def _start_bucket_load(self) -> None:
        if self.loading:
            return
        task = asyncio.get_running_loop().create_task(self.load_from_bucket())
        task.add_done_callback(_log_failure)
        self._loading = task

    def _start_load(self) -> None:
        if self.loading:
            return
        if self.replicas is None or self.replicas.remote is None:
            log.warning("_schemas from offset %d is below the local log and there is no remote storage",
                        self._next)
            return
        log.info("reading _schemas from offset %d in remote storage for schema checks", self._next)
        task = asyncio.get_running_loop().create_task(self.load())
        task.add_done_callback(_log_failure)
        self._loading = task

    def _apply_batches(self, data: bytes | memoryview) -> bool:
        """Apply the records of whole batches at or above `_next`; whether `_next` moved."""
        data = bytes(data)
        before = self._next
        pos = 0
        while pos + HEADER_SIZE <= len(data):
            header = parse_header(data, pos)
            if pos + header.length > len(data):
                break
            if not header.is_control and header.next_offset > self._next:
                batch = DefaultRecordBatch(data[pos:pos + header.length])
                for record in batch:
                    if record.offset >= self._next:
                        self._apply(record.key, record.value, record.headers)
            self._next = max(self._next, header.next_offset)
            pos += header.length
        return self._next > before

    def _unknown_in_bucket(self, schema_id: int, subject: str) -> None:
        """An id this broker does not know while another leads `_schemas`: refused (by the caller) only
        once a read of the bucket that began after the id was first seen has finished; until then a read
        is started and the record answered with a retriable error."""
        now = time.monotonic()
        since = self._unknown_since.setdefault(schema_id, now)
        if self._bucket_loaded_from > since:
            self._unknown_since.pop(schema_id, None)
            return
        self._start_bucket_load()
        if len(self._unknown_since) > 10000:
            self._unknown_since.clear()
        raise _no_id_yet(schema_id)

    def _apply(self, key: bytes | None, value: bytes | None, headers: Any) -> None:
        try:
            k = json.loads(key) if key else None
            v = json.loads(value) if value else None
        except ValueError:
            return
        if not isinstance(k, dict):
            return
        if k.get("keytype") == "LEADER" and isinstance(v, dict):
            self._epoch = max(self._epoch, int(v.get("epoch", 0)))
            return
        if k.get("keytype") != "SCHEMA":
            return
        epoch = next((int(raw) for name, raw in headers or [] if name == "strata-epoch" and raw), None)
        if epoch is not None and epoch < self._epoch:
            return  # fenced: a stale registry leader wrote it (strata_registry.state)
        try:
            subject, version = str(k["subject"]), int(k["version"])
            if v is None:
                self._versions.pop((subject, version), None)
            else:
                self._versions[(subject, version)] = (int(v["id"]), bool(v.get("deleted")))
        except (KeyError, TypeError, ValueError):
            return
        self.ids[subject] = {sid for (s, _), (sid, deleted) in self._versions.items() if s == subject and not deleted}

    def check(self, topic: str, records: bytes, check_key: bool, check_value: bool) -> None:
        schemas = self.logs.topics.get(SCHEMAS_TOPIC)
        if schemas is not None and self._elsewhere():
            if schemas.topic_id != self._topic_id:
                self._partition()
            if time.monotonic() - self._bucket_started > BUCKET_REFRESH_S:
                self._start_bucket_load()  # deletes since the last read (nothing waits for it)
        elif schemas is not None and (schemas.partitions[0].log_end_offset > self._next
                                      or schemas.topic_id != self._topic_id):
            self.refresh()  # new registrations or deletes: read them (a comparison when there are none)
        buf = records if isinstance(records, bytes | memoryview) else bytes(records)
        pos, total = 0, len(buf)
        while pos + HEADER_SIZE <= total:
            header = parse_header(buf, pos)
            end = min(pos + header.length, total)
            if _FastBatch is not None:
                # aiokafka's compiled batch reader (no copy of the batch): about 0.6 us a record.
                data = buf if pos == 0 and end == total else memoryview(buf)[pos:end]
                if check_key:
                    self._check_heads(topic, "key", {(k[:5] if (k := r.key) is not None else b"")
                                                     for r in _FastBatch(data)}, data)
                if check_value:
                    self._check_heads(topic, "value", {(v[:5] if (v := r.value) is not None else b"")
                                                       for r in _FastBatch(data)}, data)
                pos = end
                continue
            buf = bytes(buf)
            if header.attributes & ATTR_COMPRESSION_MASK:
                batch = DefaultRecordBatch(buf[pos:end])
                pairs = [(r.key, r.value) for r in batch]
                for part, wanted, index in (("key", check_key, 0), ("value", check_value, 1)):
                    if wanted:
                        self._check_ids(topic, part, [kv[index] for kv in pairs])
            else:
                if check_key:
                    self._check_ids(topic, "key", _plain_ids(buf, pos + HEADER_SIZE, end, True))
                if check_value:
                    self._check_ids(topic, "value", _plain_ids(buf, pos + HEADER_SIZE, end, False))
            pos = end

    def _check_heads(self, topic: str, part: str, heads: set[bytes], batch: bytes | memoryview) -> None:
        """The distinct first five bytes of a batch's keys/values: when all are framed with an allowed id,
        done; else the slow path finds the record to name."""
        allowed = self.ids.get(f"{topic}-{part}", ())
        for head in heads:
            if len(head) < 5 or head[0] != 0 or _ID.unpack_from(head, 1)[0] not in allowed:
                records = list(DefaultRecordBatch(bytes(batch)))
                self._check_ids(topic, part, [r.key if part == "key" else r.value for r in records])
                return

    def _check_ids(self, topic: str, part: str, heads: list[bytes | None] | tuple[dict[bytes, int], int]) -> None:
        """`heads`: the checked key/value of every record (compressed batches), or (the distinct 4-byte
        ids -> the first record with each, index of the first record without framing or -1) from
        `_plain_ids`."""
        if isinstance(heads, tuple):
            first, bad = heads
            if bad >= 0:
                raise _no_id(topic, part, bad)
            ids = set(first)
        else:
            ids = set()
            for index, data in enumerate(heads):
                if data is None or len(data) < 5 or data[0] != 0:
                    raise _no_id(topic, part, index)
                ids.add(bytes(data[1:5]))
        subject = f"{topic}-{part}"
        allowed = self.ids.get(subject, ())
        for raw in ids:
            schema_id = _ID.unpack(raw)[0]
            if schema_id not in allowed and self._elsewhere():
                self._unknown_in_bucket(schema_id, subject)
                allowed = self.ids.get(subject, ())
            if schema_id not in allowed:
                self.refresh()
                allowed = self.ids.get(subject, ())
                if schema_id not in allowed and self.loading:
                    raise KafkaProtocolError(
                        ErrorCode.REQUEST_TIMED_OUT,
                        f"schema id {schema_id} is not known yet: _schemas is still being read from remote "
                        "storage (retry)")
                if schema_id not in allowed:
                    raise KafkaProtocolError(
                        ErrorCode.INVALID_RECORD,
                        f"record {_first_with(heads, raw)} of the batch: its {part} has schema id {schema_id}, "
                        f"which is not registered under subject {subject}")


def _no_id_yet(schema_id: int) -> KafkaProtocolError:
    return KafkaProtocolError(ErrorCode.REQUEST_TIMED_OUT,
                              f"schema id {schema_id} is not known yet: _schemas is being read from the bucket "
                              "(retry)")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reading _schemas from remote storage failed: %r", task.exception())


def _no_id(topic: str, part: str, index: int) -> KafkaProtocolError:
    return KafkaProtocolError(ErrorCode.INVALID_RECORD,
                              f"record {index} of the batch: its {part} does not start with a schema id "
                              f"(magic byte 0 and a 4-byte id), which topic {topic} requires")


def _first_with(heads: list[bytes | None] | tuple[dict[bytes, int], int], raw: bytes) -> int | str:
    if isinstance(heads, list):
        return next((i for i, d in enumerate(heads) if d is not None and bytes(d[1:5]) == raw), "?")
    return heads[0].get(raw, "?")


def _plain_ids(buf: bytes, pos: int, end: int, key: bool) -> tuple[dict[bytes, int], int]:
    """The distinct 4-byte schema ids of the keys (key=True) or values of an uncompressed batch's records
    (each with the index of the first record that has it), and the index of the first record without
    Confluent's framing (-1: none). Walks the records without decoding them: length, attributes,
    timestamp and offset deltas, key, value; one- and two-byte varints inline (the common case), longer
    ones through `_varint`."""
    ids: dict[bytes, int] = {}
    last = b""
    index = 0
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            length = (b >> 1) ^ -(b & 1)
            pos += 1
        elif buf[pos + 1] < 0x80:
            raw = (b & 0x7F) | (buf[pos + 1] << 7)
            length = (raw >> 1) ^ -(raw & 1)
            pos += 2
        else:
            length, pos = _varint(buf, pos)
        record_end = pos + length
        p = pos + 1  # attributes
        p = p + 1 if buf[p] < 0x80 else _varint(buf, p)[1]  # timestamp delta
        p = p + 1 if buf[p] < 0x80 else _varint(buf, p)[1]  # offset delta
        b = buf[p]
        if b < 0x80:
            size = (b >> 1) ^ -(b & 1)
            p += 1
        else:
            size, p = _varint(buf, p)
        if not key:
            if size > 0:
                p += size
            b = buf[p]
            if b < 0x80:
                size = (b >> 1) ^ -(b & 1)
                p += 1
            elif buf[p + 1] < 0x80:
                raw = (b & 0x7F) | (buf[p + 1] << 7)
                size = (raw >> 1) ^ -(raw & 1)
                p += 2
            else:
                size, p = _varint(buf, p)
        if size < 5 or buf[p] != 0 or p + 5 > record_end:
            return ids, index
        head = buf[p + 1:p + 5]
        if head != last:
            ids.setdefault(head, index)
            last = head
        pos = record_end
        index += 1
    return ids, -1


_ID = struct.Struct(">i")


def _varint(view: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A zigzag varint at pos: (value, position after it)."""
    shift = result = 0
    while True:
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise KafkaProtocolError(ErrorCode.CORRUPT_MESSAGE, "varint too long")
    return (result >> 1) ^ -(result & 1), pos

"""Usage records: a reader (and validator) of the format brokers write, de-duplicating them.

The format is specified in docs/billing.md ("Usage records") and defined in strata_contract.usage,
which the broker's metering writes with; this module is its reference reader. Summary: one JSON
object per line, `v` = 1, a globally unique `id`, a `kind` (`client`, `topic`, `s3`, `broker`,
`group`), the window `[window_start, window_end)` in UTC, and the
counters of that window only (deltas, never running totals). A record seen twice (a retried
upload, a snapshot re-sent after a restart) has the same `id` and is counted once.

Files live in a directory tree (any `*.jsonl` below `--usage DIR`) or in S3 under
`[<prefix>/]clusters/<cluster>/usage/<yyyy>/<mm>/<dd>/<broker>-<epoch>.jsonl`.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from strata_contract.s3 import S3Settings, async_client
from strata_contract.usage import (
    COMMON_FIELDS,
    FORMAT_VERSION,
    KIND_FIELDS,
    REQUIRED_FIELDS,
    S3_OPS,
    UsageRecord,
    usage_prefix,
)

from . import BillingError


@lru_cache(maxsize=4096)
def _utc(value: str) -> datetime | None:
    """The timestamp in UTC; None without a time zone; ValueError if it is none. Cached: the
    records of one snapshot share their window."""
    parsed = datetime.fromisoformat(value)
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def _parse_time(value: Any, where: str, name: str) -> datetime:
    if not isinstance(value, str):
        raise BillingError(f"{where}: `{name}` must be an RFC 3339 UTC timestamp string, got {value!r}")
    try:
        parsed = _utc(value)
    except ValueError:
        raise BillingError(f"{where}: `{name}` is not an RFC 3339 timestamp: {value!r}") from None
    if parsed is None:
        raise BillingError(f"{where}: `{name}` has no time zone (write e.g. {value}Z): {value!r}")
    return parsed


# Per kind: (field, type, required) in validation order, computed once.
_SPECS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    kind: tuple((name, typ, typ in ("str", "time") and (name in COMMON_FIELDS or name in REQUIRED_FIELDS[kind]))
                for name, typ in {**COMMON_FIELDS, **kind_fields}.items())
    for kind, kind_fields in KIND_FIELDS.items()}


_DEFAULTS = {f.name: f.default for f in fields(UsageRecord) if f.default is not MISSING}


def _record(values: dict[str, Any]) -> UsageRecord:
    """A UsageRecord from validated values, without the frozen dataclass's per-field __setattr__
    (a month of hourly snapshots is hundreds of thousands of records)."""
    record = object.__new__(UsageRecord)
    state = record.__dict__
    state.update(_DEFAULTS)
    state.update(values)
    return record


def parse_record(obj: Any, where: str) -> UsageRecord | None:
    """Validate one decoded JSON object. Returns None for a kind this reader does not know."""
    if not isinstance(obj, dict):
        raise BillingError(f"{where}: a usage record must be a JSON object")
    version = obj.get("v")
    if version != FORMAT_VERSION or type(version) is not int:
        raise BillingError(f"{where}: unsupported usage record version v={version!r} (this reader knows v=1)")
    kind = obj.get("kind")
    spec = _SPECS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        return None
    values: dict[str, Any] = {}
    for name, typ, required in spec:
        raw = obj.get(name)
        if raw is None:
            if required:
                raise BillingError(f"{where}: `{kind}` record is missing `{name}`")
            continue
        if typ == "int":
            if type(raw) is not int or raw < 0:  # bool is not int here
                raise BillingError(f"{where}: `{name}` must be a non-negative integer, got {raw!r}")
            values[name] = raw
        elif typ == "time":
            values[name] = _parse_time(raw, where, name)
        elif typ == "dec":
            if type(raw) not in (int, Decimal) or raw < 0:
                raise BillingError(f"{where}: `{name}` must be a non-negative number, got {raw!r}")
            values[name] = Decimal(raw)
        else:  # str, str?
            if type(raw) is not str:
                raise BillingError(f"{where}: `{name}` must be a string, got {raw!r}")
            values[name] = raw
    if not values["id"]:
        raise BillingError(f"{where}: `id` must not be empty")
    if values["window_end"] < values["window_start"]:
        raise BillingError(f"{where}: window_end is before window_start")
    if kind == "s3":
        values["op"] = values["op"].upper()
        if values["op"] not in S3_OPS:
            raise BillingError(f"{where}: S3 `op` must be one of {', '.join(S3_OPS)}, got {values['op']!r}")
    return _record(values)


@dataclass
class UsageSet:
    """De-duplicated records plus what the reader noticed on the way."""

    records: list[UsageRecord] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    duplicates: int = 0
    conflicts: int = 0
    warnings: list[str] = field(default_factory=list)

    def between(self, start: date, end: date) -> UsageSet:
        """Records whose window starts on a UTC day in [start, end) (end exclusive)."""
        kept = [r for r in self.records if start <= r.day < end]
        return UsageSet(kept, self.files, self.lines, self.duplicates, self.conflicts, list(self.warnings))


_DECODER = json.JSONDecoder(parse_float=Decimal)
# Kinds whose fields are all strings and integers: decoded with orjson (about twice as fast), since
# numbers with a fraction are invalid there anyway. The others need exact Decimals.
_INTEGER_KINDS = frozenset(k for k, f in KIND_FIELDS.items() if "dec" not in f.values())
try:
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson comes with the `cli` extra
    _orjson_loads = None


def _decode(line: str) -> Any:
    """One JSON line; numbers with a fraction or exponent as exact Decimals."""
    if _orjson_loads is not None:
        try:
            obj = _orjson_loads(line)
        except ValueError:
            return _DECODER.decode(line)  # its error (or what orjson refuses and json takes: NaN, huge ints)
        if type(obj) is dict and obj.get("kind") in _INTEGER_KINDS:
            return obj
    return _DECODER.decode(line)


def _canonical(line: str) -> str:
    return json.dumps(_DECODER.decode(line), sort_keys=True, default=str)


class _Collector:
    """Parses lines from many sources and keeps one record per id (with the line it came from)."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[str, UsageRecord]] = {}
        self.result = UsageSet()
        self.unknown_kinds: dict[str, int] = {}

    def add_text(self, text: str, source: str) -> None:
        self.result.files += 1
        lines = text.split("\n")
        # Every record ends with "\n": bytes after the last newline are a write cut short by a crash.
        torn_index = len(lines) if text.endswith("\n") else len(lines) - 1
        decode = _decode
        for number, line in enumerate(lines, start=1):
            if not line or line.isspace():
                continue
            try:
                obj = decode(line)
            except ValueError:
                where = f"{source}:{number}"
                if number - 1 == torn_index:
                    self.result.warnings.append(f"{where}: skipped an incomplete last line (torn write)")
                    continue
                raise BillingError(f"{where}: not valid JSON") from None
            self.result.lines += 1
            record = parse_record(obj, f"{source}:{number}")
            if record is None:
                kind = str(obj.get("kind"))
                self.unknown_kinds[kind] = self.unknown_kinds.get(kind, 0) + 1
                continue
            seen = self.by_id.get(record.id)
            if seen is None:
                self.by_id[record.id] = (line, record)
                continue
            self.result.duplicates += 1
            if seen[0] != line:
                kept, other = _canonical(seen[0]), _canonical(line)
                if kept != other:
                    self.result.conflicts += 1
                    # Deterministic whatever the file order: the canonically smaller one wins.
                    if other < kept:
                        self.by_id[record.id] = (line, record)

    def finish(self) -> UsageSet:
        for kind, count in sorted(self.unknown_kinds.items()):
            self.result.warnings.append(f"ignored {count} record(s) of unknown kind {kind!r}")
        if self.result.conflicts:
            self.result.warnings.append(
                f"{self.result.conflicts} record id(s) seen with different contents; kept one of each")
        self.result.records = sorted((r for _, r in self.by_id.values()),
                                     key=lambda r: (r.window_start, r.broker, r.id))
        return self.result


def read_lines(texts: Iterable[tuple[str, str]]) -> UsageSet:
    """Records from (source name, file text) pairs, de-duplicated by id. The cyclic garbage
    collector is paused meanwhile: records hold no cycles, and collections triggered by every
    few hundred thousand allocations would otherwise rescan all the records read so far."""
    collector = _Collector()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for source, text in texts:
            collector.add_text(text, source)
        return collector.finish()
    finally:
        if was_enabled:
            gc.enable()


def _dir_files(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.rglob("*.jsonl")):
        if path.is_file():
            try:
                yield str(path), path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise BillingError(f"cannot read usage file {path}: {exc}") from None


def read_dir(root: str | Path) -> UsageSet:
    """Every `*.jsonl` below `root` (recursively), de-duplicated."""
    path = Path(root)
    if not path.is_dir():
        raise BillingError(f"usage directory {root} does not exist")
    return read_lines(_dir_files(path))


def day_prefixes(cluster: str, start: date, end: date, prefix: str = "") -> list[str]:
    """Key prefixes to list for records of days [start, end): one day of slack on each side,
    since a file is named by when it was written, which may be after its windows' day."""
    out = []
    day = start - timedelta(days=1)
    while day <= end:
        out.append(f"{usage_prefix(cluster, prefix)}{day:%Y/%m/%d}/")
        day += timedelta(days=1)
    return out


async def read_s3_texts(client: Any, bucket: str, prefixes: list[str],
                        errors: str = "strict") -> list[tuple[str, str]]:
    """(s3 URI, text) of every `.jsonl` object under the key prefixes, in key order, over an open
    aiobotocore client (strata_contract.s3.async_client). `errors`: how undecodable bytes are taken."""
    out: list[tuple[str, str]] = []
    keys: list[str] = []
    for key_prefix in prefixes:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []) if obj["Key"].endswith(".jsonl"))
    for key in sorted(keys):
        response = await client.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as stream:
            body = await stream.read()
        out.append((f"s3://{bucket}/{key}", body.decode("utf-8", errors=errors)))
    return out


async def _read_s3_async(bucket: str, prefixes: list[str], endpoint: str | None,
                         region: str) -> list[tuple[str, str]]:
    async with async_client(S3Settings(endpoint, region)) as client:
        return await read_s3_texts(client, bucket, prefixes)


def read_s3(bucket: str, cluster: str, start: date, end: date, *, prefix: str = "",
            endpoint: str | None = None, region: str = "us-east-1") -> UsageSet:
    """Usage files of days [start, end) from the bucket, de-duplicated. Credentials come from
    the usual AWS environment/config chain."""
    try:
        texts = asyncio.run(_read_s3_async(bucket, day_prefixes(cluster, start, end, prefix), endpoint, region))
    except BillingError:
        raise
    except Exception as exc:  # botocore raises many types; the user needs the message, not a traceback
        raise BillingError(f"cannot read usage from s3://{bucket}/{usage_prefix(cluster, prefix)}: {exc}") from None
    return read_lines(texts)

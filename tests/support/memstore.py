"""An object store in memory, with the interface of strata_broker.tier.store.ObjectStore.

For in-process tests of code that talks to the bucket (the cluster's leases and hand-overs):
the same calls, the same exceptions and S3's conditional writes - `put_if` with an ETag writes
only over that version, with None only where no object exists, else PreconditionFailed; an
If-Match on a missing key answers NoSuchKey, as S3 does. Every write gets a new ETag (S3's is the
MD5 of the body, so rewriting identical bytes keeps it; nothing here relies on that).

Faults: `refuse(prefix)` makes every call on keys under prefix fail as an unreachable S3 would
(S3Unavailable), until `restore()`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from strata_broker.tier.store import PreconditionFailed, S3Unavailable


@dataclass
class _Object:
    body: bytes
    etag: str


def _missing(key: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": "NoSuchKey", "Message": key}}, op)


class MemStore:
    """One bucket in a dict. Counters as ObjectStore keeps them (`requests` by S3 operation name)."""

    def __init__(self, bucket: str = "mem") -> None:
        self.bucket = bucket
        self.endpoint = None
        self.objects: dict[str, _Object] = {}
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.failures = 0
        self.healthy = True
        self.on_request: Callable[[str, str | None, int], None] | None = None
        self.on_downloaded: Callable[[str, int], None] | None = None
        self._writes = 0
        self._refused: set[str] = set()

    # ---- faults ---------------------------------------------------------------------------

    def refuse(self, prefix: str = "") -> None:
        """Fail every call on keys under prefix ("" : everything) as an unreachable S3 would."""
        self._refused.add(prefix)

    def restore(self) -> None:
        self._refused.clear()

    def _request(self, op: str, key: str | None, size: int = 0) -> None:
        self.requests[op] += 1
        if self.on_request is not None:
            self.on_request(op, key, size)
        if any((key or "").startswith(p) for p in self._refused):
            self.failures += 1
            self.healthy = False
            raise S3Unavailable(f"S3 {op} failed: {key} is refused by the test")
        self.healthy = True

    def _write(self, key: str, body: bytes) -> str:
        self._writes += 1
        etag = '"' + hashlib.md5(body + self._writes.to_bytes(8, "big")).hexdigest() + '"'
        self.objects[key] = _Object(bytes(body), etag)
        self.bytes["put"] += len(body)
        return etag

    # ---- the ObjectStore interface ----------------------------------------------------------

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def _call(self, op: str, deadline: float | None = None, **kwargs: Any) -> Any:
        """The raw calls some code makes past the typed methods (HEAD requests)."""
        key = kwargs.get("Key")
        self._request(op, key)
        if op == "head_bucket":
            return {}
        if op == "head_object":
            obj = self.objects.get(str(key))
            if obj is None:
                raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")
            return {"ETag": obj.etag, "ContentLength": len(obj.body)}
        raise NotImplementedError(f"MemStore has no {op}")

    async def put(self, key: str, body: bytes, deadline: float | None = None) -> None:
        self._request("put_object", key, len(body))
        self._write(key, body)

    async def put_if(self, key: str, body: bytes, etag: str | None, deadline: float | None = None) -> str:
        self._request("put_object", key, len(body))
        current = self.objects.get(key)
        if etag is not None and current is None:
            raise _missing(key, "PutObject")
        if current is not None and current.etag != etag:
            if current.body == body:
                return current.etag  # as ObjectStore.put_if: a retried write that had landed is success
            raise PreconditionFailed(key)
        return self._write(key, body)

    async def get_with_etag(self, key: str, deadline: float | None = None) -> tuple[bytes | None, str | None]:
        self._request("get_object", key)
        obj = self.objects.get(key)
        if obj is None:
            return None, None
        self.bytes["get"] += len(obj.body)
        return obj.body, obj.etag

    async def get(self, key: str, start: int | None = None, end: int | None = None,
                  deadline: float | None = None) -> bytes:
        self._request("get_object", key)
        obj = self.objects.get(key)
        if obj is None:
            raise _missing(key, "GetObject")
        data = obj.body if start is None else obj.body[start:end]
        self.bytes["get"] += len(data)
        if self.on_downloaded is not None:
            self.on_downloaded(key, len(data))
        return data

    async def get_into(self, key: str, start: int, end: int, buffers: list[tuple[Any, int]],
                       filled: Callable[[int, int], None] | None = None, whole: bool = False,
                       deadline: float | None = None) -> int:
        if sum(n for _, n in buffers) != end - start:
            raise ValueError(f"{key}: buffers for {sum(n for _, n in buffers)} bytes, range of {end - start}")
        data = await self.get(key, start, end)
        if len(data) != end - start:
            raise S3Unavailable(f"{key}: {len(data)} bytes for a range of {end - start}")
        pos = 0
        for i, (buffer, size) in enumerate(buffers):
            with memoryview(buffer) as view:
                view[:size] = data[pos:pos + size]
            pos += size
            if filled is not None:
                filled(i, size)
        return end - start

    async def get_or_none(self, key: str) -> bytes | None:
        try:
            return await self.get(key)
        except ClientError:
            return None

    async def list(self, prefix: str, delimiter: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        self._request("list_objects_v2", prefix)
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        for key in sorted(self.objects):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if not prefixes or prefixes[-1] != common:
                    prefixes.append(common)
                continue
            obj = self.objects[key]
            objects.append({"Key": key, "Size": len(obj.body), "ETag": obj.etag})
        return objects, prefixes

    async def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            self._request("delete_objects", chunk[0] if chunk else None)
            for key in chunk:
                self.objects.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        objects, _ = await self.list(prefix)
        await self.delete_many([o["Key"] for o in objects])
        return len(objects)

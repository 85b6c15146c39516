"""One bucket as the broker uses it: an aiobotocore client (built by strata_contract.s3) with
backoff until a deadline, per-attempt timeouts, conditional writes, multipart uploads, ranged
reads into caller buffers, and request counts for metrics and metering."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from strata_contract.s3 import S3Settings, async_client, error_code

log = logging.getLogger(__name__)


# The checksum every object is written with, and so the one GETs of whole objects check. botocore's
# default, CRC32, runs at about 4 GB/s here (zlib; the CRT's is slower still): it took a fifth of the
# downloader's CPU during a cold replay. CRC32C runs at about 20 GB/s (awscrt, SSE4.2) and is one
# of the checksums S3 keeps natively.
CHECKSUM = "CRC32C"


class S3Unavailable(Exception):
    pass


class PreconditionFailed(Exception):
    """A conditional write lost: the object is not the version the writer expected (412)."""


__all__ = ["CHECKSUM", "ObjectStore", "PreconditionFailed", "S3Unavailable", "error_code"]

# Objects larger than this go up as multipart uploads of PART_BYTES parts.
MULTIPART_THRESHOLD = 64 << 20
PART_BYTES = 25 << 20


class ObjectStore:
    """One bucket. Every call retries with capped exponential backoff until its deadline."""

    def __init__(self, bucket: str, endpoint: str = "", region: str = "us-east-1", call_timeout: float = 30.0,
                 attempt_timeout: float = 15.0) -> None:
        self.bucket = bucket
        self.endpoint = endpoint or None
        self.region = region
        self.call_timeout = call_timeout
        # One attempt never waits longer than this, whatever the overall deadline: a hung
        # connection is abandoned and the call retried on a fresh one.
        self.attempt_timeout = attempt_timeout
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.failures = 0
        self.healthy = True
        self._stack = AsyncExitStack()
        self._client: Any = None
        # Told about every request sent (operation, key, payload bytes): metering hooks in here.
        self.on_request: Callable[[str, str | None, int], None] | None = None
        self.on_downloaded: Callable[[str, int], None] | None = None

    async def open(self) -> None:
        # Credentials: the standard AWS chain (environment, config files, web identity / IRSA).
        # One attempt per botocore call: _call retries itself, with backoff, until its deadline.
        settings = S3Settings(self.endpoint, self.region, read_timeout=15, max_attempts=1, max_pool_connections=32)
        self._client = await self._stack.enter_async_context(async_client(settings))

    async def close(self) -> None:
        await self._stack.aclose()

    async def _call(self, op: str, deadline: float | None = None, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + (self.call_timeout if deadline is None else deadline)
        delay = 0.1
        while True:
            self.requests[op] += 1
            if self.on_request is not None:
                body = kwargs.get("Body")
                self.on_request(op, kwargs.get("Key") or kwargs.get("Prefix"),
                                len(body) if isinstance(body, bytes | bytearray) else 0)
            try:
                remaining = min(self.attempt_timeout, max(0.1, stop_at - loop.time()))
                result = await asyncio.wait_for(getattr(self._client, op)(Bucket=self.bucket, **kwargs), remaining)
                if not self.healthy:
                    log.info("S3 reachable again (%s)", op)
                self.healthy = True
                return result
            except Exception as exc:
                code = error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    raise PreconditionFailed(kwargs.get("Key", "")) from exc
                if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "InvalidRange"):
                    raise
                self.failures += 1
                if self.healthy:
                    log.warning("S3 %s failed (%s); retrying with backoff", op, exc.__class__.__name__ + ":" +
                                str(exc)[:200])
                self.healthy = False
                if loop.time() + delay >= stop_at:
                    raise S3Unavailable(f"S3 {op} failed: {exc!r}") from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def put(self, key: str, body: bytes, deadline: float | None = None) -> None:
        await self._call("put_object", deadline, Key=key, Body=body, ChecksumAlgorithm=CHECKSUM)
        self.bytes["put"] += len(body)

    async def put_multipart(self, key: str, size: int, read: Callable[[int, int], Awaitable[bytes]],
                            deadline: float = 300) -> None:
        """Write `size` bytes, read(start, length) at a time, as a multipart upload of PART_BYTES
        parts (each with its own deadline); aborted if any part fails."""
        upload = await self._call("create_multipart_upload", Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, PART_BYTES), start=1):
                body = await read(start, min(PART_BYTES, size - start))
                part = await self._call("upload_part", deadline=deadline, Key=key, UploadId=upload_id,
                                        PartNumber=number, Body=body)
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            await self._call("complete_multipart_upload", Key=key, UploadId=upload_id,
                             MultipartUpload={"Parts": parts})
        except BaseException:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def put_if(self, key: str, body: bytes, etag: str | None, deadline: float | None = None) -> str:
        """Write only over the version `etag` names (None: only if the key does not exist yet);
        returns the new ETag. Raises PreconditionFailed when someone else wrote in between.

        A 412 on a retry whose first attempt did land is recognised by the body being in place, so
        a body must name its writer wherever two writers could write the same bytes and mean
        different things (the producer id counter does)."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            response = await self._call("put_object", deadline, Key=key, Body=body, ChecksumAlgorithm=CHECKSUM,
                                        **condition)
        except PreconditionFailed:
            # A retried PUT whose first attempt did land finds its own write: that is success.
            current, current_etag = await self.get_with_etag(key)
            if current == body and current_etag is not None:
                return current_etag
            raise
        self.bytes["put"] += len(body)
        return str(response["ETag"])

    async def get_with_etag(self, key: str, deadline: float | None = None) -> tuple[bytes | None, str | None]:
        try:
            response = await self._call("get_object", deadline, Key=key)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        async with response["Body"] as stream:
            data = await stream.read()
        self.bytes["get"] += len(data)
        return data, str(response["ETag"])

    async def get(self, key: str, start: int | None = None, end: int | None = None,
                  deadline: float | None = None) -> bytes:
        """Whole object, or bytes [start, end) with a ranged GET."""
        kwargs: dict[str, Any] = {"Key": key}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = await self._call("get_object", deadline, **kwargs)
        async with response["Body"] as stream:
            data = await stream.read()
        self.bytes["get"] += len(data)
        if self.on_downloaded is not None:
            self.on_downloaded(key, len(data))
        return data

    async def get_into(self, key: str, start: int, end: int, buffers: list[tuple[Any, int]],
                       filled: Callable[[int, int], None] | None = None, whole: bool = False,
                       deadline: float | None = None) -> int:
        """Bytes [start, end) of key with one GET, received straight into buffers: a list of
        (writable buffer, byte count) that together take end - start bytes, in order. filled(i, n)
        is called as soon as buffer i has its n bytes. No body is joined in memory, so the buffers
        can be ones that are reused. whole: the range is the whole object, asked for without a
        Range header (the store then checks the object's checksum; moto reads less). Returns the
        byte count."""
        if sum(n for _, n in buffers) != end - start:
            raise ValueError(f"{key}: buffers for {sum(n for _, n in buffers)} bytes, range of {end - start}")
        ranged = {} if whole and start == 0 else {"Range": f"bytes={start}-{end - 1}"}
        response = await self._call("get_object", deadline, Key=key, **ranged)
        async with response["Body"] as stream:
            if int(response["ContentLength"]) != end - start:
                raise S3Unavailable(f"{key}: {response['ContentLength']} bytes for a range of {end - start}")
            for i, (buffer, size) in enumerate(buffers):
                with memoryview(buffer) as view:
                    got = 0
                    while got < size:
                        n = await stream.readinto(view[got:size])
                        if n == 0:
                            raise S3Unavailable(f"{key}: body ended {size - got} bytes short")
                        got += n
                self.bytes["get"] += size
                if self.on_downloaded is not None:
                    self.on_downloaded(key, size)
                if filled is not None:
                    filled(i, size)
            # Reading at the end is what makes botocore check the length and the checksum.
            if await stream.read(1):
                raise S3Unavailable(f"{key}: body longer than its {end - start} bytes")
        return end - start

    async def get_or_none(self, key: str) -> bytes | None:
        try:
            return await self.get(key)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise

    async def list(self, prefix: str, delimiter: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """(objects, common prefixes) under prefix, all pages."""
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call("list_objects_v2", **kwargs)
            objects.extend(page.get("Contents", []))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return objects, prefixes
            token = page["NextContinuationToken"]

    async def delete_many(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            await self._call("delete_objects", Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})

    async def delete_prefix(self, prefix: str) -> int:
        objects, _ = await self.list(prefix)
        await self.delete_many([o["Key"] for o in objects])
        return len(objects)

"""The S3 client's checksums, against moto's server: every object is written with a CRC32C, and a GET
of a whole object is checked against it (botocore checks CRC32C only where awscrt is installed; without
it such an object would be read unchecked)."""

from __future__ import annotations

import asyncio
import base64
import mmap
import os

import crc32c
import pytest
from botocore.exceptions import FlexibleChecksumError
from s3server import CREDENTIALS, S3Bucket
from strata_broker.tier.store import ObjectStore


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def b64_crc32c(data: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def test_objects_are_written_with_a_crc32c(s3: S3Bucket) -> None:
    data = os.urandom(300_001)

    async def scenario() -> None:
        store = ObjectStore(s3.name, s3.server.endpoint)
        await store.open()
        try:
            await store.put("a.log", data)
            assert await store.put_if("b.log", data, None)
        finally:
            await store.close()

    asyncio.run(scenario())
    client = s3.server.client()
    for key in ("a.log", "b.log"):
        head = client.head_object(Bucket=s3.name, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumCRC32C"] == b64_crc32c(data)


def test_a_whole_object_read_fails_when_its_bytes_do_not_match_its_crc32c(s3: S3Bucket) -> None:
    data = os.urandom(300_001)
    client = s3.server.client()
    client.put_object(Bucket=s3.name, Key="good.log", Body=data, ChecksumAlgorithm="CRC32C")
    # What a corrupted object looks like to a reader: moto keeps the checksum it is given.
    client.put_object(Bucket=s3.name, Key="bad.log", Body=data, ChecksumAlgorithm="CRC32C",
                      ChecksumCRC32C=b64_crc32c(data + b"x"))

    async def scenario() -> None:
        store = ObjectStore(s3.name, s3.server.endpoint)
        await store.open()
        buffer = mmap.mmap(-1, len(data))
        try:
            assert await store.get_into("good.log", 0, len(data), [(buffer, len(data))], whole=True) == len(data)
            assert buffer[:] == data
            assert await store.get("good.log") == data
            with pytest.raises(FlexibleChecksumError):
                await store.get_into("bad.log", 0, len(data), [(buffer, len(data))], whole=True)
            with pytest.raises(FlexibleChecksumError):
                await store.get("bad.log")
        finally:
            buffer.close()
            await store.close()

    asyncio.run(scenario())


def test_conditional_writes_racing_on_one_version_let_exactly_one_through(s3: S3Bucket) -> None:
    """S3's If-Match is atomic; the moto server the tests run must be too (tests/support/moto_atomic.py),
    or the producer id counter's reservations can collide in a test where they cannot on S3."""
    import threading

    from botocore.exceptions import ClientError

    client = s3.server.client()
    key = "race/counter"
    etag = client.put_object(Bucket=s3.name, Key=key, Body=b"initial")["ETag"]
    start = threading.Barrier(24)
    won: list[int] = []

    def writer(i: int) -> None:
        mine = s3.server.client()
        start.wait()
        try:
            mine.put_object(Bucket=s3.name, Key=key, Body=f"writer {i}".encode(), IfMatch=etag)
            won.append(i)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "PreconditionFailed", exc.response

    for round_ in range(30):
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1, f"{len(won)} writers passed one If-Match"
        etag = client.put_object(Bucket=s3.name, Key=key, Body=f"round {round_}".encode())["ETag"]
        won.clear()
        start.reset()

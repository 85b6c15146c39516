"""tests/support/memstore.py against the real S3 client over moto: the same calls give the same answers,
so the in-process cluster tests (test_cluster_handover.py) exercise the conditional writes the
brokers rely on as S3 answers them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from memstore import MemStore
from s3server import CREDENTIALS, S3Bucket
from strata_broker.tier.store import ObjectStore, PreconditionFailed, S3Unavailable, error_code

Store = MemStore | ObjectStore


async def contract(store: Store) -> None:
    # Conditional writes: None = only while the key does not exist; an ETag = only over that version.
    first = await store.put_if("p/manifest.json", b"epoch 1", None)
    with pytest.raises(PreconditionFailed):
        await store.put_if("p/manifest.json", b"someone else", None)
    second = await store.put_if("p/manifest.json", b"epoch 2", first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        await store.put_if("p/manifest.json", b"a stale leader", first)
    assert await store.get_with_etag("p/manifest.json") == (b"epoch 2", second)
    # A retried write that had landed is recognised by its body being in place.
    assert await store.put_if("p/manifest.json", b"epoch 2", first) == second
    await store.put("p/manifest.json", b"overwritten")
    with pytest.raises(PreconditionFailed):
        await store.put_if("p/manifest.json", b"epoch 3", second)
    # Missing keys.
    with pytest.raises(Exception) as missing:
        await store.put_if("absent", b"x", first)
    assert error_code(missing.value) == "NoSuchKey"  # If-Match on no object: 404, not 412
    assert await store.get_with_etag("nothing") == (None, None)
    assert await store.get_or_none("nothing") is None
    with pytest.raises(Exception) as missing:
        await store.get("nothing")
    assert not isinstance(missing.value, S3Unavailable)
    # Ranges, listings with and without a delimiter, deletes.
    await store.put("p/0.log", b"0123456789")
    assert await store.get("p/0.log", 2, 5) == b"234"
    assert await store.get("p/0.log", 7) == b"789"
    for key in ("p/x/1", "p/x/2", "p/y/1", "q"):
        await store.put(key, key.encode())
    objects, prefixes = await store.list("p/", delimiter="/")
    assert [o["Key"] for o in objects] == ["p/0.log", "p/manifest.json"] and prefixes == ["p/x/", "p/y/"]
    assert objects[0]["Size"] == 10
    objects, prefixes = await store.list("p/x")
    assert [o["Key"] for o in objects] == ["p/x/1", "p/x/2"] and prefixes == []
    await store.delete_many(["q", "not there"])
    assert await store.get_or_none("q") is None
    assert await store.delete_prefix("p/x/") == 2
    objects, _ = await store.list("")
    assert [o["Key"] for o in objects] == ["p/0.log", "p/manifest.json", "p/y/1"]
    assert store.requests["put_object"] >= 9 and store.bytes["put"] > 0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_the_memory_store() -> None:
    async def scenario() -> None:
        await contract(MemStore())

    run(scenario)


def test_the_s3_client_over_moto(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)

    async def scenario() -> None:
        store = ObjectStore(s3.name, s3.server.endpoint, call_timeout=10)
        await store.open()
        try:
            await contract(store)
        finally:
            await store.close()

    run(scenario)


def test_refused_keys_fail_as_an_unreachable_s3_would() -> None:
    async def scenario() -> None:
        store = MemStore()
        await store.put("members/0.json", b"lease")
        store.refuse("members/")
        with pytest.raises(S3Unavailable):
            await store.put("members/0.json", b"lease again")
        await store.put("other", b"fine")
        assert store.failures == 1 and store.healthy  # healthy again: the last call got through
        store.restore()
        await store.put("members/0.json", b"lease again")
        assert await store.get("members/0.json") == b"lease again"

    run(scenario)

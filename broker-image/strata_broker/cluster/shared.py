"""Cluster mode: ACLs, SCRAM credentials and client quotas are the same on every broker.

Each lives in the bucket as one JSON object (`clusters/<cluster>/security/<name>.json`, a map of
entries). A broker that changes one (CreateAcls, AlterUserScramCredentials, ...) writes the
*difference* it made into the bucket's current version with a conditional PUT, retrying on a
conflict, so two brokers changing different entries at once both land. Every broker looks at
the objects' ETags every second and loads a changed one. The bucket is the truth: a broker that
was down while an ACL was deleted does not bring it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from strata_contract.layout import security_key

from ..tier.store import ObjectStore, PreconditionFailed, error_code

log = logging.getLogger(__name__)

POLL_S = 1.0


class Shareable(Protocol):
    on_change: Callable[[], None] | None

    def shared_entries(self) -> dict[str, Any]: ...

    def load_shared(self, entries: dict[str, Any]) -> None: ...


class SharedDocuments:
    def __init__(self, store: ObjectStore, prefix: str, cluster: str, docs: dict[str, Shareable]) -> None:
        self.store = store
        self.keys = {name: security_key(prefix, cluster, name) for name in docs}
        self.docs = docs
        self.synced: dict[str, dict[str, Any]] = {}
        self.etags: dict[str, str | None] = {}
        self._dirty: set[str] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for name, doc in self.docs.items():
            remote, etag = await self._get(name)
            if remote is None:
                # First broker of the cluster (or upgraded from one broker): its entries seed it.
                self.synced[name] = {}
                self.etags[name] = None
                if doc.shared_entries():
                    self._dirty.add(name)
            else:
                self.synced[name], self.etags[name] = remote, etag
                doc.load_shared(remote)
            doc.on_change = lambda n=name: self._dirty.add(n)
        await self.flush()
        self._task = asyncio.get_running_loop().create_task(self._poll_loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _get(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        raw, etag = await self.store.get_with_etag(self.keys[name], deadline=10)
        if raw is None:
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            log.error("s3 object %s is not JSON; treating it as empty", self.keys[name])
            return {}, etag
        return (data if isinstance(data, dict) else {}), etag

    async def flush(self) -> None:
        """Write this broker's pending changes into the bucket (called before a change is answered)."""
        async with self._lock:
            for name in sorted(self._dirty):
                self._dirty.discard(name)
                try:
                    await self._push(name)
                except Exception as exc:
                    self._dirty.add(name)
                    log.warning("could not share the change of %s with the cluster yet: %s", name, exc)

    async def _push(self, name: str) -> None:
        doc = self.docs[name]
        current, base = doc.shared_entries(), self.synced[name]
        added = {k: v for k, v in current.items() if base.get(k) != v}
        removed = [k for k in base if k not in current]
        for _ in range(20):
            remote, etag = await self._get(name)
            merged = dict(remote or {})
            merged.update(added)
            for k in removed:
                merged.pop(k, None)
            try:
                new_etag = await self.store.put_if(self.keys[name], json.dumps(merged, sort_keys=True).encode(), etag,
                                                   deadline=10)
            except PreconditionFailed:
                continue  # another broker changed it meanwhile: apply the difference again
            self.synced[name], self.etags[name] = merged, new_etag
            doc.load_shared(merged)
            return
        raise RuntimeError(f"{name}: too many concurrent changes")

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                if self._dirty:
                    await self.flush()
                for name in self.docs:
                    await self._refresh(name)
            except Exception as exc:
                log.debug("shared security state not refreshed: %s", exc)

    async def _refresh(self, name: str) -> None:
        try:
            head = await self.store._call("head_object", deadline=5, Key=self.keys[name])
            etag: str | None = str(head["ETag"])
        except Exception as exc:
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            etag = None
        if etag == self.etags.get(name) or etag is None:
            return
        async with self._lock:
            if name in self._dirty:
                return  # our own change goes first; the next look loads the merged result
            remote, etag = await self._get(name)
            if remote is not None:
                self.synced[name], self.etags[name] = remote, etag
                self.docs[name].load_shared(remote)

"""Producer ids unique over the cluster and over the broker's lives: a counter in the bucket
(`producer-ids.json`, strata_contract.layout.producer_ids_key) moved only by conditional writes.

A broker reserves a block at a time (the LogManager hands ids out of it); ids are never given
twice, whatever became of a broker's disk, because partition states restored from the bucket
remember the ids they saw and the counter only rises.
"""

from __future__ import annotations

import json
import uuid

from .store import ObjectStore, PreconditionFailed


class ProducerIdBlocks:
    def __init__(self, store: ObjectStore, key: str, broker_id: int) -> None:
        self.store = store
        self.key = key
        self.broker_id = broker_id

    async def reserve(self, count: int, at_least: int = 0) -> int:
        """The first of `count` producer ids that no broker of the cluster has been given, nor this
        one in an earlier life. `at_least` carries forward a counter kept elsewhere before (a
        local file)."""
        while True:
            data, etag = await self.store.get_with_etag(self.key)
            start = max(int(json.loads(data)["next"]) if data else 0, at_least)
            # The reservation names itself: put_if takes an identical body already in place for its
            # own retried write, and two brokers reserving the same block would write identical ones.
            body = json.dumps({"next": start + count, "reserved_by": self.broker_id,
                               "reservation": uuid.uuid4().hex}).encode()
            try:
                await self.store.put_if(self.key, body, etag)
            except PreconditionFailed:
                continue  # another broker reserved a block in between: read again
            return start

"""Topics in the bucket: a tiered topic's `topic.json` (strata_contract.manifest.TopicMeta) is
written when it is created or changed, and a deleted topic's objects are deleted, `topic.json`
first so a half-deleted topic is never restored (`strata tier scrub` finds what a failure left)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from strata_contract.layout import topic_meta_key, topic_root
from strata_contract.manifest import TopicMeta

from .store import ObjectStore

if TYPE_CHECKING:
    from ..log.manager import Topic

log = logging.getLogger(__name__)


class BucketTopics:
    def __init__(self, store: ObjectStore, prefix: str, cluster: str) -> None:
        self.store = store
        self.prefix = prefix
        self.cluster = cluster

    async def put_meta(self, topic: Topic) -> None:
        meta = TopicMeta(topic.name, str(topic.topic_id), len(topic.partitions), topic.overrides, topic.internal)
        try:
            await self.store.put(topic_meta_key(self.prefix, self.cluster, topic.name, topic.topic_id),
                                 meta.to_json(), deadline=300)
        except Exception as exc:
            log.error("could not write metadata of topic %s to S3: %s", topic.name, exc)

    async def delete(self, topic: Topic) -> None:
        root = topic_root(self.prefix, self.cluster, topic.name, topic.topic_id)
        try:
            # topic.json first: a half-deleted topic is never restored.
            await self.store.delete_many([topic_meta_key(self.prefix, self.cluster, topic.name, topic.topic_id)])
            count = await self.store.delete_prefix(root)
            log.info("deleted %d object(s) of topic %s from S3", count, topic.name)
        except Exception as exc:
            log.error("could not delete objects of topic %s (scrub will find them): %s", topic.name, exc)

"""Writing a partition's manifest: the one place every manifest rewrite goes through.

In cluster mode (the partition is held at a leader epoch > 0) the write is conditional on the
manifest version this broker last saw, so a leader that has been replaced (its successor wrote
the manifest since) cannot overwrite it: its write fails, and the partition is marked fenced."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from strata_contract.layout import manifest_key

from .store import ObjectStore, PreconditionFailed

if TYPE_CHECKING:
    from strata_contract.manifest import RemoteManifest

    from ..log.partition import PartitionLog

log = logging.getLogger(__name__)


class Fenced(Exception):
    """Another broker leads this partition now."""


async def publish_manifest(store: ObjectStore, plog: PartitionLog, prefix: str, manifest: RemoteManifest,
                           deadline: float = 120) -> None:
    if plog.fenced:
        raise Fenced(f"{plog.topic}-{plog.partition}")
    if plog.leader_epoch <= 0:
        await store.put(manifest_key(prefix), manifest.to_json(), deadline=deadline)
    else:
        try:
            plog.remote_etag = await store.put_if(manifest_key(prefix), manifest.to_json(), plog.remote_etag,
                                                  deadline=deadline)
        except PreconditionFailed:
            plog.fenced = True
            log.warning("%s-%d: the manifest was rewritten by another broker; this one is fenced at epoch %d",
                        plog.topic, plog.partition, plog.leader_epoch)
            raise Fenced(f"{plog.topic}-{plog.partition}") from None
    plog.set_remote(manifest)

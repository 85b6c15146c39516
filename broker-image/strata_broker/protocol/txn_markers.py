"""WriteTxnMarkers (api key 27): a transaction coordinator on another broker of the cluster asks
this broker, the leader of some of the transaction's partitions, to write their commit or abort
markers (cluster/txn_markers.py sends it).

Only brokers may: a request whose client id carries the cluster's inter-broker MAC, or, with the
authorizer on, a principal allowed CLUSTER_ACTION on the cluster (as Kafka requires). Anyone else
gets CLUSTER_AUTHORIZATION_FAILED for every partition. Each partition is answered once its marker
is durable (NOT_LEADER_OR_FOLLOWER if this broker does not lead it: the coordinator sends it to the
new leader).
"""

from __future__ import annotations

import logging

from kafka.protocol.producer.transaction import WriteTxnMarkersRequest, WriteTxnMarkersResponse

from ..errors import ErrorCode
from ..security.acl import CLUSTER_NAME, OP_CLUSTER_ACTION, RES_CLUSTER
from .context import RequestContext
from .registry import api

log = logging.getLogger(__name__)

E = ErrorCode


def from_broker(ctx: RequestContext) -> bool:
    """Whether the request comes from a broker of this cluster (or a principal allowed ClusterAction)."""
    auth = ctx.services.inter_broker
    if auth is not None and auth.is_broker(ctx.client_id):
        return True
    return ctx.services.authorizer.enabled and ctx.authorize(OP_CLUSTER_ACTION, RES_CLUSTER, CLUSTER_NAME)


@api(WriteTxnMarkersRequest, WriteTxnMarkersResponse, 1, 1)
async def handle_write_txn_markers(ctx: RequestContext, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse:
    R = WriteTxnMarkersResponse
    MR = R.WritableTxnMarkerResult
    TR = MR.WritableTxnMarkerTopicResult
    PR = TR.WritableTxnMarkerPartitionResult
    allowed = from_broker(ctx)
    if not allowed:
        log.warning("WriteTxnMarkers from %s (%s, client id %r) refused: not a broker of this cluster",
                    ctx.peer, ctx.principal, ctx.client_id)
    markers = ctx.services.txn_markers
    out = []
    for marker in request.markers:
        wanted = [(t.name, p) for t in marker.topics for p in t.partition_indexes]
        if not allowed or markers is None:
            errors = {tp: E.CLUSTER_AUTHORIZATION_FAILED for tp in wanted}
        else:
            errors = await markers.write(marker.producer_id, marker.producer_epoch, bool(marker.transaction_result),
                                         wanted, marker.coordinator_epoch)
        out.append(MR(producer_id=marker.producer_id, topics=[
            TR(name=t.name, partitions=[PR(partition_index=p, error_code=int(errors.get((t.name, p), E.NONE)))
                                        for p in t.partition_indexes])
            for t in marker.topics]))
    return R(version=ctx.api_version, markers=out)

"""InitProducerId: a new producer id for an idempotent producer; for a transactional one, the
transaction coordinator's id and a bumped epoch (groups/transactions.py)."""

from __future__ import annotations

import logging

from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse

from ..errors import ErrorCode
from ..security.acl import CLUSTER_NAME, OP_IDEMPOTENT_WRITE, OP_WRITE, RES_CLUSTER, RES_TOPIC, RES_TRANSACTIONAL_ID
from .context import RequestContext
from .registry import api

log = logging.getLogger(__name__)


@api(InitProducerIdRequest, InitProducerIdResponse, 0, 4)
async def handle_init_producer_id(ctx: RequestContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    R = InitProducerIdResponse
    if request.transactional_id is None and not (
            ctx.authorize(OP_IDEMPOTENT_WRITE, RES_CLUSTER, CLUSTER_NAME)
            or ctx.services.authorizer.authorize_any(ctx.principal, ctx.host, OP_WRITE, RES_TOPIC)):
        # Kafka (KIP-679): an idempotent producer needs IdempotentWrite on the cluster or Write on some topic.
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
                 producer_id=-1, producer_epoch=-1)
    if request.transactional_id is not None and not ctx.authorize(OP_WRITE, RES_TRANSACTIONAL_ID,
                                                                  request.transactional_id):
        return R(version=ctx.api_version, throttle_time_ms=0,
                 error_code=int(ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED), producer_id=-1, producer_epoch=-1)
    if request.transactional_id is not None:
        txns = ctx.services.transactions
        if txns is None or not txns.loaded:
            return R(version=ctx.api_version, throttle_time_ms=0,
                     error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE), producer_id=-1, producer_epoch=-1)
        pid_in = request.producer_id if ctx.api_version >= 3 else -1
        epoch_in = request.producer_epoch if ctx.api_version >= 3 else -1
        try:
            error, pid, epoch = await txns.init_producer_id(request.transactional_id, request.transaction_timeout_ms,
                                                            pid_in, epoch_in)
        except Exception as exc:  # not durable (disk or S3 trouble): the client retries
            log.warning("InitProducerId for %s failed: %r", request.transactional_id, exc)
            error, pid, epoch = ErrorCode.COORDINATOR_NOT_AVAILABLE, -1, -1
        if error == ErrorCode.PRODUCER_FENCED and ctx.api_version < 4:
            error = ErrorCode.INVALID_PRODUCER_EPOCH
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(error), producer_id=pid,
                 producer_epoch=epoch)
    # A producer id and epoch in the request (KIP-360) are not trusted: without a transactional id Kafka
    # hands out a new producer id every time, so nobody can bump the epoch of another producer's id.
    try:
        producer_id = await ctx.services.logs.allocate_producer_id()
    except Exception as exc:  # the bucket's counter is out of reach (S3 down): the client retries
        log.warning("no producer id block: %r", exc)
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.COORDINATOR_NOT_AVAILABLE),
                 producer_id=-1, producer_epoch=-1)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, producer_id=producer_id, producer_epoch=0)

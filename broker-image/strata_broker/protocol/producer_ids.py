"""InitProducerId for idempotent producers (transactions are not offered)."""

from __future__ import annotations

from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse

from ..errors import ErrorCode
from .context import RequestContext
from .registry import api


@api(InitProducerIdRequest, InitProducerIdResponse, 0, 4)
async def handle_init_producer_id(ctx: RequestContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    R = InitProducerIdResponse
    if request.transactional_id is not None:
        return R(version=ctx.api_version, throttle_time_ms=0, error_code=int(ErrorCode.INVALID_REQUEST),
                 producer_id=-1, producer_epoch=-1)
    if ctx.api_version >= 3 and request.producer_id >= 0 and request.producer_epoch >= 0:
        # KIP-360: an idempotent producer bumps its epoch and restarts its sequences at 0.
        if request.producer_epoch < 32766:
            return R(version=ctx.api_version, throttle_time_ms=0, error_code=0, producer_id=request.producer_id,
                     producer_epoch=request.producer_epoch + 1)
    return R(version=ctx.api_version, throttle_time_ms=0, error_code=0,
             producer_id=ctx.broker.logs.allocate_producer_id(), producer_epoch=0)

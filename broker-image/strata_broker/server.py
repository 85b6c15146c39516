"""Per-connection request pipeline: framing, header parsing, dispatch, in-order responses.

Bad input costs only the connection it came on: an oversized or negative frame length,
a frame that does not decode, an unknown API key or an unsupported version closes that
connection (as Kafka does); every other connection keeps being served.

On a SASL listener a connection may send only ApiVersions, SaslHandshake and SaslAuthenticate
until it has authenticated (anything else closes it, as in Kafka), its frames may not exceed
`sasl.server.max.receive.size`, and it must authenticate within `request.timeout.ms`. A request
must arrive whole within `request.timeout.ms` of its first byte (slowloris). Client quotas are
applied here: a throttled connection is not read from until its throttle time has passed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from .errors import ErrorCode
from .protocol import API_TABLE
from .protocol.context import Connection, RequestContext
from .protocol.metadata import api_versions_response

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_HEADER_PREFIX = struct.Struct(">hhi")
API_VERSIONS_KEY = 18
PRODUCE_KEY = 0
FETCH_KEY = 1
SASL_HANDSHAKE_KEY = 17
SASL_AUTHENTICATE_KEY = 36
_PRE_AUTH_KEYS = frozenset({API_VERSIONS_KEY, SASL_HANDSHAKE_KEY, SASL_AUTHENTICATE_KEY})


class ConnectionClosed(Exception):
    """The peer broke the protocol; drop this connection only."""


class _Last(bytes):
    """A response after which the connection is closed (a failed authentication)."""


def _encode(response: Any, correlation_id: int) -> bytes:
    # The response object already carries its version (handlers build it with version=...).
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True, framed=True))


async def serve_connection(broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           conn: Connection | None = None) -> None:
    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
    if conn is None:
        conn = Connection(None, peername[0] if isinstance(peername, tuple) else str(peername))
    max_frame = broker.config["socket.request.max.bytes"]
    pre_auth_max_frame = min(max_frame, broker.config["sasl.server.max.receive.size"])
    idle_timeout = broker.config["connections.max.idle.ms"] / 1000.0 or None
    request_timeout = broker.config["request.timeout.ms"] / 1000.0
    # A request that stalls half-sent is idle too: it gets the shorter of the two limits.
    frame_timeout = min(request_timeout, idle_timeout) if idle_timeout else request_timeout
    auth_deadline = time.monotonic() + request_timeout
    # Responses leave in request order; the queue bound is the in-flight limit per connection.
    outbox: asyncio.Queue[asyncio.Future[bytes | None] | None] = asyncio.Queue(broker.config["queued.max.requests"])
    linger = broker.config["connection.failed.authentication.delay.ms"] / 1000.0
    responder = asyncio.get_running_loop().create_task(_respond(outbox, writer, peer, linger))
    try:
        while not broker.closing:
            if conn.mute_until:
                # Quota throttle (KIP-219): the response went out; the next request waits.
                delay = conn.mute_until - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                conn.mute_until = 0.0
            wait = idle_timeout
            if not conn.authenticated:
                wait = max(0.0, min(wait or request_timeout, auth_deadline - time.monotonic()))
            try:
                async with asyncio.timeout(wait):
                    first = await reader.readexactly(1)
            except TimeoutError:
                if conn.authenticated:
                    log.info("closing idle connection from %s", peer)
                else:
                    log.info("closing connection from %s: not authenticated within %.0f s", peer, request_timeout)
                break
            try:
                # Once a request has begun it must arrive whole in time: a peer that announces a frame
                # and stalls, or trickles it (slowloris), would otherwise pin the connection and its buffer.
                async with asyncio.timeout(frame_timeout):
                    size_bytes = first + await reader.readexactly(3)
                    (size,) = _SIZE.unpack(size_bytes)
                    limit = max_frame if conn.authenticated else pre_auth_max_frame
                    if size < _HEADER_PREFIX.size or size > limit:
                        raise ConnectionClosed(f"frame length {size} outside [{_HEADER_PREFIX.size}, {limit}]")
                    frame = await reader.readexactly(size)
            except TimeoutError:
                log.info("closing connection from %s: a request did not arrive whole within %.1f s", peer,
                         frame_timeout)
                break
            authenticated = conn.authenticated
            future = _dispatch(broker, frame, peer, conn)
            if future is not None:
                await outbox.put(future)
                if not authenticated:
                    # Before authentication requests are handled one at a time, so a request pipelined
                    # behind SaslAuthenticate is judged by the outcome of the authentication.
                    await asyncio.wait([future])
            if responder.done():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except ConnectionClosed as exc:
        log.warning("closing connection from %s: %s", peer, exc)
    except asyncio.CancelledError:
        pass
    finally:
        if not responder.done():
            try:
                outbox.put_nowait(None)
            except asyncio.QueueFull:
                responder.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(responder), 10.0)
            except (TimeoutError, asyncio.CancelledError, ConnectionError):
                responder.cancel()
        elif not responder.cancelled() and responder.exception() is not None:
            log.debug("responder for %s ended: %r", peer, responder.exception())  # retrieved, not leaked
        _abandon(outbox)
        writer.close()


def _abandon(outbox: asyncio.Queue[asyncio.Future[bytes | None] | None]) -> None:
    """Cancel the requests of a closed connection that never got answered (e.g. long polls).

    Left alone they would run on (a Fetch for up to its max_wait_ms) with nobody to answer, and an
    exception they raised would surface as "Task exception was never retrieved".
    """
    while not outbox.empty():
        future = outbox.get_nowait()
        if future is None:
            continue
        if future.done():
            if not future.cancelled():
                future.exception()  # mark it retrieved; the connection is gone either way
        else:
            future.cancel()


def _dispatch(broker: Broker, frame: bytes, peer: str, conn: Connection) -> asyncio.Future[bytes | None] | None:
    api_key, api_version, correlation_id = _HEADER_PREFIX.unpack_from(frame, 0)
    if not conn.authenticated and api_key not in _PRE_AUTH_KEYS:
        raise ConnectionClosed(f"API key {api_key} before SASL authentication")
    spec = API_TABLE.get(api_key)
    if spec is None:
        raise ConnectionClosed(f"unknown API key {api_key}")
    if not spec.min_version <= api_version <= spec.max_version:
        if api_key == API_VERSIONS_KEY:
            # Kafka answers an ApiVersions it cannot parse with v0, error 35 and its own range;
            # librdkafka then retries with a version from that range.
            response = api_versions_response(0, ErrorCode.UNSUPPORTED_VERSION)
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            future.set_result(_encode(response, correlation_id))
            return future
        raise ConnectionClosed(f"{spec.name} v{api_version} is not supported "
                               f"(v{spec.min_version}-v{spec.max_version})")
    try:
        request = spec.request.decode(frame, version=api_version, header=True)
    except Exception as exc:  # kafka-python raises assorted errors on malformed bodies
        raise ConnectionClosed(f"malformed {spec.name} v{api_version}: {exc!r}") from None
    null_field = _null_in_non_nullable(spec.request._struct, request, api_version)
    if null_field is not None:
        raise ConnectionClosed(f"malformed {spec.name} v{api_version}: non-nullable {null_field} is null")
    ctx = RequestContext(broker=broker, api_version=api_version, correlation_id=correlation_id,
                         client_id=request.header.client_id if request.header else None, peer=peer, conn=conn)
    throttle_ms = 0
    quotas = getattr(broker, "quotas", None)
    if quotas is not None and quotas.active:
        if api_key == PRODUCE_KEY:
            throttle_ms = quotas.record_produce(_user(ctx), ctx.client_id or "", len(frame))
            if throttle_ms:
                conn.mute(throttle_ms)
        elif api_key == FETCH_KEY:
            cap = quotas.fetch_cap(_user(ctx), ctx.client_id or "")
            if cap is not None:
                _cap_fetch(request, cap)
    return asyncio.get_running_loop().create_task(_handle(spec, ctx, request, throttle_ms))


def _user(ctx: RequestContext) -> str:
    return ctx.principal.partition(":")[2]


def _cap_fetch(request: Any, cap: int) -> None:
    # A fetch returns at most one quota window's worth (Kafka caps it at the quota window too).
    request.max_bytes = min(request.max_bytes, cap)
    for topic in request.topics:
        for part in topic.partitions:
            part.partition_max_bytes = min(part.partition_max_bytes, cap)


def _throttle_fetch(ctx: RequestContext, response: Any) -> int:
    parts = [p for t in response.responses for p in t.partitions]
    size = sum(len(p.records or b"") for p in parts)
    throttle_ms = ctx.broker.quotas.record_fetch(_user(ctx), ctx.client_id or "", size)
    if throttle_ms:
        for p in parts:  # throttled: answered empty, the consumer fetches the same offsets again
            p.records = b""
    return throttle_ms


_NULLABLE_ON_WIRE = frozenset({"string", "bytes", "records"})


def _null_in_non_nullable(struct: Any, data: Any, version: int) -> str | None:
    """The path of a field the request sent as null (length -1) although its schema forbids it.

    kafka-python decodes a -1 array/string length as None whatever the field's nullableVersions;
    Kafka's own parser rejects it, and handlers rely on it not happening.
    """
    for field in struct.untagged_fields(version):
        value = getattr(data, field.name, None)
        if value is None:
            # (a None uuid is the all-zero one, and numbers are never None)
            if (field.is_array() or field.is_struct() or field.type_str in _NULLABLE_ON_WIRE) \
                    and not field.nullable_for_version_q(version):
                return field.name
        elif field.is_struct_array():
            for item in value:
                inner = _null_in_non_nullable(field.array_of, item, version)
                if inner is not None:
                    return f"{field.name}[].{inner}"
        elif field.is_array():
            if None in value:  # elements of a []string are never nullable
                return f"{field.name}[]"
        elif field.is_struct():
            inner = _null_in_non_nullable(field, value, version)
            if inner is not None:
                return f"{field.name}.{inner}"
    return None


async def _handle(spec: Any, ctx: RequestContext, request: Any, throttle_ms: int = 0) -> bytes | None:
    response = await spec.handler(ctx, request)
    if response is None:
        return None
    quotas = getattr(ctx.broker, "quotas", None)
    if spec.key == FETCH_KEY and quotas is not None and quotas.active:
        throttle_ms = _throttle_fetch(ctx, response)
        if throttle_ms and ctx.conn is not None:
            ctx.conn.mute(throttle_ms)
    if throttle_ms:
        response.throttle_time_ms = throttle_ms
    data = _encode(response, ctx.correlation_id)
    return _Last(data) if ctx.close_after else data


async def _respond(outbox: asyncio.Queue[asyncio.Future[bytes | None] | None], writer: asyncio.StreamWriter,
                   peer: str, linger: float = 0.1) -> None:
    while True:
        future = await outbox.get()
        if future is None:
            return
        try:
            data = await future
        except Exception:
            log.exception("request from %s failed; closing the connection", peer)
            writer.close()
            return
        if data is not None:
            try:
                writer.write(data)
                await writer.drain()
            except ConnectionError:  # the peer reset or went away; the reader side cleans up
                return
            if isinstance(data, _Last):
                # As Kafka (connection.failed.authentication.delay.ms): the client reads the error before
                # the close, and a client retrying a bad password cannot spin on the broker.
                await asyncio.sleep(linger)
                writer.close()
                return

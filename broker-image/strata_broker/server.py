"""Per-connection request pipeline: framing, header parsing, dispatch, in-order responses.

Bad input costs only the connection it came on: an oversized or negative frame length,
a frame that does not decode, an unknown API key or an unsupported version closes that
connection (as Kafka does); every other connection keeps being served.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any

from .errors import ErrorCode
from .protocol import API_TABLE
from .protocol.context import RequestContext
from .protocol.metadata import api_versions_response

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_HEADER_PREFIX = struct.Struct(">hhi")
API_VERSIONS_KEY = 18


class ConnectionClosed(Exception):
    """The peer broke the protocol; drop this connection only."""


def _encode(response: Any, correlation_id: int) -> bytes:
    # The response object already carries its version (handlers build it with version=...).
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True, framed=True))


async def serve_connection(broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
    max_frame = broker.config["socket.request.max.bytes"]
    idle_timeout = broker.config["connections.max.idle.ms"] / 1000.0 or None
    # Responses leave in request order; the queue bound is the in-flight limit per connection.
    outbox: asyncio.Queue[asyncio.Future[bytes | None] | None] = asyncio.Queue(broker.config["queued.max.requests"])
    responder = asyncio.get_running_loop().create_task(_respond(outbox, writer, peer))
    try:
        while not broker.closing:
            try:
                size_bytes = await asyncio.wait_for(reader.readexactly(4), idle_timeout)
            except TimeoutError:
                log.info("closing idle connection from %s", peer)
                break
            (size,) = _SIZE.unpack(size_bytes)
            if size < _HEADER_PREFIX.size or size > max_frame:
                raise ConnectionClosed(f"frame length {size} outside [{_HEADER_PREFIX.size}, {max_frame}]")
            try:
                # A peer that announces a frame and then stalls is idle too: without this timeout a
                # truncated frame would pin the connection (and its buffer) forever.
                frame = await asyncio.wait_for(reader.readexactly(size), idle_timeout)
            except TimeoutError:
                log.info("closing connection from %s: stalled after announcing a %d-byte frame", peer, size)
                break
            future = _dispatch(broker, frame, peer)
            if future is not None:
                await outbox.put(future)
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


def _dispatch(broker: Broker, frame: bytes, peer: str) -> asyncio.Future[bytes | None] | None:
    api_key, api_version, correlation_id = _HEADER_PREFIX.unpack_from(frame, 0)
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
                         client_id=request.header.client_id if request.header else None, peer=peer)
    return asyncio.get_running_loop().create_task(_handle(spec, ctx, request))


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


async def _handle(spec: Any, ctx: RequestContext, request: Any) -> bytes | None:
    response = await spec.handler(ctx, request)
    if response is None:
        return None
    return _encode(response, ctx.correlation_id)


async def _respond(outbox: asyncio.Queue[asyncio.Future[bytes | None] | None], writer: asyncio.StreamWriter,
                   peer: str) -> None:
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

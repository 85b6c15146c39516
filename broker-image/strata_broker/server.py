"""Per-connection request pipeline: framing, header parsing, dispatch, in-order responses.

Bad input costs only the connection it came on: an oversized or negative frame length,
a frame that does not decode, an unknown API key or an unsupported version closes that
connection (as Kafka does); every other connection keeps being served.

On a SASL listener a connection may send only ApiVersions, SaslHandshake and SaslAuthenticate
until it has authenticated (anything else closes it, as in Kafka), its frames may not exceed
`sasl.server.max.receive.size`, and it must authenticate within `request.timeout.ms`. A request
must arrive whole within `request.timeout.ms` of its first byte (slowloris). Client quotas are
applied here: a throttled connection is not read from until its throttle time has passed.

Frames are received by an asyncio.BufferedProtocol (FrameProtocol): small ones out of a per-connection
scratch buffer, large ones with recv_into straight into a buffer of their own size; the request
header is parsed from a prefix and the body decoded (kafka-python codecs) from a memoryview, so a
Produce frame is not copied on its way to the log. Flow control both ways: a connection whose
request loop falls behind (in-flight bound reached because the client does not read its responses,
or a quota mute) is not read from beyond a small read-ahead, and responses are written in pieces,
each after the transport has drained below its high-water mark.

A large frame first reserves its announced size in the broker's RequestMemoryPool and is received
into memory taken as bytes arrive (request_pool.py). The reading side (serve_connection) and the
writing side (_respond) end together: the reader never waits for an in-flight slot once the writer
or the transport is gone, and a lost transport drops what was read ahead and what was owed (_finish).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kafka.protocol.schemas.fields.codecs.types import UnsignedVarInt32

from .errors import ErrorCode
from .protocol import API_TABLE
from .protocol.context import Connection, RequestContext
from .protocol.metadata import api_versions_response
from .request_pool import RequestMemoryPool, frame_buffer

if TYPE_CHECKING:
    from .protocol.context import Services

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_HEADER_PREFIX = struct.Struct(">hhi")
_CLIENT_ID_LEN = struct.Struct(">h")
_MARK_LEN = struct.pack(">i", 16)
API_VERSIONS_KEY = 18
PRODUCE_KEY = 0
FETCH_KEY = 1
SASL_HANDSHAKE_KEY = 17
SASL_AUTHENTICATE_KEY = 36
_PRE_AUTH_KEYS = frozenset({API_VERSIONS_KEY, SASL_HANDSHAKE_KEY, SASL_AUTHENTICATE_KEY})


class ConnectionClosed(Exception):
    """The peer broke the protocol; drop this connection only."""


class _Last:
    """A response after which the connection is closed (a failed authentication)."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def _encode(response: Any, correlation_id: int) -> bytearray:
    # The response object already carries its version (handlers build it with version=...).
    response.with_header(correlation_id=correlation_id)
    return response.encode(header=True, framed=True)  # a bytearray of its own: sent as is


# The request header (api key, version, correlation id, client id, tagged fields) is parsed from a
# prefix of the frame this long beyond the client id, rather than from a copy of the whole frame.
_HEADER_SLACK = 1024


def _decode_request(request_class: Any, frame: bytes | bytearray, api_version: int) -> Any:
    """kafka-python's decode(frame, header=True), without copying the frame for the header parse.

    ApiMessage.decode hands the header parser bytes(frame[...]) (the whole frame); here it gets a
    prefix that holds the header, and the body codec reads straight from a memoryview of the frame.
    """
    view = memoryview(frame)
    (client_id_len,) = _CLIENT_ID_LEN.unpack_from(view, _HEADER_PREFIX.size)
    prefix_len = _HEADER_PREFIX.size + 2 + max(client_id_len, 0) + _HEADER_SLACK
    if prefix_len >= len(view):
        return request_class.decode(frame, version=api_version, header=True)
    head = io.BytesIO(bytes(view[:prefix_len]))
    try:
        header = request_class.parse_header(head, version=api_version)
    except Exception:
        header = None
    pos = head.tell()
    if header is None or pos >= prefix_len:
        # Tagged header fields longer than the slack (or a malformed header): the plain way.
        return request_class.decode(frame, version=api_version, header=True)
    data_class = request_class[None]
    flexible = request_class.flexible_version_q(api_version)
    fast_decode = request_class._struct.compiled_decode_from(api_version, compact=flexible, tagged=flexible,
                                                             data_class=data_class)
    request, _ = fast_decode(view, pos)
    request._header = header
    return request


# Frames up to this size are parsed out of a per-connection scratch buffer (one small copy each; it
# is small since every connection has one); larger ones are received straight into a buffer of
# their own size (recv_into, no further copy).
_SCRATCH_BYTES = 8 * 1024
# Complete frames read ahead of the request loop, beyond which the socket is not read any more
# (the request loop stops taking frames while the connection's in-flight bound is reached, e.g.
# because the client does not read its responses): memory per connection stays bounded.
_READ_AHEAD_FRAMES = 64
_READ_AHEAD_BYTES = 1 << 20
# Responses are handed to the transport in pieces of at most this size, each after the previous
# one has drained below the transport's high-water mark (asyncio's write buffer is a bytearray
# that would otherwise be memmoved on every send of a large Fetch response).
_WRITE_PIECE = 256 * 1024


class _HeldFrame:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class FrameProtocol(asyncio.BufferedProtocol):
    """One connection's transport side: length-prefixed frames in, response bytes out.

    Frames are received with recv_into into right-sized buffers and queued for the request loop
    (serve_connection), which takes them with next_frame(). Reading pauses when the loop falls
    behind (bounded read-ahead) and resumes when it catches up; writing follows asyncio's
    pause_writing/resume_writing, awaited through drain().
    """

    def __init__(self, on_open: Callable[[FrameProtocol], Awaitable[None]] | None = None,
                 pool: RequestMemoryPool | None = None) -> None:
        self._on_open = on_open
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        # Large frames reserve their announced size here first (broker-wide queued.max.request.bytes).
        self.pool = pool if pool is not None else RequestMemoryPool(None)
        self._body_reserved = 0
        self._awaiting_memory = False
        # The reservation of the frame next_frame() returned last; the request loop gives it back
        # once that request has been handled.
        self.last_reserved = 0
        # When that frame's last byte was read (time.perf_counter): where its request's time starts.
        self.last_received = 0.0
        # Resolved when the transport is gone (reset, closed by either side): everything waiting on
        # this connection's behalf stops then.
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._scratch = bytearray(_SCRATCH_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._start = 0  # unparsed bytes are scratch[_start:_end]
        self._end = 0
        self._body: bytearray | None = None  # a large frame being received
        self._body_view: memoryview | None = None
        self._body_filled = 0
        # (frame, reserved bytes, perf_counter when complete): bytes-like frames, or an exception to
        # raise, or a _HeldFrame
        self._frames: deque[tuple[Any, int, float]] = deque()
        self._queued_bytes = 0
        self._partial_since: float | None = None  # monotonic time the unfinished frame began
        self._stopped = False  # no more frames will be parsed (bad length, EOF, lost)
        self._eof = False
        self._lost = False
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # The largest frame accepted (socket.request.max.bytes), and the largest accepted right now
        # (lower before SASL authentication); set by the request loop.
        self.hard_max_frame = (1 << 31) - 1
        self.max_frame = self.hard_max_frame
        self._held = False
        self.over_ssl = False

    # ---- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.over_ssl = transport.get_extra_info("sslcontext") is not None
        if self._on_open is not None:
            self.task = self._loop.create_task(self._on_open(self))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stopped = True
        self._drop_input()
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
        self._drain_waiter = None

    def eof_received(self) -> bool:
        # Half-close: responses to what was sent still go out (as asyncio streams do, except on TLS).
        self._eof = True
        self._stopped = True
        self._wake()
        return not self.over_ssl

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_view is not None:
            return self._body_view[self._body_filled:]
        if self._end == len(self._scratch):
            self._compact()
            if self._end == len(self._scratch):
                # Only while a held frame waits (reading is paused, but a TLS transport may still
                # deliver what it had decrypted): grow rather than refuse.
                bigger = bytearray(2 * len(self._scratch))
                bigger[:self._end] = self._scratch_view[:self._end]
                self._scratch = bigger
                self._scratch_view = memoryview(bigger)
        return self._scratch_view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._stopped:
            return
        if self._body_view is not None:
            self._body_filled += nbytes
            if self._body_filled == len(self._body_view):
                frame = self._body
                reserved = self._body_reserved
                self._body = self._body_view = None
                self._body_filled = self._body_reserved = 0
                self._push(frame, reserved)
                self._partial_since = None
                # What follows the frame is read into scratch again (it may hold a partial frame).
            return
        began = self._end == self._start
        if began:
            self._partial_since = time.monotonic()
        self._end += nbytes
        if not self._held and not self._awaiting_memory:
            self._parse()
        if began and self._has_partial() and self._waiter is not None:
            self._wake()  # a frame has begun: the request loop now gives it frame_timeout rather than idle

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- framing ------------------------------------------------------------------------------

    def _compact(self) -> None:
        if self._start:
            n = self._end - self._start
            self._scratch[:n] = self._scratch_view[self._start:self._end]
            self._start, self._end = 0, n

    def _parse(self) -> None:
        scratch = self._scratch
        pos, end = self._start, self._end
        while end - pos >= 4 and not self._held:
            (size,) = _SIZE.unpack_from(scratch, pos)
            if size < _HEADER_PREFIX.size or size > self.hard_max_frame:
                self._push(ConnectionClosed(f"frame length {size} outside [{_HEADER_PREFIX.size}, "
                                            f"{self.max_frame}]"))
                self._stopped = True
                self.pause_reading()
                pos = end
                break
            if size > self.max_frame:
                # Over the limit before authentication: the request loop decides once the requests
                # before this one (SaslAuthenticate) are answered; nothing more is parsed until then.
                self._held = True
                self._push(_HeldFrame(size))
                self.pause_reading()
                break
            if end - pos - 4 >= size:
                self._push(bytes(self._scratch_view[pos + 4:pos + 4 + size]))
                pos += 4 + size
                continue
            if 4 + size > len(scratch):
                # Large frame: a buffer of its own, filled by recv_into from here on, once its size is
                # reserved in the broker's request memory pool (else: not read until memory is released).
                if not self.pool.try_reserve(size):
                    self._awaiting_memory = True
                    self.pause_reading()
                    self.pool.wait(self._memory_released)
                    break
                body = frame_buffer(size)
                have = end - pos - 4
                view = memoryview(body)
                view[:have] = self._scratch_view[pos + 4:end]
                self._body = body
                self._body_view = view
                self._body_filled = have
                self._body_reserved = size
                pos = end
            break
        if pos == end:
            self._start = self._end = 0
            if self._body is None:
                self._partial_since = None
        else:
            self._start = pos  # a partial frame; get_buffer() moves it to the front when space runs out
            if self._partial_since is None:
                self._partial_since = time.monotonic()

    def _memory_released(self) -> None:
        self._awaiting_memory = False
        if self._stopped:
            return
        self._parse()
        self._maybe_resume_reading()

    def _drop_input(self) -> None:
        """Forget every frame not yet taken by the request loop, and give back their memory."""
        released = self._body_reserved
        self._body = self._body_view = None
        self._body_filled = self._body_reserved = 0
        while self._frames:
            released += self._frames.popleft()[1]
        self._queued_bytes = 0
        if self._awaiting_memory:
            self._awaiting_memory = False
            self.pool.forget(self._memory_released)
        self.pool.release(released)

    def discard_input(self) -> None:
        """Read nothing more: frames received but not yet handled are dropped (after a failed
        authentication, nothing pipelined behind it may run)."""
        self._stopped = True
        self.pause_reading()
        self._drop_input()
        self._wake()

    def release_held(self, allowed: bool) -> None:
        """The request loop's verdict on a frame held by _parse (see there)."""
        self._held = False
        if not allowed:
            self._stopped = True
            return
        self.max_frame = self.hard_max_frame
        self._parse()
        self._maybe_resume_reading()

    def _push(self, item: Any, reserved: int = 0) -> None:
        self._frames.append((item, reserved, time.perf_counter()))
        if not isinstance(item, (Exception, _HeldFrame)):
            self._queued_bytes += len(item)
        if len(self._frames) >= _READ_AHEAD_FRAMES or self._queued_bytes >= _READ_AHEAD_BYTES:
            self.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self._read_paused and not self._stopped and not self._held and not self._lost
                and not self._awaiting_memory
                and self.transport is not None
                and len(self._frames) < _READ_AHEAD_FRAMES // 2 and self._queued_bytes < _READ_AHEAD_BYTES // 2):
            self._read_paused = False
            self.transport.resume_reading()

    def _has_partial(self) -> bool:
        return self._body is not None or self._end > self._start

    async def next_frame(self, idle_timeout: float | None, frame_timeout: float) -> Any:
        """The next frame (without its length), or None at end of stream.

        Raises TimeoutError("idle") when no frame began within idle_timeout, and
        TimeoutError("frame") when one began but did not arrive whole within frame_timeout
        (counted from when this call began waiting for it, at the earliest).
        """
        called = time.monotonic()
        self.last_reserved = 0
        while True:
            if self._lost:
                return None  # nobody is left to answer: what was read ahead is dropped (_drop_input)
            if self._frames:
                item, reserved, received = self._frames.popleft()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, _HeldFrame):
                    return item
                self._queued_bytes -= len(item)
                self.last_reserved = reserved
                self.last_received = received
                self._maybe_resume_reading()
                return item
            if self._stopped:
                return None
            if self._has_partial():
                deadline = max(self._partial_since or called, called) + frame_timeout
                kind = "frame"
            elif idle_timeout is not None:
                deadline = called + idle_timeout
                kind = "idle"
            else:
                deadline = None
                kind = "idle"
            # Reading may have been paused by a read-ahead that the loop has since consumed.
            self._maybe_resume_reading()
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                if deadline is None:
                    await waiter
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(kind)
                    try:
                        async with asyncio.timeout(remaining):
                            await waiter
                    except TimeoutError:
                        if self._frames or self._stopped:
                            continue
                        if kind == "idle" and self._has_partial():
                            continue  # a frame began meanwhile: it gets its own time
                        raise TimeoutError(kind) from None
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    # ---- writing ------------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    async def send(self, data: Any) -> None:
        """Write one response (bytes-like, or a list of bytes-like pieces), respecting flow control."""
        transport = self.transport
        if transport is None or self._lost or transport.is_closing():
            raise ConnectionResetError("connection closed")
        pieces = data if isinstance(data, list) else (data,)
        for piece in pieces:
            n = len(piece)
            if n <= _WRITE_PIECE:
                transport.write(piece)
                await self.drain()
                continue
            view = memoryview(piece)
            for offset in range(0, n, _WRITE_PIECE):
                transport.write(view[offset:offset + _WRITE_PIECE])
                await self.drain()

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
        await asyncio.shield(waiter)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def serve_connection(services: Services, proto: FrameProtocol, conn: Connection | None = None) -> None:
    peername = proto.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
    if conn is None:
        conn = Connection(None, peername[0] if isinstance(peername, tuple) else str(peername))
    max_frame = services.config["socket.request.max.bytes"]
    pre_auth_max_frame = min(max_frame, services.config["sasl.server.max.receive.size"])
    idle_timeout = services.config["connections.max.idle.ms"] / 1000.0 or None
    request_timeout = services.config["request.timeout.ms"] / 1000.0
    # A request that stalls half-sent is idle too: it gets the shorter of the two limits.
    frame_timeout = min(request_timeout, idle_timeout) if idle_timeout else request_timeout
    auth_deadline = time.monotonic() + request_timeout
    # Responses leave in request order; the queue bound is the in-flight limit per connection.
    outbox: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue(services.config["queued.max.requests"])
    linger = services.config["connection.failed.authentication.delay.ms"] / 1000.0
    pool = proto.pool
    responder = asyncio.get_running_loop().create_task(_respond(outbox, proto, peer, linger))
    # Frames are parsed ahead of this loop; before authentication the limit is the SASL one (a
    # frame pipelined behind SaslAuthenticate is not parsed before the authentication is decided,
    # since requests are then taken one at a time and the read-ahead holds at most that frame).
    proto.hard_max_frame = max_frame
    proto.max_frame = max_frame if conn.authenticated else pre_auth_max_frame
    try:
        while not services.closing:
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
                # Once a request has begun it must arrive whole in time: a peer that announces a frame
                # and stalls, or trickles it (slowloris), would otherwise pin the connection and its buffer.
                frame = await proto.next_frame(wait, frame_timeout)
            except TimeoutError as exc:
                if exc.args and exc.args[0] == "frame":
                    log.info("closing connection from %s: a request did not arrive whole within %.1f s", peer,
                             frame_timeout)
                elif conn.authenticated:
                    log.info("closing idle connection from %s", peer)
                else:
                    log.info("closing connection from %s: not authenticated within %.0f s", peer, request_timeout)
                break
            if frame is None:
                break
            if isinstance(frame, _HeldFrame):
                limit = max_frame if conn.authenticated else pre_auth_max_frame
                proto.release_held(frame.size <= limit)
                if frame.size > limit:
                    raise ConnectionClosed(f"frame length {frame.size} outside [{_HEADER_PREFIX.size}, {limit}]")
                continue
            authenticated = conn.authenticated
            reserved = proto.last_reserved
            try:
                future = _dispatch(services, frame, peer, conn, proto.last_received)
            except BaseException:
                pool.release(reserved)
                raise
            del frame  # a large produce frame is not kept alive by this loop while the next one arrives
            if reserved:
                future.add_done_callback(lambda _f, n=reserved: pool.release(n))
            if not await _enqueue(outbox, future, responder, proto):
                future.cancel()
                break
            if not authenticated:
                # Before authentication requests are handled one at a time, so a request pipelined
                # behind SaslAuthenticate is judged by the outcome of the authentication.
                await asyncio.wait([future, proto.closed], return_when=asyncio.FIRST_COMPLETED)
                if not future.done() or future.cancelled() or future.exception() is not None \
                        or isinstance(future.result(), _Last):
                    # A refused authentication (or a lost connection): its answer goes out, and
                    # nothing pipelined behind it runs.
                    proto.discard_input()
                    break
                if conn.authenticated:
                    proto.max_frame = max_frame
            if responder.done():
                break
    except ConnectionError:
        pass
    except ConnectionClosed as exc:
        log.warning("closing connection from %s: %s", peer, exc)
    except asyncio.CancelledError:
        pass
    finally:
        await _finish(outbox, responder, proto, peer)


# How long a connection that stopped sending may take to be sent the answers it is owed.
_FLUSH_SECONDS = 10.0


async def _enqueue(outbox: asyncio.Queue[Any], item: Any, responder: asyncio.Task[None],
                   proto: FrameProtocol) -> bool:
    """Queue `item` for the responder; False if the connection ended first.

    The queue's bound is the in-flight limit. Waiting for a free slot also ends when the responder
    stops (it sent a closing answer, or the peer reset) or the transport goes: the reading side never
    waits for a writing side that is gone.
    """
    if not outbox.full():
        outbox.put_nowait(item)
        return True
    put = asyncio.ensure_future(outbox.put(item))
    try:
        await asyncio.wait([put, responder, proto.closed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not put.done():
            put.cancel()
    return put.done() and not put.cancelled()


async def _finish(outbox: asyncio.Queue[Any], responder: asyncio.Task[None], proto: FrameProtocol,
                  peer: str) -> None:
    """End a connection: what was answered goes out (the peer may still read, e.g. after a half-close),
    within _FLUSH_SECONDS; if the transport is gone, nothing is waited for. Then the slot is free."""
    if not responder.done() and not proto.closed.done():
        try:
            async with asyncio.timeout(_FLUSH_SECONDS):
                if await _enqueue(outbox, None, responder, proto):
                    await asyncio.wait([responder, proto.closed], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            responder.cancel()
            _abandon(outbox)
            proto.close()
            raise
    if not responder.done():
        responder.cancel()
    elif not responder.cancelled() and responder.exception() is not None:
        log.debug("responder for %s ended: %r", peer, responder.exception())  # retrieved, not leaked
    _abandon(outbox)
    proto.close()


def _abandon(outbox: asyncio.Queue[asyncio.Future[Any] | None]) -> None:
    """Drop the answers a closed connection is still owed.

    Long polls (Fetch) are cancelled: left alone they would run on for up to max_wait_ms with nobody
    to answer. Other requests finish what they started (a Produce already appended may be waiting for
    its fsync or S3 commit, which other producers share); their outcome is retrieved and dropped, so
    an exception does not surface as "Task exception was never retrieved".
    """
    while not outbox.empty():
        future = outbox.get_nowait()
        if future is None:
            continue
        _drop(future)


def _drop(future: asyncio.Future[Any]) -> None:
    """Nobody will send this request's answer (see _abandon)."""
    if future.done():
        _retrieve(future)
    elif getattr(future, "long_poll", False):
        future.cancel()
    else:
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # mark it retrieved; the connection is gone either way


def _dispatch(services: Services, frame: Any, peer: str, conn: Connection,
              received: float = 0.0) -> asyncio.Future[Any]:
    """Decode one frame and start its handler; the task carries `timing` (its RequestTimer and
    `received`, when its frame was complete), which the responder observes once the answer is written."""
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
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(_encode(response, correlation_id))
            return future
        raise ConnectionClosed(f"{spec.name} v{api_version} is not supported "
                               f"(v{spec.min_version}-v{spec.max_version})")
    try:
        request = _decode_request(spec.request, frame, api_version)
    except Exception as exc:  # kafka-python raises assorted errors on malformed bodies
        raise ConnectionClosed(f"malformed {spec.name} v{api_version}: {exc!r}") from None
    null_field = _null_in_non_nullable(spec.request._struct, request, api_version)
    if null_field is not None:
        raise ConnectionClosed(f"malformed {spec.name} v{api_version}: non-nullable {null_field} is null")
    ctx = RequestContext(services=services, api_version=api_version, correlation_id=correlation_id,
                         client_id=request.header.client_id if request.header else None, peer=peer, conn=conn)
    throttle_ms = 0
    quotas = services.quotas
    if quotas is not None and quotas.active:
        if api_key == PRODUCE_KEY:
            throttle_ms = quotas.record_produce(_user(ctx), ctx.client_id or "", len(frame))
            if throttle_ms:
                conn.mute(throttle_ms)
        elif api_key == FETCH_KEY:
            cap = quotas.fetch_cap(_user(ctx), ctx.client_id or "")
            if cap is not None:
                _cap_fetch(request, cap)
    task = asyncio.get_running_loop().create_task(_handle(spec, ctx, request, throttle_ms))
    if api_key == FETCH_KEY:
        task.long_poll = True  # type: ignore[attr-defined]
    timer = services.request_metrics.timer(spec.name, request.acks if api_key == PRODUCE_KEY else None)
    task.timing = (timer, received)  # type: ignore[attr-defined]
    return task


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
    throttle_ms = ctx.services.quotas.record_fetch(_user(ctx), ctx.client_id or "", size)
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


async def _handle(spec: Any, ctx: RequestContext, request: Any, throttle_ms: int = 0) -> Any:
    response = await spec.handler(ctx, request)
    if response is None:
        return None
    quotas = ctx.services.quotas
    if spec.key == FETCH_KEY and quotas is not None and quotas.active:
        throttle_ms = _throttle_fetch(ctx, response)
        if throttle_ms and ctx.conn is not None:
            ctx.conn.mute(throttle_ms)
    if throttle_ms:
        response.throttle_time_ms = throttle_ms
    if spec.key == FETCH_KEY:
        data = _encode_fetch(response, ctx.correlation_id, ctx.api_version)
    else:
        data = _encode(response, ctx.correlation_id)
    return _Last(data) if ctx.close_after else data


# Fetch answers carry the log's bytes: records at least this long are not copied into the encoded
# response but sent as pieces of their own (see _encode_fetch).
_SPLICE_MIN = 16 * 1024
_MARK = 16


def _encode_fetch(response: Any, correlation_id: int, version: int) -> bytearray | list[Any]:
    """A Fetch response as pieces [encoded fields, length, records, encoded fields, ...].

    kafka-python encodes the response with a random 16-byte stand-in for each large records field;
    the stand-ins are then found in its output and replaced by the records themselves (and their
    length prefix, and the frame length adjusted), so the records are never copied by the encoder.
    Anything unexpected falls back to encoding the whole response.
    """
    marked = [p for t in response.responses for p in t.partitions
              if p.records is not None and len(p.records) >= _SPLICE_MIN]
    if not marked:
        return _encode(response, correlation_id)
    originals = [p.records for p in marked]
    marks = [os.urandom(_MARK) for _ in marked]
    for p, mark in zip(marked, marks, strict=True):
        p.records = mark
    try:
        head = _encode(response, correlation_id)
    finally:
        for p, records in zip(marked, originals, strict=True):
            p.records = records
    flexible = response.flexible_version_q(version)
    view = memoryview(head)
    pieces: list[Any] = []
    total = len(head)
    pos = 0
    for records, mark in zip(originals, marks, strict=True):
        at = head.find(mark, pos)
        if flexible:
            prefix_end = at - 1
            ok = at > 0 and head[prefix_end] == _MARK + 1
            length = UnsignedVarInt32.encode(len(records) + 1)
        else:
            prefix_end = at - 4
            ok = at >= 4 and head[prefix_end:at] == _MARK_LEN
            length = _SIZE.pack(len(records))
        if not ok or head.find(mark, at + _MARK) >= 0:
            return _encode(response, correlation_id)
        pieces += [view[pos:prefix_end], length, records]
        total += len(length) - (at - prefix_end) + len(records) - _MARK
        pos = at + _MARK
    pieces.append(view[pos:])
    first = bytearray(pieces[0])
    _SIZE.pack_into(first, 0, total - 4)
    pieces[0] = first
    return pieces


async def _respond(outbox: asyncio.Queue[asyncio.Future[Any] | None], proto: FrameProtocol,
                   peer: str, linger: float = 0.1) -> None:
    while True:
        future = await outbox.get()
        if future is None:
            return
        try:
            # Shielded: if this connection ends first, the request is dropped (_drop), not cancelled
            # midway (a Produce may be waiting for an fsync that other producers share). An answer
            # already there (pipelined requests) is taken without the shield's extra future.
            data = future.result() if future.done() else await asyncio.shield(future)
        except asyncio.CancelledError:
            _drop(future)
            raise
        except Exception:
            log.exception("request from %s failed; closing the connection", peer)
            proto.close()
            return
        timing = getattr(future, "timing", None)
        if data is not None:
            last = isinstance(data, _Last)
            try:
                await proto.send(data.data if last else data)
            except ConnectionError:  # the peer reset or went away; the reader side cleans up
                return
            if timing is not None:
                timing[0].observe(time.perf_counter() - timing[1])
            if last:
                # As Kafka (connection.failed.authentication.delay.ms): the client reads the error before
                # the close, and a client retrying a bad password cannot spin on the broker.
                await asyncio.sleep(linger)
                proto.close()
                return
        elif timing is not None:  # no answer (acks=0 produce): handled is done
            timing[0].observe(time.perf_counter() - timing[1])

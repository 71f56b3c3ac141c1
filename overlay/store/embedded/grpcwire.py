"""The store's gRPC server transport: gRPC over HTTP/2 on asyncio, server side only.

Why not grpcio's server: on this class of machine a grpcio (``grpc.aio``) server that
answers Put without storing anything reaches only ~0.55x the put rate etcd reaches with 50
concurrent clients, because every call crosses three threads (C-core's event engine, the
completion-queue poller, the event loop) and is written to the socket on its own. Here a
call never leaves the event loop, and everything answered in one loop iteration goes out in
one write, as grpc-go does; clients (grpcio, grpc-go/etcdctl) are unchanged.

What it speaks (RFC 9113 + the gRPC HTTP/2 protocol), enough for etcd's API:

* HTTP/2 framing, HPACK decoding through ``hpack`` (responses use literal fields only, so no
  encoder state), SETTINGS, PING, GOAWAY, RST_STREAM, CONTINUATION, padding, and flow control
  both ways: generous receive windows (16 MiB per connection, 4 MiB per stream, topped up as
  data is consumed) and sends that respect the peer's windows and frame size.
* gRPC: length-prefixed messages, unary and bidirectional-streaming methods, status in
  trailers (``grpc-status``/``grpc-message``), trailers-only errors, UNIMPLEMENTED for
  unknown methods, RESOURCE_EXHAUSTED for a message over the receive limit, INTERNAL for one
  that does not decode. No compression (a compressed message gets UNIMPLEMENTED, as from a
  server with no decompressor) and no deadlines (etcd's requests are short).
* TLS via ``ssl`` with ALPN ``h2`` (and client certificates when a CA is given).

A protocol error from a peer ends that connection with GOAWAY; nothing a peer sends can
raise out of the protocol or stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types and flags (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, COMPRESSION_ERROR = 6, 9

# settings identifiers
_S_HEADER_TABLE_SIZE, _S_INITIAL_WINDOW_SIZE, _S_MAX_FRAME_SIZE = 0x1, 0x4, 0x5

_DEFAULT_WINDOW = 65_535
_MAX_WINDOW = 2**31 - 1
_MAX_RECV_FRAME = 16_384  # we keep the protocol's default SETTINGS_MAX_FRAME_SIZE
_CONN_WINDOW = 16 << 20
_STREAM_WINDOW = 4 << 20
_CLOSE_WAIT_S = 1.0  # stop(): how long the closing listener may take
_MAX_HEADER_BLOCK = 64 << 10
_MAX_DETAILS = 1024  # grpc-message is cut to this many characters
_MAX_UNSENT = 256 << 20  # output a peer leaves unread before it is dropped


class Code(enum.IntEnum):
    """gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Abort(Exception):
    """Raised by a handler (or ``Context.abort``): end the call with this status."""

    def __init__(self, code: Code, details: str = "") -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class Context:
    """What a handler may do to its call besides answering: abort it."""

    __slots__ = ()

    async def abort(self, code: Code, details: str = "") -> NoReturn:
        raise Abort(code, details)


_CONTEXT = Context()

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: how to decode its requests, and its handler (exactly one of the two kinds).
    Responses are protobuf messages (``SerializeToString``)."""

    parse: Callable[[bytes], Any]
    unary: Unary | None = None
    stream: Streaming | None = None


# -- HPACK output: literal fields without indexing, so the peer's table never changes ------


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    return (b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0)
            + value)


# :status 200 (static index 8), then content-type (static name 31) as a literal
_RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4, 0) + _hpack_int(16, 7, 0) + b"application/grpc"
_OK_TRAILERS = _literal(b"grpc-status", b"0")


def _percent_encode(text: str) -> bytes:
    """grpc-message's encoding: printable ASCII but ``%`` as is, every other byte %XX."""
    out = bytearray()
    for b in text[:_MAX_DETAILS].encode("utf-8", "replace"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def _trailers(code: Code, details: str) -> bytes:
    if code == Code.OK and not details:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", b"%d" % code)
    if details:
        block += _literal(b"grpc-message", _percent_encode(details))
    return block


def _frame(typ: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", typ, flags, sid) + payload


class _ConnectionError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


_EOF = object()  # end of a stream's requests


class _Stream:
    __slots__ = (
        "buf",
        "finished",
        "headers_sent",
        "id",
        "method",
        "pending",
        "queue",
        "recv_unacked",
        "remote_closed",
        "request",
        "send_window",
        "task",
        "trailers",
    )

    def __init__(self, sid: int, method: Method | None, send_window: int) -> None:
        self.id = sid
        self.method = method
        self.buf = bytearray()
        self.request: Any = None
        self.queue: asyncio.Queue[Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.send_window = send_window
        self.pending: deque[bytes] = deque()  # DATA payload not yet allowed out
        self.trailers: bytes | None = None  # to send once pending is out
        self.headers_sent = False
        self.remote_closed = False
        self.finished = False  # status decided; later requests are ignored
        self.recv_unacked = 0


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()  # protocols are made inside the loop
        self.buf = bytearray()
        self.preface = False
        self.closed = False
        self.streams: dict[int, _Stream] = {}
        self.last_id = 0
        self.decoder = hpack.Decoder()
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        self.send_window = _DEFAULT_WINDOW
        self.recv_unacked = 0
        self.blocked: dict[int, None] = {}  # streams waiting for window, in order
        self.continuation: tuple[int, bool, bytearray] | None = None
        self.out = bytearray()
        self.flush_scheduled = False

    # -- output: gathered per loop iteration, written once --

    def _emit(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(bytes(self.out))
            if self.transport.get_write_buffer_size() > _MAX_UNSENT:
                # a peer that stops reading (a stuck watcher) must not grow us forever
                log.warning("store: dropping a client that left %d bytes unread",
                            self.transport.get_write_buffer_size())
                self.transport.abort()
                self.closed = True
        self.out.clear()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server._connections.add(self)
        # our SETTINGS wait for the client's preface: until then the client may be an
        # HTTP/1.1 one (the same port serves etcd's JSON gateway, see Server.http1)
        if self.buf:
            self.data_received(b"")

    def _server_preface(self) -> None:
        settings = struct.pack(">HI", _S_INITIAL_WINDOW_SIZE, _STREAM_WINDOW)
        self._emit(_frame(SETTINGS, 0, 0, settings)
                   + _frame(WINDOW_UPDATE, 0, 0,
                            struct.pack(">I", _CONN_WINDOW - _DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        for st in self.streams.values():
            if st.task is not None:
                st.task.cancel()
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self.buf
        buf += data
        if self.transport is None:  # TLS: bytes that came with the handshake's end; kept
            return                  # for connection_made, which may hand them to HTTP/1.1
        if not self.preface:
            if not PREFACE.startswith(bytes(buf[:len(PREFACE)])):
                self._not_http2()
                return
            if len(buf) < len(PREFACE):
                return
            del buf[:len(PREFACE)]
            self.preface = True
            self._server_preface()
        pos, end = 0, len(buf)
        try:
            while end - pos >= 9:
                length = int.from_bytes(buf[pos:pos + 3], "big")
                if length > _MAX_RECV_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                typ, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._on_frame(typ, flags, sid, payload)
                if self.closed:
                    return
        except _ConnectionError as e:
            self._goaway(e.code, str(e))
            return
        except hpack.HPACKError as e:
            self._goaway(COMPRESSION_ERROR, f"header block: {e}")
            return
        except Exception:  # a bug here must cost one connection, not the server's log
            log.exception("store: cannot handle a client's frame; closing its connection")
            self._goaway(INTERNAL_ERROR, "internal error")
            return
        del buf[:pos]

    def _not_http2(self) -> None:
        """The first bytes are not HTTP/2's preface: hand the connection (and what it
        sent) to the HTTP/1.1 side if there is one (etcd's cmux), else drop it."""
        if self.server.http1 is None or self.transport is None:
            self._drop("not an HTTP/2 client")
            return
        self.closed = True  # this protocol is done with the connection; the transport is not
        self.server._connections.discard(self)
        data, self.buf = bytes(self.buf), bytearray()
        self.server.http1(self.transport, data)

    # -- connection teardown --

    def _drop(self, why: str) -> None:
        log.debug("store: dropping connection: %s", why)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _goaway(self, code: int, why: str) -> None:
        log.debug("store: connection error %d: %s", code, why)
        self._emit(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_id, code)
                          + why.encode()[:256]))
        self._flush()
        self._drop(why)

    def shutdown(self) -> None:
        """Server stop: tell the peer, end every call, close."""
        if not self.closed:
            self._goaway(NO_ERROR, "server stopping")
        self.connection_lost(None)

    # -- frames in --

    def _on_frame(self, typ: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuation is not None and typ != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if typ == DATA:
            self._on_data(flags, sid, payload)
        elif typ == HEADERS:
            if sid == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
            payload = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for PRIORITY")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._on_headers(sid, bool(flags & END_STREAM), payload)
            else:
                self.continuation = (sid, bool(flags & END_STREAM), bytearray(payload))
        elif typ == CONTINUATION:
            if self.continuation is None or self.continuation[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            block = self.continuation[2]
            block += payload
            if len(block) > _MAX_HEADER_BLOCK:
                raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                _, end_stream, _ = self.continuation
                self.continuation = None
                self._on_headers(sid, end_stream, bytes(block))
        elif typ == SETTINGS:
            if sid:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._on_settings(payload)
        elif typ == PING:
            if sid:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING of wrong size")
            if not flags & ACK:
                self._emit(_frame(PING, ACK, 0, payload))
        elif typ == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif typ == RST_STREAM:
            st = self.streams.pop(sid, None)
            self.blocked.pop(sid, None)
            if st is not None and st.task is not None:
                st.task.cancel()
        elif typ == GOAWAY:
            if not self.streams:
                self._drop("peer said GOAWAY")
        elif typ == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 sections 5.3.2, 4.1)

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of wrong size")
        for off in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, off)
            if ident == _S_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
            elif ident == _S_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            # header table size: our output never indexes, so any size suits it
        self._emit(_frame(SETTINGS, ACK, 0))
        self._pump_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of wrong size")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if not inc or self.send_window + inc > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "bad connection WINDOW_UPDATE")
            self.send_window += inc
            self._pump_blocked()
            return
        st = self.streams.get(sid)
        if st is None:
            return
        if not inc or st.send_window + inc > _MAX_WINDOW:  # a stream error (RFC 9113 6.9)
            self._reset(st, PROTOCOL_ERROR if not inc else FLOW_CONTROL_ERROR)
            return
        st.send_window += inc
        self._pump(st)

    def _reset(self, st: _Stream, code: int) -> None:
        """End a stream with RST_STREAM ``code``: its call is cancelled, its output dropped."""
        self.streams.pop(st.id, None)
        self.blocked.pop(st.id, None)
        st.finished = True
        st.pending.clear()
        st.trailers = None
        if st.task is not None:
            st.task.cancel()
        self._emit(_frame(RST_STREAM, 0, st.id, struct.pack(">I", code)))

    def _on_headers(self, sid: int, end_stream: bool, block: bytes) -> None:
        headers = self.decoder.decode(block, raw=True)  # keeps the HPACK table in step
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client end its requests
            if end_stream and not st.remote_closed:
                st.remote_closed = True
                self._end_of_requests(st)
            return
        if sid % 2 == 0 or sid <= self.last_id:
            if sid <= self.last_id and sid % 2:
                return  # a stream we already closed
            raise _ConnectionError(PROTOCOL_ERROR, f"bad stream id {sid}")
        self.last_id = sid
        path = b""
        for name, value in headers:
            if name == b":path":
                path = bytes(value)
                break
        method = self.server.methods.get(path)
        st = _Stream(sid, method, self.peer_initial_window)
        self.streams[sid] = st
        if method is None:
            st.remote_closed = end_stream
            self._finish(st, Code.UNIMPLEMENTED, self.server.unknown(path))
            return
        if method.stream is not None:
            st.queue = asyncio.Queue()
            st.task = self.loop.create_task(self._run_stream(st, method))
        if end_stream:
            st.remote_closed = True
            self._end_of_requests(st)

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        flow = len(payload)
        self.recv_unacked += flow
        if self.recv_unacked >= _CONN_WINDOW // 2:
            self._emit(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_unacked = 0
        payload = _unpad(flags, payload)
        st = self.streams.get(sid)
        if st is None:
            if sid == 0 or sid > self.last_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we already closed: counted above, else ignored
        if st.remote_closed:
            return  # DATA after the client's END_STREAM: nothing to do with it
        end = bool(flags & END_STREAM)
        # marked before the messages are read, so an answer they cause knows the client
        # is done sending (then no RST_STREAM follows the trailers)
        st.remote_closed = end
        if not st.finished:
            st.recv_unacked += flow
            if st.recv_unacked >= _STREAM_WINDOW // 2 and not end:
                self._emit(_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", st.recv_unacked)))
                st.recv_unacked = 0
            st.buf += payload
            self._messages(st)
        if end:
            self._end_of_requests(st)

    def _messages(self, st: _Stream) -> None:
        buf, method, limit = st.buf, st.method, self.server.max_receive
        assert method is not None
        while len(buf) >= 5 and not st.finished:
            size = int.from_bytes(buf[1:5], "big")
            if size > limit:
                self._finish(st, Code.RESOURCE_EXHAUSTED,
                             f"grpc: received message larger than max ({size} vs. {limit})")
                return
            if len(buf) < 5 + size:
                return
            if buf[0]:
                self._finish(st, Code.UNIMPLEMENTED,
                             "grpc: compressed message but no decompressor is installed")
                return
            data = bytes(buf[5:5 + size])
            del buf[:5 + size]
            try:
                req = method.parse(data)
            except Exception as e:  # any decoder error is the client's
                self._finish(st, Code.INTERNAL, f"grpc: error unmarshalling request: {e}")
                return
            if st.queue is not None:
                st.queue.put_nowait(req)
            elif st.request is None:
                st.request = req
            else:
                self._finish(st, Code.UNIMPLEMENTED,
                             "grpc: too many requests for a unary method")

    def _end_of_requests(self, st: _Stream) -> None:
        """The client has sent END_STREAM (``remote_closed`` is set): run or end the call."""
        if st.finished:
            self._forget(st)
            return
        if st.buf:
            self._finish(st, Code.INTERNAL, "grpc: request ends inside a message")
        elif st.queue is not None:
            st.queue.put_nowait(_EOF)
        elif st.request is None:
            self._finish(st, Code.INTERNAL, "grpc: no request message")
        else:
            assert st.method is not None and st.method.unary is not None
            st.task = self.loop.create_task(
                self._run_unary(st, st.method.unary, st.request))
            st.request = None

    # -- calls --

    async def _run_unary(self, st: _Stream, handler: Unary, request: Any) -> None:
        try:
            response = await handler(request, _CONTEXT)
        except Exception as e:
            self._failed(st, e)
        else:
            self._send(st, response.SerializeToString())
            self._finish(st, Code.OK)

    async def _run_stream(self, st: _Stream, method: Method) -> None:
        assert method.stream is not None and st.queue is not None
        queue = st.queue

        async def requests() -> AsyncIterator[Any]:
            while True:
                req = await queue.get()
                if req is _EOF:
                    return
                yield req

        try:
            async for response in method.stream(requests(), _CONTEXT):
                if st.finished:
                    return
                self._send(st, response.SerializeToString())
        except Exception as e:
            self._failed(st, e)
        else:
            self._finish(st, Code.OK)

    def _failed(self, st: _Stream, e: Exception) -> None:
        """A handler raised: its Abort status, or UNKNOWN (and a traceback) for a bug."""
        if isinstance(e, Abort):
            self._finish(st, e.code, e.details)
        else:
            log.exception("store: handler failed", exc_info=e)
            self._finish(st, Code.UNKNOWN, f"{type(e).__name__}: {e}")

    # -- frames out --

    def _send(self, st: _Stream, message: bytes) -> None:
        if st.finished or self.closed:
            return
        if not st.headers_sent:
            st.headers_sent = True
            self._emit(_frame(HEADERS, END_HEADERS, st.id, _RESPONSE_HEADERS))
        st.pending.append(b"\x00" + struct.pack(">I", len(message)) + message)
        self._pump(st)

    def _finish(self, st: _Stream, code: Code, details: str = "") -> None:
        """Decide the call's status; it goes out after any DATA still waiting for window."""
        if st.finished:
            return
        st.finished = True
        st.buf.clear()
        if (st.queue is not None and st.task is not None and code != Code.OK
                and st.task is not asyncio.current_task()):
            st.task.cancel()
        block = _trailers(code, details)
        st.trailers = block if st.headers_sent else _RESPONSE_HEADERS + block
        self._pump(st)

    def _pump(self, st: _Stream) -> None:
        pending = st.pending
        while pending:
            chunk = pending[0]
            allow = min(len(chunk), st.send_window, self.send_window, self.peer_max_frame)
            if allow <= 0:
                self.blocked[st.id] = None
                return
            if allow < len(chunk):
                pending[0] = chunk[allow:]
                chunk = chunk[:allow]
            else:
                pending.popleft()
            st.send_window -= allow
            self.send_window -= allow
            self._emit(_frame(DATA, 0, st.id, chunk))
        self.blocked.pop(st.id, None)
        if st.trailers is not None:
            self._emit(_frame(HEADERS, END_HEADERS | END_STREAM, st.id, st.trailers))
            st.trailers = None
            if not st.remote_closed:  # the client may stop sending: nothing more is read
                self._emit(_frame(RST_STREAM, 0, st.id, struct.pack(">I", NO_ERROR)))
            self._forget(st)

    def _forget(self, st: _Stream) -> None:
        if st.trailers is None and not st.pending:
            self.streams.pop(st.id, None)

    def _pump_blocked(self) -> None:
        for sid in list(self.blocked):
            st = self.streams.get(sid)
            if st is None:
                self.blocked.pop(sid, None)
            else:
                self._pump(st)
            if self.send_window <= 0:
                return


class _TLSHandshake(asyncio.Protocol):
    """A TCP connection that becomes TLS: the handshake is done here (``start_tls``)
    rather than inside the listener, so a refused client is logged with its address and
    the reason, as etcd logs it (asyncio's listener drops them silently)."""

    def __init__(self, server: Server, tls: ssl.SSLContext) -> None:
        self.server = server
        self.tls = tls
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        tcp.pause_reading()  # the ClientHello is for the TLS layer, not for us
        self.task = asyncio.get_running_loop().create_task(self._upgrade(tcp))
        self.server._handshakes.add(self.task)
        self.task.add_done_callback(self.server._handshakes.discard)

    async def _upgrade(self, tcp: asyncio.Transport) -> None:
        peer = tcp.get_extra_info("peername")
        conn = _Connection(self.server)
        try:
            transport = await asyncio.get_running_loop().start_tls(
                tcp, conn, self.tls, server_side=True, ssl_handshake_timeout=10)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            # a refused client (no or untrusted certificate, no TLS) is worth a warning;
            # a bare TCP probe that hangs up (port checks, load balancers) is not
            refused = isinstance(e, ssl.SSLError) and not isinstance(
                e, ssl.SSLEOFError | ssl.SSLZeroReturnError)
            log.log(logging.WARNING if refused else logging.DEBUG,
                    "store: rejected connection from %s: TLS handshake failed: %s",
                    _address(peer), reason)
            tcp.close()
            return
        if transport is None:  # the peer went away during the handshake
            return
        conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
    return payload[1:len(payload) - payload[0]]


class Server:
    """Serve ``methods`` (keyed by ``/package.Service/Method``) on one address."""

    def __init__(self, methods: Mapping[bytes, Method], max_receive: int) -> None:
        self.methods = dict(methods)
        self.max_receive = max_receive
        self._services = {p.rsplit(b"/", 1)[0] for p in self.methods}
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        # a connection whose first bytes are not HTTP/2's preface goes here with those
        # bytes (the transport is the caller's from then on); None: such clients are dropped
        self.http1: Callable[[asyncio.Transport, bytes], None] | None = None

    def unknown(self, path: bytes) -> str:
        service, _, name = path.decode("utf-8", "replace").lstrip("/").rpartition("/")
        if ("/" + service).encode() in self._services:
            return f"unknown method {name} for service {service}"
        return f"unknown service {service}"

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen; returns the bound port (``port`` 0 picks one). OSError if it cannot."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: _Connection(self)) if tls is None else (lambda: _TLSHandshake(self, tls)))
        self._server = await loop.create_server(factory, host, port, reuse_address=True)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None:
                server.close()
                for task in list(self._handshakes):
                    task.cancel()
                for conn in list(self._connections):
                    conn.shutdown()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_WAIT_S):
                        await server.wait_closed()
        finally:  # a stop cancelled while waiting has still closed the listener
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


def server_tls(cert_file: str, key_file: str, trusted_ca_file: str | None) -> ssl.SSLContext:
    """TLS as etcd serves it: our certificate, and with a CA, client certificates required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if trusted_ca_file:
        ctx.load_verify_locations(trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # HTTP/1.1: the JSON gateway on this port
    return ctx

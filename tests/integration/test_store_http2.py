"""The store's own HTTP/2 transport (store/embedded/grpcwire.py) at the edges real gRPC clients
rarely reach: flow control and frame sizes on the send side, CONTINUATION and padding, PING,
trailers-only errors, the receive limit, connection errors (GOAWAY codes), RST_STREAM on a
watch. A small blocking HTTP/2 client below speaks the frames directly; it runs in a thread
so the in-process server keeps its event loop."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import hpack
import pytest
from aetcd.rpc import rpc_pb2

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from overlay.store.embedded import grpcwire
from overlay.store.embedded.server import EmbeddedServer
from tests.storecheck import round_trip

pytestmark = pytest.mark.timeout(15)  # backstop only: every socket read times out at 2 s

# -- a raw HTTP/2 client ---------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
(DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE,
 CONTINUATION) = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, CANCEL = 0, 1, 3, 6, 8
COMPRESSION_ERROR = 9
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 0x4, 0x5
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16_384
RECEIVE_LIMIT = 2 << 20  # the embedded server's: etcd's 1.5 MiB request + 512 KiB of framing
TIMEOUT = 2.0

PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"
WATCH = "/etcdserverpb.Watch/Watch"


def frame(typ: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One frame; ``length`` overrides the header's length field (to lie about it)."""
    n = len(payload) if length is None else length
    return n.to_bytes(3, "big") + struct.pack(">BBI", typ, flags, sid) + payload


def grpc_message(body: bytes, compressed: bool = False, length: int | None = None) -> bytes:
    """gRPC's length-prefixed message (``length`` overrides the announced size)."""
    n = len(body) if length is None else length
    return struct.pack(">BI", int(compressed), n) + body


def padded(payload: bytes, pad: int) -> bytes:
    """A PADDED frame's payload: pad length, content, that many zero bytes."""
    return bytes((pad,)) + payload + bytes(pad)


def grpc_messages(data: bytes) -> list[bytes]:
    """Split a response body into its messages (none compressed)."""
    out = []
    while data:
        assert len(data) >= 5 and data[0] == 0, data[:5]
        n = int.from_bytes(data[1:5], "big")
        assert len(data) >= 5 + n, "response body ends inside a message"
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out


class Frame(NamedTuple):
    type: int
    flags: int
    sid: int
    payload: bytes
    headers: dict[str, str] | None = None  # HEADERS: the decoded block


@dataclass
class Reply:
    """A stream's frames from the server up to END_STREAM (or RST_STREAM)."""

    frames: list[Frame]

    @property
    def data(self) -> bytes:
        return b"".join(f.payload for f in self.frames if f.type == DATA)

    @property
    def trailers(self) -> dict[str, str]:
        last = self.frames[-1]
        assert last.type == HEADERS and last.flags & END_STREAM and last.headers is not None, last
        return last.headers

    @property
    def status(self) -> int:
        return int(self.trailers["grpc-status"])

    def message(self) -> bytes:
        msgs = grpc_messages(self.data)
        assert len(msgs) == 1, msgs
        return msgs[0]


class H2Client:
    """Blocking HTTP/2 client on 127.0.0.1 that checks the server's DATA against the windows
    it granted: a DATA frame over the stream or connection window, or over the frame size it
    allows, fails the test where it arrives."""

    def __init__(self, port: int, window: int = 1 << 24, conn_window: int = 1 << 30,
                 max_frame: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = bytearray()
        self.backlog: list[Frame] = []
        self.next_sid = 1
        self.initial_window = window
        self.max_frame = max_frame or DEFAULT_MAX_FRAME
        self.conn_window = DEFAULT_WINDOW  # DATA the server may still send, connection-wide
        self.windows: dict[int, int] = {}  # ... and per stream
        settings = struct.pack(">HI", S_INITIAL_WINDOW_SIZE, window)
        if max_frame is not None:
            settings += struct.pack(">HI", S_MAX_FRAME_SIZE, max_frame)
        out = PREFACE + frame(SETTINGS, 0, 0, settings)
        if conn_window > DEFAULT_WINDOW:
            out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", conn_window - DEFAULT_WINDOW))
            self.conn_window = conn_window
        self.sock.sendall(out)

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sock.close()

    # -- out --

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def new_stream(self) -> int:
        sid = self.next_sid
        self.next_sid += 2
        self.windows[sid] = self.initial_window
        return sid

    def request_block(self, path: str) -> bytes:
        return bytes(self.encoder.encode([
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers"),
        ]))

    @staticmethod
    def data_frames(sid: int, body: bytes, end: bool) -> bytes:
        chunks = [body[i:i + DEFAULT_MAX_FRAME] for i in range(0, len(body), DEFAULT_MAX_FRAME)]
        chunks = chunks or [b""]
        return b"".join(frame(DATA, END_STREAM if end and i == len(chunks) - 1 else 0, sid, c)
                        for i, c in enumerate(chunks))

    def open(self, path: str, body: bytes | None, end: bool = True) -> int:
        """Start a call: HEADERS, then ``body`` (if any) as DATA; END_STREAM if ``end``."""
        sid = self.new_stream()
        flags = END_HEADERS | (END_STREAM if end and body is None else 0)
        out = frame(HEADERS, flags, sid, self.request_block(path))
        if body is not None:
            out += self.data_frames(sid, body, end)
        self.send(out)
        return sid

    def call(self, path: str, request: Any) -> Reply:
        return self.reply(self.open(path, grpc_message(request.SerializeToString())))

    def grant(self, sid: int, n: int) -> None:
        """WINDOW_UPDATE: let the server send ``n`` more bytes (``sid`` 0: the connection)."""
        self.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", n)))
        if sid:
            self.windows[sid] += n
        else:
            self.conn_window += n

    # -- in --

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk

    def _read(self) -> Frame:
        self._fill(9)
        length = int.from_bytes(self.buf[:3], "big")
        self._fill(9 + length)
        typ, flags, sid = struct.unpack_from(">BBI", self.buf, 3)
        sid &= 0x7FFFFFFF
        payload = bytes(self.buf[9:9 + length])
        del self.buf[:9 + length]
        assert length <= self.max_frame, f"frame of {length} bytes, over {self.max_frame}"
        headers = None
        if typ == DATA:
            assert sid in self.windows, f"DATA on stream {sid} never opened"
            assert length <= self.windows[sid], \
                f"DATA of {length} on stream {sid} over its window {self.windows[sid]}"
            assert length <= self.conn_window, \
                f"DATA of {length} over the connection window {self.conn_window}"
            self.windows[sid] -= length
            self.conn_window -= length
        elif typ == HEADERS:
            assert flags & END_HEADERS, "server split a header block (not expected from it)"
            headers = {k.decode(): v.decode() for k, v in self.decoder.decode(payload, raw=True)}
        elif typ == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        return Frame(typ, flags, sid, payload, headers)

    def next(self, sid: int) -> Frame:
        """The next frame on ``sid`` (0: the connection); others wait in the backlog."""
        for i, f in enumerate(self.backlog):
            if f.sid == sid:
                return self.backlog.pop(i)
        while True:
            f = self._read()
            if f.sid == sid:
                return f
            self.backlog.append(f)

    def next_of(self, sid: int, typ: int) -> Frame:
        """The next frame of type ``typ`` on ``sid``, skipping others there."""
        while True:
            f = self.next(sid)
            if f.type == typ:
                return f

    def reply(self, sid: int) -> Reply:
        frames = []
        while True:
            f = self.next(sid)
            frames.append(f)
            if f.type == RST_STREAM or (f.type in (DATA, HEADERS) and f.flags & END_STREAM):
                return Reply(frames)

    def data(self, sid: int, n: int) -> bytes:
        """Exactly ``n`` bytes of DATA on ``sid`` (the response HEADERS may come first)."""
        got = bytearray()
        while len(got) < n:
            f = self.next(sid)
            assert not f.flags & END_STREAM, f
            if f.type == HEADERS:
                assert not got, "HEADERS after DATA before the end of the response"
                continue
            assert f.type == DATA, f
            got += f.payload
        assert len(got) == n
        return bytes(got)

    def quiet(self, sid: int, seconds: float = 0.3) -> None:
        """Nothing arrives on ``sid`` for ``seconds``."""
        assert not [f for f in self.backlog if f.sid == sid], self.backlog
        self.sock.settimeout(seconds)
        try:
            while True:
                f = self._read()
                assert f.sid != sid, f"unexpected on stream {sid}: {f}"
                self.backlog.append(f)
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(TIMEOUT)

    def goaway(self) -> tuple[int, int]:
        """The server's GOAWAY (last stream id, error code), then it closes the connection."""
        f = self.next_of(0, GOAWAY)
        last, code = struct.unpack_from(">II", f.payload)
        try:
            while True:
                self._read()
        except (EOFError, ConnectionResetError):
            pass
        return last & 0x7FFFFFFF, code


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path / "store", "127.0.0.1", 0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def put_ok(c: H2Client, key: bytes, value: bytes = b"v") -> None:
    r = c.call(PUT, rpc_pb2.PutRequest(key=key, value=value))
    assert r.status == 0, r.trailers


# -- tests -----------------------------------------------------------------------------------


async def test_send_side_flow_control(server: EmbeddedServer) -> None:
    """The server sends no more than the client's stream and connection windows allow, stops
    there, and finishes (trailers last) only once WINDOW_UPDATEs open them again."""
    key, value = b"/h2/flow", bytes(range(256)) * 20  # 5 KiB
    range_req = grpc_message(rpc_pb2.RangeRequest(key=key).SerializeToString())

    def check_range(body: bytes) -> None:
        resp = rpc_pb2.RangeResponse.FromString(b"".join(grpc_messages(body)))
        assert [(kv.key, kv.value) for kv in resp.kvs] == [(key, value)]

    def scenario() -> None:
        with H2Client(server.port, window=100, conn_window=DEFAULT_WINDOW) as c:
            put_ok(c, key, value)  # its small response fits the 100-byte window

            # stream window: 100 bytes, then nothing until the stream's WINDOW_UPDATE
            sid = c.open(RANGE, range_req)
            head = c.next(sid)
            assert head.type == HEADERS and not head.flags & END_STREAM
            assert head.headers is not None and head.headers[":status"] == "200"
            first = c.data(sid, 100)
            c.quiet(sid)
            c.grant(sid, 1 << 20)
            rest = c.reply(sid)
            assert all(f.type == DATA for f in rest.frames[:-1]) and rest.status == 0
            body = first + rest.data
            check_range(body)

            # use up the connection window (never topped up) with more ranges
            while c.conn_window >= len(body):
                sid = c.open(RANGE, range_req)
                c.grant(sid, 1 << 20)
                r = c.reply(sid)
                assert r.status == 0 and r.data == body
            left = c.conn_window

            # connection window: what is left of it, then nothing until its WINDOW_UPDATE
            sid = c.open(RANGE, range_req)
            c.grant(sid, 1 << 20)
            first = c.data(sid, left)
            c.quiet(sid)
            assert c.conn_window == 0
            c.grant(0, 1 << 20)
            rest = c.reply(sid)
            if left == 0:
                assert rest.frames[0].type == HEADERS and not rest.frames[0].flags & END_STREAM
                rest.frames.pop(0)
            assert all(f.type == DATA for f in rest.frames[:-1]), rest.frames
            assert rest.trailers == {"grpc-status": "0"}
            check_range(first + rest.data)
            c.quiet(sid, 0.1)  # trailers were last

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize("max_frame", [None, 40_000], ids=["default-16384", "peer-40000"])
async def test_response_split_at_peer_max_frame_size(server: EmbeddedServer,
                                                     max_frame: int | None) -> None:
    """A response bigger than the peer's SETTINGS_MAX_FRAME_SIZE (default 16384) goes out in
    frames of at most that size."""
    key, value = b"/h2/big", b"x" * 100_000
    limit = max_frame or DEFAULT_MAX_FRAME

    def scenario() -> None:
        with H2Client(server.port, max_frame=max_frame) as c:
            put_ok(c, key, value)
            r = c.call(RANGE, rpc_pb2.RangeRequest(key=key))
            assert r.status == 0
            sizes = [len(f.payload) for f in r.frames if f.type == DATA]
            assert max(sizes) == limit and sum(sizes) > 2 * limit  # split, and full frames
            assert rpc_pb2.RangeResponse.FromString(r.message()).kvs[0].value == value

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize("shape", ["continuation", "padded-priority", "padded-data", "all"])
async def test_continuation_padding_priority(server: EmbeddedServer, shape: str) -> None:
    """A header block split over CONTINUATION frames, HEADERS with PADDED and PRIORITY, and a
    padded DATA frame are all read correctly: the Put succeeds and stores the value."""
    key = f"/h2/shape/{shape}".encode()

    def scenario() -> None:
        with H2Client(server.port) as c:
            sid = c.new_stream()
            block = c.request_block(PUT)
            split = shape in ("continuation", "all")
            n = len(block) // 3
            pieces = [block[:n], block[n:2 * n], block[2 * n:]] if split else [block]
            first, flags = pieces[0], 0
            if shape in ("padded-priority", "all"):  # pad length, dependency 0, weight, padding
                first, flags = padded(struct.pack(">IB", 0, 200) + first, 7), PADDED | PRIORITY_FLAG
            out = frame(HEADERS, flags | (0 if split else END_HEADERS), sid, first)
            for i, piece in enumerate(pieces[1:], 2):
                out += frame(CONTINUATION, END_HEADERS if i == len(pieces) else 0, sid, piece)
            msg = grpc_message(rpc_pb2.PutRequest(key=key, value=b"shaped").SerializeToString())
            if shape in ("padded-data", "all"):
                out += frame(DATA, END_STREAM | PADDED, sid, padded(msg, 33))
            else:
                out += frame(DATA, END_STREAM, sid, msg)
            c.send(out)
            r = c.reply(sid)
            assert r.status == 0, r.trailers
            rpc_pb2.PutResponse.FromString(r.message())
            got = c.call(RANGE, rpc_pb2.RangeRequest(key=key))
            kvs = rpc_pb2.RangeResponse.FromString(got.message()).kvs
            assert [kv.value for kv in kvs] == [b"shaped"]

    await asyncio.to_thread(scenario)


async def test_ping_ack(server: EmbeddedServer) -> None:
    """PING is answered by PING with ACK and the same 8 bytes; a PING ACK is not answered."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            c.send(frame(PING, 0, 0, b"weft\x00\x01\xfe\xff"))
            f = c.next_of(0, PING)
            assert f.flags == ACK and f.payload == b"weft\x00\x01\xfe\xff"
            c.send(frame(PING, ACK, 0, b"12345678"), frame(PING, 0, 0, b"87654321"))
            f = c.next_of(0, PING)  # an answer to the ACK would come first
            assert f.flags == ACK and f.payload == b"87654321", f

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize("end_stream", [True, False], ids=["headers-end-stream", "open"])
async def test_unknown_method_trailers_only(server: EmbeddedServer, end_stream: bool) -> None:
    """An unknown method gets one trailers-only HEADERS (status 200, grpc-status 12), plus
    RST_STREAM NO_ERROR only if the client had not ended its side; the connection goes on."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            sid = c.open("/etcdserverpb.KV/Frobnicate", None, end=end_stream)
            r = c.reply(sid)
            assert len(r.frames) == 1, r.frames
            h = r.trailers
            assert h[":status"] == "200" and h["content-type"] == "application/grpc"
            assert h["grpc-status"] == "12"
            assert h["grpc-message"] == "unknown method Frobnicate for service etcdserverpb.KV"
            if end_stream:
                c.quiet(sid, 0.2)
            else:
                rst = c.next(sid)
                assert rst.type == RST_STREAM and rst.payload == struct.pack(">I", NO_ERROR)
            put_ok(c, b"/h2/after-unknown")

    await asyncio.to_thread(scenario)


async def test_message_over_receive_limit(server: EmbeddedServer) -> None:
    """A message announcing more than the receive limit ends its call at once with
    RESOURCE_EXHAUSTED, then RST_STREAM NO_ERROR; later DATA on it is ignored, and the
    connection serves the next call."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            sid = c.open(PUT, grpc_message(b"\x0a\x01k" * 30, length=RECEIVE_LIMIT + 1),
                         end=False)
            r = c.reply(sid)
            assert len(r.frames) == 1 and r.status == 8, r.frames
            assert "larger than max" in r.trailers["grpc-message"]
            rst = c.next(sid)
            assert rst.type == RST_STREAM and rst.payload == struct.pack(">I", NO_ERROR)
            c.send(frame(DATA, END_STREAM, sid, b"\x00" * 1000))  # the rest, too late
            put_ok(c, b"/h2/after-limit")

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize(("body", "code"), [
    (grpc_message(rpc_pb2.PutRequest(key=b"/h2/z", value=b"v").SerializeToString(),
                  compressed=True), 12),
    (grpc_message(b"\xff\xff\xff\xff"), 13),
], ids=["compressed-flag", "undecodable"])
async def test_bad_message_status(server: EmbeddedServer, body: bytes, code: int) -> None:
    """A compressed message gets UNIMPLEMENTED (no decompressor), an undecodable one
    INTERNAL; the connection serves the next call."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            sid = c.open(PUT, body)
            r = c.reply(sid)
            assert r.status == code, r.trailers
            put_ok(c, b"/h2/after-bad")

    await asyncio.to_thread(scenario)


async def test_no_rst_stream_after_client_end_stream(server: EmbeddedServer) -> None:
    """When the client's last DATA frame (END_STREAM) holds an undecodable message, the
    stream is closed once the trailers go out: no RST_STREAM may follow them."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            sid = c.open(PUT, grpc_message(b"\xff\xff\xff\xff"))
            assert c.reply(sid).status == 13
            c.quiet(sid, 0.2)

    await asyncio.to_thread(scenario)


def _bad_data_on_stream_0(c: H2Client) -> None:
    c.send(frame(DATA, 0, 0, b"x"))


def _bad_data_on_idle_stream(c: H2Client) -> None:
    c.send(frame(DATA, END_STREAM, 5, grpc_message(b"")))


def _bad_oversized_frame(c: H2Client) -> None:
    sid = c.open(PUT, None, end=False)
    c.send(frame(DATA, 0, sid, length=DEFAULT_MAX_FRAME + 1))  # the header is enough to tell


def _bad_window_overflow(c: H2Client) -> None:
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW)))


def _bad_hpack(c: H2Client) -> None:
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff"))


def _bad_ping_size(c: H2Client) -> None:
    c.send(frame(PING, 0, 0, b"1234567"))


def _bad_settings_on_stream(c: H2Client) -> None:
    c.send(frame(SETTINGS, 0, 1, b""))


def _bad_ping_on_stream(c: H2Client) -> None:
    c.send(frame(PING, 0, 1, b"12345678"))


def _bad_short_priority(c: H2Client) -> None:
    c.send(frame(HEADERS, END_HEADERS | END_STREAM | 0x20, 1, b"\x00\x00"))


@pytest.mark.parametrize(("provoke", "code", "last_id"), [
    (_bad_data_on_stream_0, PROTOCOL_ERROR, 0),
    (_bad_data_on_idle_stream, PROTOCOL_ERROR, 0),
    (_bad_oversized_frame, FRAME_SIZE_ERROR, 1),
    (_bad_window_overflow, FLOW_CONTROL_ERROR, 0),
    (_bad_hpack, COMPRESSION_ERROR, 0),
    (_bad_ping_size, FRAME_SIZE_ERROR, 0),
    (_bad_settings_on_stream, PROTOCOL_ERROR, 0),
    (_bad_ping_on_stream, PROTOCOL_ERROR, 0),
    (_bad_short_priority, FRAME_SIZE_ERROR, 0),
], ids=["data-stream-0", "data-idle-stream", "frame-over-16384", "conn-window-overflow",
        "garbage-hpack", "ping-7-bytes", "settings-on-stream", "ping-on-stream",
        "priority-too-short"])
async def test_protocol_error_goaway(server: EmbeddedServer,
                                     provoke: Callable[[H2Client], None], code: int,
                                     last_id: int) -> None:
    """A connection error ends the connection with GOAWAY carrying its code; the server
    serves new connections afterwards."""

    def scenario() -> tuple[int, int]:
        # default windows: the connection window must start at 65535 for the overflow case
        with H2Client(server.port, conn_window=DEFAULT_WINDOW) as c:
            provoke(c)
            return c.goaway()

    assert await asyncio.to_thread(scenario) == (last_id, code)
    await round_trip(server.endpoint)


async def test_rst_stream_stops_watch(server: EmbeddedServer) -> None:
    """RST_STREAM on an open Watch stream ends it: its watcher is dropped, a later put on the
    key sends nothing on that stream, and the connection keeps serving."""
    assert server.service is not None
    watchers = server.service.committer.watchers
    before = len(watchers)
    key = b"/h2/watched"

    def scenario() -> None:
        with H2Client(server.port) as c:
            create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))
            sid = c.open(WATCH, grpc_message(create.SerializeToString()), end=False)
            assert c.next(sid).type == HEADERS
            f = c.next(sid)
            assert f.type == DATA
            assert rpc_pb2.WatchResponse.FromString(grpc_messages(f.payload)[0]).created
            put_ok(c, key, b"one")
            ev = c.next(sid)
            assert ev.type == DATA
            resp = rpc_pb2.WatchResponse.FromString(grpc_messages(ev.payload)[0])
            assert [e.kv.value for e in resp.events] == [b"one"]

            c.send(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
            put_ok(c, key, b"two")
            c.quiet(sid)
            put_ok(c, b"/h2/after-rst")

    await asyncio.to_thread(scenario)
    deadline = time.monotonic() + 1
    while len(watchers) != before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(watchers) == before
    await round_trip(server.endpoint)


async def test_responses_released_together_share_a_write(
        server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Puts that arrive together are committed together, and their responses leave in far
    fewer socket writes than there are calls (writes are counted inside the server)."""
    writes = 0
    flush = grpcwire._Connection._flush

    def counting(self: grpcwire._Connection) -> None:
        nonlocal writes
        if self.out and not self.closed:
            writes += 1
        flush(self)

    monkeypatch.setattr(grpcwire._Connection, "_flush", counting)
    calls = 20

    def scenario() -> int:
        with H2Client(server.port) as c:
            put_ok(c, b"/h2/warm-up")
            start = writes
            out = b""
            sids = []
            for i in range(calls):
                sid = c.new_stream()
                sids.append(sid)
                body = rpc_pb2.PutRequest(key=b"/h2/burst/%d" % i, value=b"v").SerializeToString()
                out += frame(HEADERS, END_HEADERS, sid, c.request_block(PUT))
                out += frame(DATA, END_STREAM, sid, grpc_message(body))
            c.send(out)
            assert all(c.reply(sid).status == 0 for sid in sids)
            return writes - start

    burst_writes = await asyncio.to_thread(scenario)
    assert burst_writes <= calls // 4, burst_writes


async def test_bad_stream_window_update_resets_only_that_stream(server: EmbeddedServer) -> None:
    """A stream WINDOW_UPDATE of 0 is a stream error (RFC 9113 6.9): RST_STREAM
    PROTOCOL_ERROR on that stream; the connection keeps serving."""

    def scenario() -> None:
        with H2Client(server.port) as c:
            create = rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=b"/h2/window"))
            sid = c.open(WATCH, grpc_message(create.SerializeToString()), end=False)
            assert c.next(sid).type == HEADERS
            c.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", 0)))
            rst = c.next_of(sid, RST_STREAM)
            assert struct.unpack(">I", rst.payload)[0] == PROTOCOL_ERROR
            put_ok(c, b"/h2/after-window")

    await asyncio.to_thread(scenario)


async def test_client_that_stops_reading_is_dropped(server: EmbeddedServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that never reads must not make the server buffer without bound: once its
    unread output passes the limit its connection is dropped; everyone else is served."""
    from overlay.store.embedded import grpcwire

    monkeypatch.setattr(grpcwire, "_MAX_UNSENT", 256 << 10)
    assert server.service is not None
    watchers = server.service.committer.watchers
    before = len(watchers)
    with H2Client(server.port) as c:
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"/h2/flood/", range_end=b"/h2/flood0"))
        c.open(WATCH, grpc_message(create.SerializeToString()), end=False)
        deadline = time.monotonic() + 5
        while len(watchers) == before:  # the watch is in place; from now on c reads nothing
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        store = await connect(StoreConfig((server.endpoint,), timeout=5))
        try:
            value = b"x" * (64 << 10)
            for i in range(400):  # ~26 MB of events: far past kernel buffers and the limit
                await store.put(b"/h2/flood/%d" % i, value)
                if len(watchers) == before:
                    break
            assert len(watchers) == before, "the stuck watcher was never dropped"
        finally:
            await store.close()
    await round_trip(server.endpoint)

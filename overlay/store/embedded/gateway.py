"""The embedded store's HTTP/1.1 side: etcd 3.4's gRPC-gateway JSON API, /version, /health
and /metrics, on the same client port as gRPC.

Theory of operation:

* ``grpcwire`` reads a connection's first bytes; when they are not HTTP/2's preface it hands
  the transport and those bytes to ``Gateway.accept`` (etcd does the same with cmux), so one
  port serves etcdctl/gRPC clients and curl, etcd3gw, load-balancer probes and Prometheus.
* ``RequestParser`` is sans-IO: bytes in, complete requests out (Content-Length or chunked
  bodies, keep-alive, pipelining); ``HttpConnection`` answers them in order on the loop.
* A JSON call is the gRPC call: the body is parsed into the RPC's request message
  (``json_format``: base64 bytes, int64 as strings or numbers, unknown fields ignored as
  grpc-gateway does), the very handler the gRPC transport uses runs, and the response goes
  back in grpc-gateway's form (proto field names, int64 as strings, zero fields omitted).
  A failed call answers etcd's error body ``{"error","message","code"}`` with the HTTP status
  grpc-gateway maps the gRPC code to. Streaming RPCs (watch, lease keepalive) read every
  JSON object in the body as one request each and answer chunked, one ``{"result": …}``
  line per response; a watch then stays open until the client leaves, as etcd's does.
* Paths are etcd 3.4's: ``/v3/…`` and the older ``/v3beta/…`` it still serves.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aetcd.rpc import rpc_pb2
from google.protobuf import json_format

from overlay.metrics import Family, counter, gauge, render
from overlay.store.embedded.grpcwire import Abort, Code, Context, Method
from overlay.store.embedded.state import RangeOp, State

log = logging.getLogger(__name__)

API_VERSION = "3.4.0"  # the etcd API this store implements: clients pick paths from it
MAX_HEADER_BYTES = 64 << 10
MAX_UNSENT_BYTES = 64 << 20  # output a client leaves unread before it is dropped
MAX_BODY_BYTES = 2 << 20  # etcd's request limit (1.5 MiB) plus JSON's base64 growth margin

_CORS = (
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
)

# grpc-gateway v1's HTTPStatusFromCode (etcd 3.4 uses v1)
HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 408, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.UNAUTHENTICATED: 401, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 412, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500,
}
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    411: "Length Required", 412: "Precondition Failed", 413: "Request Entity Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


# -- routes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One gateway path: the gRPC method it calls and its request message."""

    grpc_path: bytes
    request: Callable[[], Any]
    stream: bool = False
    keep_open: bool = False  # a stream that outlives its request body (watch)


def _route(service: str, method: str, request: str, stream: bool = False,
           keep_open: bool = False) -> Route:
    return Route(f"/etcdserverpb.{service}/{method}".encode(), getattr(rpc_pb2, request),
                 stream, keep_open)


# etcd 3.4's gateway paths (api/etcdserverpb/rpc.proto google.api.http options), under /v3
_PATHS: dict[str, Route] = {
    "/kv/range": _route("KV", "Range", "RangeRequest"),
    "/kv/put": _route("KV", "Put", "PutRequest"),
    "/kv/deleterange": _route("KV", "DeleteRange", "DeleteRangeRequest"),
    "/kv/txn": _route("KV", "Txn", "TxnRequest"),
    "/kv/compaction": _route("KV", "Compact", "CompactionRequest"),
    "/lease/grant": _route("Lease", "LeaseGrant", "LeaseGrantRequest"),
    "/lease/revoke": _route("Lease", "LeaseRevoke", "LeaseRevokeRequest"),
    "/kv/lease/revoke": _route("Lease", "LeaseRevoke", "LeaseRevokeRequest"),
    "/lease/keepalive": _route("Lease", "LeaseKeepAlive", "LeaseKeepAliveRequest", True),
    "/lease/timetolive": _route("Lease", "LeaseTimeToLive", "LeaseTimeToLiveRequest"),
    "/kv/lease/timetolive": _route("Lease", "LeaseTimeToLive", "LeaseTimeToLiveRequest"),
    "/lease/leases": _route("Lease", "LeaseLeases", "LeaseLeasesRequest"),
    "/kv/lease/leases": _route("Lease", "LeaseLeases", "LeaseLeasesRequest"),
    "/watch": _route("Watch", "Watch", "WatchRequest", True, keep_open=True),
    "/maintenance/status": _route("Maintenance", "Status", "StatusRequest"),
    "/maintenance/alarm": _route("Maintenance", "Alarm", "AlarmRequest"),
    "/maintenance/defragment": _route("Maintenance", "Defragment", "DefragmentRequest"),
    "/maintenance/hash": _route("Maintenance", "Hash", "HashRequest"),
    "/maintenance/snapshot": _route("Maintenance", "Snapshot", "SnapshotRequest", True),
    "/cluster/member/list": _route("Cluster", "MemberList", "MemberListRequest"),
}
ROUTES: dict[str, Route] = {
    f"/{api}{path}": route for api in ("v3", "v3beta") for path, route in _PATHS.items()
}


def to_json(message: Any) -> dict[str, Any]:
    """A protobuf message as grpc-gateway writes it (proto names, int64 as strings, zero
    fields left out)."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def from_json(obj: object, request: Callable[[], Any]) -> Any:
    """A request message from decoded JSON (ValueError naming what is wrong)."""
    if not isinstance(obj, dict):
        raise ValueError(f"want a JSON object, got {type(obj).__name__}")
    msg = request()
    try:
        json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise ValueError(str(e)) from None
    return msg


def json_objects(body: bytes) -> list[object]:
    """Every JSON value in ``body`` (a stream's requests are concatenated; an empty body is
    one empty object, as grpc-gateway reads it). ValueError if it does not parse."""
    text = body.decode("utf-8", "strict").strip() if body else ""
    if not text:
        return [{}]
    out: list[object] = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON: {e}") from None
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
    return out


def error_body(code: Code, message: str) -> bytes:
    """etcd's gateway error body."""
    return _dumps({"error": message, "message": message, "code": int(code)})


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- HTTP/1.1, sans-IO -------------------------------------------------------------------


class HttpError(Exception):
    """A request this server cannot read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    version: str
    headers: Mapping[str, str]  # names lowercased; repeated ones joined with ", "
    body: bytes

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass(slots=True)
class RequestParser:
    """Bytes in (``feed``), complete requests out, in order."""

    buf: bytearray = field(default_factory=bytearray)
    # set when a request's head asked ``Expect: 100-continue`` and its body has not come:
    # the connection answers ``100 Continue`` (curl waits a second for it otherwise)
    continue_due: bool = False
    _continued: bool = False

    def feed(self, data: bytes) -> list[Request]:
        self.buf += data
        out: list[Request] = []
        while True:
            req = self._next()
            if req is None:
                return out
            out.append(req)

    def _next(self) -> Request | None:
        buf = self.buf
        while buf.startswith(b"\r\n"):  # stray CRLFs between requests are allowed
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise HttpError(431, "request header too large")
            return None
        try:
            head = bytes(buf[:end]).decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise HttpError(400, "bad request header") from None
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
            raise HttpError(400, f"bad request line {lines[0][:80]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505 if version.startswith("HTTP/") else 400,
                            f"unsupported version {version[:20]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, f"bad header line {line[:80]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        start = end + 4
        if (headers.get("expect", "").lower() == "100-continue" and not self._continued
                and len(buf) == start):
            self.continue_due = self._continued = True
        te = headers.get("transfer-encoding", "").lower()
        if te:
            if te != "chunked":
                raise HttpError(501, f"transfer-encoding {te!r} not supported")
            got = _dechunk(buf, start)
            if got is None:
                return None
            body, consumed = got
        else:
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit():
                raise HttpError(400, f"bad content-length {length_text[:20]!r}")
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                raise HttpError(413, f"body of {length} bytes is over {MAX_BODY_BYTES}")
            if len(buf) - start < length:
                return None
            body, consumed = bytes(buf[start:start + length]), start + length
        del buf[:consumed]
        self._continued = False
        return Request(method.upper(), target.split("?", 1)[0], version, headers, body)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, end position), None if incomplete."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(400, f"bad chunk size {size_text[:20]!r}") from None
        if len(body) + size > MAX_BODY_BYTES:
            raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
        pos = eol + 2
        if size == 0:  # trailers until an empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(body), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        pos += size + 2


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in (*_CORS, *headers)]
    lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, body: bytes, content_type: str = "application/json",
             close: bool = False) -> bytes:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    return response_head(status, headers) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- the gateway -----------------------------------------------------------------------


class Probe(Protocol):
    """What /health and /metrics read from the running store."""

    def healthy(self) -> bool: ...

    def metrics(self) -> list[Family]:
        """The metric families /metrics renders (overlay.metrics)."""
        ...


class StoreProbe:
    """The embedded store's health and etcd-named metrics, read from its state."""

    def __init__(self, state: State, broken: Callable[[], bool],
                 watchers: Callable[[], int]) -> None:
        self.state = state
        self._broken = broken
        self._watchers = watchers

    def healthy(self) -> bool:
        return not self._broken()

    def metrics(self) -> list[Family]:
        s = self.state
        keys = s.range(RangeOp(b"\0", b"\0", count_only=True)).count
        size = s.db_size()
        return [
            gauge("etcd_server_has_leader",
                  "Whether or not a leader exists. 1 is existence, 0 is not.", 1),
            gauge("etcd_server_is_leader",
                  "Whether or not this member is a leader. 1 if is, 0 otherwise.", 1),
            gauge("etcd_server_version",
                  "Which version is running. 1 for 'server_version' label with current version.",
                  {(API_VERSION,): 1}, labels=("server_version",)),
            counter("etcd_server_health_failures",
                    "The total number of failed health checks (1 once commits fail).",
                    0 if self.healthy() else 1),
            gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", keys),
            gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.",
                  s.revision),
            gauge("etcd_debugging_mvcc_compact_revision",
                  "The revision of the last compaction in store.", s.compact_revision),
            gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.",
                  self._watchers()),
            gauge("etcd_debugging_lease_total", "The number of live leases.", len(s.leases)),
            gauge("etcd_mvcc_db_total_size_in_bytes",
                  "Total size of the underlying database physically allocated in bytes.", size),
            gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                  "Total size of the underlying database logically in use in bytes.", size),
        ]


class Gateway:
    """Answers HTTP/1.1 connections handed over by ``grpcwire.Server.http1``."""

    def __init__(self, methods: Mapping[bytes, Method], probe: Probe) -> None:
        self.methods = methods
        self.probe = probe
        self.connections: set[HttpConnection] = set()

    def accept(self, transport: asyncio.Transport, data: bytes) -> None:
        conn = HttpConnection(self, transport)
        transport.set_protocol(conn)
        self.connections.add(conn)
        conn.data_received(data)

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 client: its requests answered in order, one at a time."""

    def __init__(self, gateway: Gateway, transport: asyncio.Transport) -> None:
        self.gateway = gateway
        self.transport = transport
        self.parser = RequestParser()
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.closed = False
        self.eof = asyncio.Event()  # the client has stopped sending (or left)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            for req in self.parser.feed(data):
                self.queue.put_nowait(req)
            if self.parser.continue_due:
                self.parser.continue_due = False
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except HttpError as e:
            log.debug("store: bad HTTP request: %s", e)
            self.queue.put_nowait(None)
            self._write(response(e.status, f"{e}\n".encode(), "text/plain; charset=utf-8",
                                 close=True))
            self.close()

    def eof_received(self) -> bool | None:
        self.eof.set()
        self.queue.put_nowait(None)
        return True  # keep the write side open for the answers still due

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof.set()
        self.gateway.connections.discard(self)
        self.task.cancel()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
        self.gateway.connections.discard(self)

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)
            if self.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
                # a watcher that stops reading must not grow the server without bound
                log.warning("store: dropping an HTTP client that left %d bytes unread",
                            self.transport.get_write_buffer_size())
                self.closed = True
                self.transport.abort()

    async def _serve(self) -> None:
        try:
            while not self.closed:
                req = await self.queue.get()
                if req is None:
                    break
                keep = await self._answer(req)
                if not keep or not req.keep_alive:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("store: HTTP gateway failed on a request; closing the connection")
        self.close()

    async def _answer(self, req: Request) -> bool:
        """Answer ``req``; False when the connection must end after it."""
        if req.method == "OPTIONS":
            self._write(response(200, b"", "text/plain"))
            return True
        route = ROUTES.get(req.path)
        if route is not None:
            if req.method not in ("POST", "PUT"):
                self._write(response(405, b"Method Not Allowed\n", "text/plain; charset=utf-8"))
                return True
            return await self._call(route, req)
        simple = {"/version": self._version, "/health": self._health,
                  "/metrics": self._metrics}.get(req.path)
        if simple is None:
            text = b"Not Found\n" if req.path.startswith("/v3") else b"404 page not found\n"
            self._write(response(404, text, "text/plain; charset=utf-8"))
            return True
        if req.method not in ("GET", "HEAD"):
            self._write(response(405, b"Method Not Allowed\n", "text/plain; charset=utf-8"))
            return True
        status, body, ctype = simple()
        self._write(response(status, b"" if req.method == "HEAD" else body, ctype))
        return True

    def _version(self) -> tuple[int, bytes, str]:
        return 200, _dumps({"etcdserver": API_VERSION, "etcdcluster": API_VERSION}), \
            "application/json"

    def _health(self) -> tuple[int, bytes, str]:
        ok = self.gateway.probe.healthy()
        return (200 if ok else 503), _dumps({"health": "true" if ok else "false"}), \
            "application/json"

    def _metrics(self) -> tuple[int, bytes, str]:
        return 200, render(self.gateway.probe.metrics()).encode(), \
            "text/plain; version=0.0.4; charset=utf-8"

    async def _call(self, route: Route, req: Request) -> bool:
        method = self.gateway.methods.get(route.grpc_path)
        try:
            requests = [from_json(o, route.request) for o in json_objects(req.body)]
        except (ValueError, UnicodeDecodeError) as e:
            self._write(response(400, error_body(Code.INVALID_ARGUMENT, str(e))))
            return True
        if method is None:
            self._write(response(501, error_body(Code.UNIMPLEMENTED, "not implemented")))
            return True
        if not route.stream:
            assert method.unary is not None
            try:
                resp = await method.unary(requests[0], Context())
            except Abort as e:
                self._write(response(HTTP_STATUS.get(e.code, 500), error_body(e.code, e.details)))
                return True
            self._write(response(200, _dumps(to_json(resp))))
            return True
        assert method.stream is not None
        return await self._stream(method, route, requests, req)

    async def _stream(self, method: Method, route: Route, requests: list[Any],
                      req: Request) -> bool:
        eof = self.eof

        async def feed() -> AsyncIterator[Any]:
            for r in requests:
                yield r
            if route.keep_open:  # etcd keeps a watch after the body ends, till the client goes
                await eof.wait()

        assert method.stream is not None
        self._write(response_head(200, [("Content-Type", "application/json"),
                                        ("Transfer-Encoding", "chunked")]))
        try:
            async for resp in method.stream(feed(), Context()):
                self._write(_chunk(_dumps({"result": to_json(resp)}) + b"\n"))
        except Abort as e:
            status = HTTP_STATUS.get(e.code, 500)
            self._write(_chunk(_dumps({"error": {
                "grpc_code": int(e.code), "http_code": status, "message": e.details,
                "http_status": _REASONS.get(status, "Unknown")}}) + b"\n"))
        self._write(_chunk(b""))
        return not route.keep_open

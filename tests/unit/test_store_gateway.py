"""The JSON gateway's pure parts: the HTTP/1.1 request parser, JSON <-> protobuf as
grpc-gateway writes it, the stream body reader and the metrics text."""

from __future__ import annotations

import pytest
from aetcd.rpc import rpc_pb2

from overlay.metrics import gauge, render
from overlay.store.embedded.gateway import (
    ROUTES,
    HttpError,
    RequestParser,
    error_body,
    from_json,
    json_objects,
    to_json,
)
from overlay.store.embedded.grpcwire import Code


def test_requests_pipelined_and_split_anywhere() -> None:
    raw = (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
           b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    for cut in range(len(raw)):
        p = RequestParser()
        reqs = p.feed(raw[:cut]) + p.feed(raw[cut:])
        assert [(r.method, r.path, r.body, r.keep_alive) for r in reqs] == [
            ("POST", "/v3/kv/range", b"{}", True), ("GET", "/health", b"", False)]


def test_chunked_body_and_query_string() -> None:
    raw = (b"POST /v3/watch?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\n{\"a\r\n4;ext=1\r\n\":1}\r\n0\r\n\r\n")
    (req,) = RequestParser().feed(raw)
    assert (req.path, req.body) == ("/v3/watch", b'{"a":1}')


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["request-line", "version", "header", "length", "too-large", "encoding", "chunk"])
def test_bad_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        RequestParser().feed(raw)
    assert info.value.status == status


def test_json_like_grpc_gateway() -> None:
    resp = rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=5), count=1)
    resp.kvs.add(key=b"foo", value=b"bar", create_revision=2, mod_revision=5, version=1)
    assert to_json(resp) == {"header": {"revision": "5"}, "count": "1", "kvs": [
        {"key": "Zm9v", "value": "YmFy", "create_revision": "2", "mod_revision": "5",
         "version": "1"}]}
    req = from_json({"key": "Zm9v", "revision": "3", "limit": 2, "sort_order": "DESCEND",
                     "unknown": 1}, ROUTES["/v3/kv/range"].request)
    assert (req.key, req.revision, req.limit, req.sort_order) == (b"foo", 3, 2, 2)
    with pytest.raises(ValueError):
        from_json({"limit": "many"}, ROUTES["/v3/kv/range"].request)
    with pytest.raises(ValueError):
        from_json([1], ROUTES["/v3/kv/range"].request)


def test_stream_bodies() -> None:
    assert json_objects(b"") == [{}]
    assert json_objects(b'{"a":1}\n{"b":2} ') == [{"a": 1}, {"b": 2}]
    with pytest.raises(ValueError):
        json_objects(b'{"a":')


def test_error_body_and_metrics() -> None:
    assert error_body(Code.NOT_FOUND, "gone") == b'{"error":"gone","message":"gone","code":5}'
    # rendered by overlay.metrics, the renderer every daemon shares
    assert render([gauge("a_total", "A.", 3), gauge("b", "B.", {("y",): 0.5}, ("x",))]) == (
        "# HELP a_total A.\n# TYPE a_total gauge\na_total 3\n"
        '# HELP b B.\n# TYPE b gauge\nb{x="y"} 0.5\n')


def test_routes_cover_etcd_34_paths() -> None:
    for path in ("kv/range", "kv/put", "kv/deleterange", "kv/txn", "kv/compaction",
                 "lease/grant", "lease/revoke", "lease/keepalive", "lease/timetolive",
                 "lease/leases", "kv/lease/revoke", "kv/lease/timetolive", "watch",
                 "maintenance/status"):
        assert f"/v3/{path}" in ROUTES and f"/v3beta/{path}" in ROUTES


def test_expect_100_continue_is_signalled_once_until_the_body_comes() -> None:
    p = RequestParser()
    head = b"POST /v3/kv/put HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert p.feed(head) == [] and p.continue_due
    p.continue_due = False
    assert p.feed(b"") == [] and not p.continue_due  # said once
    (req,) = p.feed(b"{}")
    assert req.body == b"{}"

"""etcd's HTTP side on the client port, the same on the embedded store and on Debian's etcd 3.4:
OpenStack's etcd3gw (put/get/lease/watch/txn over the gRPC-gateway JSON API), the JSON shapes
and error bodies themselves, and GET /version, /health and /metrics."""

from __future__ import annotations

import base64
import itertools
import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from etcd3gw.client import Etcd3Client

pytestmark = pytest.mark.etcd

_seq = itertools.count()


def _client(url: str) -> Etcd3Client:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return Etcd3Client(host=host, port=int(port), timeout=10)


def _prefix(kind: str) -> str:
    return f"/http-contract/{kind}/{next(_seq)}/"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def http(url: str, path: str, body: object | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET (no body) or a JSON POST."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def normalized(obj: Any, base: int) -> Any:
    """A gateway answer with what differs between two stores taken out: cluster and member
    ids, raft terms, and revisions (made relative to ``base``)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k in ("cluster_id", "member_id", "raft_term"):
                out[k] = "ID"
            elif k in ("revision", "create_revision", "mod_revision"):
                out[k] = int(v) - base
            else:
                out[k] = normalized(v, base)
        return out
    if isinstance(obj, list):
        return [normalized(v, base) for v in obj]
    return obj


def test_etcd3gw_put_get_replace_delete(store_endpoint: str) -> None:
    c, p = _client(store_endpoint), _prefix("kv")
    assert c.put(p + "a", "1") is True
    assert c.put(p + "b", "2") is True
    assert c.get(p + "a") == [b"1"]
    assert c.get(p + "missing") == []
    got = c.get_prefix(p, sort_order="descend", sort_target="key")
    assert [(v, m["key"]) for v, m in got] == [(b"2", (p + "b").encode()),
                                               (b"1", (p + "a").encode())]
    meta = c.get(p + "a", metadata=True)[0][1]
    assert meta["version"] == "1" and int(meta["mod_revision"]) == int(meta["create_revision"])
    assert c.create(p + "a", "x") is False and c.create(p + "c", "3") is True
    assert c.replace(p + "a", "1", "one") is True
    assert c.replace(p + "a", "1", "uno") is False
    assert c.get(p + "a") == [b"one"]
    assert c.delete(p + "a") is True and c.delete(p + "a") is False
    assert c.delete_prefix(p) is True
    assert c.get_prefix(p) == []


def test_etcd3gw_lease(store_endpoint: str) -> None:
    c, p = _client(store_endpoint), _prefix("lease")
    lease = c.lease(ttl=30)
    assert c.put(p + "k", "v", lease=lease) is True
    assert 25 <= lease.ttl() <= 30
    assert lease.refresh() == 30
    assert lease.keys() == [(p + "k").encode()]
    assert lease.id in [int(x["ID"]) for x in c.session.post(
        c.get_url("/lease/leases"), json={}).json()["leases"]]
    assert lease.revoke() is True
    assert c.get(p + "k") == []
    assert lease.ttl() == -1


def test_etcd3gw_watch_and_txn(store_endpoint: str) -> None:
    c, p = _client(store_endpoint), _prefix("watch")
    events, cancel = c.watch_prefix(p)
    try:
        c.put(p + "x", "1")
        txn = {"compare": [{"key": _b64(p + "x"), "result": "EQUAL", "target": "VALUE",
                            "value": _b64("1")}],
               "success": [{"request_put": {"key": _b64(p + "y"), "value": _b64("2")}},
                           {"request_delete_range": {"key": _b64(p + "x")}}],
               "failure": []}
        assert c.transaction(txn)["succeeded"] is True
        seen = [(e.get("type", "PUT"), e["kv"]["key"], e["kv"].get("value"))
                for e in itertools.islice(events, 3)]
    finally:
        cancel()
    assert seen == [("PUT", (p + "x").encode(), b"1"), ("PUT", (p + "y").encode(), b"2"),
                    ("DELETE", (p + "x").encode(), None)]
    failed = c.transaction({**txn, "failure": [{"request_range": {"key": _b64(p + "y")}}]})
    assert "succeeded" not in failed  # false is a zero field: left out, as etcd does
    assert failed["responses"][0]["response_range"]["kvs"][0]["value"] == _b64("2")


def test_json_shapes_and_errors(store_endpoint: str) -> None:
    p = _prefix("shape")
    status, ctype, raw = http(store_endpoint, "/v3/kv/put", {"key": _b64(p + "k"),
                                                              "value": _b64("v")})
    assert (status, ctype) == (200, "application/json")
    base = int(json.loads(raw)["header"]["revision"])
    _, _, raw = http(store_endpoint, "/v3/kv/range", {"key": _b64(p + "k")})
    assert normalized(json.loads(raw), base) == {
        "header": {"cluster_id": "ID", "member_id": "ID", "revision": 0, "raft_term": "ID"},
        "kvs": [{"key": _b64(p + "k"), "create_revision": 0, "mod_revision": 0,
                 "version": "1", "value": _b64("v")}],
        "count": "1"}
    _, _, raw = http(store_endpoint, "/v3/kv/range", {"key": _b64(p + "none")})
    assert set(json.loads(raw)) == {"header"}  # no kvs, count 0, more false: all left out
    cases = [
        ("/v3/kv/range", {}, 400, 3, "etcdserver: key is not provided"),
        ("/v3/kv/range", {"key": _b64(p), "revision": str(base + 10**6)}, 400, 11,
         "etcdserver: mvcc: required revision is a future revision"),
        ("/v3/kv/lease/revoke", {"ID": "1"}, 404, 5, "etcdserver: requested lease not found"),
    ]
    for path, body, want_status, code, message in cases:
        status, _, raw = http(store_endpoint, path, body)
        assert (status, json.loads(raw)) == (want_status, {"error": message, "message": message,
                                                           "code": code}), path
    status, _, raw = http(store_endpoint, "/v3/kv/range", "not an object")
    assert status == 400 and json.loads(raw)["code"] == 3
    assert http(store_endpoint, "/v3/kv/nosuch", {})[0] == 404
    assert http(store_endpoint, "/v3/kv/range")[0] == 405  # GET on a POST path


def test_version_health_metrics(store_endpoint: str) -> None:
    status, ctype, raw = http(store_endpoint, "/version")
    version = json.loads(raw)
    assert (status, ctype, version["etcdcluster"]) == (200, "application/json", "3.4.0")
    assert re.fullmatch(r"3\.4\.\d+", version["etcdserver"])
    assert http(store_endpoint, "/health")[::2] == (200, b'{"health":"true"}')
    status, ctype, raw = http(store_endpoint, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = raw.decode()
    assert re.search(r"^etcd_server_has_leader 1$", text, re.M)
    for name in ("etcd_debugging_mvcc_keys_total", "etcd_mvcc_db_total_size_in_bytes",
                 "etcd_debugging_mvcc_current_revision"):
        assert re.search(rf"^{name} \d+$", text, re.M), name
        assert f"# TYPE {name} gauge" in text
    _, _, raw = http(store_endpoint, "/v3/maintenance/status", {})
    assert {"header", "version", "dbSize", "leader", "raftIndex", "raftTerm"} <= set(
        json.loads(raw))

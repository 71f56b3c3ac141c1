"""etcd's wire behaviour, asserted on the embedded server and on real etcd alike: gRPC status
codes and messages, txn compares, range options, watch create/cancel/progress/compaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

C = rpc_pb2.Compare
OK = grpc.StatusCode.OK


class Wire:
    def __init__(self, url: str) -> None:
        self.channel = grpc.aio.insecure_channel(url.split("://", 1)[-1])
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.maint = rpc_pb2_grpc.MaintenanceStub(self.channel)

    async def status_of(self, call: Any) -> tuple[grpc.StatusCode, str]:
        try:
            await call
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        return OK, ""

    async def put(self, key: bytes, value: bytes = b"v", **kw: Any) -> Any:
        return await self.kv.Put(rpc_pb2.PutRequest(key=key, value=value, **kw))


@pytest.fixture(params=["inproc", "etcd"])
async def wire(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Wire]:
    server = None
    if request.param == "inproc":
        from overlay.store.embedded.server import EmbeddedServer

        server = EmbeddedServer(tmp_path / "store", "127.0.0.1", 0)
        await server.start()
        url = server.endpoint
    else:
        url = request.getfixturevalue("etcd_url")
    w = Wire(url)
    try:
        yield w
    finally:
        await w.channel.close()
        if server is not None:
            await server.stop()


def _k(request: pytest.FixtureRequest, name: str) -> bytes:
    return f"/wire/{request.node.name}/{name}".encode()


ERRORS = [
    ("value-over-1.5MiB", "put_big", grpc.StatusCode.INVALID_ARGUMENT,
     "etcdserver: request is too large"),
    ("unknown-lease-put", "put_lease", grpc.StatusCode.NOT_FOUND,
     "etcdserver: requested lease not found"),
    ("unknown-lease-revoke", "revoke", grpc.StatusCode.NOT_FOUND,
     "etcdserver: requested lease not found"),
    ("empty-key", "put_empty", grpc.StatusCode.INVALID_ARGUMENT,
     "etcdserver: key is not provided"),
    ("future-revision", "range_future", grpc.StatusCode.OUT_OF_RANGE,
     "etcdserver: mvcc: required revision is a future revision"),
    ("duplicate-txn-key", "txn_dup", grpc.StatusCode.INVALID_ARGUMENT,
     "etcdserver: duplicate key given in txn request"),
    ("huge-lease-ttl", "grant_huge", grpc.StatusCode.OUT_OF_RANGE,
     "etcdserver: too large lease TTL"),
]


@pytest.mark.parametrize(("case", "code", "message"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
async def test_error_status_like_etcd(wire: Wire, request: pytest.FixtureRequest, case: str,
                                      code: grpc.StatusCode, message: str) -> None:
    key = _k(request, "k")
    calls = {
        "put_big": lambda: wire.put(key, b"x" * (1536 * 1024 + 1)),
        "put_lease": lambda: wire.put(key, lease=0x1234567),
        "revoke": lambda: wire.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=0x1234567)),
        "put_empty": lambda: wire.put(b""),
        "range_future": lambda: wire.kv.Range(rpc_pb2.RangeRequest(key=key, revision=1 << 40)),
        "txn_dup": lambda: wire.kv.Txn(rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"1")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"2"))])),
        "grant_huge": lambda: wire.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10**10)),
    }
    assert await wire.status_of(calls[case]()) == (code, message)
    # and the server keeps serving
    r = await wire.put(key, b"after")
    assert r.header.revision > 1


async def test_oversized_grpc_message_is_resource_exhausted(wire: Wire,
                                                            request: pytest.FixtureRequest) -> None:
    code, _ = await wire.status_of(wire.put(_k(request, "huge"), b"x" * (3 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await wire.put(_k(request, "after"))).header.revision > 1


async def test_unknown_method_is_unimplemented(wire: Wire) -> None:
    call = wire.channel.unary_unary("/etcdserverpb.KV/NoSuchMethod")(b"\x0a\x01x")
    code, _ = await wire.status_of(call)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    st = await wire.maint.Status(rpc_pb2.StatusRequest())
    assert st.header.member_id and st.header.cluster_id and st.header.raft_term
    assert st.leader == st.header.member_id and st.version.startswith("3.4")


async def test_compacted_range_and_compact(wire: Wire, request: pytest.FixtureRequest) -> None:
    key = _k(request, "k")
    r1 = (await wire.put(key, b"1")).header.revision
    r2 = (await wire.put(key, b"2")).header.revision
    await wire.kv.Compact(rpc_pb2.CompactionRequest(revision=r2, physical=True))
    compacted = (grpc.StatusCode.OUT_OF_RANGE,
                 "etcdserver: mvcc: required revision has been compacted")
    assert await wire.status_of(wire.kv.Range(rpc_pb2.RangeRequest(key=key, revision=r1))) \
        == compacted
    assert await wire.status_of(wire.kv.Compact(rpc_pb2.CompactionRequest(revision=r1))) \
        == compacted
    assert await wire.status_of(wire.kv.Compact(rpc_pb2.CompactionRequest(
        revision=r2 + 100))) == (grpc.StatusCode.OUT_OF_RANGE,
                                 "etcdserver: mvcc: required revision is a future revision")


async def _watch_responses(wire: Wire, reqs: list[Any], n: int,
                           until: Any = None) -> list[Any]:
    q: asyncio.Queue[Any] = asyncio.Queue()
    for r in reqs:
        q.put_nowait(r)

    async def feed() -> AsyncIterator[Any]:
        while True:
            yield await q.get()

    call = wire.watch.Watch(feed())
    out = []
    try:
        async with asyncio.timeout(5):
            async for resp in call:
                out.append(resp)
                if (until is None and len(out) >= n) or (until is not None and until(resp)):
                    break
    finally:
        call.cancel()
    return out


async def test_watch_on_compacted_revision(wire: Wire, request: pytest.FixtureRequest) -> None:
    key = _k(request, "k")
    r1 = (await wire.put(key, b"1")).header.revision
    r2 = (await wire.put(key, b"2")).header.revision
    await wire.kv.Compact(rpc_pb2.CompactionRequest(revision=r2, physical=True))
    create = rpc_pb2.WatchCreateRequest(key=key, start_revision=r1)
    resps = await _watch_responses(wire, [rpc_pb2.WatchRequest(create_request=create)], 2)
    assert [(r.created, r.canceled, r.compact_revision, len(r.events)) for r in resps] == [
        (True, False, 0, 0), (False, True, r2, 0)]
    assert resps[0].watch_id == resps[1].watch_id


async def test_watch_create_progress_cancel(wire: Wire, request: pytest.FixtureRequest) -> None:
    key = _k(request, "k")
    rev = (await wire.put(key, b"1")).header.revision
    create = rpc_pb2.WatchCreateRequest(key=key, range_end=key + b"\xff", start_revision=rev,
                                        prev_kv=True)
    reqs = [rpc_pb2.WatchRequest(create_request=create),
            rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())]
    resps = await _watch_responses(wire, reqs, 3)
    # etcd may send the progress before or after the replayed event
    assert resps[0].created and resps[0].watch_id == 0, "watch ids are per stream, from 0"
    assert sorted((r.watch_id, len(r.events)) for r in resps[1:]) == [(-1, 0), (0, 1)]
    progress = next(r for r in resps if r.watch_id == -1)
    assert progress.header.revision == rev
    reqs = [rpc_pb2.WatchRequest(create_request=create),
            rpc_pb2.WatchRequest(create_request=create),
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0))]
    resps = await _watch_responses(wire, reqs, 0, until=lambda r: r.canceled)
    created = [r.watch_id for r in resps if r.created]
    canceled = [r.watch_id for r in resps if r.canceled]
    assert (created, canceled) == ([0, 1], [0])


TXN_CASES = [
    # (id, compare built from the key's state, expected succeeded)
    ("version-equal", C(result=C.EQUAL, target=C.VERSION, version=2), True),
    ("version-greater", C(result=C.GREATER, target=C.VERSION, version=1), True),
    ("version-less-false", C(result=C.LESS, target=C.VERSION, version=2), False),
    ("create-equal", C(result=C.EQUAL, target=C.CREATE, create_revision=-1), True),
    ("mod-not-equal", C(result=C.NOT_EQUAL, target=C.MOD, mod_revision=-1), False),
    ("mod-less", C(result=C.LESS, target=C.MOD, mod_revision=10**9), True),
    ("value-equal", C(result=C.EQUAL, target=C.VALUE, value=b"two"), True),
    ("value-greater", C(result=C.GREATER, target=C.VALUE, value=b"one"), True),
    ("value-not-equal-false", C(result=C.NOT_EQUAL, target=C.VALUE, value=b"two"), False),
    ("lease-zero", C(result=C.EQUAL, target=C.LEASE, lease=0), True),
    ("missing-version-zero", C(result=C.EQUAL, target=C.VERSION, version=0, key=b"missing"),
     True),
    ("missing-value-never", C(result=C.NOT_EQUAL, target=C.VALUE, value=b"x", key=b"missing"),
     False),
    ("range-all-version-2", C(result=C.EQUAL, target=C.VERSION, version=2, range_end=b"~"),
     False),
]


@pytest.mark.parametrize(("cmp", "succeeded"), [c[1:] for c in TXN_CASES],
                         ids=[c[0] for c in TXN_CASES])
async def test_txn_compares(wire: Wire, request: pytest.FixtureRequest, cmp: Any,
                            succeeded: bool) -> None:
    key = _k(request, "k")
    r1 = (await wire.put(key, b"one")).header.revision
    r2 = (await wire.put(key, b"two")).header.revision
    await wire.put(key + b"z", b"other")
    c = rpc_pb2.Compare()
    c.CopyFrom(cmp)
    c.key = key + b"/" + cmp.key if cmp.key else key
    if cmp.range_end:
        c.key, c.range_end = key, key + cmp.range_end
    if c.target == C.CREATE and c.create_revision == -1:
        c.create_revision = r1
    if c.target == C.MOD and c.mod_revision == -1:
        c.mod_revision = r2
    done = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key + b"/ok", value=b"s"))
    other = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))
    before = (await wire.kv.Range(rpc_pb2.RangeRequest(key=key))).header.revision
    r = await wire.kv.Txn(rpc_pb2.TxnRequest(compare=[c], success=[done], failure=[other]))
    assert r.succeeded is succeeded
    if succeeded:
        assert r.header.revision == before + 1
        assert r.responses[0].WhichOneof("response") == "response_put"
    else:
        assert r.header.revision == before
        assert r.responses[0].response_range.kvs[0].value == b"two"


async def test_range_options(wire: Wire, request: pytest.FixtureRequest) -> None:
    p = _k(request, "")
    for i in range(5):
        await wire.put(p + str(i).encode(), b"v%d" % i)
    end = p[:-1] + b"0"  # prefix end of ".../": '/' + 1
    r = await wire.kv.Range(rpc_pb2.RangeRequest(key=p, range_end=end, limit=2))
    assert ([kv.key[-1:] for kv in r.kvs], r.more, r.count) == ([b"0", b"1"], True, 5)
    r = await wire.kv.Range(rpc_pb2.RangeRequest(key=p, range_end=end, count_only=True))
    assert (len(r.kvs), r.count) == (0, 5)
    r = await wire.kv.Range(rpc_pb2.RangeRequest(key=p, range_end=end, keys_only=True))
    assert [kv.value for kv in r.kvs] == [b""] * 5 and r.kvs[0].version == 1
    r = await wire.kv.Range(rpc_pb2.RangeRequest(
        key=p, range_end=end, sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.KEY, limit=1))
    assert [kv.key[-1:] for kv in r.kvs] == [b"4"]
    pr = await wire.put(p + b"0", b"new", prev_kv=True)
    assert pr.prev_kv.value == b"v0"
    d = await wire.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=p, range_end=end,
                                                             prev_kv=True))
    assert d.deleted == 5 and sorted(kv.value for kv in d.prev_kvs)[0] == b"new"


async def test_lease_wire(wire: Wire, request: pytest.FixtureRequest) -> None:
    g = await wire.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1))
    assert g.TTL == 2 and g.ID > 0
    ttl = await wire.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0x7777))
    assert ttl.TTL == -1
    call = wire.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=0x7777),
                                           rpc_pb2.LeaseKeepAliveRequest(ID=g.ID)]))
    got = [(r.ID, r.TTL) async for r in call]
    assert got == [(0x7777, 0), (g.ID, 2)]
    leases = await wire.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest())
    assert g.ID in [x.ID for x in leases.leases]
    await wire.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))

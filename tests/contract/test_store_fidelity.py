"""Raw responses of the embedded server and of Debian's etcd 3.4, side by side: each scenario
runs the same requests on both and the responses must be equal field by field, once the
values that legitimately differ between two servers are normalised (revisions are counted
from the scenario's first revision, lease IDs are numbered in order of appearance, and
cluster/member ids and the raft term only have to be set or unset alike)."""

from __future__ import annotations

import asyncio
import difflib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd.rpc import rpc_pb2
from google.protobuf.json_format import MessageToDict

from tests.contract.test_store_wire import Wire

RP = rpc_pb2.RequestOp
_REVISIONS = {"revision", "create_revision", "mod_revision", "compact_revision"}
_IDENTITIES = {"cluster_id", "member_id", "raft_term"}


class Side(Wire):
    """One server's gRPC stubs (test_store_wire's), plus what the scenarios need."""

    async def call(self, rpc: Awaitable[Any]) -> Any:
        """``rpc``'s response, or its error as (code, details): errors are compared too."""
        try:
            return await rpc
        except grpc.aio.AioRpcError as e:
            return (e.code().name, e.details())

    async def base(self) -> int:
        """The current revision (the scenario's origin)."""
        return int((await self.kv.Range(rpc_pb2.RangeRequest(key=b"\0"))).header.revision)

    async def watch_until(self, reqs: list[Any], until: Callable[[list[Any]], bool],
                          between: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
        """Open a Watch stream, send ``reqs`` (and run ``between`` after the first
        response), and collect responses until ``until`` says enough."""
        call = self.watch.Watch()
        out: list[Any] = []
        try:
            for r in reqs:
                await call.write(r)
            async with asyncio.timeout(5):
                while not until(out):
                    resp = await call.read()
                    assert resp is not grpc.aio.EOF
                    out.append(resp)
                    if between is not None and len(out) == 1:
                        await between()
        finally:
            call.cancel()
        return out


def normal(msg: Any, base: int, leases: dict[int, int]) -> Any:
    """``msg`` as a plain structure with server-specific values normalised."""
    if isinstance(msg, tuple):
        return msg
    def walk(v: Any, name: str = "") -> Any:
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in sorted(v.items())}
        if isinstance(v, list):
            return [walk(x, name) for x in v]
        if name in _REVISIONS:
            return int(v) - base
        if name in _IDENTITIES:
            return "set" if int(v) else 0
        if name in ("ID", "lease"):
            return f"lease#{leases.setdefault(int(v), len(leases) + 1)}"
        return v

    return walk(MessageToDict(msg, preserving_proto_field_name=True))


Scenario = Callable[[Side, bytes], Awaitable[list[Any]]]


async def _run(url: str, key: bytes, scenario: Scenario) -> list[Any]:
    side = Side(url)
    try:
        base = await side.base()
        leases: dict[int, int] = {}
        return [normal(m, base, leases) for m in await scenario(side, key)]
    finally:
        await side.channel.close()


@pytest.fixture
async def embedded_url(tmp_path: Path) -> AsyncIterator[str]:
    from overlay.store.embedded.server import EmbeddedServer

    server = EmbeddedServer(tmp_path / "store", "127.0.0.1", 0)
    await server.start()
    try:
        yield server.endpoint
    finally:
        await server.stop()


# -- scenarios: each returns the raw responses to compare ---------------------------


async def range_negative_revision(s: Side, k: bytes) -> list[Any]:
    await s.put(k, b"1")
    await s.put(k, b"2")
    return [await s.call(s.kv.Range(rpc_pb2.RangeRequest(key=k, revision=rev)))
            for rev in (-1, -50, 0)]


async def txn_sub_headers(s: Side, k: bytes) -> list[Any]:
    await s.put(k + b"/a", b"1")
    await s.put(k + b"/b", b"1")
    txn = rpc_pb2.TxnRequest(success=[
        RP(request_range=rpc_pb2.RangeRequest(key=k + b"/a")),
        RP(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k + b"/a", prev_kv=True)),
        RP(request_range=rpc_pb2.RangeRequest(key=k + b"/", range_end=k + b"0")),
        RP(request_put=rpc_pb2.PutRequest(key=k + b"/c", value=b"2", prev_kv=True)),
        RP(request_put=rpc_pb2.PutRequest(key=k + b"/b", value=b"2", prev_kv=True)),
        RP(request_txn=rpc_pb2.TxnRequest(success=[
            RP(request_put=rpc_pb2.PutRequest(key=k + b"/d", value=b"3"))])),
    ])
    return [await s.call(s.kv.Txn(txn))]


async def txn_delete_nothing_then_put(s: Side, k: bytes) -> list[Any]:
    txn = rpc_pb2.TxnRequest(success=[
        RP(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k + b"/none")),
        RP(request_range=rpc_pb2.RangeRequest(key=k + b"/x")),
        RP(request_put=rpc_pb2.PutRequest(key=k + b"/x", value=b"1")),
        RP(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k + b"/none")),
    ])
    return [await s.call(s.kv.Txn(txn))]


async def txn_read_only_and_failure(s: Side, k: bytes) -> list[Any]:
    await s.put(k, b"1")
    never = rpc_pb2.Compare(key=k, result=rpc_pb2.Compare.EQUAL,
                            target=rpc_pb2.Compare.VALUE, value=b"nope")
    return [
        await s.kv.Txn(rpc_pb2.TxnRequest(success=[
            RP(request_range=rpc_pb2.RangeRequest(key=k))])),
        await s.call(s.kv.Txn(rpc_pb2.TxnRequest(compare=[never], failure=[
            RP(request_range=rpc_pb2.RangeRequest(key=k)),
            RP(request_txn=rpc_pb2.TxnRequest()),
            RP(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k + b"/none"))]))),
        await s.kv.Txn(rpc_pb2.TxnRequest()),
    ]


async def writes_that_change_nothing(s: Side, k: bytes) -> list[Any]:
    await s.put(k, b"1")
    return [
        await s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k + b"/none")),
        await s.put(k, b"1", prev_kv=True),
        await s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k, prev_kv=True)),
    ]


async def compact(s: Side, k: bytes) -> list[Any]:
    await s.put(k, b"1")
    rev = (await s.put(k, b"2")).header.revision
    await s.put(k, b"3")
    return [await s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev)),
            await s.call(s.kv.Range(rpc_pb2.RangeRequest(key=k, revision=rev)))]


async def leases(s: Side, k: bytes) -> list[Any]:
    g = await s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30))
    await s.put(k, b"1", lease=g.ID)
    ttl = await s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=g.ID, keys=True))
    ttl.TTL = min(ttl.TTL, 30)  # a second may have ticked
    missing = await s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0x5151))
    kept = [r async for r in s.lease.LeaseKeepAlive(iter([
        rpc_pb2.LeaseKeepAliveRequest(ID=g.ID), rpc_pb2.LeaseKeepAliveRequest(ID=0x5151)]))]
    revoked = await s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
    g2 = await s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30))
    revoked_empty = await s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g2.ID))
    return [g, ttl, missing, *kept, revoked, g2, revoked_empty]


async def watch_replay_and_cancel(s: Side, k: bytes) -> list[Any]:
    start = (await s.put(k + b"/1", b"a")).header.revision
    await s.put(k + b"/2", b"b")
    await s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k + b"/1"))
    create = rpc_pb2.WatchCreateRequest(key=k + b"/", range_end=k + b"0",
                                        start_revision=start, prev_kv=True)
    got = await s.watch_until(
        [rpc_pb2.WatchRequest(create_request=create)],
        lambda out: sum(len(r.events) for r in out) >= 3)
    cancel = await s.watch_until(
        [rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=k)),
         rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0))],
        lambda out: any(r.canceled for r in out))
    return got + cancel


async def watch_live(s: Side, k: bytes) -> list[Any]:
    async def writes() -> None:
        await s.put(k, b"1")
        await s.kv.Txn(rpc_pb2.TxnRequest(success=[
            RP(request_put=rpc_pb2.PutRequest(key=k, value=b"2")),
            RP(request_put=rpc_pb2.PutRequest(key=k + b"/x", value=b"2"))]))
        await s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k, range_end=k + b"0"))

    create = rpc_pb2.WatchCreateRequest(key=k, range_end=k + b"0", prev_kv=True)
    return await s.watch_until([rpc_pb2.WatchRequest(create_request=create)],
                               lambda out: sum(len(r.events) for r in out) >= 5,
                               between=writes)


async def watch_compacted(s: Side, k: bytes) -> list[Any]:
    start = (await s.put(k, b"1")).header.revision
    rev = (await s.put(k, b"2")).header.revision
    await s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev))
    create = rpc_pb2.WatchCreateRequest(key=k, start_revision=start)
    return await s.watch_until([rpc_pb2.WatchRequest(create_request=create)],
                               lambda out: any(r.canceled for r in out))


async def watch_ids(s: Side, k: bytes) -> list[Any]:
    def create(**kw: Any) -> Any:
        return rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=k, **kw))

    def cancel(wid: int) -> Any:
        return rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=wid))

    # ids come from a per-stream counter that never goes back; a client's own id is
    # kept, a duplicate one refused; canceling an unknown id gets no answer
    reqs = [create(), create(), cancel(0), create(), create(watch_id=7), create(watch_id=7),
            create(), cancel(7), cancel(7), cancel(42),
            rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())]
    return await s.watch_until(reqs, lambda out: len(out) >= 9)


async def watch_future_start(s: Side, k: bytes) -> list[Any]:
    base = await s.base()

    async def writes() -> None:
        for v in (b"1", b"2", b"3"):
            await s.put(k, v)

    create = rpc_pb2.WatchCreateRequest(key=k, start_revision=base + 2)
    return await s.watch_until([rpc_pb2.WatchRequest(create_request=create)],
                               lambda out: sum(len(r.events) for r in out) >= 2,
                               between=writes)


async def range_options(s: Side, k: bytes) -> list[Any]:
    base = await s.base()
    for i, name in enumerate((b"c", b"a", b"b", b"a")):
        await s.put(k + b"/" + name, b"%d" % i)
    end = k + b"0"
    R = rpc_pb2.RangeRequest
    reqs = [
        R(key=k + b"/", range_end=end, limit=2),
        R(key=k + b"/", range_end=end, count_only=True),
        R(key=k + b"/", range_end=end, keys_only=True, limit=1),
        R(key=k + b"/", range_end=end, sort_order=R.DESCEND, sort_target=R.MOD),
        R(key=k + b"/", range_end=end, sort_order=R.ASCEND, sort_target=R.VALUE, limit=2),
        R(key=k + b"/", range_end=end, sort_target=R.CREATE),
        R(key=k + b"/", range_end=end, min_mod_revision=base + 3, max_create_revision=base + 2),
        R(key=k + b"/", range_end=end, min_mod_revision=base + 3, limit=1),
        R(key=k + b"/", range_end=end, max_mod_revision=base + 2, count_only=True),
        R(key=k + b"/", range_end=end, revision=base + 2),
        R(key=k + b"/zzz"),
    ]
    return [await s.call(s.kv.Range(r)) for r in reqs] + [await s.call(s.kv.Txn(
        rpc_pb2.TxnRequest(success=[RP(request_range=r) for r in reqs])))]


async def put_options(s: Side, k: bytes) -> list[Any]:
    g = await s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
    out = [await s.put(k, b"1", lease=g.ID, prev_kv=True),
           await s.put(k, b"", ignore_value=True, prev_kv=True),
           await s.put(k, b"2", ignore_lease=True, prev_kv=True),
           await s.call(s.put(k + b"/none", b"", ignore_value=True)),
           await s.call(s.put(k, b"3", ignore_lease=True, lease=g.ID)),
           await s.kv.Range(rpc_pb2.RangeRequest(key=k))]
    await s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
    return out


async def watch_filters(s: Side, k: bytes) -> list[Any]:
    async def writes() -> None:
        await s.put(k, b"1")
        await s.put(k, b"2")
        await s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k))
        await s.put(k, b"3")

    W = rpc_pb2.WatchCreateRequest
    reqs = [rpc_pb2.WatchRequest(create_request=W(key=k, filters=[W.NOPUT], prev_kv=True)),
            rpc_pb2.WatchRequest(create_request=W(key=k, filters=[W.NODELETE]))]
    got = await s.watch_until(reqs, lambda out: sum(len(r.events) for r in out) >= 4,
                              between=writes)
    # created responses first, then events by watcher (the two may interleave)
    return sorted(got, key=lambda r: (not r.created, r.watch_id))


async def maintenance(s: Side, k: bytes) -> list[Any]:
    maint = s.maint
    await s.put(k, b"1")
    return [await s.call(maint.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET))),
            await s.call(maint.Defragment(rpc_pb2.DefragmentRequest()))]


def _put(key: bytes, **kw: Any) -> Any:
    return RP(request_put=rpc_pb2.PutRequest(key=key, value=kw.pop("value", b"x"), **kw))


def _del(key: bytes, end: bytes = b"") -> Any:
    return RP(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=end))


def _txn(success: list[Any] = (), failure: list[Any] = (),  # type: ignore[assignment]
         compare: list[Any] = ()) -> Any:  # type: ignore[assignment]
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success),
                              failure=list(failure))


async def txn_checks(s: Side, k: bytes) -> list[Any]:
    """What etcd checks in a Txn before applying it: both branches (and every nested
    Txn's) for size, keys, and a put overlapping another put or a delete; the taken path
    only for leases; and every nested compare against the state before the Txn."""
    await s.put(k, b"1")
    C = rpc_pb2.Compare
    is2 = C(key=k, result=C.EQUAL, target=C.VALUE, value=b"2")
    never = C(key=k, result=C.EQUAL, target=C.VALUE, value=b"nope")
    txns = [
        _txn([_del(k), _put(k)]),
        _txn([_put(k), _del(k)]),
        _txn([_del(k + b"/", k + b"0"), _put(k + b"/x")]),
        _txn([_del(b"\xff" + k, b"\0"), _put(b"\xff" + k + b"/x")]),  # to the end
        _txn([_put(k), RP(request_txn=_txn([_put(k)]))]),
        _txn([RP(request_txn=_txn([_put(k + b"/y")], [_put(k + b"/y")]))]),
        _txn([_put(k + b"/q")], [_put(k), _put(k)]),
        _txn([_put(k + b"/q")], [_put(k, lease=0x5151)]),
        _txn([_put(k + b"/r"), RP(request_txn=_txn([_put(k + b"/s")],
                                                   [_put(k + b"/s", lease=0x5151)]))]),
        _txn([_put(k, value=b"2"), RP(request_txn=_txn([_put(k + b"/then")],
                                                       [_put(k + b"/else")], [is2]))]),
        _txn([RP()]),
        _txn(compare=[C(result=C.EQUAL, target=C.VERSION, version=0)]),
        _txn([_put(k + b"/m%d" % i) for i in range(128)]),
        _txn([_put(k + b"/m%d" % i) for i in range(129)]),
        _txn([_put(k + b"/n%d" % i) for i in range(100)]
             + [RP(request_txn=_txn([_put(k + b"/o%d" % i) for i in range(30)]))]),
        _txn(compare=[C(key=k, result=C.GREATER, target=C.VERSION, version=0)] * 129),
        _txn([_put(k + b"/q")], [RP(request_range=rpc_pb2.RangeRequest(key=k,
                                                                       revision=1 << 40))]),
        _txn([RP(request_range=rpc_pb2.RangeRequest(key=k, revision=1 << 40))],
             compare=[never]),
        _txn([RP(request_range=rpc_pb2.RangeRequest(key=b""))], compare=[never]),
        _txn([_put(k, ignore_value=True, value=b"v")], compare=[never]),
    ]
    return [await s.call(s.kv.Txn(t)) for t in txns]


async def edge_requests(s: Side, k: bytes) -> list[Any]:
    """Requests at the edges of what etcd accepts: its answer or error for each."""
    await s.put(k, b"1")
    calls = [
        s.kv.Range(rpc_pb2.RangeRequest(key=b"")),
        s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"")),
        s.kv.Range(rpc_pb2.RangeRequest(key=k, sort_order=5)),
        s.kv.Range(rpc_pb2.RangeRequest(key=k, limit=-1)),
        s.put(k, b"", prev_kv=True, ignore_value=True, ignore_lease=True),
        s.put(k + b"/new", b"", ignore_value=True),
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=0)),
        s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0)),
    ]
    return [await s.call(c) for c in calls]


async def compaction_edges(s: Side, k: bytes) -> list[Any]:
    await s.put(k, b"1")
    rev = (await s.put(k, b"2")).header.revision
    out = [await s.call(s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev)))]
    for r in (0, -1, rev, rev + 1):
        out.append(await s.call(s.kv.Compact(rpc_pb2.CompactionRequest(revision=r))))
    for r in (0, -1, rev - 1):
        rng = rpc_pb2.RangeRequest(key=k, revision=r)
        out.append(await s.call(s.kv.Range(rng)))
        out.append(await s.call(s.kv.Txn(_txn([RP(request_range=rng)]))))
    return out


async def lease_edges(s: Side, k: bytes) -> list[Any]:
    out = []
    for ttl in (0, -5, 5):
        g = await s.call(s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl)))
        out.append(g)
        if not isinstance(g, tuple):
            await s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
    mine = 0x7E57000000000000 + (hash(k) & 0xFFFFFF)
    g = await s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60, ID=mine))
    out.append(g)
    out.append(await s.call(s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60, ID=mine))))
    await s.put(k, b"1", lease=mine)
    await s.put(k + b"/2", b"1", lease=mine)
    out.append(await s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=mine)))
    out.append(await s.call(s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=mine))))
    out.append(await s.call(s.put(k, b"2", lease=mine)))
    out.append(await s.kv.Range(rpc_pb2.RangeRequest(key=k, range_end=k + b"0")))
    out.extend([r async for r in s.lease.LeaseKeepAlive(iter([
        rpc_pb2.LeaseKeepAliveRequest(ID=mine), rpc_pb2.LeaseKeepAliveRequest(ID=0)]))])
    return out


async def watch_edges(s: Side, k: bytes) -> list[Any]:
    """Odd Watch requests: a negative start, a progress request with no watcher, a
    cancel of an id never given, an unknown filter."""
    base = await s.base()
    await s.put(k, b"1")
    W = rpc_pb2.WatchCreateRequest

    def create(**kw: Any) -> Any:
        return rpc_pb2.WatchRequest(create_request=W(**kw))

    reqs = [rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()),
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=3)),
            create(key=k, start_revision=-5),
            create(key=k, filters=[7]),
            create(key=k, start_revision=base + 1, range_end=k),
            create(key=k + b"/", range_end=b"\0", start_revision=base + 1)]
    got = await s.watch_until(reqs, lambda out: len(out) >= 6)
    # etcd cancels a watch from a compacted start on its next sync, so later creates
    # may be answered first: compare as a set
    return sorted(got, key=lambda r: (r.watch_id, r.canceled, r.cancel_reason))


SCENARIOS: list[Scenario] = [
    watch_edges,
    txn_checks, edge_requests, compaction_edges, lease_edges,
    maintenance,
    range_options, put_options, watch_filters, watch_ids, watch_future_start,
    range_negative_revision, txn_sub_headers, txn_delete_nothing_then_put,
    txn_read_only_and_failure, writes_that_change_nothing, compact, leases,
    watch_replay_and_cancel, watch_live, watch_compacted,
]


async def fresh_store(s: Side, k: bytes) -> list[Any]:
    """On a store never compacted: Compact(0) is accepted once, and a Txn's Range at a
    negative revision passes etcd's check down to -1 (the "compacted" revision before
    the first compaction)."""
    await s.put(k, b"1")
    out = []
    for rev in (-1, -2):
        rng = RP(request_range=rpc_pb2.RangeRequest(key=k, revision=rev))
        out.append(await s.call(s.kv.Txn(_txn([rng]))))
    for _ in range(2):
        out.append(await s.call(s.kv.Compact(rpc_pb2.CompactionRequest(revision=0))))
    rng = RP(request_range=rpc_pb2.RangeRequest(key=k, revision=-1))
    out.append(await s.call(s.kv.Txn(_txn([rng]))))
    return out


async def test_fresh_store_like_etcd(embedded_url: str, tmp_path: Path) -> None:
    """``fresh_store`` on a fresh etcd of its own (the module's etcd has been compacted)."""
    from overlay.store.embedded.launch import start_etcd

    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server (make deps installs it)")
    etcd = start_etcd(tmp_path / "etcd", log=tmp_path / "etcd.log")
    try:
        side = Side(etcd.endpoint)
        try:  # the port answers before the member has elected itself
            for _ in range(100):
                if not isinstance(await side.call(side.put(b"/ready")), tuple):
                    break
                await asyncio.sleep(0.1)
        finally:
            await side.channel.close()
        want = await _run(etcd.endpoint, b"/fresh", fresh_store)
    finally:
        etcd.stop(kill=True)
    assert await _run(embedded_url, b"/fresh", fresh_store) == want


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_same_responses_as_etcd(scenario: Scenario, embedded_url: str, etcd_url: str,
                                      request: pytest.FixtureRequest) -> None:
    key = f"/fidelity/{request.node.name}".encode()
    want = await _run(etcd_url, key, scenario)
    got = await _run(embedded_url, key, scenario)
    if got != want:
        diff = difflib.unified_diff(json.dumps(want, indent=1).splitlines(),
                                    json.dumps(got, indent=1).splitlines(),
                                    "etcd", "embedded", lineterm="", n=6)
        pytest.fail("\n".join(diff), pytrace=False)

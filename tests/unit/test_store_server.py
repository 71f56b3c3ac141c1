"""The embedded server's pure edges: --listen parsing, etcd's status mapping and when
the group committer starts a commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from overlay.store.api import CompactedError, LeaseNotFoundError
from overlay.store.embedded import committer, server
from overlay.store.embedded.grpcwire import Code
from overlay.store.embedded.server import _status, parse_listen
from overlay.store.embedded.state import DuplicateKeyError, PutOp, State
from overlay.store.mvcc import FutureRevisionError


@pytest.mark.parametrize(("listen", "want"), [
    ("127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("http://127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("https://0.0.0.0:4001/", ("0.0.0.0", 4001)),
    ("[::1]:2379", ("::1", 2379)),
    ("http://[::1]:0", ("::1", 0)),
], ids=["bare", "http", "https-slash", "ipv6", "ipv6-url"])
def test_parse_listen(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize("listen", ["2379", "host:", ":2379", "http://host:port"],
                         ids=["port-only", "no-port", "no-host", "named-port"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(listen)


@pytest.mark.parametrize(("err", "code", "msg"), [
    (CompactedError(5), Code.OUT_OF_RANGE,
     "etcdserver: mvcc: required revision has been compacted"),
    (FutureRevisionError(9, 3), Code.OUT_OF_RANGE,
     "etcdserver: mvcc: required revision is a future revision"),
    (LeaseNotFoundError(7), Code.NOT_FOUND, "etcdserver: requested lease not found"),
    (DuplicateKeyError(b"k"), Code.INVALID_ARGUMENT,
     "etcdserver: duplicate key given in txn request"),
], ids=["compacted", "future", "lease", "duplicate"])
def test_status_mapping(err: Exception, code: grpc.StatusCode, msg: str) -> None:
    assert _status(err) == (code, msg)


async def _settle(futs: list[asyncio.Future[None]]) -> None:
    await asyncio.wait_for(asyncio.gather(*futs), 5)


async def test_commit_waits_for_company_only_under_a_crowd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a window this long would time the test out: every commit here must start at once
    # (no crowd) or as soon as the crowd is in (early end of the window)
    monkeypatch.setattr(committer, "_BATCH_WINDOW_S", 60.0)
    monkeypatch.setattr(committer, "_BUSY_GAP_S", 60.0)  # every write counts as "right after"
    state = State(tmp_path / "store.db")
    c = committer.Committer(state, lambda rev=0: None)
    try:
        c.active_calls = 3  # a few writers: never a window
        for i in range(3):
            state.put(PutOp(b"/few/%d" % i, b"v"))
            await _settle([asyncio.ensure_future(c.durable())])
        c.active_calls = 30  # a crowd in flight: a commit waits for 30 writers
        futs = []
        for i in range(30):
            state.put(PutOp(b"/crowd/%d" % i, b"v"))
            futs.append(asyncio.ensure_future(c.durable()))
            await asyncio.sleep(0)
            if i < 29:
                assert not futs[0].done(), f"committed with {i + 1} of 30 writers in"
        await _settle(futs)
        assert state.get(b"/crowd/29") is not None and not state.dirty
        state.put(PutOp(b"/crowd/last", b"v"))  # opens a window no one else joins
        last = asyncio.ensure_future(c.durable())
        await asyncio.sleep(0)
        assert not last.done()
        await c.drain()  # stopping: the pending commit goes now
        await _settle([last])
    finally:
        await c.drain()
        state.close()


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5s", 1.5), ("1h", 3600.0),
])
def test_go_duration(text: str, seconds: float) -> None:
    from overlay.cli.store_cmd import positive_duration

    assert positive_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "x", "-1s", "0s", "10mm", "1 m"])
def test_go_duration_rejects(text: str) -> None:
    import argparse

    from overlay.cli.store_cmd import positive_duration

    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        positive_duration(text)


async def test_watch_created_while_a_write_commits_says_the_committed_revision(
        tmp_path: Path) -> None:
    """A write applied but not yet durable reaches a watcher created meanwhile as an
    event, so the created response must not already claim its revision (etcd: a
    watcher hears every event after the created response's revision)."""
    from aetcd.rpc import rpc_pb2

    state = State(tmp_path / "store.db")
    svc = server.StoreService(state, [])
    try:
        rev, _ = state.put(PutOp(b"/w/a", b"1"))  # applied, commit not started
        out: asyncio.Queue[rpc_pb2.WatchResponse] = asyncio.Queue()
        svc._watch_create(rpc_pb2.WatchCreateRequest(key=b"/w/", range_end=b"/w0"), out,
                          committer.WatchStream())
        created = out.get_nowait()
        assert created.created and created.header.revision == rev - 1
        await asyncio.wait_for(svc.committer.durable(), 5)
        event = await asyncio.wait_for(out.get(), 5)
        assert [(e.kv.key, e.kv.mod_revision) for e in event.events] == [(b"/w/a", rev)]
    finally:
        await svc.committer.drain()
        state.close()

"""Watch progress, on the embedded server and on real etcd alike: a watch created with
progress_notify hears the current revision periodically (etcd's
--experimental-watch-progress-notify-interval), one without it hears nothing while quiet,
and a progress request is answered with the revision everything before has been sent for."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

INTERVAL = "300ms"


@pytest.fixture(params=["inproc", "etcd"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "inproc":
        from overlay.store.embedded.server import EmbeddedServer

        server = EmbeddedServer(tmp_path / "store", "127.0.0.1", 0, progress_interval=0.3)
        await server.start()
        try:
            yield server.endpoint
        finally:
            await server.stop()
        return
    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server (make deps installs it)")
    from overlay.store.embedded.launch import start_etcd

    proc = start_etcd(tmp_path / "etcd", extra=(
        f"--experimental-watch-progress-notify-interval={INTERVAL}",))
    try:
        yield proc.endpoint
    finally:
        proc.stop(kill=True)


class Watch:
    """One Watch stream, written to directly; responses are read by a task into a queue,
    because a timed-out read of the call itself would cancel the call."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch()
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        while (r := await self.call.read()) is not grpc.aio.EOF:
            self.got.put_nowait(r)

    async def send(self, **req: Any) -> None:
        await self.call.write(rpc_pb2.WatchRequest(**req))

    async def read(self, timeout: float = 3.0) -> Any:
        return await asyncio.wait_for(self.got.get(), timeout)

    def close(self) -> None:
        self.reader.cancel()
        self.call.cancel()


async def test_progress_notify_and_request(url: str) -> None:
    async with grpc.aio.insecure_channel(url.split("://", 1)[-1]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        rev = (await kv.Put(rpc_pb2.PutRequest(key=b"/progress/a", value=b"1"))).header.revision
        notified, quiet = Watch(ch), Watch(ch)
        await notified.send(create_request=rpc_pb2.WatchCreateRequest(
            key=b"/progress/", range_end=b"/progress0", progress_notify=True))
        await quiet.send(create_request=rpc_pb2.WatchCreateRequest(
            key=b"/progress/", range_end=b"/progress0"))
        created = await notified.read()
        assert created.created
        assert (await quiet.read()).created

        progress = await notified.read()  # within an interval or two, with no events
        assert not progress.events and not progress.created and not progress.canceled
        assert progress.watch_id == created.watch_id
        assert progress.header.revision == rev

        with pytest.raises(TimeoutError):  # no progress_notify: nothing while quiet
            await quiet.read(timeout=1.0)

        rev2 = (await kv.Put(rpc_pb2.PutRequest(key=b"/progress/a", value=b"2"))
                ).header.revision
        ev = await quiet.read()
        assert [e.kv.mod_revision for e in ev.events] == [rev2]
        await quiet.send(progress_request=rpc_pb2.WatchProgressRequest())
        got = await quiet.read()
        assert not got.events and got.header.revision == rev2
        while True:  # the notified watcher: the event, then progress at the new revision
            r = await notified.read()
            if not r.events and r.header.revision == rev2:
                break
        notified.close()
        quiet.close()

"""Contract-suite fixtures: one ``Subject`` per store kind, each with its own key space.

Kinds: ``memory`` (MemoryStore on a fake clock), ``inproc`` (the embedded server
in this event loop, fresh per test), ``process`` (``weftctl store serve``, one
per module) and ``etcd`` (Debian's etcd, one per module, so compactions here do
not touch the session etcd other areas use).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlay.store.api import Store, StoreConfig
from overlay.store.embedded.launch import StoreProcess, start_embedded, start_etcd
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock

KINDS = ["memory", "inproc", "process", "etcd"]
_seq = itertools.count()


@dataclass
class Subject:
    kind: str
    store: Store
    prefix: bytes
    clock: FakeClock | None = None

    def key(self, name: str | bytes) -> bytes:
        return self.prefix + (name.encode() if isinstance(name, str) else name)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: on the fake clock for memory, really for servers."""
        if self.clock is not None and isinstance(self.store, MemoryStore):
            self.clock.advance(seconds)
            self.store.expire_leases()
        else:
            await asyncio.sleep(seconds)

    async def compact(self, revision: int) -> None:
        await self.store.compact(revision)  # type: ignore[attr-defined]

    async def revision(self) -> int:
        return (await self.store.list(self.prefix)).revision


def _served(start: Callable[..., StoreProcess], tmp: Path, log: str) -> Iterator[str]:
    """A store process from ``start`` on a random loopback port: its URL, then stopped."""
    proc = start(tmp / "data", log=tmp / log)
    try:
        yield proc.endpoint
    finally:
        proc.stop(kill=True)


@pytest.fixture(scope="module")
def process_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _served(start_embedded, tmp_path_factory.mktemp("contract-embedded"), "store.log")


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server (make deps installs it)")
    yield from _served(start_etcd, tmp_path_factory.mktemp("contract-etcd"), "etcd.log")


async def open_subject(kind: str, request: pytest.FixtureRequest,
                       tmp_path: Path) -> AsyncIterator[Subject]:
    from overlay.store.client import connect

    prefix = f"/contract/{request.node.name}/{next(_seq)}/".encode()
    if kind == "memory":
        clock = FakeClock()
        mem = MemoryStore(clock)
        yield Subject(kind, mem, prefix, clock)
        await mem.close()
        return
    server = None
    if kind == "inproc":
        from overlay.store.embedded.server import EmbeddedServer

        server = EmbeddedServer(tmp_path / "store", "127.0.0.1", 0)
        await server.start()
        url = server.endpoint
    else:
        url = request.getfixturevalue("process_url" if kind == "process" else "etcd_url")
    store = await connect(StoreConfig((url,)))
    try:
        yield Subject(kind, store, prefix)
    finally:
        await store.close()
        if server is not None:
            await server.stop()


@pytest.fixture(params=KINDS)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    async for s in open_subject(request.param, request, tmp_path):
        yield s

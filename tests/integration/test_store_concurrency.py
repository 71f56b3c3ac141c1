"""Concurrent writers (group commit on the embedded server): every write gets its own revision,
create-if-absent has exactly one winner, and a watcher sees every write once, in order."""

from __future__ import annotations

import asyncio
import uuid

from overlay.store.api import StoreConfig
from overlay.store.client import EtcdStore, connect

CLIENTS = 20
KEYS = 10


async def test_concurrent_creates_and_puts(store_endpoint: str) -> None:
    prefix = f"/conc/{uuid.uuid4().hex[:8]}/".encode()
    stores: list[EtcdStore] = [await connect(StoreConfig((store_endpoint,)))
                               for _ in range(CLIENTS)]
    try:
        base = (await stores[0].list(prefix)).revision
        seen: list[int] = []

        async def watch() -> None:
            async for batch in stores[0].watch(prefix, base + 1):
                seen.extend(e.kv.mod_revision for e in batch)
                if len(seen) >= KEYS + CLIENTS * KEYS:
                    return

        watcher = asyncio.create_task(watch())

        async def creator(s: EtcdStore) -> list[int | None]:
            return [await s.create(prefix + b"k%d" % i, b"x") for i in range(KEYS)]

        results = await asyncio.gather(*(creator(s) for s in stores))
        wins = [r for res in results for r in res if r is not None]
        assert len(wins) == KEYS, "exactly one create per key succeeds"

        async def putter(k: int, s: EtcdStore) -> list[int]:
            return [await s.put(prefix + b"p%d-%d" % (k, i), b"v") for i in range(KEYS)]

        revs = [r for res in await asyncio.gather(*(putter(k, s) for k, s in enumerate(stores)))
                for r in res]
        every = sorted(wins + revs)
        # (the session's store is shared: other tests' lease expiries may take revisions too)
        assert len(set(every)) == len(every) and every[0] > base, \
            "each write takes a revision of its own"
        await asyncio.wait_for(watcher, 20)
        assert seen == every, "the watcher sees every write once, in revision order"
    finally:
        for s in stores:
            await s.close()

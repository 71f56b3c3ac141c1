"""The watch-fed index over MemoryStore: initial listing, live updates, compaction
re-list, lease TTLs from a fake clock, and answering from the index while the store
is unreachable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from dnsd.engine import Engine, EngineConfig
from dnsd.feed import PROBE_FAILURES, Feed
from dnsd.index import Index
from dnsd.keys import split_name
from dnsd.message import Question, Rcode, RType
from overlay.store.api import CompactedError, Store, StoreUnavailableError
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock

ENGINE = Engine(EngineConfig())


def _a(index: Index, name: str, now: float = 0.0) -> tuple[Rcode, list[str]]:
    ans = ENGINE.resolve(index, Question(split_name(name), RType.A), now)
    return ans.rcode, [str(r) for r in ans.answer]


async def _until(cond: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Flaky(MemoryStore):
    """MemoryStore whose reads fail while ``down`` is set (the feed's probe notices)."""

    down = False

    async def get(self, key: bytes):  # type: ignore[no-untyped-def]
        if self.down:
            raise StoreUnavailableError("store down (test)")
        return await super().get(key)

    async def close(self) -> None:  # shared across sessions in this test
        pass


def _feed(store: Store, clock: FakeClock | None = None, probe: float = 5.0,
          connect_ok: Callable[[], bool] = lambda: True) -> tuple[Feed, Index, list[int]]:
    index = Index()
    changes: list[int] = []

    async def connect() -> Store:
        if not connect_ok():
            raise StoreUnavailableError("refused (test)")
        return store

    feed = Feed(connect, index, threading.Lock(), lambda: changes.append(1), clock=clock,
                probe_interval=probe, max_backoff=0.05)
    return feed, index, changes


async def test_list_then_follow_the_watch() -> None:
    store = MemoryStore()
    await store.put(b"/skydns/local/skydns/a", b'{"host":"10.0.0.1"}')
    await store.put(b"/other/key", b"x")
    feed, index, changes = _feed(store)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.synced_event.wait(), 2)
        assert _a(index, "a.skydns.local.")[1] == ["a.skydns.local. 3600 A 10.0.0.1"]
        await store.put(b"/skydns/local/skydns/a", b'{"host":"10.0.0.2"}')
        await _until(lambda: _a(index, "a.skydns.local.")[1] == [
            "a.skydns.local. 3600 A 10.0.0.2"], "the update")
        await store.delete(b"/skydns/local/skydns/a")
        await _until(lambda: _a(index, "a.skydns.local.")[0] == Rcode.NXDOMAIN, "the delete")
        assert len(changes) >= 3 and index.size == 0
    finally:
        task.cancel()


async def test_compacted_watch_relists() -> None:
    store = MemoryStore()
    await store.put(b"/skydns/local/skydns/a", b'{"host":"10.0.0.1"}')
    feed, index, _ = _feed(store)
    index.load(await store.list(b"/skydns/"))
    # the feed falls behind: the history it would resume from is compacted away
    for i in range(5):
        await store.put(b"/skydns/local/skydns/b", f'{{"host":"10.0.1.{i}"}}'.encode())
    await store.compact(store.revision)
    with pytest.raises(CompactedError):
        await asyncio.wait_for(feed._follow(store), 2)
    # _sync's answer to that is a fresh listing, after which the watch resumes
    task = asyncio.create_task(feed._sync(store))
    try:
        await _until(lambda: _a(index, "b.skydns.local.")[1] == [
            "b.skydns.local. 3600 A 10.0.1.4"], "the re-list")
        await store.put(b"/skydns/local/skydns/c", b'{"host":"10.0.2.1"}')
        await _until(lambda: index.exists(("local", "skydns", "c")), "the watch after it")
    finally:
        task.cancel()


async def test_lease_ttl_from_the_clock_then_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    lease = await store.grant(100)
    await store.put(b"/skydns/local/skydns/l", b'{"host":"10.0.0.9"}', lease)
    feed, index, _ = _feed(store, clock)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.synced_event.wait(), 2)
        assert _a(index, "l.skydns.local.", clock.monotonic())[1] == [
            "l.skydns.local. 100 A 10.0.0.9"]
        clock.advance(40)
        assert _a(index, "l.skydns.local.", clock.monotonic())[1] == [
            "l.skydns.local. 60 A 10.0.0.9"]
        clock.advance(61)
        store.expire_leases()
        await _until(lambda: _a(index, "l.skydns.local.")[0] == Rcode.NXDOMAIN,
                     "the record to go with its lease")
    finally:
        task.cancel()


async def test_store_down_keeps_answering_and_reconnects() -> None:
    store = Flaky()
    await store.put(b"/skydns/local/skydns/a", b'{"host":"10.0.0.1"}')
    feed, index, _ = _feed(store, probe=0.02, connect_ok=lambda: not store.down)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.synced_event.wait(), 2)
        store.down = True
        await _until(lambda: not feed.status.connected, "the feed to notice the outage")
        assert "down" in feed.status.error or "refused" in feed.status.error
        assert _a(index, "a.skydns.local.")[1] == ["a.skydns.local. 3600 A 10.0.0.1"]
        await store.put(b"/skydns/local/skydns/b", b'{"host":"10.0.0.2"}')
        store.down = False
        await _until(lambda: feed.status.connected and index.exists(("local", "skydns", "b")),
                     "reconnect and catch up")
    finally:
        task.cancel()


async def test_a_cancel_landing_with_a_failed_probe_stops_the_feed() -> None:
    class CancelOnProbe(Flaky):
        """The probe's last failure cancels ``victim`` at the same moment."""

        victim: asyncio.Task[None] | None = None
        failures = 0

        async def get(self, key: bytes):  # type: ignore[no-untyped-def]
            if self.down:
                self.failures += 1
                if self.failures == PROBE_FAILURES and self.victim is not None:
                    self.victim.cancel()
            return await super().get(key)

    store = CancelOnProbe()
    feed, _, _ = _feed(store, probe=0.01)
    task = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(2):
            await feed.synced_event.wait()
        store.victim, store.down = task, True
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the feed took the failure for an outage and kept reconnecting"
        assert task.cancelled()
    finally:
        store.victim = None
        task.cancel()
        await asyncio.wait([task], timeout=5)


def test_bad_values_are_counted_not_fatal() -> None:
    from overlay.store.api import KeyValue, Listing

    index = Index()
    index.load(Listing((KeyValue(b"/skydns/local/skydns/x", b"{", 2, 2, 1),
                        KeyValue(b"/skydns/local/skydns/y", b'{"host":"10.0.0.1"}', 3, 3, 1)), 3))
    assert index.bad_values == 1 and index.size == 1


def test_deeply_nested_value_is_a_bad_value_not_a_feed_failure() -> None:
    from overlay.store.api import KeyValue, Listing

    index = Index()
    index.load(Listing((KeyValue(b"/skydns/local/skydns/x", b"[" * 100_000, 2, 2, 1),
                        KeyValue(b"/skydns/local/skydns/y", b'{"host":"10.0.0.1"}', 3, 3, 1)), 3))
    assert index.bad_values == 1 and index.size == 1


def test_skydns_config_key_is_not_a_record() -> None:
    """``/skydns/config`` holds SkyDNS's settings: neither a name nor a bad value."""
    from overlay.store.api import KeyValue, Listing

    index = Index()
    index.load(Listing((KeyValue(b"/skydns/config", b'{"domain": "x.", "ttl": "oops"}', 2, 2, 1),
                        KeyValue(b"/skydns/local/skydns/y", b'{"host":"10.0.0.1"}', 3, 3, 1)), 3))
    assert index.bad_values == 0 and index.size == 1
    assert _a(index, "config.")[0] is not Rcode.NOERROR or not _a(index, "config.")[1]

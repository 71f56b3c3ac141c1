"""MemoryStore specifics the contract suite cannot reach: the fake clock drives lease expiry."""

from __future__ import annotations

import asyncio

import pytest

from overlay.store.api import CompactedError, EventType, LeaseNotFoundError, ValueTooLargeError
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock


async def test_lease_expires_by_fake_clock_without_sleeping() -> None:
    clock = FakeClock()
    s = MemoryStore(clock)
    lease = await s.grant(10)
    await s.put(b"/a", b"1", lease)
    clock.advance(9.5)
    assert (await s.time_to_live(lease)).ttl == 0
    assert await s.get(b"/a") is not None
    clock.advance(0.5)
    assert await s.get(b"/a") is None
    assert (await s.time_to_live(lease)).ttl == -1
    with pytest.raises(LeaseNotFoundError):
        await s.keepalive(lease)


async def test_keepalive_pushes_expiry() -> None:
    clock = FakeClock()
    s = MemoryStore(clock)
    lease = await s.grant(5)
    await s.put(b"/a", b"1", lease)
    for _ in range(10):
        clock.advance(4)
        assert await s.keepalive(lease) == 5
    assert await s.get(b"/a") is not None


async def test_min_ttl_is_etcds() -> None:
    s = MemoryStore(FakeClock())
    lease = await s.grant(1)
    assert (await s.time_to_live(lease)).granted_ttl == 2


async def test_expiry_deletes_in_one_revision_and_watch_sees_it() -> None:
    clock = FakeClock()
    s = MemoryStore(clock)
    lease = await s.grant(3)
    await s.put(b"/p/a", b"1", lease)
    rev = await s.put(b"/p/b", b"2", lease)
    it = s.watch(b"/p/", rev + 1).__aiter__()
    clock.advance(3)
    batch = await asyncio.wait_for(it.__anext__(), 2)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in batch] == [
        (EventType.DELETE, b"/p/a", rev + 1),
        (EventType.DELETE, b"/p/b", rev + 1),
    ]
    await it.aclose()  # type: ignore[attr-defined]


async def test_compacted_watch_and_list_raise() -> None:
    s = MemoryStore(FakeClock())
    for i in range(5):
        await s.put(b"/k", str(i).encode())
    await s.compact(4)
    with pytest.raises(CompactedError) as e:
        await s.list(b"/k", 3)
    assert e.value.compact_revision == 4
    assert (await s.list(b"/k", 4)).items[0].value == b"2"
    with pytest.raises(CompactedError):
        async for _ in s.watch(b"/k", 2):
            pass


async def test_too_large() -> None:
    s = MemoryStore(FakeClock())
    with pytest.raises(ValueTooLargeError):
        await s.put(b"/big", b"x" * (1 << 21))

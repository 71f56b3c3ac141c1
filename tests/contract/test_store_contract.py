"""The store contract: MemoryStore, the embedded server (in-process and as a process) and
real etcd must give the same observable results for every case here."""

from __future__ import annotations

import asyncio
import time

import pytest

from overlay.store.api import (
    CompactedError,
    Compare,
    LeaseNotFoundError,
    StoreError,
    TxnOp,
    ValueTooLargeError,
    WatchEvent,
)
from tests.contract.conftest import Subject


async def collect(s: Subject, start: int, n: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The first ``n`` events under the subject's prefix from ``start``."""
    out: list[WatchEvent] = []
    agen = s.store.watch(s.prefix, start)

    async def run() -> None:
        async for batch in agen:
            out.extend(batch)
            if len(out) >= n:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"{s.kind}: watch from {start} got {len(out)} of {n} events in {timeout}s")
    finally:
        await agen.aclose()  # type: ignore[attr-defined]
    return out


def shape(events: list[WatchEvent], base: int) -> list[tuple[str, bytes, int, bytes, bytes | None]]:
    """Events with revisions relative to ``base``, comparable across stores."""
    return [
        (e.type.value, e.kv.key.rsplit(b"/", 1)[-1], e.kv.mod_revision - base, e.kv.value,
         e.prev.value if e.prev else None)
        for e in events
    ]


async def test_put_get_revision_arithmetic(subject: Subject) -> None:
    s = subject
    base = await s.revision()
    r1 = await s.store.put(s.key("a"), b"1")
    assert r1 == base + 1
    kv = await s.store.get(s.key("a"))
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"1", r1, r1, 1, 0)
    r2 = await s.store.put(s.key("a"), b"2")
    assert r2 == r1 + 1
    kv = await s.store.get(s.key("a"))
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
    assert await s.store.get(s.key("missing")) is None
    assert await s.revision() == r2


async def test_create_only_if_absent(subject: Subject) -> None:
    s = subject
    r1 = await s.store.create(s.key("a"), b"first")
    assert r1 is not None
    assert await s.store.create(s.key("a"), b"second") is None
    assert await s.revision() == r1, "a failed compare must not bump the revision"
    kv = await s.store.get(s.key("a"))
    assert kv is not None and kv.value == b"first"


async def test_replace_is_compare_and_swap_on_mod_revision(subject: Subject) -> None:
    s = subject
    r1 = await s.store.put(s.key("a"), b"1")
    r2 = await s.store.replace(s.key("a"), b"2", r1)
    assert r2 == r1 + 1
    assert await s.store.replace(s.key("a"), b"3", r1) is None, "stale mod_revision"
    assert await s.revision() == r2
    r3 = await s.store.replace(s.key("new"), b"x", 0)
    assert r3 == r2 + 1, "mod_revision 0 means absent"
    kv = await s.store.get(s.key("a"))
    assert kv is not None and (kv.value, kv.version) == (b"2", 2)


async def test_txn_moves_keys_at_one_revision_only_when_every_compare_holds(
        subject: Subject) -> None:
    s = subject
    r1 = await s.store.put(s.key("lead"), b"me")
    r2 = await s.store.put(s.key("old"), b"u")
    guard = [Compare(s.key("lead"), "create", r1), Compare(s.key("old"), "mod", r2),
             Compare(s.key("new"), "create", 0), Compare(s.key("lead"), "value", b"me")]
    move = [TxnOp(s.key("old"), delete=True), TxnOp(s.key("new"), b"u")]
    assert await s.store.txn([*guard[:1], Compare(s.key("old"), "mod", r1)], move) is None
    assert await s.store.txn([Compare(s.key("lead"), "value", b"you")], move) is None
    assert await s.store.txn([Compare(s.key("absent"), "version", 1)], move) is None
    assert await s.revision() == r2, "a failed compare writes nothing"
    r3 = await s.store.txn(guard, move)
    assert r3 == r2 + 1, "both writes share one revision"
    assert await s.store.get(s.key("old")) is None
    kv = await s.store.get(s.key("new"))
    assert kv is not None and (kv.value, kv.create_revision) == (b"u", r3)
    assert await s.store.txn(guard, move) is None, "the compares no longer hold"
    lease = await s.store.grant(30)
    r4 = await s.store.txn([], [TxnOp(s.key("leased"), b"x", lease=lease)])
    kv = await s.store.get(s.key("leased"))
    assert r4 == r3 + 1 and kv is not None and kv.lease == lease
    await s.store.revoke(lease)


async def test_txn_refuses_what_etcd_refuses(subject: Subject) -> None:
    s = subject
    before = await s.revision()
    for ops in ([TxnOp(s.key("a"), delete=True), TxnOp(s.key("a"), b"1")],
                [TxnOp(s.key("b"), b"1"), TxnOp(s.key("b"), b"2")],
                [TxnOp(s.key(f"m{i}"), b"1") for i in range(129)]):
        with pytest.raises(StoreError, match=r"duplicate key|too many operations"):
            await s.store.txn([], ops)
    assert await s.revision() == before and (await s.store.list(s.prefix)).items == ()


async def test_delete_single_and_prefix(subject: Subject) -> None:
    s = subject
    for name in ("d/1", "d/2", "d/3", "e"):
        await s.store.put(s.key(name), b"v")
    rev = await s.revision()
    assert await s.store.delete(s.key("nothing")) == 0
    assert await s.revision() == rev, "deleting nothing must not bump the revision"
    assert await s.store.delete(s.key("e")) == 1
    assert await s.store.delete(s.key("d/"), prefix=True) == 3
    assert await s.revision() == rev + 2, "a prefix delete is one revision"
    assert (await s.store.list(s.prefix)).items == ()


async def test_list_prefix_sorted_and_at_revision(subject: Subject) -> None:
    s = subject
    await s.store.put(s.key("b"), b"1")
    r_a = await s.store.put(s.key("a"), b"1")
    await s.store.put(s.key("a"), b"2")
    await s.store.put(s.prefix[:-1] + b"x/outside", b"no")  # sibling, not under the prefix
    now = await s.store.list(s.prefix)
    assert [(kv.key, kv.value) for kv in now.items] == [(s.key("a"), b"2"), (s.key("b"), b"1")]
    assert now.revision == await s.revision()
    old = await s.store.list(s.prefix, r_a)
    assert [(kv.key, kv.value) for kv in old.items] == [(s.key("a"), b"1"), (s.key("b"), b"1")]
    # etcd reads any revision <= 0 as the latest
    assert (await s.store.list(s.prefix, -1)).items == now.items
    await s.store.delete(s.key("b"))
    assert [kv.key for kv in (await s.store.list(s.prefix, r_a)).items] == [
        s.key("a"), s.key("b")]


async def test_binary_keys_and_values_round_trip(subject: Subject) -> None:
    s = subject
    key = s.key(b"\xff\xfe\x00bin")
    value = bytes(range(256))
    await s.store.put(key, value)
    kv = await s.store.get(key)
    assert kv is not None and kv.value == value
    assert [kv.key for kv in (await s.store.list(s.key(b"\xff"))).items] == [key]


async def test_too_large_value(subject: Subject) -> None:
    s = subject
    with pytest.raises(ValueTooLargeError):
        await s.store.put(s.key("big"), b"x" * (1536 * 1024 + 1))
    assert await s.store.get(s.key("big")) is None


async def test_lease_lifecycle(subject: Subject) -> None:
    s = subject
    lease = await s.store.grant(30)
    info = await s.store.time_to_live(lease)
    assert info.granted_ttl == 30 and info.ttl in (29, 30)
    await s.store.put(s.key("a"), b"v", lease)
    await s.store.put(s.key("b"), b"v", lease)
    kv = await s.store.get(s.key("a"))
    assert kv is not None and kv.lease == lease
    assert (await s.store.time_to_live(lease)).keys == (s.key("a"), s.key("b"))
    assert await s.store.keepalive(lease) == 30
    rev = await s.revision()
    await s.store.revoke(lease)
    assert await s.store.get(s.key("a")) is None
    assert await s.revision() == rev + 1, "revoking deletes the lease's keys in one revision"
    assert (await s.store.time_to_live(lease)).ttl == -1
    with pytest.raises(LeaseNotFoundError):
        await s.store.revoke(lease)
    with pytest.raises(LeaseNotFoundError):
        await s.store.keepalive(lease)
    with pytest.raises(LeaseNotFoundError):
        await s.store.put(s.key("c"), b"v", lease)


async def test_lease_minimum_ttl_is_etcds(subject: Subject) -> None:
    lease = await subject.store.grant(1)
    assert (await subject.store.time_to_live(lease)).granted_ttl == 2
    await subject.store.revoke(lease)


async def test_lease_expiry_deletes_keys(subject: Subject) -> None:
    s = subject
    lease = await s.store.grant(2)
    keep = await s.store.grant(60)
    await s.store.put(s.key("short"), b"v", lease)
    await s.store.put(s.key("long"), b"v", keep)
    start = await s.revision() + 1
    await s.advance(2.0)
    deadline = time.monotonic() + 5
    while await s.store.get(s.key("short")) is not None:
        assert time.monotonic() < deadline, f"{s.kind}: lease not expired 7 s after grant(2)"
        await s.advance(0.1)
    assert await s.store.get(s.key("long")) is not None
    assert (await s.store.time_to_live(lease)).ttl == -1
    events = await collect(s, start, 1)
    assert shape(events, start - 1) == [("delete", b"short", 1, b"", b"v")]
    await s.store.revoke(keep)


async def test_watch_replays_then_follows_in_order(subject: Subject) -> None:
    s = subject
    base = await s.revision()
    await s.store.put(s.key("a"), b"1")
    await s.store.put(s.key("b"), b"1")
    await s.store.put(s.key("a"), b"2")

    async def more() -> None:
        await asyncio.sleep(0.05)
        await s.store.delete(s.key("a"))
        await s.store.put(s.prefix[:-1] + b"-sibling", b"not mine")
        await s.store.create(s.key("c"), b"1")
        await s.store.delete(s.prefix, prefix=True)

    task = asyncio.create_task(more())
    events = await collect(s, base + 1, 7)
    await task
    assert shape(events, base) == [
        ("put", b"a", 1, b"1", None),
        ("put", b"b", 2, b"1", None),
        ("put", b"a", 3, b"2", b"1"),
        ("delete", b"a", 4, b"", b"2"),
        ("put", b"c", 6, b"1", None),
        ("delete", b"b", 7, b"", b"1"),
        ("delete", b"c", 7, b"", b"1"),
    ]
    assert events[0].kv.create_revision == base + 1 and events[2].kv.version == 2


async def test_watch_from_a_future_revision_skips_what_comes_before(subject: Subject) -> None:
    s = subject
    base = await s.revision()

    async def writes() -> None:
        await asyncio.sleep(0.05)
        for v in (b"1", b"2", b"3"):
            await s.store.put(s.key("a"), v)

    task = asyncio.create_task(writes())
    events = await collect(s, base + 2, 2)
    await task
    assert shape(events, base) == [("put", b"a", 2, b"2", b"1"), ("put", b"a", 3, b"3", b"2")]


async def test_compaction_errors(subject: Subject) -> None:
    s = subject
    r1 = await s.store.put(s.key("k"), b"1")
    r2 = await s.store.put(s.key("k"), b"2")
    r3 = await s.store.put(s.key("k"), b"3")
    await s.compact(r2)
    with pytest.raises(CompactedError) as e:
        await s.store.list(s.prefix, r1)
    assert e.value.compact_revision == r2
    assert [kv.value for kv in (await s.store.list(s.prefix, r2)).items] == [b"2"]
    with pytest.raises(CompactedError) as e:
        await collect(s, r1, 1)
    assert e.value.compact_revision == r2
    events = await collect(s, r3, 1)
    assert shape(events, r3) == [("put", b"k", 0, b"3", b"2")]
    with pytest.raises(CompactedError):
        await s.compact(r1)

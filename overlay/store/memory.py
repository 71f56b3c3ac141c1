"""MemoryStore: an in-process implementation of the store contract, for pure-core tests.

It follows etcd's observable behaviour (checked by the contract suite in
tests/contract/): the store-wide revision starts at 1 and every write bumps it
by one (a transaction's writes share one revision); deletes that match nothing
and failed compares do not bump it; watches replay history from
``start_revision`` (inclusive) and raise ``CompactedError`` for a compacted
start; leases are granted with etcd's minimum TTL of 2 s and expire by the
injected ``Clock``, deleting their keys in one revision.

Lease expiry is checked lazily, at the start of every operation and, for open
watches, by a short poll; tests advance a ``FakeClock`` and then call
``expire_leases()`` (or any operation) to see the deletions.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from overlay.clock import Clock, SystemClock
from overlay.store.api import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    LeaseInfo,
    LeaseNotFoundError,
    Listing,
    Store,
    StoreError,
    TxnOp,
    ValueTooLargeError,
    WatchEvent,
)
from overlay.store.mvcc import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MIN_LEASE_TTL,
    FutureRevisionError,
    History,
    compact_image,
    next_kv,
    tombstone,
    value_at,
)

_WATCH_POLL_S = 0.05


@dataclass(slots=True)
class _Lease:
    id: int
    granted_ttl: int
    expires_at: float
    keys: set[bytes] = field(default_factory=set)


class MemoryStore:
    """An etcd-shaped store living in this process (see the module docstring)."""

    def __init__(self, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random(0x57EF7)
        self._revision = 1
        self._compact_revision = 0
        # key -> [(revision, kv or None for a deletion)], oldest first
        self._history: dict[bytes, History] = {}
        # revision -> events of that revision, for watch replay
        self._events: dict[int, list[WatchEvent]] = {}
        self._leases: dict[int, _Lease] = {}
        self._watchers: set[asyncio.Queue[tuple[int, list[WatchEvent]]]] = set()
        self._closed = False

    # -- helpers --------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current store revision."""
        return self._revision

    def _current(self, key: bytes) -> KeyValue | None:
        hist = self._history.get(key)
        return hist[-1][1] if hist else None

    def _check_size(self, key: bytes, value: bytes) -> None:
        if len(key) + len(value) > MAX_REQUEST_BYTES:
            raise ValueTooLargeError(key)

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self._leases:
            raise LeaseNotFoundError(lease)

    def _apply_put(self, rev: int, key: bytes, value: bytes, lease: int) -> WatchEvent:
        prev = self._current(key)
        if prev is not None and prev.lease and prev.lease != lease:
            old = self._leases.get(prev.lease)
            if old:
                old.keys.discard(key)
        kv = next_kv(prev, key, value, rev, lease)
        self._history.setdefault(key, []).append((rev, kv))
        if lease:
            self._leases[lease].keys.add(key)
        return WatchEvent(EventType.PUT, kv, prev)

    def _apply_delete(self, rev: int, key: bytes) -> WatchEvent | None:
        prev = self._current(key)
        if prev is None:
            return None
        if prev.lease and prev.lease in self._leases:
            self._leases[prev.lease].keys.discard(key)
        self._history[key].append((rev, None))
        return WatchEvent(EventType.DELETE, tombstone(key, rev), prev)

    def _commit(self, rev: int, events: builtins.list[WatchEvent]) -> None:
        if not events:
            return
        self._revision = rev
        self._events[rev] = events
        for q in self._watchers:
            q.put_nowait((rev, events))

    def _prefix_keys(self, prefix: bytes) -> builtins.list[bytes]:
        return sorted(k for k in self._history if k.startswith(prefix))

    def expire_leases(self) -> int:
        """Revoke every lease whose TTL ran out by the clock; returns how many."""
        now = self._clock.monotonic()
        due = [lid for lid, le in self._leases.items() if le.expires_at <= now]
        for lid in due:
            self._revoke(lid)
        return len(due)

    def _revoke(self, lease: int) -> None:
        le = self._leases.pop(lease)
        rev = self._revision + 1
        events = [ev for k in sorted(le.keys) if (ev := self._apply_delete(rev, k))]
        self._commit(rev, events)

    def _enter(self) -> None:
        if self._closed:
            raise StoreError("store closed")
        self.expire_leases()

    # -- KV -------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        self._enter()
        return self._current(key)

    async def list(self, prefix: bytes, revision: int = 0) -> Listing:
        self._enter()
        # as etcd: any revision <= 0 is the latest
        if 0 < revision < self._compact_revision:
            raise CompactedError(self._compact_revision)
        if revision > self._revision:
            raise FutureRevisionError(revision, self._revision)
        at = revision if revision > 0 else self._revision
        items: builtins.list[KeyValue] = []
        for k in self._prefix_keys(prefix):
            if (kv := value_at(self._history[k], at)) is not None:
                items.append(kv)
        return Listing(tuple(items), self._revision)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        self._enter()
        self._check_size(key, value)
        self._check_lease(lease)
        rev = self._revision + 1
        self._commit(rev, [self._apply_put(rev, key, value, lease)])
        return rev

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> int | None:
        self._enter()
        self._check_size(key, value)
        if self._current(key) is not None:
            return None
        self._check_lease(lease)
        rev = self._revision + 1
        self._commit(rev, [self._apply_put(rev, key, value, lease)])
        return rev

    async def replace(
        self, key: bytes, value: bytes, mod_revision: int, lease: int = 0
    ) -> int | None:
        self._enter()
        self._check_size(key, value)
        cur = self._current(key)
        if (cur.mod_revision if cur else 0) != mod_revision:
            return None
        self._check_lease(lease)
        rev = self._revision + 1
        self._commit(rev, [self._apply_put(rev, key, value, lease)])
        return rev

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        self._enter()
        keys = self._prefix_keys(key) if prefix else [key]
        rev = self._revision + 1
        events = [ev for k in keys if (ev := self._apply_delete(rev, k))]
        self._commit(rev, events)
        return len(events)

    def _holds(self, c: Compare) -> bool:
        cur = self._current(c.key)
        if c.target == "value":
            return cur is not None and cur.value == c.expect
        got = 0 if cur is None else {"version": cur.version, "create": cur.create_revision,
                                     "mod": cur.mod_revision}[c.target]
        return got == c.expect

    async def txn(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> int | None:
        self._enter()
        if max(len(compares), len(ops)) > MAX_TXN_OPS:
            raise StoreError("too many operations in txn request")  # as etcd
        if len({op.key for op in ops}) < len(ops):
            raise StoreError("duplicate key given in txn request")  # as etcd
        for op in ops:
            if not op.delete:
                self._check_size(op.key, op.value)
                self._check_lease(op.lease)
        if not all(self._holds(c) for c in compares):
            return None
        rev = self._revision + 1
        events: builtins.list[WatchEvent] = []
        for op in ops:
            if op.delete:
                if (ev := self._apply_delete(rev, op.key)) is not None:
                    events.append(ev)
            else:
                events.append(self._apply_put(rev, op.key, op.value, op.lease))
        self._commit(rev, events)
        return self._revision

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (etcd's Compact)."""
        self._enter()
        compact_image(self._history, self._events, revision, self._revision,
                      self._compact_revision)
        self._compact_revision = revision

    async def watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[builtins.list[WatchEvent]]:
        self._enter()
        if start_revision and start_revision < self._compact_revision:
            raise CompactedError(self._compact_revision)
        q: asyncio.Queue[tuple[int, builtins.list[WatchEvent]]] = asyncio.Queue()
        self._watchers.add(q)
        try:
            last = self._revision
            if start_revision:
                for rev in sorted(r for r in self._events if r >= start_revision):
                    batch = [e for e in self._events[rev] if e.kv.key.startswith(prefix)]
                    if batch:
                        yield batch
            while True:
                try:
                    # not asyncio.wait_for: on 3.11 it returns the item and drops a cancel
                    # that lands as the item arrives (a cancelled watcher kept watching:
                    # the scheduler engine test hung ~1 run in 50 under load)
                    async with asyncio.timeout(_WATCH_POLL_S):
                        rev, events = await q.get()
                except TimeoutError:
                    self.expire_leases()
                    continue
                if (rev <= last and start_revision) or rev < start_revision:
                    continue  # replayed above, or before a start still in the future
                batch = [e for e in events if e.kv.key.startswith(prefix)]
                if batch:
                    yield batch
        finally:
            self._watchers.discard(q)

    # -- leases ---------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        self._enter()
        if ttl > MAX_LEASE_TTL:
            raise StoreError(f"lease TTL {ttl} too large")
        ttl = max(ttl, MIN_LEASE_TTL)
        lid = self._rng.randrange(1, 1 << 63)
        while lid in self._leases:
            lid = self._rng.randrange(1, 1 << 63)
        self._leases[lid] = _Lease(lid, ttl, self._clock.monotonic() + ttl)
        return lid

    async def keepalive(self, lease: int) -> int:
        self._enter()
        le = self._leases.get(lease)
        if le is None:
            raise LeaseNotFoundError(lease)
        le.expires_at = self._clock.monotonic() + le.granted_ttl
        return le.granted_ttl

    async def revoke(self, lease: int) -> None:
        self._enter()
        if lease not in self._leases:
            raise LeaseNotFoundError(lease)
        self._revoke(lease)

    async def time_to_live(self, lease: int) -> LeaseInfo:
        self._enter()
        le = self._leases.get(lease)
        if le is None:
            return LeaseInfo(lease, -1, 0)
        remaining = max(0.0, le.expires_at - self._clock.monotonic())
        return LeaseInfo(lease, math.floor(remaining), le.granted_ttl, tuple(sorted(le.keys)))

    async def close(self) -> None:
        self._closed = True


_: Store = MemoryStore()

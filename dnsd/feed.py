"""Keeps the index in step with the store: list once, follow the watch, re-list when needed.

Theory of operation. ``Feed.run`` loops forever: connect, list the prefix into
the index, watch from the listing's revision + 1 and apply each batch (under
the server lock, then invalidate the answer cache). A compacted watch re-lists;
a lost store marks the feed unhealthy, keeps the index as it is (dnsd goes on
answering from it) and reconnects with capped exponential backoff. Alongside
the watch, a probe task checks the store every ``probe_interval`` seconds and
refreshes the remaining TTL of every lease that owns a record, so the engine
computes TTLs from the clock instead of calling the store per query.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from overlay.clock import Clock, SystemClock
from overlay.store.api import CompactedError, LeaseNotFoundError, Store, StoreError

from .index import Index

log = logging.getLogger(__name__)

PROBE_FAILURES = 2


@dataclass(slots=True)
class FeedStatus:
    connected: bool = False
    synced: bool = False  # the index holds at least one full listing
    error: str = "not connected yet"
    down_since: float = 0.0
    relists: int = 0
    events: int = 0
    watch_lag: float = 0.0  # seconds from receiving the last batch to answering from it
    last_event: float = 0.0


class Feed:
    """Follows ``prefix`` in the store into ``index``."""

    def __init__(self, connect: Callable[[], Awaitable[Store]], index: Index,
                 lock: threading.Lock, on_change: Callable[[], None],
                 clock: Clock | None = None, probe_interval: float = 5.0,
                 max_backoff: float = 10.0) -> None:
        self._connect = connect
        self.index = index
        self.lock = lock
        self.on_change = on_change
        self.clock = clock or SystemClock()
        self.probe_interval = probe_interval
        self.max_backoff = max_backoff
        self.status = FeedStatus(down_since=self.clock.monotonic())
        self.prefix = (index.prefix + "/").encode()
        self.synced_event = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            store: Store | None = None
            try:
                store = await self._connect()
                self._up()
                backoff = 0.1
                await self._session(store)
            except (StoreError, OSError) as exc:
                self._down(str(exc) or type(exc).__name__)
            except Exception as exc:  # the feed's boundary: log, back off, retry
                log.exception("store feed failed")
                self._down(f"{type(exc).__name__}: {exc}")
            finally:
                if store is not None:
                    try:
                        await store.close()
                    except Exception:  # closing a dead channel may fail; nothing to do
                        log.debug("closing the store client failed", exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _up(self) -> None:
        if not self.status.connected:
            log.info("store reachable; syncing %s", self.prefix.decode())
        self.status.connected = True
        self.status.error = ""

    def _down(self, why: str) -> None:
        if self.status.connected or why != self.status.error:
            log.warning("store unreachable (%s); answering from the index (revision %s)",
                        why, self.index.revision)
            self.status.down_since = self.clock.monotonic()
        self.status.connected = False
        self.status.error = why

    async def _session(self, store: Store) -> None:
        """Follow until the watch or the probe fails; re-raise that failure.

        Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails drops a cancel of
        the feed landing at the same moment ("errors have priority"), and ``run`` would
        then take the failure for an outage and reconnect forever (dnsd never stopped).
        """
        children = [asyncio.create_task(self._sync(store)),
                    asyncio.create_task(self._probe(store))]
        try:  # the first failure ends the other
            done, _ = await asyncio.wait(children, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in children:
                t.cancel()
            await asyncio.wait(children)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    async def _sync(self, store: Store) -> None:
        while True:
            await self._load(store)
            try:
                await self._follow(store)
            except CompactedError as exc:
                log.info("watch compacted (%s); re-listing", exc)
                self.status.relists += 1

    async def _load(self, store: Store) -> None:
        listing = await store.list(self.prefix)
        with self.lock:
            self.index.load(listing)
            self.on_change()
        await self._fetch_leases(store, self.index.unknown_leases())
        self.status.synced = True
        self.synced_event.set()
        log.info("index loaded: %s records at revision %s (%s bad values)",
                 self.index.size, listing.revision, self.index.bad_values)

    async def _follow(self, store: Store) -> None:
        async for batch in store.watch(self.prefix, self.index.revision + 1):
            received = self.clock.monotonic()
            with self.lock:
                changed = self.index.apply(batch)
                if changed:
                    self.on_change()
            self.status.events += len(batch)
            self.status.last_event = received
            self.status.watch_lag = self.clock.monotonic() - received
            log.debug("applied %s events; index at revision %s", changed, self.index.revision)
            unknown = self.index.unknown_leases()
            if unknown:
                await self._fetch_leases(store, unknown)

    async def _fetch_leases(self, store: Store, leases: list[int]) -> None:
        for lease in leases:
            try:
                info = await store.time_to_live(lease)
            except LeaseNotFoundError:
                continue  # its keys' DELETE events are on their way
            now = self.clock.monotonic()
            if info.ttl >= 0:
                with self.lock:
                    self.index.set_lease(lease, float(info.ttl), now)
                    self.on_change()

    async def _probe(self, store: Store) -> None:
        """Check the store and refresh lease TTLs; give up after ``PROBE_FAILURES`` in a row.

        One slow answer on a loaded machine is not an outage (a dead connection is
        noticed sooner anyway: the watch stream fails).
        """
        failures = 0
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await store.get(self.prefix)
                await self._fetch_leases(store, self.index.leases())
            except StoreError as exc:
                failures += 1
                log.info("store probe failed (%s of %s): %s", failures, PROBE_FAILURES, exc)
                if failures >= PROBE_FAILURES:
                    raise
                continue
            failures = 0
            self._up()

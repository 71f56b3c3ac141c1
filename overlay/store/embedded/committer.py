"""The embedded store's commit path and watch fan-out (sans gRPC service logic).

Group commit: a write handler applies its change in memory, then awaits
``Committer.durable()``. The committer writes every change applied so far in
one SQLite transaction (one fsync), publishes the committed events to
watchers and only then releases the waiting handlers, which acknowledge.
A lone writer is committed inline (cheapest); when several wait, the fsync
runs in a worker thread and writes arriving meanwhile form the next batch.
Under a crowd (20 or more calls in flight at once within the last 0.1-0.2 s)
a write arriving right after a commit waits up to 2 ms for as many writers
as were recently in flight, so under 50 clients batches are ~15-20 writes
rather than ~1.5 and the per-commit cost (transaction, thread hop, wake-ups)
is shared; with fewer writers waiting would cost more than it saves.
Nothing is acknowledged or watched before it is on disk. A read that saw
writes still in flight waits for their commit before answering, so no
reader observes an undoable write.

``Watcher`` is one watch (its range, filters and output queue), ``WatchStream`` one
Watch stream's watchers; the committer publishes every committed revision's events
to the watchers whose range they fall in, as etcd's watchable store does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aetcd.rpc import kv_pb2, rpc_pb2

from overlay.store.api import EventType, KeyValue, StoreError, WatchEvent
from overlay.store.embedded.state import Batch, State
from overlay.store.mvcc import in_range

log = logging.getLogger("overlay.store.embedded.server")  # the server's log lines, as before

_BUSY_GAP_S = 0.00025  # a write this soon after the last commit means concurrent writers
# under a crowd a commit waits up to this long for as many writers as were recently
# in flight: one fsync and one thread hop then serve ~15-20 writes instead of ~1.5
# (50-client put/s 1.5-2x), while each of those writers already waits several ms in
# gRPC's queue
_BATCH_WINDOW_S = 0.002
_CROWD = 20  # calls in flight at once (recent peak) from which a commit waits for company
_PEAK_PERIOD_S = 0.1  # how recent


def pb_kv(kv: KeyValue) -> Any:
    return kv_pb2.KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)


def pb_event(ev: WatchEvent, prev_kv: bool) -> Any:
    if ev.type is EventType.PUT:
        m = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=pb_kv(ev.kv))
    else:
        m = kv_pb2.Event(type=kv_pb2.Event.DELETE,
                         kv=kv_pb2.KeyValue(key=ev.kv.key, mod_revision=ev.kv.mod_revision))
    if prev_kv and ev.prev is not None:
        m.prev_kv.CopyFrom(pb_kv(ev.prev))
    return m


@dataclass(slots=True, eq=False)
class Watcher:
    id: int
    key: bytes
    range_end: bytes
    prev_kv: bool
    no_put: bool
    no_delete: bool
    out: asyncio.Queue[Any]
    progress_notify: bool = False
    min_revision: int = 0  # a start revision still in the future: nothing before it

    def select(self, events: list[WatchEvent]) -> list[Any]:
        return [
            pb_event(e, self.prev_kv) for e in events
            if in_range(e.kv.key, self.key, self.range_end)
            and not (self.no_put and e.type is EventType.PUT)
            and not (self.no_delete and e.type is EventType.DELETE)
        ]


@dataclass(slots=True, eq=False)
class WatchStream:
    """One Watch stream's watchers. As in etcd, ids the server picks come from a counter
    that only goes up (skipping ids in use), so a canceled id is not handed out again."""

    watchers: dict[int, Watcher] = field(default_factory=dict)
    _next: int = 0

    def next_id(self) -> int:
        while self._next in self.watchers:
            self._next += 1
        self._next += 1
        return self._next - 1


class Committer:
    """Group commit: while one batch is being fsync'd (in a worker thread), every write
    applied meanwhile joins the next batch; a write is acknowledged after its batch."""

    def __init__(self, state: State, header: Any) -> None:
        self._state = state
        self._header = header
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._writing = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        self.watchers: set[Watcher] = set()
        self.broken: Exception | None = None
        # every revision up to this one is on disk and was sent to the watchers
        self.committed_revision = state.revision
        self.active_calls = 0  # unary RPCs being handled (kept by the registration shim)
        self._started = 0.0
        self._last_end = 0.0  # when the last commit finished
        self._window: asyncio.TimerHandle | None = None  # a commit waiting for company
        # peak of active_calls in this and the previous _PEAK_PERIOD_S: how many writers
        # a commit under load may wait for
        self._peak = self._peak_before = 0
        self._period_start = 0.0

    @property
    def busy(self) -> bool:
        """Writes are applied in memory but not yet durable."""
        return self._writing or self._scheduled or self._state.dirty

    @property
    def _expect(self) -> int:
        return max(self._peak, self._peak_before)

    def durable(self) -> Awaitable[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        if self.active_calls > self._peak:
            self._peak = self.active_calls
        if self._window is not None and len(self._waiters) >= self._expect:
            # as many as recently were in flight at once are in: no reason to wait longer
            self._window.cancel()
            self._window = None
            loop.call_soon(self._start)
        else:
            self.kick()
        return fut

    def kick(self) -> None:
        if not self._scheduled and not self._writing:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            expect = self._expect
            if (expect >= _CROWD and len(self._waiters) < expect
                    and time.monotonic() - self._last_end < _BUSY_GAP_S):
                self._window = loop.call_later(_BATCH_WINDOW_S, self._start)
            else:
                loop.call_soon(self._start)

    def _fail(self, waiters: list[asyncio.Future[None]], e: Exception) -> None:
        if self.broken is None:
            log.error("store: commit failed, refusing writes from now on: %s", e)
            self.broken = e
        for w in waiters:
            if not w.done():
                w.set_exception(StoreError(f"commit failed: {e}"))

    def _start(self) -> None:
        self._scheduled = False
        self._window = None
        waiters, self._waiters = self._waiters, []
        if self.broken is not None:
            self._fail(waiters, self.broken)
            return
        batch = self._state.take()
        if batch is None:
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        idle = now - self._last_end > _BUSY_GAP_S
        if len(waiters) <= 1 and self.active_calls <= 1 and idle:
            # a lone writer on an idle store (a sequential client needs far longer than
            # _BUSY_GAP_S to answer an ack with its next write): an inline fsync is
            # cheaper than two thread wake-ups. With company, the loop must keep
            # serving during the fsync so the next batch can form.
            try:
                self._state.write(batch)
            except Exception as e:
                self._done(None, e, batch, waiters)
            else:
                self._done(None, None, batch, waiters)
            return
        self._writing = True
        self._started = time.monotonic()
        fut = loop.run_in_executor(self._pool, self._state.write, batch)
        fut.add_done_callback(lambda f: self._done(f, None, batch, waiters))

    def _done(self, f: asyncio.Future[None] | None, error: BaseException | None, batch: Batch,
              waiters: list[asyncio.Future[None]]) -> None:
        self._writing = False
        self._last_end = now = time.monotonic()
        if now - self._period_start > _PEAK_PERIOD_S:
            self._period_start = now
            self._peak_before, self._peak = self._peak, 0
        if log.isEnabledFor(logging.DEBUG):
            log.debug("store: commit of %d write(s) (%s) in %.2f ms, %d in flight at peak",
                      len(waiters), "thread" if f is not None else "inline",
                      (time.monotonic() - self._started) * 1000 if f is not None else 0,
                      self._expect)
        exc = f.exception() if f is not None else error
        if exc is not None:
            self._fail(waiters + self._waiters, exc if isinstance(exc, Exception)
                       else RuntimeError(str(exc)))
            self._waiters = []
            return
        self.committed_revision = batch.revision
        for rev, events in self._state.finish(batch):
            header = self._header(rev)
            for watcher in list(self.watchers):
                if rev < watcher.min_revision:
                    continue
                selected = watcher.select(events)
                if selected:
                    watcher.out.put_nowait(rpc_pb2.WatchResponse(
                        header=header, watch_id=watcher.id, events=selected))
        for w in waiters:
            if not w.done():
                w.set_result(None)
        if self._state.auto_compact():
            log.info("store: compacted history before revision %d",
                     self._state.compact_revision)
        if self._waiters or self._state.dirty:
            self.kick()

    async def idle(self) -> None:
        """Return when no commit is running or due; none can start before the caller's
        next await, so it may use the database on the loop until then."""
        while self._writing or self._scheduled:
            await self.durable()

    def notify_progress(self) -> None:
        """etcd's progress notification: each watcher created with ``progress_notify``
        hears the committed revision (no events), so a quiet watch still learns how far
        it is up to date."""
        header = self._header(self.committed_revision)
        for w in self.watchers:
            if w.progress_notify:
                w.out.put_nowait(rpc_pb2.WatchResponse(header=header, watch_id=w.id))

    async def drain(self) -> None:
        """Wait until nothing is being written (before closing the state)."""
        if self._window is not None:  # no more company is coming
            self._window.cancel()
            self._window = None
            asyncio.get_running_loop().call_soon(self._start)
        while self._writing or self._scheduled:
            await asyncio.sleep(0.005)
        self._pool.shutdown(wait=True)

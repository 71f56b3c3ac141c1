"""The embedded store's state: a durable, revisioned key-value store with leases, on SQLite.

Theory of operation (sans-IO; the gRPC server in ``server.py`` drives it):

* Everything lives in memory for reads: the current value of every key, each
  key's history since the compaction point, and the events of every revision
  since then (for watch replay). SQLite (WAL mode, ``synchronous=FULL``) holds
  the same history as an append log plus the lease table, and is read only at
  start-up, where the memory image is rebuilt from it.
* Writes apply to memory at once and queue their log rows; ``commit()`` writes
  every queued row in one SQLite transaction (one fsync) and returns the events
  it made durable. The server acknowledges a write, and publishes its events to
  watchers, only after the commit that holds it (group commit: writes arriving
  in the same event-loop tick share one commit).
* Revisions follow etcd: the store starts at revision 1; each write request
  (put, delete that removed something, transaction with writes, lease
  revocation that deleted keys) takes the next revision; a transaction's writes
  share one. The revision is persisted, so it keeps rising across restarts.
* Leases run on the monotonic clock, as etcd's lessor does, so a step of the wall
  clock (NTP correcting a bad RTC) expires nothing; each is persisted with its
  wall-clock deadline, so a lease whose TTL ran out while the server was down is
  revoked at start-up, deleting its keys.
* ``compact(rev)`` drops history before ``rev`` (keeping each key's value as of
  ``rev``); ``auto_compact`` does it periodically keeping ``retain`` revisions.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import logging
import math
import os
import random
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overlay.clock import Clock, SystemClock
from overlay.store.api import (
    CompactedError,
    EventType,
    KeyValue,
    LeaseNotFoundError,
    StoreError,
    WatchEvent,
)
from overlay.store.mvcc import (
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    FutureRevisionError,
    History,
    compact_image,
    in_range,
    next_kv,
    tombstone,
    value_at,
)

log = logging.getLogger(__name__)

DEFAULT_RETAIN = 10_000


class LeaseExistsError(StoreError):
    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} already exists")
        self.lease = lease


class LeaseTTLTooLargeError(StoreError):
    def __init__(self, ttl: int) -> None:
        super().__init__(f"lease TTL {ttl} too large")
        self.ttl = ttl


class DuplicateKeyError(StoreError):
    def __init__(self, key: bytes) -> None:
        super().__init__(f"duplicate key {key!r} in txn")
        self.key = key


class KeyNotFoundError(StoreError):
    """ignore_value / ignore_lease on a key that does not exist."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"key {key!r} not found")
        self.key = key


# -- requests (already decoded from the wire) -----------------------------------


class Target(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class Result(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


@dataclass(frozen=True, slots=True)
class Compare:
    key: bytes
    target: Target
    result: Result
    operand: int | bytes
    range_end: bytes = b""


@dataclass(frozen=True, slots=True)
class RangeOp:
    key: bytes
    range_end: bytes = b""
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    sort_order: int = 0  # 0 none, 1 ascend, 2 descend
    sort_target: int = 0  # 0 key, 1 version, 2 create, 3 mod, 4 value
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutOp:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class TxnOp:
    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...]


Op = RangeOp | PutOp | DeleteOp | TxnOp


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


@dataclass(frozen=True, slots=True)
class PutResult:
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    prevs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    results: tuple[OpResult, ...]
    # per result, the revision its header reports: etcd's revision at that point of the
    # txn (the txn's start revision until something changed, then the txn's revision)
    revisions: tuple[int, ...] = ()


OpResult = RangeResult | PutResult | DeleteResult | TxnResult


@dataclass(frozen=True, slots=True)
class Batch:
    """Writes detached for one commit."""

    rows: list[tuple[int, int, bytes, bytes | None, int, int, int]]
    lease_rows: list[tuple[int, int, float]]
    lease_dels: list[int]
    compact_to: int
    compact_dels: list[tuple[int, bytes]]
    revision: int
    events: list[tuple[int, list[WatchEvent]]]


@dataclass(slots=True)
class LeaseState:
    id: int
    ttl: int
    deadline: float  # monotonic clock (the leases table holds the wall-clock time)
    keys: set[bytes] = field(default_factory=set)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER NOT NULL, sub INTEGER NOT NULL, key BLOB NOT NULL, value BLOB,
    create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,
    PRIMARY KEY (rev, sub)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, deadline REAL NOT NULL);
"""


def check_overlaps(ops: Sequence[Op]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's check of one Txn branch: a put may not hit a key another put or a delete of
    the branch touches, nested Txns included (a key put in both branches of one nested
    Txn is fine: only one runs). DuplicateKeyError if one does; else (puts, deletes)."""
    # etcd compares intervals as plain strings here, so a delete "to the end" (range_end
    # \0) is an empty interval that no put hits
    dels = [(o.key, o.range_end) for o in ops
            if isinstance(o, DeleteOp) and o.range_end != b"\0"]

    def deleted(key: bytes) -> bool:
        return any(in_range(key, start, end) for start, end in dels)

    puts: set[bytes] = set()
    for o in ops:
        if not isinstance(o, TxnOp):
            continue
        puts_then, dels_then = check_overlaps(o.success)
        puts_else, dels_else = check_overlaps(o.failure)
        for key in puts_then:
            if key in puts or deleted(key):
                raise DuplicateKeyError(key)
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or deleted(key):
                raise DuplicateKeyError(key)
            puts.add(key)
        dels += dels_then + dels_else  # later siblings and this level's puts see them
    for o in ops:
        if isinstance(o, PutOp):
            if o.key in puts or deleted(o.key):
                raise DuplicateKeyError(o.key)
            puts.add(o.key)
    return puts, dels


class State:
    """The durable store (see the module docstring). Not thread-safe: one owner."""

    def __init__(
        self,
        path: Path | str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        retain: int = DEFAULT_RETAIN,
    ) -> None:
        self.path = Path(path)
        clock = clock or SystemClock()
        self._mono = clock.monotonic  # running lease deadlines
        self._wall = clock.now  # persisted lease deadlines (they outlive the process)
        self._rng = rng or random.Random()
        self.retain = retain
        # the committer writes from one worker thread while this thread applies
        self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.revision = 1
        self.compact_revision = 0
        self._compacted_at_zero = False  # Compact(0) before any real compaction (etcd)
        self.member_id = 0
        self.cluster_id = 0
        self._keys: list[bytes] = []  # sorted live keys
        self._current: dict[bytes, KeyValue] = {}
        self._history: dict[bytes, History] = {}
        self._events: dict[int, list[WatchEvent]] = {}
        self.leases: dict[int, LeaseState] = {}
        self._rows: list[tuple[int, int, bytes, bytes | None, int, int, int]] = []
        self._lease_rows: list[tuple[int, int, float]] = []
        self._lease_dels: list[int] = []
        self._compact_to = 0
        self._compact_dels: list[tuple[int, bytes]] = []  # log rows compaction dropped
        self._uncommitted: list[int] = []  # revisions not yet taken for a commit
        self._inflight: set[int] = set()  # revisions taken, being written
        self._sub = 0
        self._load()

    # -- start-up ---------------------------------------------------------------

    def _meta(self, k: str) -> int | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else int(row[0])

    def _load(self) -> None:
        ids = self._meta("member_id")
        if ids is None:
            self.member_id = random.SystemRandom().randrange(1, 1 << 63)
            self.cluster_id = random.SystemRandom().randrange(1, 1 << 63)
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("member_id", self.member_id), ("cluster_id", self.cluster_id),
                ("revision", 1), ("compact_revision", 0)])
            self._db.execute("COMMIT")
        else:
            self.member_id = ids
            self.cluster_id = self._meta("cluster_id") or 1
        self.revision = self._meta("revision") or 1
        self.compact_revision = self._meta("compact_revision") or 0
        rows = self._db.execute(
            "SELECT rev, key, value, create_rev, version, lease FROM log ORDER BY rev, sub")
        for rev, key, value, create_rev, version, lease in rows:
            key = bytes(key)
            prev = self._current.get(key)
            if value is None:
                if prev is not None:
                    self._drop_current(key)
                ev = WatchEvent(EventType.DELETE, tombstone(key, rev), prev)
                self._history.setdefault(key, []).append((rev, None))
            else:
                kv = KeyValue(key, bytes(value), create_rev, rev, version, lease)
                self._set_current(kv)
                ev = WatchEvent(EventType.PUT, kv, prev)
                self._history.setdefault(key, []).append((rev, kv))
            self._events.setdefault(rev, []).append(ev)
            self.revision = max(self.revision, rev)
        offset = self._mono() - self._wall()  # wall-clock deadline -> monotonic one
        for lid, ttl, deadline in self._db.execute("SELECT id, ttl, deadline FROM leases"):
            self.leases[lid] = LeaseState(lid, ttl, deadline + offset)
        for kv in self._current.values():
            if kv.lease:
                le = self.leases.get(kv.lease)
                if le is not None:
                    le.keys.add(kv.key)
        expired = self.expire_leases()
        if expired:
            log.info("store: %d lease(s) expired while the server was down", expired)
        self.commit()

    # -- memory image -------------------------------------------------------------

    def _set_current(self, kv: KeyValue) -> None:
        if kv.key not in self._current:
            bisect.insort(self._keys, kv.key)
        self._current[kv.key] = kv

    def _drop_current(self, key: bytes) -> None:
        del self._current[key]
        i = bisect.bisect_left(self._keys, key)
        del self._keys[i]

    def _range_keys(self, start: bytes, end: bytes) -> list[bytes]:
        if not end:
            return [start] if start in self._current else []
        lo = bisect.bisect_left(self._keys, start)
        if end == b"\0":
            return self._keys[lo:]
        hi = bisect.bisect_left(self._keys, end)
        return self._keys[lo:hi]

    def _range_at(self, start: bytes, end: bytes, rev: int) -> list[KeyValue]:
        out: list[KeyValue] = []
        if not end:
            keys: Iterable[bytes] = [start] if start in self._history else []
        else:
            keys = sorted(k for k in self._history if in_range(k, start, end))
        for k in keys:
            if (kv := value_at(self._history[k], rev)) is not None:
                out.append(kv)
        return out

    # -- reads ------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        return self._current.get(key)

    @property
    def first_revision(self) -> int:
        """etcd's first kept revision (compactMainRev): -1 before any compaction, which
        is what a Txn's ranges and a Watch's start revision are checked against."""
        return self.compact_revision if self.compact_revision or self._compacted_at_zero \
            else -1

    def _check_range_revision(self, revision: int) -> None:
        """etcd's checks of a Range's ``revision``: any revision <= 0 means the latest."""
        if revision > self.revision:
            raise FutureRevisionError(revision, self.revision)
        if 0 < revision < self.compact_revision:
            raise CompactedError(self.compact_revision)

    def range(self, op: RangeOp) -> RangeResult:
        self._check_range_revision(op.revision)
        if 0 < op.revision < self.revision:
            kvs = self._range_at(op.key, op.range_end, op.revision)
        else:
            kvs = [self._current[k] for k in self._range_keys(op.key, op.range_end)]
        # etcd counts the range before its revision filters apply
        count = len(kvs)
        kvs = [kv for kv in kvs if _passes_filters(kv, op)]
        # etcd: a target other than the key sorts ascending unless told; an order it does
        # not know leaves the key order
        order = op.sort_order or (1 if op.sort_target else 0)
        if order in (1, 2):
            kvs.sort(key=_SORT_KEYS[op.sort_target], reverse=order == 2)
        more = op.limit > 0 and len(kvs) > op.limit  # a limit <= 0 is none
        if op.limit > 0:
            kvs = kvs[: op.limit]
        if op.count_only:
            return RangeResult((), count, False)
        if op.keys_only:
            kvs = [KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version,
                            kv.lease) for kv in kvs]
        return RangeResult(tuple(kvs), count, more)

    def events_since(self, start: int) -> list[tuple[int, list[WatchEvent]]]:
        """Every durable revision's events from ``start`` (CompactedError if gone)."""
        if start < self.first_revision:
            raise CompactedError(self.compact_revision)
        pending = set(self._uncommitted) | self._inflight
        return [(r, self._events[r]) for r in sorted(self._events)
                if r >= start and r not in pending]

    # -- writes -----------------------------------------------------------------

    def _check_put(self, op: PutOp) -> None:
        if (op.ignore_value or op.ignore_lease) and op.key not in self._current:
            raise KeyNotFoundError(op.key)
        if op.lease and not op.ignore_lease and op.lease not in self.leases:
            raise LeaseNotFoundError(op.lease)

    def _apply_put(self, rev: int, op: PutOp) -> PutResult:
        prev = self._current.get(op.key)
        value = prev.value if op.ignore_value and prev else op.value
        lease = prev.lease if op.ignore_lease and prev else op.lease
        if prev is not None and prev.lease and prev.lease != lease:
            old = self.leases.get(prev.lease)
            if old:
                old.keys.discard(op.key)
        kv = next_kv(prev, op.key, value, rev, lease)
        self._set_current(kv)
        self._history.setdefault(op.key, []).append((rev, kv))
        if lease:
            self.leases[lease].keys.add(op.key)
        self._record(rev, WatchEvent(EventType.PUT, kv, prev),
                     (rev, self._sub, op.key, value, kv.create_revision, kv.version, lease))
        return PutResult(prev if op.prev_kv else None)

    def _apply_delete(self, rev: int, op: DeleteOp) -> DeleteResult:
        keys = self._range_keys(op.key, op.range_end)
        prevs = []
        for k in keys:
            prev = self._current[k]
            if prev.lease and prev.lease in self.leases:
                self.leases[prev.lease].keys.discard(k)
            self._drop_current(k)
            self._history.setdefault(k, []).append((rev, None))
            self._record(rev, WatchEvent(EventType.DELETE, tombstone(k, rev), prev),
                         (rev, self._sub, k, None, 0, 0, 0))
            prevs.append(prev)
        return DeleteResult(len(keys), tuple(prevs) if op.prev_kv else ())

    def _record(self, rev: int, ev: WatchEvent,
                row: tuple[int, int, bytes, bytes | None, int, int, int]) -> None:
        self._rows.append(row)
        self._sub += 1
        self._events.setdefault(rev, []).append(ev)
        if not self._uncommitted or self._uncommitted[-1] != rev:
            self._uncommitted.append(rev)
        self.revision = rev

    def _begin(self) -> int:
        self._sub = 0
        return self.revision + 1

    def put(self, op: PutOp) -> tuple[int, PutResult]:
        self._check_put(op)
        rev = self._begin()
        res = self._apply_put(rev, op)
        return rev, res

    def delete(self, op: DeleteOp) -> tuple[int, DeleteResult]:
        rev = self._begin()
        res = self._apply_delete(rev, op)
        return self.revision, res

    def txn(self, op: TxnOp) -> tuple[int, TxnResult]:
        """etcd's Txn: both branches (and every nested Txn's) are checked for puts that
        overlap a put or a delete; every compare, nested ones included, is evaluated
        against the state before the Txn (etcd's txn path); the path taken is checked
        (leases, revisions) before anything applies, then applied."""
        check_overlaps(op.success)
        check_overlaps(op.failure)
        path = self._path(op)
        self._check_path(op, iter(path))
        res = self._run_path(self._begin(), op, iter(path))
        return self.revision, res

    def _path(self, op: TxnOp) -> list[bool]:
        """Each compare's outcome, for this Txn and then the nested Txns on its taken
        branch, depth first (etcd's compareToPath)."""
        ok = all(self._compare(c) for c in op.compare)
        out = [ok]
        for o in op.success if ok else op.failure:
            if isinstance(o, TxnOp):
                out.extend(self._path(o))
        return out

    def _check_path(self, op: TxnOp, path: Iterator[bool]) -> None:
        for o in op.success if next(path) else op.failure:
            if isinstance(o, PutOp):
                self._check_put(o)
            elif isinstance(o, RangeOp):
                # etcd checks a Txn's ranges against first_revision, so a negative
                # revision fails there once the store was compacted, unlike a Range's
                if o.revision > self.revision:
                    raise FutureRevisionError(o.revision, self.revision)
                if o.revision and o.revision < self.first_revision:
                    raise CompactedError(self.compact_revision)
            elif isinstance(o, TxnOp):
                self._check_path(o, path)

    def _run_path(self, rev: int, op: TxnOp, path: Iterator[bool]) -> TxnResult:
        ok = next(path)
        out: list[OpResult] = []
        revisions: list[int] = []
        for o in op.success if ok else op.failure:
            if isinstance(o, RangeOp):
                out.append(self.range(o))
            elif isinstance(o, PutOp):
                out.append(self._apply_put(rev, o))
            elif isinstance(o, DeleteOp):
                out.append(self._apply_delete(rev, o))
            else:
                out.append(self._run_path(rev, o, path))
            # etcd: the revision at this point of the txn (the one before it until it
            # changed something)
            revisions.append(self.revision)
        return TxnResult(ok, tuple(out), tuple(revisions))

    def _compare(self, c: Compare) -> bool:
        if c.range_end:
            kvs = [self._current[k] for k in self._range_keys(c.key, c.range_end)]
        else:
            one = self._current.get(c.key)
            kvs = [one] if one else []
        if not kvs:
            if c.target == Target.VALUE:
                return False
            kvs = [KeyValue(c.key, b"", 0, 0, 0, 0)]
        return all(_compare_kv(c, kv) for kv in kvs)

    def compact(self, revision: int) -> None:
        if revision == 0 and self.compact_revision == 0 and not self._compacted_at_zero:
            # etcd starts "compacted at -1": compacting to 0 once is accepted (a no-op)
            self._compacted_at_zero = True
            return
        self._compact_dels.extend(compact_image(self._history, self._events, revision,
                                                self.revision, self.compact_revision))
        self.compact_revision = revision
        self._compact_to = revision

    def auto_compact(self) -> int:
        """Compact so ``retain`` revisions stay; the new compaction point or 0."""
        target = self.revision - self.retain
        if target > self.compact_revision and target - self.compact_revision >= max(
            1, self.retain // 10
        ):
            self.compact(target)
            return target
        return 0

    # -- leases -----------------------------------------------------------------

    def grant(self, ttl: int, lease: int = 0) -> tuple[int, int]:
        """A new lease (id, ttl); ``lease`` asks for a specific id."""
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError(ttl)
        ttl = max(ttl, MIN_LEASE_TTL)
        if lease:
            if lease in self.leases:
                raise LeaseExistsError(lease)
        else:
            lease = self._rng.randrange(1, 1 << 63)
            while lease in self.leases:
                lease = self._rng.randrange(1, 1 << 63)
        le = LeaseState(lease, ttl, self._mono() + ttl)
        self.leases[lease] = le
        self._lease_rows.append((lease, ttl, self._persisted(le.deadline)))
        return lease, ttl

    def keepalive(self, lease: int) -> int:
        le = self.leases.get(lease)
        if le is None or le.deadline <= self._mono():
            raise LeaseNotFoundError(lease)
        le.deadline = self._mono() + le.ttl
        self._lease_rows.append((lease, le.ttl, self._persisted(le.deadline)))
        return le.ttl

    def revoke(self, lease: int) -> int:
        """Revoke ``lease`` and delete its keys; the revision after."""
        le = self.leases.pop(lease, None)
        if le is None:
            raise LeaseNotFoundError(lease)
        self._lease_dels.append(lease)
        rev = self._begin()
        for k in sorted(le.keys):
            self._apply_delete(rev, DeleteOp(k))
        return self.revision

    def time_to_live(self, lease: int) -> tuple[int, int, tuple[bytes, ...]]:
        """(remaining ttl, granted ttl, keys); ttl -1 when unknown."""
        le = self.leases.get(lease)
        if le is None:
            return -1, 0, ()
        remaining = max(0, math.floor(le.deadline - self._mono()))
        return remaining, le.ttl, tuple(sorted(le.keys))

    def _persisted(self, deadline: float) -> float:
        """The wall-clock time of the monotonic ``deadline`` (what the leases table holds)."""
        return deadline - self._mono() + self._wall()

    def next_expiry_in(self) -> float | None:
        """Seconds until the next lease runs out (None: no leases)."""
        first = min((le.deadline for le in self.leases.values()), default=None)
        return None if first is None else first - self._mono()

    def expire_leases(self) -> int:
        now = self._mono()
        due = [lid for lid, le in self.leases.items() if le.deadline <= now]
        for lid in due:
            log.debug("store: lease %x expired", lid)
            self.revoke(lid)
        return len(due)

    # -- durability ---------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._rows or self._lease_rows or self._lease_dels or self._compact_to)

    def commit(self) -> list[tuple[int, list[WatchEvent]]]:
        """Write everything queued in one transaction (fsync); the events made durable."""
        batch = self.take()
        if batch is None:
            return []
        self.write(batch)
        return self.finish(batch)

    def take(self) -> Batch | None:
        """Detach everything queued so far as one batch (the owner's thread)."""
        if not self.dirty:
            return None
        revs = list(self._uncommitted)
        batch = Batch(self._rows, self._lease_rows, self._lease_dels, self._compact_to,
                      self._compact_dels, self.revision,
                      [(r, self._events[r]) for r in revs if r in self._events])
        self._rows, self._lease_rows, self._lease_dels = [], [], []
        self._compact_to = 0
        self._compact_dels = []
        self._uncommitted = []
        self._inflight.update(revs)
        return batch

    def write(self, batch: Batch) -> None:
        """Make ``batch`` durable: one SQLite transaction, fsync'd. Safe in a worker thread
        while the owner keeps applying (and taking) later writes."""
        db = self._db
        db.execute("BEGIN")
        try:
            if batch.rows:
                db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", batch.rows)
            if batch.lease_rows:
                db.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                               batch.lease_rows)
            if batch.lease_dels:
                db.executemany("DELETE FROM leases WHERE id = ?",
                               [(x,) for x in batch.lease_dels])
            if batch.compact_to:
                c = batch.compact_to
                # the memory image knows exactly which rows compaction dropped; deleting
                # them by primary key spares every insert a secondary index
                db.executemany("DELETE FROM log WHERE rev = ? AND key = ?", batch.compact_dels)
                db.execute("UPDATE meta SET v = ? WHERE k = 'compact_revision'", (c,))
                # every revision writes a log row and compaction keeps rows >= c, so the
                # log's newest row carries the revision; meta holds it only as a floor
                db.execute("UPDATE meta SET v = ? WHERE k = 'revision'", (batch.revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def finish(self, batch: Batch) -> list[tuple[int, list[WatchEvent]]]:
        """After ``write``: the batch's events, now durable (the owner's thread)."""
        self._inflight.difference_update(r for r, _ in batch.events)
        return batch.events

    def db_size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(str(self.path) + suffix)
        return total

    def defragment(self) -> None:
        """Fold the WAL into the database file and rebuild it without free pages. Blocks;
        only while no ``write`` runs (the committer is idle)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")

    def close(self) -> None:
        self._db.close()


def _passes_filters(kv: KeyValue, op: RangeOp) -> bool:
    return not (
        (op.min_mod_revision and kv.mod_revision < op.min_mod_revision)
        or (op.max_mod_revision and kv.mod_revision > op.max_mod_revision)
        or (op.min_create_revision and kv.create_revision < op.min_create_revision)
        or (op.max_create_revision and kv.create_revision > op.max_create_revision)
    )


_SORT_KEYS: dict[int, Callable[[KeyValue], int | bytes]] = {
    0: lambda kv: kv.key,
    1: lambda kv: kv.version,
    2: lambda kv: kv.create_revision,
    3: lambda kv: kv.mod_revision,
    4: lambda kv: kv.value,
}


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    have: int | bytes
    if c.target == Target.VALUE:
        have = kv.value
    elif c.target == Target.VERSION:
        have = kv.version
    elif c.target == Target.CREATE:
        have = kv.create_revision
    elif c.target == Target.MOD:
        have = kv.mod_revision
    else:
        have = kv.lease
    want = c.operand
    if isinstance(have, bytes) != isinstance(want, bytes):
        return False
    if c.result == Result.EQUAL:
        return have == want
    if c.result == Result.NOT_EQUAL:
        return have != want
    if c.result == Result.GREATER:
        return have > want  # type: ignore[operator]
    return have < want  # type: ignore[operator]

"""etcd's revisioned key space (its "mvcc" rules), shared by every implementation of the
store contract: ``MemoryStore`` here and the embedded server's ``State``.

A key's history is a list of (revision, key-value or None for a deletion), oldest
first; these pure helpers make the next key-value of a put, the tombstone of a
delete, read a key as of a revision and compact a memory image the way etcd does.
The limits are etcd's defaults.
"""

from __future__ import annotations

import bisect

from overlay.store.api import CompactedError, KeyValue, StoreError, WatchEvent

MAX_REQUEST_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
MIN_LEASE_TTL = 2  # etcd: ceil(1.5 x election timeout of 1 s)
MAX_LEASE_TTL = 9_000_000_000
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: compares, or ops, per Txn branch


class FutureRevisionError(StoreError):
    """A revision beyond the current one was asked for."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"revision {revision} is a future revision (now {current})")
        self.revision = revision


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's [key, range_end) rule: empty end = just ``start``; ``\\0`` = to the end."""
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


History = list[tuple[int, KeyValue | None]]  # one key's (revision, kv or None = deleted)


def next_kv(prev: KeyValue | None, key: bytes, value: bytes, rev: int, lease: int) -> KeyValue:
    """The key-value a put at ``rev`` makes of ``prev`` (None: the key is created)."""
    if prev is None:
        return KeyValue(key, value, rev, rev, 1, lease)
    return KeyValue(key, value, prev.create_revision, rev, prev.version + 1, lease)


def tombstone(key: bytes, rev: int) -> KeyValue:
    """What a delete event at ``rev`` carries as its kv."""
    return KeyValue(key, b"", 0, rev, 0)


def value_at(hist: History, rev: int) -> KeyValue | None:
    """A key's value as of revision ``rev`` (None: absent or deleted then)."""
    i = bisect.bisect_right(hist, rev, key=lambda h: h[0])
    return hist[i - 1][1] if i else None


def _compact_history(hist: History, revision: int) -> tuple[History, History]:
    """Split a key's history at a compaction to ``revision``: (kept, dropped).

    Kept: the entry in force at ``revision`` and every later one, except that an
    entry in force which is a deletion older than ``revision`` goes too (nothing
    can read it any more). A deletion exactly at ``revision`` stays, so the
    revision's events can still be rebuilt from a log that keeps what this keeps.
    """
    i = bisect.bisect_right(hist, revision, key=lambda h: h[0])
    keep = hist[i - 1:] if i else hist
    dropped = hist[: i - 1] if i else []
    if keep and keep[0][1] is None and keep[0][0] < revision:
        dropped.append(keep[0])
        keep = keep[1:]
    return keep, dropped


def compact_image(history: dict[bytes, History], events: dict[int, list[WatchEvent]],
                  revision: int, current: int, compacted: int) -> list[tuple[int, bytes]]:
    """Compact a memory image (history per key, events per revision) to ``revision``,
    in place; the (revision, key) of every history entry dropped.

    Raises ``FutureRevisionError`` beyond ``current`` and ``CompactedError`` at or
    before ``compacted`` (the compaction point so far), as etcd does.
    """
    if revision > current:
        raise FutureRevisionError(revision, current)
    if revision <= compacted:
        raise CompactedError(compacted)
    for r in [r for r in events if r < revision]:
        del events[r]
    gone: list[tuple[int, bytes]] = []
    for k in list(history):
        keep, dropped = _compact_history(history[k], revision)
        gone.extend((r, k) for r, _ in dropped)
        if keep:
            history[k] = keep
        else:
            del history[k]
    return gone

"""The in-memory mirror of the ``/skydns`` subtree, fed by a listing and then watch events.

Theory of operation: the shell lists the prefix once (``load``), then applies each
watch batch (``apply``); a compacted watch means list again and ``load`` again.
Keys become a tree of reversed labels so the engine's subtree and wildcard scans
walk only the part of the zone they need. Leases are tracked per key; the shell
asks the store for each new lease's remaining TTL once (``unknown_leases`` ->
``set_lease``) and refreshes them periodically, and the engine derives the
remaining TTL from the injected clock instead of an RPC per query.

The index keeps no cache state of its own: the feed calls the server's
``invalidate`` after each change it applies. The index itself is not thread-safe:
the server serialises writers and the slow-path readers with one lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from overlay.store.api import EventType, KeyValue, Listing, WatchEvent

from .keys import Labels, key_to_path
from .records import RecordError, Service, decode

log = logging.getLogger(__name__)
_CONFIG = ("config",)  # <prefix>/config is SkyDNS's settings (dnsd/skyconfig.py), no record

WILDCARDS = frozenset({"*", "any"})


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded record and the lease that owns its key (0 = none)."""

    service: Service
    lease: int = 0
    path: Labels = ()  # reversed labels of its key below the prefix


class _Node:
    __slots__ = ("bad", "children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.entry: Entry | None = None
        self.bad = False  # a key exists here but its value did not decode


class Index:
    """Records under one path prefix, as a label tree."""

    def __init__(self, prefix: str = "/skydns") -> None:
        self.prefix = prefix.rstrip("/") or "/skydns"
        self._root = _Node()
        self.revision = 0
        self.size = 0
        self.bad_values = 0
        self._lease_deadline: dict[int, float] = {}
        self._lease_refs: dict[int, int] = {}

    # -- writers ---------------------------------------------------------------

    def load(self, listing: Listing) -> None:
        """Replace everything with a fresh listing (initial or after compaction)."""
        self._root = _Node()
        self.size = 0
        self.bad_values = 0
        self._lease_refs = {}
        for kv in listing.items:
            self._put(kv)
        self._lease_deadline = {k: v for k, v in self._lease_deadline.items()
                                if k in self._lease_refs}
        self.revision = listing.revision

    def apply(self, events: Iterable[WatchEvent]) -> int:
        """Apply one watch batch; returns how many events changed the tree."""
        changed = 0
        for ev in events:
            if ev.kv.mod_revision and ev.kv.mod_revision <= self.revision:
                continue  # already in the listing we loaded
            if ev.type is EventType.PUT:
                self._put(ev.kv)
            else:
                self._delete(ev.kv.key)
            self.revision = max(self.revision, ev.kv.mod_revision)
            changed += 1
        return changed

    def set_lease(self, lease: int, remaining: float, now: float) -> None:
        """Record that ``lease`` has ``remaining`` seconds left as of ``now``."""
        if lease in self._lease_refs:
            self._lease_deadline[lease] = now + max(remaining, 0.0)

    def unknown_leases(self) -> list[int]:
        """Leases held by some key whose remaining TTL has not been fetched yet."""
        return [lease for lease in self._lease_refs if lease not in self._lease_deadline]

    def leases(self) -> list[int]:
        return list(self._lease_refs)

    def _path(self, key: bytes) -> Labels | None:
        try:
            text = key.decode()
        except UnicodeDecodeError:
            return None
        path = key_to_path(text, self.prefix)
        if path is None or path == _CONFIG or any(len(lab) > 63 for lab in path):
            return None
        return path

    def _put(self, kv: KeyValue) -> None:
        path = self._path(kv.key)
        if path is None:
            log.debug("ignoring key %r outside %s", kv.key, self.prefix)
            return
        node = self._root
        for label in path:
            nxt = node.children.get(label)
            if nxt is None:
                nxt = node.children[label] = _Node()
            node = nxt
        self._drop_entry(node)
        try:
            service = decode(kv.key.decode(), kv.value)
        except RecordError as exc:
            log.warning("bad record: %s", exc)
            node.bad = True
            self.bad_values += 1
            return
        node.entry = Entry(service, kv.lease, path)
        self.size += 1
        if kv.lease:
            self._lease_refs[kv.lease] = self._lease_refs.get(kv.lease, 0) + 1

    def _drop_entry(self, node: _Node) -> None:
        if node.entry is not None:
            lease = node.entry.lease
            if lease:
                left = self._lease_refs.get(lease, 1) - 1
                if left <= 0:
                    self._lease_refs.pop(lease, None)
                    self._lease_deadline.pop(lease, None)
                else:
                    self._lease_refs[lease] = left
            node.entry = None
            self.size -= 1
        if node.bad:
            node.bad = False
            self.bad_values -= 1

    def _delete(self, key: bytes) -> None:
        path = self._path(key)
        if path is None:
            return
        trail = [self._root]
        for label in path:
            nxt = trail[-1].children.get(label)
            if nxt is None:
                return
            trail.append(nxt)
        self._drop_entry(trail[-1])
        for depth in range(len(path), 0, -1):  # prune empty branches
            node = trail[depth]
            if node.children or node.entry is not None or node.bad:
                break
            del trail[depth - 1].children[path[depth - 1]]

    # -- readers (the engine) --------------------------------------------------

    def lease_remaining(self, lease: int, now: float) -> float | None:
        """Seconds left on ``lease`` by the clock, or None when unknown."""
        deadline = self._lease_deadline.get(lease)
        return None if deadline is None else deadline - now

    def exists(self, path: Labels) -> bool:
        """Whether any key exists at or below ``path``."""
        return self._find(path) is not None

    def exact(self, path: Labels) -> Entry | None:
        node = self._find(path)
        return node.entry if node is not None else None

    def subtree(self, path: Labels) -> list[Entry]:
        """Every record at or below ``path``, shallowest first, keys sorted."""
        node = self._find(path)
        return [] if node is None else list(_walk(node))

    def match(self, path: Labels, literal: int = 0) -> tuple[list[Entry], bool]:
        """Records at or below ``path`` where ``*``/``any`` labels match any one label.

        The first ``literal`` labels (the zone's) are matched literally. Returns the
        records and whether any key matched the pattern at all.
        """
        nodes = [self._root]
        for depth, label in enumerate(path):
            nxt: list[_Node] = []
            for node in nodes:
                if depth >= literal and label in WILDCARDS:
                    nxt.extend(node.children[k] for k in sorted(node.children))
                else:
                    child = node.children.get(label)
                    if child is not None:
                        nxt.append(child)
            nodes = nxt
            if not nodes:
                return [], False
        out: list[Entry] = []
        for node in nodes:
            out.extend(_walk(node))
        out.sort(key=lambda e: len(e.path))
        return out, True

    def _find(self, path: Labels) -> _Node | None:
        node = self._root
        for label in path:
            nxt = node.children.get(label)
            if nxt is None:
                return None
            node = nxt
        return node


def _walk(start: _Node) -> Iterator[Entry]:
    """Breadth-first so shallower entries come first (the group rule needs it)."""
    level = [start]
    while level:
        nxt: list[_Node] = []
        for node in level:
            if node.entry is not None:
                yield node.entry
            nxt.extend(node.children[k] for k in sorted(node.children))
        level = nxt

"""Moving a cluster's keys from one store to another (embedded -> etcd, etcd -> embedded):
``weftctl store migrate``.

Theory of operation (a client of both stores; nothing here knows which kind either is):

1. Read every key under the prefixes from the source at one revision (the first listing's),
   so the copy is one consistent point in time.
2. Refuse a destination that already holds keys under those prefixes, unless ``force``,
   which first deletes them (the destination then mirrors the source, nothing merged).
3. Re-create each lease the keys are attached to, with the same id (etcd lets a client ask
   for one, so a daemon holding the id keeps using it) and the TTL it has left on the
   source; a lease that ran out meanwhile is left out with its keys, as the source is
   about to delete them too.
4. Put every key with its value and lease, then verify: the destination's keys and values
   under each prefix must equal what was read. Revisions are the destination's own (a
   store's revision counter cannot be carried over); create/mod revisions restart there.

Writers still running on the source during the copy (a daemon acquiring a lease) are not
followed: the result says when the source moved on under the prefixes, so the operator can
stop the writers and run it again with ``force``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from overlay.store.api import KeyValue, LeaseInfo, LeaseNotFoundError, Listing, StoreError

# flannel's, SkyDNS's and weft's own key spaces
DEFAULT_PREFIXES = ("/coreos.com/network", "/skydns", "/weft")


class MigrateError(StoreError):
    """The migration was refused or did not verify (the message says what and where)."""


class MigrationStore(Protocol):
    """What a migration needs of each side (``EtcdStore`` has it all)."""

    async def list(self, prefix: bytes, revision: int = 0) -> Listing: ...

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int: ...

    async def delete(self, key: bytes, *, prefix: bool = False) -> int: ...

    async def grant(self, ttl: int, lease: int = 0) -> int: ...

    async def revoke(self, lease: int) -> None: ...

    async def time_to_live(self, lease: int) -> LeaseInfo: ...


@dataclass(frozen=True, slots=True)
class PrefixCount:
    prefix: str
    keys: int


@dataclass(frozen=True, slots=True)
class MigrateResult:
    revision: int  # the source revision copied
    counts: tuple[PrefixCount, ...]
    leases: int  # leases re-created
    expired: tuple[int, ...]  # leases that ran out before they could be copied
    skipped_keys: int  # keys of those leases
    deleted: int  # destination keys removed first (force)
    source_moved: bool  # the source changed under the prefixes during the copy

    @property
    def keys(self) -> int:
        return sum(c.keys for c in self.counts)


def normalize_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """The prefixes to copy, without duplicates or any inside another (which would be
    copied twice); ValueError for an empty or relative one."""
    out: list[str] = []
    for p in prefixes:
        if not p or not p.startswith("/"):
            raise ValueError(f"--prefix {p!r}: want an absolute key prefix such as /skydns")
        if p not in out:
            out.append(p)
    return tuple(p for p in out if not any(q != p and p.startswith(q) for q in out))


def lease_ids(kvs: Sequence[KeyValue]) -> builtins.list[int]:
    """Every lease the keys are attached to, each once, in first-seen order."""
    return list(dict.fromkeys(kv.lease for kv in kvs if kv.lease))


async def _listing(store: MigrationStore, prefixes: Sequence[str],
                   revision: int = 0) -> tuple[int, dict[str, tuple[KeyValue, ...]]]:
    out: dict[str, tuple[KeyValue, ...]] = {}
    for p in prefixes:
        listing = await store.list(p.encode(), revision)
        revision = revision or listing.revision
        out[p] = listing.items
    return revision, out


async def migrate(src: MigrationStore, dst: MigrationStore, prefixes: Sequence[str],
                  force: bool = False, say: Callable[[str], None] = lambda _: None
                  ) -> MigrateResult:
    """Copy every key under ``prefixes`` from ``src`` to ``dst`` (see the module doc)."""
    prefixes = normalize_prefixes(prefixes)
    revision, source = await _listing(src, prefixes)
    say(f"source: {sum(map(len, source.values()))} keys at revision {revision}")
    _, existing = await _listing(dst, prefixes)
    busy = {p: len(kvs) for p, kvs in existing.items() if kvs}
    deleted = 0
    if busy:
        where = ", ".join(f"{n} under {p}" for p, n in busy.items())
        if not force:
            raise MigrateError(f"the destination already holds keys ({where}); refusing to "
                               "mix two clusters' data: give --force to replace them")
        for p in busy:
            deleted += await dst.delete(p.encode(), prefix=True)
        say(f"destination: deleted {deleted} keys first (--force)")
    everything = [kv for kvs in source.values() for kv in kvs]
    expired: list[int] = []
    leases = 0
    for lease in lease_ids(everything):
        info = await src.time_to_live(lease)
        if info.ttl <= 0:
            expired.append(lease)
            continue
        try:
            await dst.grant(info.ttl, lease)
        except StoreError as e:
            if "lease already exists" not in str(e) or not force:
                raise MigrateError(f"lease {lease:x}: cannot re-create it on the destination "
                                   f"({e})") from e
            await dst.revoke(lease)  # --force: a lease left from an earlier run
            await dst.grant(info.ttl, lease)
        leases += 1
    gone = set(expired)
    copied: dict[str, dict[bytes, bytes]] = {}
    skipped = 0
    for p, kvs in source.items():
        copied[p] = {}
        for kv in kvs:
            if kv.lease in gone:
                skipped += 1
                continue
            try:
                await dst.put(kv.key, kv.value, kv.lease)
            except LeaseNotFoundError:  # ran out between grant and put: the source drops it too
                skipped += 1
                continue
            copied[p][kv.key] = kv.value
    counts: list[PrefixCount] = []
    _, landed = await _listing(dst, prefixes)
    for p in prefixes:
        have = {kv.key: kv.value for kv in landed[p]}
        if have != copied[p]:
            missing = len(copied[p].keys() - have.keys())
            extra = len(have.keys() - copied[p].keys())
            raise MigrateError(f"verification failed under {p}: copied {len(copied[p])} keys, "
                               f"the destination has {len(have)} ({missing} missing, {extra} "
                               "not from the source, or values differ)")
        counts.append(PrefixCount(p, len(have)))
    _, now = await _listing(src, prefixes)
    moved = any(
        {(kv.key, kv.mod_revision) for kv in now[p]}
        != {(kv.key, kv.mod_revision) for kv in source[p] if kv.lease not in gone}
        for p in prefixes)
    return MigrateResult(revision, tuple(counts), leases, tuple(expired), skipped, deleted,
                         moved)

"""The lease table: store listings and watch events turned into lease diffs. Pure.

Theory of operation
-------------------
flanneld keeps an in-memory table ``(subnet, subnet6) -> Lease`` of every valid
lease under ``<prefix>/subnets/``, keyed by the pair of subnets its key names
(IPv6-only leases all have the IPv4 half 0.0.0.0/0, so the IPv4 subnet alone
collides). It is built from a snapshot (``table_from_listing``) and then moved
forward by watch events (``apply_watch_events``). When a watch falls behind a
compaction, the daemon re-lists and ``diff``s the new snapshot against the
table, so peers that came and went meanwhile are still seen.

Malformed keys or values never enter the table: they come back as
``LeaseFormatError``s for the shell to log, and a key whose value turns
malformed is dropped from the table (a REMOVED event), so no route is ever
built from data that cannot be trusted.

Two leases are "the same" for routing when PublicIP, BackendType and
BackendData agree (and their IPv6 halves: PublicIPv6, BackendV6Data); a
changed revision alone (a renewal by re-put) yields no event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from overlay.lease.model import (
    EventKind,
    Lease,
    LeaseEvent,
    LeaseFormatError,
    SubnetPair,
    decode_lease,
    parse_subnet_keys,
    subnets_of,
)
from overlay.store.api import EventType, KeyValue, WatchEvent

Table = Mapping[SubnetPair, Lease]


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of feeding a listing or events to a table."""

    table: dict[SubnetPair, Lease]
    events: tuple[LeaseEvent, ...] = ()
    errors: tuple[LeaseFormatError, ...] = ()


def same_lease(a: Lease, b: Lease) -> bool:
    """Equal as far as routing is concerned (ignores store revisions and lease ids)."""
    if a is b:  # a watch batch leaves all but a few table entries untouched
        return True
    return (a.subnet == b.subnet and a.public_ip == b.public_ip
            and a.backend_type == b.backend_type
            and dict(a.backend_data) == dict(b.backend_data)
            and a.ipv6_subnet == b.ipv6_subnet and a.public_ipv6 == b.public_ipv6
            and dict(a.backend_v6_data) == dict(b.backend_v6_data))


def _decode(kv: KeyValue) -> Lease:
    """The lease in ``kv``; a ``LeaseFormatError`` carries the key's mod revision."""
    key = kv.key.decode("utf-8", "replace")
    try:
        return decode_lease(key, kv.value, kv.lease, kv.mod_revision)
    except LeaseFormatError as exc:
        raise LeaseFormatError(exc.key, exc.reason, kv.mod_revision) from None


def table_from_listing(items: Iterable[KeyValue]) -> Update:
    """A fresh table from a snapshot; malformed entries are reported, not kept."""
    table: dict[SubnetPair, Lease] = {}
    errors: list[LeaseFormatError] = []
    for kv in items:
        try:
            lease = _decode(kv)
        except LeaseFormatError as exc:
            errors.append(exc)
            continue
        table[subnets_of(lease)] = lease
    return Update(table, (), tuple(errors))


def diff(old: Table, new: Table) -> tuple[LeaseEvent, ...]:
    """Events that turn ``old`` into ``new``: ADDED for new or changed, REMOVED for gone."""
    events: list[LeaseEvent] = []
    for subnet, lease in new.items():
        before = old.get(subnet)
        if before is None or not same_lease(before, lease):
            events.append(LeaseEvent(EventKind.ADDED, lease))
    for subnet, lease in old.items():
        if subnet not in new:
            events.append(LeaseEvent(EventKind.REMOVED, lease))
    return tuple(events)


def resync(old: Table, items: Iterable[KeyValue]) -> Update:
    """Re-list after a compaction (or a reconnect): the new table and the diff to it."""
    fresh = table_from_listing(items)
    return Update(fresh.table, diff(old, fresh.table), fresh.errors)


def apply_watch_events(old: Table, batch: Iterable[WatchEvent]) -> Update:
    """Apply one batch of watch events; returns the new table and the lease events."""
    table = dict(old)
    errors: list[LeaseFormatError] = []
    for ev in batch:
        key = ev.kv.key.decode("utf-8", "replace")
        if ev.type is EventType.DELETE:
            try:
                pair = parse_subnet_keys(key)
            except LeaseFormatError as exc:
                errors.append(exc)
                continue
            table.pop(pair, None)
            continue
        try:
            lease = _decode(ev.kv)
        except LeaseFormatError as exc:
            errors.append(exc)
            with contextlib.suppress(LeaseFormatError):
                table.pop(parse_subnet_keys(key), None)  # never route on untrusted data
            continue
        table[subnets_of(lease)] = lease
    return Update(table, diff(old, table), tuple(errors))

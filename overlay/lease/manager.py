"""Our lease in the store: read the network config, acquire, renew and re-acquire a subnet.

This is the store-facing half of lease handling; the decisions are pure
(``allocator.choose_subnet``, ``watcher``) and this module only performs them:

* **acquire**: list the leases, let the allocator choose, then write with a
  transaction — ``replace`` (compare on mod_revision) when reusing our old key,
  ``create`` (put only if absent) otherwise — under a fresh etcd lease of
  ``ttl`` seconds. A lost race (someone else wrote first) re-lists and chooses
  again, avoiding the subnet just lost; flannel exits there instead.
* **renew**: an etcd ``keepalive`` of the lease, then a read of our key to check
  it is still ours. We keep the same etcd lease rather than flannel's regrant
  and re-put: a keepalive writes no key, so 1,000 hosts renewing do not fan out
  1,000 watch events to every host each day, and the key's revision stays put.
  ``LeaseLostError`` says the lease or key is gone (expired, deleted by an
  admin, taken over); the daemon then re-acquires, preferring the same subnet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from overlay.errors import LeaseError
from overlay.lease.allocator import Choice, Reason, choose_subnet
from overlay.lease.model import (
    Lease,
    LeaseFormatError,
    config_key,
    decode_lease,
    describe,
    encode_lease,
    lease_key,
    owner,
    parse_subnet_keys,
    subnets_prefix,
)
from overlay.lease.network import NetworkConfig
from overlay.lease.watcher import table_from_listing
from overlay.store.api import KeyValue, LeaseNotFoundError, Listing, Store, StoreError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # lost races in a row before giving up (each re-lists)


class LeaseLostError(LeaseError):
    """Our lease is gone; ``reason`` says how (expired, deleted, taken over)."""

    def __init__(self, subnet: ipaddress.IPv4Network, reason: str, label: str = "") -> None:
        super().__init__(f"lease for {label or subnet} lost: {reason}")
        self.subnet = subnet
        self.reason = reason


class AcquireError(LeaseError, RuntimeError):
    """No subnet could be written after ``MAX_ATTEMPTS`` lost races."""


@dataclass(frozen=True, slots=True)
class Acquired:
    lease: Lease
    reason: Reason


class LeaseManager:
    """Acquires and renews this host's lease under ``prefix`` in ``store``."""

    def __init__(self, store: Store, prefix: str, ttl: int, rng: random.Random) -> None:
        self.store = store
        self.prefix = prefix
        self.ttl = ttl
        self.rng = rng

    async def read_config(self) -> tuple[bytes | None, int]:
        """The raw config value (None if absent) and the store revision it was read at."""
        kv = await self.store.get(config_key(self.prefix).encode())
        if kv is None:
            return None, 0
        return kv.value, kv.mod_revision

    async def list(self) -> Listing:
        return await self.store.list(subnets_prefix(self.prefix).encode())

    async def acquire(
        self,
        config: NetworkConfig,
        public_ip: ipaddress.IPv4Address,
        backend_type: str,
        backend_data: Mapping[str, Any],
        previous: ipaddress.IPv4Network | None = None,
        *,
        public_ipv6: ipaddress.IPv6Address | None = None,
        backend_v6_data: Mapping[str, Any] | None = None,
        previous6: ipaddress.IPv6Network | None = None,
    ) -> Acquired:
        """Hold a subnet (see the module docstring); ``NetworkFullError`` if none is left.

        With IPv6 enabled in ``config`` the lease also holds an IPv6 subnet and is
        keyed by both (flannel's dual-stack key); a lost race avoids both halves.
        """
        lost: set[ipaddress.IPv4Network] = set()
        lost6: set[ipaddress.IPv6Network] = set()
        for _ in range(MAX_ATTEMPTS):
            listing = await self.list()
            table = table_from_listing(listing.items)
            # keys whose values are malformed still occupy their subnet(s)
            occupied, occupied6 = set(lost), set(lost6)
            for kv in listing.items:
                with contextlib.suppress(LeaseFormatError):
                    sn4, sn6 = parse_subnet_keys(kv.key.decode("utf-8", "replace"))
                    occupied.add(sn4)
                    if sn6 is not None:
                        occupied6.add(sn6)
            leases = list(table.table.values())
            choice = choose_subnet(
                config, leases, public_ip, self.rng, previous,
                occupied - {sn for sn, _ in table.table},
                public_ipv6=public_ipv6, previous6=previous6,
                avoid6=occupied6 - {le.ipv6_subnet for le in leases})
            await self._delete_stale(choice)
            lease = Lease(choice.subnet, public_ip, backend_type, dict(backend_data),
                          ipv6_subnet=choice.subnet6, public_ipv6=public_ipv6,
                          backend_v6_data=dict(backend_v6_data or {}))
            got = await self._write(choice, lease)
            if got is not None:
                return Acquired(got, choice.reason)
            log.info("lost the race for %s to another host; choosing again",
                     lease_key("", lease).rsplit("/", 1)[-1])
            if config.enable_ipv4:
                lost.add(choice.subnet)
            if choice.subnet6 is not None:
                lost6.add(choice.subnet6)
            previous = None if previous == choice.subnet else previous
            previous6 = None if previous6 == choice.subnet6 else previous6
        raise AcquireError(f"no subnet could be written after {MAX_ATTEMPTS} attempts")

    async def _delete_stale(self, choice: Choice) -> None:
        for stale in choice.stale:
            key = lease_key(self.prefix, stale).encode()
            log.info("deleting lease %s with our PublicIP: it no longer fits the config",
                     describe(stale))
            await self.store.delete(key)

    async def _write(self, choice: Choice, lease: Lease) -> Lease | None:
        key = lease_key(self.prefix, lease).encode()
        value = encode_lease(lease)
        lease_id = await self.store.grant(self.ttl)
        if choice.existing is not None:
            rev = await self.store.replace(key, value, choice.existing.mod_revision, lease_id)
        else:
            rev = await self.store.create(key, value, lease_id)
        if rev is None:
            with contextlib.suppress(StoreError):
                await self.store.revoke(lease_id)
            return None
        if choice.existing is not None and choice.existing.lease_id:
            # the key moved to the new etcd lease; the old one holds nothing now
            with contextlib.suppress(StoreError):
                await self.store.revoke(choice.existing.lease_id)
        return replace(lease, lease_id=lease_id, mod_revision=rev)

    async def renew(self, own: Lease) -> int:
        """Keep ``own`` alive; the TTL granted. ``LeaseLostError`` when it is gone."""
        try:
            ttl = await self.store.keepalive(own.lease_id)
        except LeaseNotFoundError:
            raise LeaseLostError(own.subnet, "its etcd lease expired or was revoked",
                                 describe(own)) from None
        if ttl <= 0:
            raise LeaseLostError(own.subnet, "its etcd lease expired", describe(own))
        self.check_key(own, await self.store.get(lease_key(self.prefix, own).encode()))
        return ttl

    def check_key(self, own: Lease, kv: KeyValue | None) -> None:
        """Raise ``LeaseLostError`` unless ``kv`` is still our lease."""
        if kv is None:
            raise LeaseLostError(own.subnet, "its key was deleted from the store", describe(own))
        try:
            current = decode_lease(kv.key.decode("utf-8", "replace"), kv.value)
        except LeaseFormatError as exc:
            raise LeaseLostError(own.subnet, f"its value was overwritten ({exc})",
                                 describe(own)) from None
        if (current.public_ip != own.public_ip or current.public_ipv6 != own.public_ipv6
                or kv.lease != own.lease_id):
            raise LeaseLostError(own.subnet, f"it now belongs to {owner(current)}",
                                 describe(own))

    async def release_quietly(self, own: Lease) -> None:
        """Revoke an etcd lease we no longer use (errors ignored)."""
        if own.lease_id:
            with contextlib.suppress(StoreError):
                await self.store.revoke(own.lease_id)

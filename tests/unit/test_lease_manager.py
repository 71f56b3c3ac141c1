"""LeaseManager over MemoryStore: create-if-absent, lost races retried, reuse by CAS, renewal."""

from __future__ import annotations

import ipaddress
import logging
import random

import pytest

from overlay.config import check_network_config
from overlay.lease.allocator import NetworkFullError, Reason
from overlay.lease.manager import LeaseLostError, LeaseManager
from overlay.lease.model import Lease, encode_lease, parse_subnet_keys, subnet_key
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock

A = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
N = ipaddress.IPv4Network
P = "/coreos.com/network"
ME = A("198.18.0.11")
CFG = check_network_config({"Network": "10.9.0.0/24"})  # /26s: .64 .128 .192


class RacingStore(MemoryStore):
    """Another host writes the subnet we chose just before our create lands, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__(FakeClock())
        self.races = races

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> int | None:
        if self.races > 0:
            self.races -= 1
            sn4, sn6 = parse_subnet_keys(key.decode())  # a dual-stack key holds both halves
            rival = Lease(sn4, A(f"198.18.0.{90 + self.races}"), "vxlan", {},
                          ipv6_subnet=sn6,
                          public_ipv6=None if sn6 is None else A6(f"fd00::{90 + self.races}"))
            await self.put(key, encode_lease(rival))
        return await super().create(key, value, lease)


@pytest.mark.parametrize("races", [1, 2], ids=["one-lost-race", "two-lost-races"])
async def test_lost_race_is_retried_on_another_subnet(races: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    store = RacingStore(races)
    mgr = LeaseManager(store, P, 60, random.Random(3))
    got = await mgr.acquire(CFG, ME, "vxlan", {"VNI": 1})
    assert got.reason is Reason.RANDOM
    listing = await mgr.list()
    assert len(listing.items) == races + 1
    assert caplog.text.count("lost the race") == races
    # every etcd lease granted for a lost race was revoked; only ours is left
    assert (await store.time_to_live(got.lease.lease_id)).ttl > 0


async def test_three_lost_races_exhaust_small_network() -> None:
    mgr = LeaseManager(RacingStore(3), P, 60, random.Random(3))
    with pytest.raises(NetworkFullError):
        await mgr.acquire(CFG, ME, "vxlan", {})


async def test_reuse_moves_key_to_new_lease_and_revokes_old() -> None:
    store = MemoryStore(FakeClock())
    mgr = LeaseManager(store, P, 60, random.Random(1))
    first = (await mgr.acquire(CFG, ME, "vxlan", {"VtepMAC": "0e:00:00:00:00:01"})).lease
    again = await mgr.acquire(CFG, ME, "vxlan", {"VtepMAC": "0e:00:00:00:00:02"})
    assert again.reason is Reason.REUSED and again.lease.subnet == first.subnet
    assert again.lease.lease_id != first.lease_id
    assert (await store.time_to_live(first.lease_id)).ttl == -1
    kv = await store.get(subnet_key(P, first.subnet).encode())
    assert kv is not None and b"0e:00:00:00:00:02" in kv.value and kv.lease == again.lease.lease_id


async def test_renew_and_loss() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    mgr = LeaseManager(store, P, 10, random.Random(1))
    own = (await mgr.acquire(CFG, ME, "vxlan", {})).lease
    for _ in range(5):
        clock.advance(6)
        assert await mgr.renew(own) == 10
    await store.put(subnet_key(P, own.subnet).encode(),
                    encode_lease(Lease(own.subnet, A("198.18.0.99"), "vxlan", {})))
    with pytest.raises(LeaseLostError, match=r"belongs to 198\.18\.0\.99"):
        await mgr.renew(own)
    await store.delete(subnet_key(P, own.subnet).encode())
    with pytest.raises(LeaseLostError, match="deleted"):
        await mgr.renew(own)
    clock.advance(11)
    with pytest.raises(LeaseLostError, match="expired"):
        await mgr.renew(own)


async def test_malformed_key_value_still_occupies_its_subnet() -> None:
    store = MemoryStore(FakeClock())
    for sub in ("10.9.0.64-26", "10.9.0.128-26"):
        await store.put(f"{P}/subnets/{sub}".encode(), b"garbage")
    mgr = LeaseManager(store, P, 60, random.Random(1))
    got = await mgr.acquire(CFG, ME, "vxlan", {})
    assert got.lease.subnet == N("10.9.0.192/26")

"""Dual-stack leases on every store kind (memory, embedded in-process and served, etcd):
flannel's ``<v4>-<len>&<v6>-<len>`` keys (``&`` and ``:`` in a key) are created, listed,
decoded and re-acquired the same way everywhere, and a lease a flannel host wrote is
respected (issue 17)."""

from __future__ import annotations

import ipaddress
import random

from overlay.config import check_network_config
from overlay.lease.allocator import Reason
from overlay.lease.manager import LeaseManager
from overlay.lease.model import decode_lease, lease_key
from overlay.lease.watcher import table_from_listing
from tests.contract.conftest import Subject

A, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
N, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
CFG = check_network_config({"Network": "10.9.0.0/24", "EnableIPv6": True,
                            "IPv6Network": "fd00:9::/62"})  # 3 usable subnets per family
VX = {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}
# flannel's bytes for a dual-stack vxlan host holding 10.9.0.64/26 and fd00:9:0:1::/64
FLANNEL_KEY = "subnets/10.9.0.64-26&fd00:9:0:1::-64"
FLANNEL_VALUE = (b'{"PublicIP":"198.18.0.90","PublicIPv6":"fd00:198:18::90",'
                 b'"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:90"},'
                 b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:91"}}')


async def test_dual_stack_leases_beside_a_flannel_host(subject: Subject) -> None:
    prefix = subject.prefix.decode().rstrip("/")
    await subject.store.put(subject.key(FLANNEL_KEY), FLANNEL_VALUE)
    hosts = [(A(f"198.18.0.{11 + i}"), A6(f"fd00:198:18::{11 + i}")) for i in range(2)]
    got = []
    for i, (ip, ip6) in enumerate(hosts):
        mgr = LeaseManager(subject.store, prefix, 60, random.Random(i))
        got.append((await mgr.acquire(CFG, ip, "vxlan", VX, public_ipv6=ip6,
                                      backend_v6_data=VX)).lease)
    listing = await subject.store.list(subject.key("subnets/"))
    table = table_from_listing(listing.items).table
    assert len(table) == 3
    assert table[N("10.9.0.64/26"), N6("fd00:9:0:1::/64")].backend_type == "vxlan"  # flannel's
    assert len({le.ipv6_subnet for le in table.values()}) == 3  # no IPv6 half shared
    for own in got:
        kv = await subject.store.get(lease_key(prefix, own).encode())
        assert kv is not None
        assert decode_lease(kv.key.decode(), kv.value).public_ipv6 == own.public_ipv6
    # a restart of the first host reuses its dual-stack key
    again = await LeaseManager(subject.store, prefix, 60, random.Random(7)).acquire(
        CFG, hosts[0][0], "vxlan", VX, public_ipv6=hosts[0][1], backend_v6_data=VX)
    assert again.reason is Reason.REUSED
    assert lease_key(prefix, again.lease) == lease_key(prefix, got[0])

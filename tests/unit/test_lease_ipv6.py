"""Dual-stack and IPv6-only leases as flannel writes them, chosen and held (issue 17).

flannel's facts cited here:
* key: pkg/subnet/subnet.go MakeSubnetKey = ``sn.StringSep(".", "-")`` plus, with an
  IPv6 subnet, ``"&" + sn6.StringSep(":", "-")`` (Go's net.IP text, RFC 5952); its
  ParseSubnetKey regex ``(\\d+\\.\\d+.\\d+.\\d+)-(\\d+)(?:&([a-f\\d:]+)-(\\d+))?$``. An
  IPv6-only lease's IPv4 half is the zero ``ip.IP4Net{}``: ``0.0.0.0-0``.
* value: pkg/lease LeaseAttrs {PublicIP ip.IP4, PublicIPv6 *ip.IP6, BackendType,
  BackendData, BackendV6Data `json:",omitempty"`}: field order as encoded below.
* allocation: pkg/subnet/etcd/local_manager.go allocateSubnet scans each family from
  its SubnetMin, up to 100 free candidates each, picks one at random; reuse by
  PublicIP only when both halves still fit (isSubnetConfigCompat +
  isIPv6SubnetConfigCompat), else the lease is deleted.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from overlay.config import check_network_config
from overlay.lease.allocator import NetworkFullError, Reason, choose_subnet
from overlay.lease.manager import LeaseManager
from overlay.lease.model import (
    Lease,
    LeaseFormatError,
    decode_lease,
    encode_lease,
    lease_key,
    parse_subnet_keys,
    subnet_key,
)
from tests.unit.test_lease_manager import RacingStore

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
A6 = ipaddress.IPv6Address
N6 = ipaddress.IPv6Network
P = "/coreos.com/network"
ME, ME6 = A("198.18.0.11"), A6("fd00:198:18::11")
DUAL = check_network_config({"Network": "10.9.0.0/24", "EnableIPv6": True,
                             "IPv6Network": "fd00:9::/62"})  # v4 /26s .64-.192, v6 /64s :1-:3
V6ONLY = check_network_config({"EnableIPv4": False, "EnableIPv6": True,
                               "IPv6Network": "fd00:9::/62"})
VXLAN = {"VNI": 1, "VtepMAC": "0e:11:22:33:44:55"}
VXLAN6 = {"VNI": 1, "VtepMAC": "0e:11:22:33:44:66"}

# what flannel v0.28 stores for a dual-stack vxlan host (key leaf, value bytes)
FLANNEL_DUAL_KEY = "/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64"
FLANNEL_DUAL_VALUE = (b'{"PublicIP":"198.18.0.11","PublicIPv6":"fd00:198:18::11",'
                      b'"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"},'
                      b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}}')


def test_dual_stack_key_and_value_byte_for_byte() -> None:
    lease = Lease(N("10.244.3.0/24"), ME, "vxlan", VXLAN, ipv6_subnet=N6("fd00:10:244:3::/64"),
                  public_ipv6=ME6, backend_v6_data=VXLAN6)
    assert lease_key(P, lease) == FLANNEL_DUAL_KEY
    assert encode_lease(lease) == FLANNEL_DUAL_VALUE
    back = decode_lease(FLANNEL_DUAL_KEY, FLANNEL_DUAL_VALUE)
    assert back == lease


def test_ipv4_only_value_unchanged() -> None:
    lease = Lease(N("10.244.3.0/24"), ME, "vxlan", VXLAN)
    assert lease_key(P, lease) == "/coreos.com/network/subnets/10.244.3.0-24"
    assert encode_lease(lease) == (b'{"PublicIP":"198.18.0.11","PublicIPv6":null,'
                                   b'"BackendType":"vxlan","BackendData":{"VNI":1,'
                                   b'"VtepMAC":"0e:11:22:33:44:55"}}')


def test_ipv6_only_key_keeps_flannel_zero_ipv4_half() -> None:
    lease = Lease(N("0.0.0.0/0"), A("0.0.0.0"), "vxlan", {}, ipv6_subnet=N6("fd00:9:0:2::/64"),
                  public_ipv6=ME6, backend_v6_data=VXLAN6)
    assert lease_key(P, lease) == "/coreos.com/network/subnets/0.0.0.0-0&fd00:9:0:2::-64"
    assert encode_lease(lease) == (b'{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::11",'
                                   b'"BackendType":"vxlan",'
                                   b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}}')


def test_empty_backend_fields_are_left_out_as_flannel_omitempty() -> None:
    """flannel's LeaseAttrs: BackendType/BackendData/BackendV6Data are omitempty."""
    hostgw = Lease(N("10.9.0.64/26"), A("10.0.0.1"), "host-gw", {})
    assert encode_lease(hostgw) == (b'{"PublicIP":"10.0.0.1","PublicIPv6":null,'
                                    b'"BackendType":"host-gw"}')
    udp = Lease(N("10.9.0.64/26"), A("10.0.0.1"), "", {})
    assert encode_lease(udp) == b'{"PublicIP":"10.0.0.1","PublicIPv6":null}'
    back = decode_lease(f"{P}/subnets/10.9.0.64-26", encode_lease(udp))
    assert (back.backend_type, dict(back.backend_data)) == ("", {})


@pytest.mark.parametrize(("leaf", "want6"), [
    ("10.1.2.0-24", None),
    ("10.1.2.0-24&fd00::-64", "fd00::/64"),
    ("10.1.2.0-24&2001:db8:0:1::-64", "2001:db8:0:1::/64"),  # single zero group kept
    ("10.1.2.0-24&fd00:1:2:3:4:5:6:0-126", "fd00:1:2:3:4:5:6:0/126"),
])
def test_parse_subnet_keys(leaf: str, want6: str | None) -> None:
    sn4, sn6 = parse_subnet_keys(f"{P}/subnets/{leaf}")
    assert sn4 == N("10.1.2.0/24")
    assert sn6 == (None if want6 is None else N6(want6))
    if sn6 is not None:  # and we print it back exactly as flannel keyed it
        assert subnet_key(P, sn4, sn6) == f"{P}/subnets/{leaf}"


@pytest.mark.parametrize("leaf", ["10.1.2.0-24&fd00::", "10.1.2.0-24&zz::-64",
                                  "10.1.2.0-24&fd00::-200"])
def test_bad_ipv6_key_half_is_named(leaf: str) -> None:
    with pytest.raises(LeaseFormatError, match="bad IPv6 subnet"):
        parse_subnet_keys(f"{P}/subnets/{leaf}")


@pytest.mark.parametrize(("value", "words"), [
    (b'{"PublicIP":"198.18.0.11","PublicIPv6":"10.0.0.1"}', "PublicIPv6"),
    (b'{"PublicIP":"198.18.0.11","PublicIPv6":7}', "PublicIPv6"),
    (b'{"PublicIP":"198.18.0.11","BackendV6Data":[1]}', "BackendV6Data"),
])
def test_bad_ipv6_value_fields_are_named(value: bytes, words: str) -> None:
    with pytest.raises(LeaseFormatError, match=words):
        decode_lease(FLANNEL_DUAL_KEY, value)


def _dual(v4: str, v6: str, ip: str, ip6: str | None = None) -> Lease:
    return Lease(N(v4), A(ip), "vxlan", VXLAN, ipv6_subnet=N6(v6),
                 public_ipv6=None if ip6 is None else A6(ip6))


def test_choose_picks_both_halves_and_reuses_both() -> None:
    others = [_dual("10.9.0.64/26", "fd00:9:0:1::/64", "198.18.0.12")]
    got = choose_subnet(DUAL, others, ME, random.Random(1))
    assert got.reason is Reason.RANDOM
    assert got.subnet in (N("10.9.0.128/26"), N("10.9.0.192/26"))
    assert got.subnet6 in (N6("fd00:9:0:2::/64"), N6("fd00:9:0:3::/64"))
    mine = _dual("10.9.0.128/26", "fd00:9:0:3::/64", str(ME))
    again = choose_subnet(DUAL, [*others, mine], ME, random.Random(1))
    assert (again.reason, again.subnet, again.subnet6, again.existing) == (
        Reason.REUSED, mine.subnet, mine.ipv6_subnet, mine)


@pytest.mark.parametrize("previous", [N("10.9.0.128/26"), None],
                         ids=["subnet-file", "old-lease-only"])
def test_turning_ipv6_on_keeps_the_ipv4_subnet(previous: N | None) -> None:
    """The IPv4-only lease is stale (replaced by a dual-stack one), but its IPv4 half
    stays: pods keep their addresses when a cluster goes dual-stack."""
    old = Lease(N("10.9.0.128/26"), ME, "vxlan", VXLAN)  # written before EnableIPv6
    other = _dual("10.9.0.64/26", "fd00:9:0:1::/64", "198.18.0.12")
    got = choose_subnet(DUAL, [old, other], ME, random.Random(1), previous=previous)
    assert got.stale == (old,)
    assert (got.reason, got.subnet) == (Reason.PREVIOUS, old.subnet)
    assert got.subnet6 is not None and got.subnet6 != other.ipv6_subnet


def test_turning_ipv4_off_keeps_the_ipv6_subnet() -> None:
    old = _dual("10.9.0.128/26", "fd00:9:0:3::/64", str(ME))
    old = Lease(old.subnet, ME, "vxlan", VXLAN, ipv6_subnet=old.ipv6_subnet, public_ipv6=ME6)
    got = choose_subnet(V6ONLY, [old], A("0.0.0.0"), random.Random(1), public_ipv6=ME6)
    assert got.stale == (old,)
    assert (got.reason, got.subnet, got.subnet6) == (
        Reason.PREVIOUS, N("0.0.0.0/0"), old.ipv6_subnet)


def test_previous_halves_count_each_on_its_own() -> None:
    prev, prev6 = N("10.9.0.192/26"), N6("fd00:9:0:2::/64")
    got = choose_subnet(DUAL, [], ME, random.Random(1), prev, previous6=prev6)
    assert (got.reason, got.subnet, got.subnet6) == (Reason.PREVIOUS, prev, prev6)
    taken6 = [_dual("10.9.0.64/26", "fd00:9:0:2::/64", "198.18.0.12")]
    got = choose_subnet(DUAL, taken6, ME, random.Random(1), prev, previous6=prev6)
    assert (got.reason, got.subnet) == (Reason.PREVIOUS, prev)  # IPv4 half kept
    assert got.subnet6 not in (None, prev6)  # IPv6 half drawn again
    taken4 = [_dual("10.9.0.192/26", "fd00:9:0:1::/64", "198.18.0.12")]
    got = choose_subnet(DUAL, taken4, ME, random.Random(1), prev, previous6=prev6)
    assert (got.reason, got.subnet6) == (Reason.PREVIOUS, prev6)
    assert got.subnet != prev


def test_ipv6_full_names_the_ipv6_network() -> None:
    full = [_dual("10.9.0.64/26", f"fd00:9:0:{i}::/64", f"198.18.0.{20 + i}") for i in (1, 2, 3)]
    with pytest.raises(NetworkFullError, match="IPv6Network fd00:9::/62"):
        choose_subnet(DUAL, full, ME, random.Random(1))


def test_ipv6_only_host_is_known_by_public_ipv6() -> None:
    zero = A("0.0.0.0")
    mine = Lease(N("0.0.0.0/0"), zero, "vxlan", {}, ipv6_subnet=N6("fd00:9:0:3::/64"),
                 public_ipv6=ME6)
    other = Lease(N("0.0.0.0/0"), zero, "vxlan", {}, ipv6_subnet=N6("fd00:9:0:1::/64"),
                  public_ipv6=A6("fd00:198:18::12"))
    got = choose_subnet(V6ONLY, [other, mine], zero, random.Random(1), public_ipv6=ME6)
    assert (got.reason, got.subnet6) == (Reason.REUSED, mine.ipv6_subnet)
    new = choose_subnet(V6ONLY, [other, mine], zero, random.Random(1),
                        public_ipv6=A6("fd00:198:18::13"))
    assert (new.reason, new.subnet, new.subnet6) == (Reason.RANDOM, N("0.0.0.0/0"),
                                                     N6("fd00:9:0:2::/64"))


async def test_manager_dual_stack_race_restart_and_renew() -> None:
    store = RacingStore(1)
    mgr = LeaseManager(store, P, 60, random.Random(5))
    got = await mgr.acquire(DUAL, ME, "vxlan", VXLAN, public_ipv6=ME6, backend_v6_data=VXLAN6)
    own = got.lease
    assert own.ipv6_subnet is not None and DUAL.fits6(own.ipv6_subnet)
    listing = await mgr.list()
    keys = sorted(kv.key.decode() for kv in listing.items)
    assert len(keys) == 2 and all("&fd00:9:0:" in k for k in keys)
    kv = await store.get(lease_key(P, own).encode())
    assert kv is not None and decode_lease(kv.key.decode(), kv.value).public_ipv6 == ME6
    assert b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}' in kv.value
    # the race loser avoided both halves the winner holds
    rival = next(decode_lease(k.key.decode(), k.value) for k in listing.items
             if k.key.decode() != lease_key(P, own))
    assert (rival.subnet, rival.ipv6_subnet) != (own.subnet, own.ipv6_subnet)
    assert rival.ipv6_subnet != own.ipv6_subnet
    await mgr.renew(own)
    # a restart (new manager, same PublicIP) re-puts the same dual-stack key
    again = await LeaseManager(store, P, 60, random.Random(9)).acquire(
        DUAL, ME, "vxlan", VXLAN, public_ipv6=ME6, backend_v6_data=VXLAN6)
    assert again.reason is Reason.REUSED
    assert (again.lease.subnet, again.lease.ipv6_subnet) == (own.subnet, own.ipv6_subnet)
    assert len((await mgr.list()).items) == 2

"""vxlan and host-gw backends' IPv6 half over the fake kernel: devices, addresses, peers."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.backend.base import BackendError, ExternalInterface
from overlay.backend.hostgw import HostGwBackend, HostGwConfig
from overlay.backend.netlink import KernelThread, external_interface
from overlay.backend.plan import Fdb, Neigh, Route, derive_vtep_mac
from overlay.backend.registry import make_backend
from overlay.backend.vxlan import VxlanBackend, VxlanConfig
from overlay.lease.model import Lease
from tests.fakekernel import FakeKernel

N, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
ZERO = N("0.0.0.0/0")
PUB6 = A6("fd00:198:18::11")


def fake(v4: bool = True) -> tuple[FakeKernel, KernelThread, ExternalInterface]:
    k = FakeKernel()
    addrs: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
        ipaddress.IPv6Interface("fd00:198:18::11/64"), ipaddress.IPv6Interface("fe80::1/64")]
    if v4:
        addrs.append(ipaddress.IPv4Interface("198.18.0.11/24"))
    k.add_link("eth0", addrs=addrs)
    return k, KernelThread(lambda: k), external_interface("eth0", kernel=k)


def lease(i: int, btype: str = "vxlan", v4: bool = True, v6: bool = True) -> Lease:
    pub6 = A6(f"fd00:198:18::{10 + i}")
    pub4 = A(f"198.18.0.{10 + i}")
    return Lease(N(f"10.244.{i}.0/24") if v4 else ZERO, pub4 if v4 else A("0.0.0.0"), btype,
                 {"VNI": 1, "VtepMAC": derive_vtep_mac(pub4, 1)} if v4 and btype == "vxlan"
                 else {},
                 ipv6_subnet=N6(f"fd00:10:244:{i}::/64") if v6 else None,
                 public_ipv6=pub6 if v6 else None,
                 backend_v6_data={"VNI": 1, "VtepMAC": derive_vtep_mac(pub6, 1)}
                 if v6 and btype == "vxlan" else {})


def test_external_interface_finds_ipv6() -> None:
    _, _, ext = fake()
    assert (ext.iface_ipv6, ext.public_ipv6) == (PUB6, PUB6)  # link-local skipped
    k2, _, ext6 = fake(v4=False)
    assert ext6.ip == A("0.0.0.0") and ext6.iface_ipv6 == PUB6
    by_ip = external_interface("fd00:198:18::11", kernel=k2, public_ipv6=A6("2001:db8::1"))
    assert (by_ip.name, by_ip.public_ipv6) == ("eth0", A6("2001:db8::1"))


async def test_vxlan_dual_stack_devices_addresses_and_peers() -> None:
    k, kt, ext = fake()
    b = make_backend("vxlan", {}, ext, kernel=kt, network=N("10.244.0.0/16"),
                     network6=N6("fd00:10:244::/48"))
    assert await b.prepare() == {"VNI": 1, "VtepMAC": derive_vtep_mac(A("198.18.0.11"), 1)}
    assert await b.prepare_v6() == {"VNI": 1, "VtepMAC": derive_vtep_mac(PUB6, 1)}
    v6 = k.links["flannel-v6.1"]
    assert v6.vxlan is not None and v6.vxlan.local == PUB6 and v6.mtu == 1430
    assert b.mtu == 1450  # FLANNEL_MTU stays the IPv4 device's, as flannel's
    await b.attach(lease(1))
    assert k.link("flannel-v6.1").addresses6 == (ipaddress.IPv6Interface("fd00:10:244:1::/128"),)
    assert k.link("flannel.1").addresses == (ipaddress.IPv4Interface("10.244.1.0/32"),)
    peers = [lease(2), lease(3, v6=False), lease(4, v4=False)]
    r = await b.reconcile(peers)
    assert r.errors == () and r.added == 4 and r.peers == 3  # each peer lease once
    gw = A6("fd00:10:244:2::")
    mac2 = derive_vtep_mac(A6("fd00:198:18::12"), 1)
    assert Neigh(gw, mac2) in k.state.neighs
    assert Fdb(mac2, A6("fd00:198:18::12")) in k.state.fdbs
    assert Route(N6("fd00:10:244:2::/64"), "flannel-v6.1", gw, True) in k.state.routes
    assert {r.dst for r in k.state.routes} == {
        N("10.244.2.0/24"), N("10.244.3.0/24"), N6("fd00:10:244:2::/64"),
        N6("fd00:10:244:4::/64")}
    k.calls.clear()
    r = await b.reconcile(peers)
    assert (r.added, r.removed, r.changed) == (0, 0, 0)
    assert k.calls == ["observe", "observe6"]  # in sync: nothing sent
    # a peer gone: both of its halves go, the others stay
    r = await b.reconcile(peers[1:])
    assert r.removed == 2
    assert {r.dst for r in k.state.routes} == {N("10.244.3.0/24"), N6("fd00:10:244:4::/64")}
    # someone deletes flannel-v6.1: recreated with the same MAC, its peers and address back
    k.delete_link(k.links["flannel-v6.1"].index)
    r = await b.reconcile(peers[1:])
    assert r.added == 1 and k.links["flannel-v6.1"].mac == derive_vtep_mac(PUB6, 1)
    assert k.link("flannel-v6.1").addresses6 == (ipaddress.IPv6Interface("fd00:10:244:1::/128"),)
    await b.close()


async def test_vxlan_ipv6_only_has_no_ipv4_device() -> None:
    k, kt, ext = fake(v4=False)
    b = VxlanBackend(VxlanConfig(), ext, kt)
    await b.prepare_v6()  # the daemon calls prepare() only with EnableIPv4
    assert "flannel.1" not in k.links and b.mtu == 1430
    await b.attach(lease(1, v4=False))
    r = await b.reconcile([lease(2, v4=False), lease(3, v4=False)])
    assert r.peers == 2 and all(rt.dst.version == 6 for rt in k.state.routes)
    assert k.calls.count("observe") == 0
    await b.close()


async def test_vxlan_v6_stale_peers_removed_at_start() -> None:
    k, kt, ext = fake()
    old = VxlanBackend(VxlanConfig(), ext, kt)
    await old.prepare()
    await old.prepare_v6()
    await old.attach(lease(1))
    await old.reconcile([lease(2), lease(3)])
    # a new daemon run finds peer 3 gone while it was down: removed on its first pass
    new = VxlanBackend(VxlanConfig(), ext, KernelThread(lambda: k))
    await new.prepare()
    await new.prepare_v6()
    await new.attach(lease(1))
    r = await new.reconcile([lease(2)])
    assert r.removed == 2
    assert {n.ip for n in k.state.neighs} == {A("10.244.2.0"), A6("fd00:10:244:2::")}
    await old.close()
    await new.close()


async def test_vxlan_v6_refuses_without_ipv6_address() -> None:
    k = FakeKernel()
    k.add_link("eth0", addrs=[ipaddress.IPv4Interface("198.18.0.11/24")])
    b = VxlanBackend(VxlanConfig(), external_interface("eth0", kernel=k),
                     KernelThread(lambda: k))
    with pytest.raises(BackendError, match="EnableIPv6 needs an IPv6 address on eth0"):
        await b.prepare_v6()
    await b.close()


async def test_vxlan_v6_direct_routing() -> None:
    k, kt, ext = fake()
    b = VxlanBackend(VxlanConfig(direct_routing=True), ext, kt)
    await b.prepare_v6()
    await b.attach(lease(1))
    far = Lease(N("10.244.5.0/24"), A("203.0.113.5"), "vxlan", {},
                ipv6_subnet=N6("fd00:10:244:5::/64"), public_ipv6=A6("2001:db8::5"),
                backend_v6_data={"VtepMAC": "0e:00:00:00:00:05"})
    await b.reconcile([lease(2), far])
    assert Route(N6("fd00:10:244:2::/64"), "eth0", A6("fd00:198:18::12")) in k.state.routes
    assert Route(N6("fd00:10:244:5::/64"), "flannel-v6.1", A6("fd00:10:244:5::"),
                 True) in k.state.routes
    await b.close()


async def test_hostgw_v6_routes_and_nat_refusal() -> None:
    k, kt, ext = fake()
    b = HostGwBackend(HostGwConfig(), ext, kt, network6=N6("fd00:10:244::/48"))
    await b.prepare()
    assert await b.prepare_v6() == {}
    await b.attach(lease(1, "host-gw"))
    r = await b.reconcile([lease(2, "host-gw"), lease(3, "host-gw", v4=False)])
    assert r.errors == () and r.peers == 2
    assert k.state.routes == frozenset({
        Route(N("10.244.2.0/24"), "eth0", A("198.18.0.12")),
        Route(N6("fd00:10:244:2::/64"), "eth0", A6("fd00:198:18::12")),
        Route(N6("fd00:10:244:3::/64"), "eth0", A6("fd00:198:18::13"))})
    nat = HostGwBackend(HostGwConfig(), external_interface(
        "eth0", kernel=k, public_ipv6=A6("2001:db8::7")), KernelThread(lambda: k))
    with pytest.raises(BackendError, match=r"2001:db8::7 is not an address of eth0"):
        await nat.prepare_v6()
    await b.close()
    await nat.close()


async def test_udp_is_ipv4_only() -> None:
    _, kt, ext = fake()
    b = make_backend("udp", {}, ext, kernel=kt, network6=N6("fd00:10:244::/48"))
    with pytest.raises(BackendError, match="IPv4-only"):
        await b.prepare_v6()
    await b.close()

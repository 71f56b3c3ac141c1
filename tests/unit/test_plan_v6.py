"""The route plan's IPv6 half: flannel-v6.<VNI> and host-gw v6 entries, mixed clusters (pure)."""

from __future__ import annotations

import ipaddress

from overlay.backend.plan import (
    Fdb,
    KernelState,
    Neigh,
    OpKind,
    Route,
    VxlanSettings,
    derive_vtep_mac,
    desired_hostgw,
    desired_vxlan,
    diff,
    lease_half,
    within,
)
from overlay.lease.model import Lease

N, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
MAC4, MAC6 = "0e:00:00:00:00:04", "0e:00:00:00:00:06"
ZERO = N("0.0.0.0/0")
SET6 = VxlanSettings("flannel-v6.1", "eth0", family=6)
SET4 = VxlanSettings("flannel.1", "eth0")


def dual(i: int, btype: str = "vxlan", v4: bool = True, v6: bool = True,
         mac6: object = MAC6) -> Lease:
    return Lease(N(f"10.244.{i}.0/24") if v4 else ZERO,
                 A(f"198.18.0.{10 + i}") if v4 else A("0.0.0.0"), btype,
                 {"VNI": 1, "VtepMAC": MAC4} if v4 and btype == "vxlan" else {},
                 ipv6_subnet=N6(f"fd00:10:244:{i}::/64") if v6 else None,
                 public_ipv6=A6(f"fd00:198:18::{10 + i}") if v6 else None,
                 backend_v6_data={"VNI": 1, "VtepMAC": mac6} if v6 and btype == "vxlan" else {})


OWN = dual(1)


def test_lease_halves() -> None:
    assert lease_half(dual(2, v6=False), 6) is None
    assert lease_half(dual(2, v4=False), 4) is None  # IPv6-only: flannel's 0.0.0.0/0 half
    h = lease_half(dual(2), 6)
    assert h is not None and (h.subnet, h.public_ip) == (N6("fd00:10:244:2::/64"),
                                                         A6("fd00:198:18::12"))


def test_vxlan_v6_peer_gets_flannel_layout() -> None:
    plan = desired_vxlan(OWN, [dual(2)], SET6)
    gw = A6("fd00:10:244:2::")
    assert plan.state == KernelState(
        frozenset({Neigh(gw, MAC6)}), frozenset({Fdb(MAC6, A6("fd00:198:18::12"))}),
        frozenset({Route(N6("fd00:10:244:2::/64"), "flannel-v6.1", gw, onlink=True)}))
    assert plan.peers == 1 and plan.problems == ()
    # the IPv4 half of the same leases is the IPv4 layout, untouched by the IPv6 one
    plan4 = desired_vxlan(OWN, [dual(2)], SET4)
    assert {r.dst for r in plan4.state.routes} == {N("10.244.2.0/24")}


def test_mixed_cluster_each_peer_gets_only_its_halves() -> None:
    peers = [dual(2), dual(3, v6=False), dual(4, v4=False), dual(5, v4=False)]
    six = desired_vxlan(OWN, peers, SET6)
    four = desired_vxlan(OWN, peers, SET4)
    assert {r.dst for r in six.state.routes} == {N6(f"fd00:10:244:{i}::/64") for i in (2, 4, 5)}
    # IPv6-only peers all have 0.0.0.0/0 as IPv4 subnet: none of them is an IPv4 peer
    assert {r.dst for r in four.state.routes} == {N("10.244.2.0/24"), N("10.244.3.0/24")}
    assert six.problems == four.problems == ()


def test_ipv6_only_own_lease_excludes_itself_by_its_v6_subnet() -> None:
    own = dual(1, v4=False)
    plan = desired_vxlan(own, [own, dual(2, v4=False)], SET6)
    assert {r.dst for r in plan.state.routes} == {N6("fd00:10:244:2::/64")}
    assert desired_vxlan(own, [dual(2, v4=False)], SET4).state == KernelState()


def test_v6_problems_name_the_v6_field() -> None:
    bad = dual(2, mac6="nope")
    nopub = Lease(N("10.244.3.0/24"), A("198.18.0.13"), "vxlan", {"VtepMAC": MAC4},
                  ipv6_subnet=N6("fd00:10:244:3::/64"))
    plan = desired_vxlan(OWN, [bad, nopub], SET6)
    assert plan.state == KernelState() and plan.peers == 0
    assert sorted(str(p) for p in plan.problems) == [
        "peer fd00:10:244:2::/64: BackendV6Data.VtepMAC 'nope' is not a unicast MAC address",
        "peer fd00:10:244:3::/64: has no PublicIPv6"]


def test_direct_routing_v6_for_peers_on_the_link() -> None:
    s = VxlanSettings("flannel-v6.1", "eth0", (N6("fd00:198:18::/64"),), True, family=6)
    far = Lease(N("10.244.3.0/24"), A("198.18.0.13"), "vxlan", {"VtepMAC": MAC4},
                ipv6_subnet=N6("fd00:10:244:3::/64"), public_ipv6=A6("fd00:99::13"),
                backend_v6_data={"VtepMAC": MAC6})
    plan = desired_vxlan(OWN, [dual(2), far], s)
    assert plan.state.routes == frozenset({
        Route(N6("fd00:10:244:2::/64"), "eth0", A6("fd00:198:18::12")),
        Route(N6("fd00:10:244:3::/64"), "flannel-v6.1", A6("fd00:10:244:3::"), onlink=True)})
    assert plan.state.fdbs == frozenset({Fdb(MAC6, A6("fd00:99::13"))})


def test_hostgw_v6() -> None:
    peers = [dual(2, "host-gw"), dual(3, "host-gw", v6=False), dual(4, "vxlan")]
    plan = desired_hostgw(OWN, peers, "eth0", family=6)
    assert plan.state.routes == frozenset(
        {Route(N6("fd00:10:244:2::/64"), "eth0", A6("fd00:198:18::12"))})
    assert plan.peers == 1


def test_diff_handles_both_families_and_within_splits_them() -> None:
    want = desired_vxlan(OWN, [dual(2)], SET6).state
    stale = dual(7)
    stale_state = desired_vxlan(OWN, [stale], SET6).state
    v4 = desired_vxlan(OWN, [dual(2)], SET4).state
    observed = KernelState(stale_state.neighs | v4.neighs, stale_state.fdbs | v4.fdbs,
                           stale_state.routes | v4.routes)
    ops = diff(want, within(observed, N6("fd00:10:244::/48"), 6))
    kinds = [o.kind for o in ops]
    # the stale v6 peer goes (route first), the new one comes; IPv4 entries are not this pass's
    assert kinds == [OpKind.ROUTE_DEL, OpKind.NEIGH_SET, OpKind.FDB_ADD, OpKind.ROUTE_SET,
                     OpKind.NEIGH_DEL, OpKind.FDB_DEL]
    assert all(getattr(o.entry, "dst", getattr(o.entry, "ip", None)).version == 6
               for o in ops)
    # same MAC, both families (a peer's v6 MAC equal to its v4 one): sorts without error
    mixed = KernelState(fdbs=frozenset({Fdb(MAC4, A("198.18.0.12")),
                                        Fdb(MAC4, A6("fd00:198:18::12"))}))
    assert len(diff(mixed, KernelState())) == 2
    # a v4 network filter never drops v6 routes it cannot judge, and keeps only its family
    assert within(observed, N("10.244.0.0/16")).routes == v4.routes


def test_vtep_mac_v6_is_stable_and_distinct() -> None:
    a = derive_vtep_mac(A6("fd00:198:18::11"), 1)
    assert a == derive_vtep_mac(A6("fd00:198:18::11"), 1)
    assert a != derive_vtep_mac(A("198.18.0.11"), 1)

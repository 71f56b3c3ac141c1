"""Route plan: desired entries per backend and the ordered diff (pure, table-driven)."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.backend.plan import (
    Fdb,
    KernelState,
    Neigh,
    OpKind,
    Route,
    VxlanSettings,
    derive_vtep_mac,
    desired_hostgw,
    desired_udp,
    desired_vxlan,
    diff,
    normalize_mac,
)
from overlay.lease.model import Lease

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
MAC1, MAC2, MAC3 = "0e:00:00:00:00:01", "0e:00:00:00:00:02", "0e:00:00:00:00:03"


def vx(subnet: str, ip: str, mac: str | None = MAC1, btype: str = "vxlan") -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac is not None else {}
    return Lease(N(subnet), A(ip), btype, data)


OWN = vx("10.244.1.0/24", "198.18.0.11")
SET = VxlanSettings("flannel.1", "eth0")


def vx_entries(subnet: str, ip: str, mac: str) -> tuple[Neigh, Fdb, Route]:
    gw = N(subnet).network_address
    return Neigh(gw, mac), Fdb(mac, A(ip)), Route(N(subnet), "flannel.1", gw, onlink=True)


def test_vxlan_peer_gets_neigh_fdb_and_onlink_route() -> None:
    plan = desired_vxlan(OWN, [vx("10.244.2.0/24", "198.18.0.12", MAC2)], SET)
    n, f, r = vx_entries("10.244.2.0/24", "198.18.0.12", MAC2)
    assert plan.state == KernelState(frozenset({n}), frozenset({f}), frozenset({r}))
    assert plan.peers == 1 and plan.problems == ()


@pytest.mark.parametrize("peers,expect_peers,problems", [
    pytest.param([OWN], 0, 0, id="own-lease-ignored"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12", btype="host-gw")], 0, 0,
                 id="other-backend-type-ignored"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12", mac=None)], 0, 1, id="missing-mac"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12", mac="zz:zz")], 0, 1, id="garbage-mac"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12", mac="01:00:5e:00:00:01")], 0, 1,
                 id="multicast-mac"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12", mac="0E:00:00:00:00:AA")], 1, 0,
                 id="uppercase-mac-normalized"),
    pytest.param([vx("10.244.2.0/24", "198.18.0.12"), vx("10.244.3.0/24", "198.18.0.13",
                                                        mac="bad")], 1, 1,
                 id="bad-peer-does-not-stop-good-one"),
])
def test_vxlan_peer_filtering(peers: list[Lease], expect_peers: int, problems: int) -> None:
    plan = desired_vxlan(OWN, peers, SET)
    assert plan.peers == expect_peers
    assert len(plan.problems) == problems
    assert len(plan.state.routes) == expect_peers


@pytest.mark.parametrize("peer_ip,direct", [
    pytest.param("198.18.0.12", True, id="same-l2-direct"),
    pytest.param("203.0.113.9", False, id="other-subnet-encapsulated"),
])
def test_direct_routing(peer_ip: str, direct: bool) -> None:
    s = VxlanSettings("flannel.1", "eth0", (N("198.18.0.0/24"),), direct_routing=True)
    plan = desired_vxlan(OWN, [vx("10.244.2.0/24", peer_ip)], s)
    if direct:
        assert plan.state == KernelState(
            routes=frozenset({Route(N("10.244.2.0/24"), "eth0", A(peer_ip))}))
    else:
        assert {r.dev for r in plan.state.routes} == {"flannel.1"}
        assert len(plan.state.neighs) == len(plan.state.fdbs) == 1


def test_hostgw_and_udp_plans() -> None:
    peers = [Lease(N("10.244.2.0/24"), A("198.18.0.12"), "host-gw"),
             Lease(N("10.244.3.0/24"), A("198.18.0.13"), "vxlan")]
    plan = desired_hostgw(OWN, peers, "eth0")
    assert plan.state.routes == frozenset({Route(N("10.244.2.0/24"), "eth0", A("198.18.0.12"))})
    udp = desired_udp(N("10.244.0.0/16"), "flannel0")
    assert udp.state.routes == frozenset({Route(N("10.244.0.0/16"), "flannel0")})


def kinds(ops: tuple) -> list[str]:  # type: ignore[type-arg]
    return [f"{o.kind.value}{'*' if o.change else ''}" for o in ops]


P2 = vx_entries("10.244.2.0/24", "198.18.0.12", MAC2)
P3 = vx_entries("10.244.3.0/24", "198.18.0.13", MAC3)
P2_NEWMAC = vx_entries("10.244.2.0/24", "198.18.0.12", MAC1)
FOREIGN = Route(N("10.9.0.0/24"), "eth0", A("198.18.0.1"))


def st(*entries: tuple[Neigh, Fdb, Route]) -> KernelState:
    return KernelState(frozenset(e[0] for e in entries), frozenset(e[1] for e in entries),
                       frozenset(e[2] for e in entries))


@pytest.mark.parametrize("desired,observed,expected", [
    pytest.param(st(P2), st(), ["neigh-set", "fdb-add", "route-set"], id="add-route-last"),
    pytest.param(st(), st(P2), ["route-del", "neigh-del", "fdb-del"], id="remove-route-first"),
    pytest.param(st(P2), st(P2), [], id="in-sync-no-ops"),
    pytest.param(st(P2_NEWMAC), st(P2), ["neigh-set*", "fdb-add", "fdb-del"],
                 id="changed-mac-replaces-neigh-and-drops-old-fdb"),
    pytest.param(st(P2, P3), st(P3), ["neigh-set", "fdb-add", "route-set"], id="one-missing"),
    pytest.param(st(P3), st(P2, P3), ["route-del", "neigh-del", "fdb-del"], id="one-stale"),
    pytest.param(KernelState(routes=frozenset({Route(N("10.244.2.0/24"), "eth0",
                                                     A("198.18.0.12"))})),
                 st(P2), ["route-set*", "neigh-del", "fdb-del"],
                 id="switch-to-direct-routing"),
])
def test_diff_order(desired: KernelState, observed: KernelState, expected: list[str]) -> None:
    assert kinds(diff(desired, observed)) == expected


def test_diff_gateway_change_is_route_replace() -> None:
    old = KernelState(routes=frozenset({Route(N("10.244.2.0/24"), "eth0", A("198.18.0.12"))}))
    new = KernelState(routes=frozenset({Route(N("10.244.2.0/24"), "eth0", A("198.18.0.22"))}))
    ops = diff(new, old)
    assert [(o.kind, o.change) for o in ops] == [(OpKind.ROUTE_SET, True)]


def test_diff_result_applied_reaches_desired() -> None:
    """Applying the ops to the observed sets (as the kernel would) yields the desired state."""
    observed = st(P2, P3)
    desired = st(P2_NEWMAC)
    n, f, r = set(observed.neighs), set(observed.fdbs), set(observed.routes)
    for op in diff(desired, observed):
        e = op.entry
        if op.kind is OpKind.ROUTE_DEL:
            r.discard(e)  # type: ignore[arg-type]
        elif op.kind is OpKind.ROUTE_SET:
            r = {x for x in r if x.dst != e.dst} | {e}  # type: ignore[union-attr,arg-type]
        elif op.kind is OpKind.NEIGH_SET:
            n = {x for x in n if x.ip != e.ip} | {e}  # type: ignore[union-attr,arg-type]
        elif op.kind is OpKind.NEIGH_DEL:
            n.discard(e)  # type: ignore[arg-type]
        elif op.kind is OpKind.FDB_ADD:
            f.add(e)  # type: ignore[arg-type]
        else:
            f.discard(e)  # type: ignore[arg-type]
    assert KernelState(frozenset(n), frozenset(f), frozenset(r)) == desired
    assert FOREIGN not in r


@pytest.mark.parametrize("value,expected", [
    pytest.param("0E:AA:bb:01:02:03", "0e:aa:bb:01:02:03", id="upper"),
    pytest.param("00:00:00:00:00:00", None, id="zero"),
    pytest.param("ff:ff:ff:ff:ff:ff", None, id="broadcast"),
    pytest.param(12, None, id="not-a-string"),
    pytest.param("0e:aa:bb:01:02", None, id="short"),
])
def test_normalize_mac(value: object, expected: str | None) -> None:
    assert normalize_mac(value) == expected


def test_vtep_mac_is_stable_local_unicast_and_distinct() -> None:
    a = derive_vtep_mac(A("198.18.0.11"), 1)
    assert a == derive_vtep_mac(A("198.18.0.11"), 1)
    assert a != derive_vtep_mac(A("198.18.0.12"), 1)
    assert a != derive_vtep_mac(A("198.18.0.11"), 2)
    first = int(a[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert normalize_mac(a) == a


@pytest.mark.parametrize("network,kept", [
    pytest.param(None, 2, id="no-network-all-routes"),
    pytest.param(N("10.244.0.0/16"), 1, id="only-inside-network"),
    pytest.param(N("10.99.0.0/16"), 1, id="other-daemons-network"),
])
def test_within_scopes_owned_routes_to_the_network(network: N | None, kept: int) -> None:
    from overlay.backend.plan import within

    observed = KernelState(routes=frozenset({P2[2], FOREIGN.__class__(N("10.99.1.0/24"), "eth0",
                                                                      A("198.18.0.9"))}))
    assert len(within(observed, network).routes) == kept

"""Backend JSON validation (registry) and the backends' apply layer over FakeKernel."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from overlay.backend.base import BackendConfigError, BackendError, ExternalInterface
from overlay.backend.hostgw import HostGwBackend, HostGwConfig
from overlay.backend.netlink import KernelThread, external_interface
from overlay.backend.plan import ROUTE_PROTO, OpKind, Route, derive_vtep_mac
from overlay.backend.registry import (
    BACKEND_TYPES,
    lease_backend_type,
    make_backend,
    parse_backend,
)
from overlay.backend.udpconfig import UdpConfig
from overlay.backend.vxlan import VxlanBackend, VxlanConfig
from overlay.lease.model import Lease
from tests.fakekernel import FakeKernel

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
EXT = ExternalInterface("eth0", 2, A("198.18.0.11"), A("198.18.0.11"), 1500)


@pytest.mark.parametrize("btype,cfg,expected", [
    pytest.param(None, {}, VxlanConfig(), id="no-backend-means-vxlan"),
    pytest.param(None, {"Type": "vxlan"}, VxlanConfig(), id="vxlan-defaults"),
    pytest.param("vxlan", {"VNI": 42, "Port": 4789, "DirectRouting": True},
                 VxlanConfig(vni=42, port=4789, direct_routing=True), id="vxlan-fields"),
    pytest.param("vxlan", {"Port": 0, "VNI": 0}, VxlanConfig(), id="zero-means-default"),
    pytest.param("vxlan", {"MTU": 9000}, VxlanConfig(mtu=9000), id="vxlan-mtu"),
    pytest.param("vxlan", {"Unknown": 1}, VxlanConfig(), id="unknown-keys-ignored"),
    pytest.param("host-gw", {}, HostGwConfig(), id="host-gw"),
    pytest.param("udp", {}, UdpConfig(port=8285), id="udp-default-port"),
    pytest.param("udp", {"Port": 9999}, UdpConfig(port=9999), id="udp-port"),
])
def test_parse_ok(btype: str | None, cfg: dict[str, Any], expected: object) -> None:
    assert parse_backend(btype, cfg) == expected


@pytest.mark.parametrize("btype,cfg,field", [
    pytest.param(None, {"Type": "wireguard"}, "Type", id="unsupported-type"),
    pytest.param("bogus", {}, "Type", id="unknown-type"),
    pytest.param("vxlan", {"VNI": "one"}, "VNI", id="vni-not-int"),
    pytest.param("vxlan", {"VNI": 1 << 24}, "VNI", id="vni-too-big"),
    pytest.param("vxlan", {"VNI": True}, "VNI", id="vni-bool"),
    pytest.param("vxlan", {"Port": 70000}, "Port", id="port-range"),
    pytest.param("vxlan", {"DirectRouting": "yes"}, "DirectRouting", id="bool-field"),
    pytest.param("vxlan", {"GBP": True}, "GBP", id="gbp-unsupported"),
    pytest.param("udp", {"Port": -1}, "Port", id="udp-port-negative"),
])
def test_parse_errors_name_the_field(btype: str | None, cfg: dict[str, Any], field: str) -> None:
    with pytest.raises(BackendConfigError) as ei:
        parse_backend(btype, cfg)
    assert ei.value.field == field
    assert f"Backend.{field}" in str(ei.value)


def test_registry_names_and_lease_type() -> None:
    assert BACKEND_TYPES == ("vxlan", "host-gw", "udp")
    assert lease_backend_type("vxlan") == "vxlan"
    assert lease_backend_type("host-gw") == "host-gw"
    assert lease_backend_type("udp") == ""  # flannel leaves it empty for udp


# -- apply layer over the fake kernel --------------------------------------------


def fake() -> tuple[FakeKernel, KernelThread]:
    k = FakeKernel()
    eth = k.add_link("eth0", addrs=[ipaddress.IPv4Interface("198.18.0.11/24")])
    assert eth.index
    return k, KernelThread(lambda: k)


def ext_for(k: FakeKernel) -> ExternalInterface:
    return external_interface("eth0", kernel=k)


def peer(i: int, mac: str | None = None) -> Lease:
    return Lease(N(f"10.244.{i}.0/24"), A(f"198.18.0.{10 + i}"), "vxlan",
                 {"VNI": 1, "VtepMAC": mac or derive_vtep_mac(A(f"198.18.0.{10 + i}"), 1)})


OWN = Lease(N("10.244.1.0/24"), A("198.18.0.11"), "vxlan")


async def test_vxlan_prepare_creates_device_with_stable_mac_and_mtu() -> None:
    k, kt = fake()
    b = make_backend("vxlan", {}, ext_for(k), kernel=kt)
    data = await b.prepare()
    assert data == {"VNI": 1, "VtepMAC": derive_vtep_mac(A("198.18.0.11"), 1)}
    assert b.mtu == 1450
    link = k.links["flannel.1"]
    assert link.mtu == 1450 and link.vxlan is not None and link.vxlan.port == 8472
    assert link.vxlan.local == A("198.18.0.11") and link.vxlan.link == k.links["eth0"].index
    assert not link.vxlan.learning
    await b.attach(OWN)
    assert k.link("flannel.1").addresses == (ipaddress.IPv4Interface("10.244.1.0/32"),)
    # a second daemon run keeps the device (and its MAC) as it is
    b2 = make_backend("vxlan", {}, ext_for(k), kernel=KernelThread(lambda: k))
    k.calls.clear()
    assert (await b2.prepare())["VtepMAC"] == data["VtepMAC"]
    assert not any(c.startswith(("create", "delete")) for c in k.calls)
    await b.close()
    await b2.close()


async def test_vxlan_existing_matching_device_keeps_its_mac_mismatch_is_recreated() -> None:
    k, kt = fake()
    b = VxlanBackend(VxlanConfig(), ext_for(k), kt)
    await b.prepare()
    k.links["flannel.1"] = k.links["flannel.1"].__class__(
        **{**{s: getattr(k.links["flannel.1"], s) for s in ("index", "name", "kind", "mtu", "up",
                                                           "vxlan")}, "mac": "0e:01:02:03:04:05"})
    assert (await b.prepare())["VtepMAC"] == "0e:01:02:03:04:05"  # kept as found
    b2 = VxlanBackend(VxlanConfig(port=4789), ext_for(k), KernelThread(lambda: k))
    k.calls.clear()
    data = await b2.prepare()
    assert any(c.startswith("delete") for c in k.calls) and any(
        c.startswith("create") for c in k.calls)
    assert data["VtepMAC"] == derive_vtep_mac(A("198.18.0.11"), 1)
    await b.close()
    await b2.close()


async def test_vxlan_reconcile_adds_removes_and_fixes_macs() -> None:
    k, kt = fake()
    b = VxlanBackend(VxlanConfig(), ext_for(k), kt)
    await b.prepare()
    await b.attach(OWN)
    r = await b.reconcile([peer(2), peer(3), OWN])
    assert (r.added, r.removed, r.peers, r.errors) == (2, 0, 2, ())
    assert len(k.state.neighs) == len(k.state.fdbs) == len(k.state.routes) == 2
    k.calls.clear()
    r = await b.reconcile([peer(2), peer(3)])
    assert (r.added, r.removed, r.changed) == (0, 0, 0)
    assert k.calls == ["observe"]  # in sync: nothing sent to the kernel
    r = await b.reconcile([peer(2, mac="0e:99:99:99:99:99")])
    assert (r.removed, r.changed) == (1, 1)
    assert {f.mac for f in k.state.fdbs} == {"0e:99:99:99:99:99"}
    assert {n.mac for n in k.state.neighs} == {"0e:99:99:99:99:99"}
    assert {rt.dst for rt in k.state.routes} == {N("10.244.2.0/24")}


async def test_vxlan_reconcile_reports_bad_peer_and_failed_ops() -> None:
    k, kt = fake()
    b = VxlanBackend(VxlanConfig(), ext_for(k), kt)
    await b.prepare()
    await b.attach(OWN)
    bad = Lease(N("10.244.9.0/24"), A("198.18.0.19"), "vxlan", {"VtepMAC": "nope"})
    k.fail = {OpKind.FDB_ADD}
    r = await b.reconcile([peer(2), bad])
    assert any("10.244.9.0/24" in e and "VtepMAC" in e for e in r.errors)
    assert any("fdb-add" in e for e in r.errors)
    k.fail = set()
    r = await b.reconcile([peer(2), bad])
    assert len(k.state.fdbs) == 1  # retried on the next pass


async def test_vxlan_recreates_deleted_device() -> None:
    k, kt = fake()
    b = VxlanBackend(VxlanConfig(), ext_for(k), kt)
    await b.prepare()
    await b.attach(OWN)
    await b.reconcile([peer(2)])
    k.delete_link(k.links["flannel.1"].index)
    assert "flannel.1" not in k.links and not k.state.routes
    r = await b.reconcile([peer(2)])
    assert r.added == 1
    link = k.links["flannel.1"]
    assert k.link("flannel.1").addresses == (ipaddress.IPv4Interface("10.244.1.0/32"),)
    assert link.mac == derive_vtep_mac(A("198.18.0.11"), 1)


async def test_vxlan_direct_routing_uses_ext_subnet() -> None:
    k, kt = fake()
    b = VxlanBackend(VxlanConfig(direct_routing=True), ext_for(k), kt)
    await b.prepare()
    await b.attach(OWN)
    far = Lease(N("10.244.5.0/24"), A("203.0.113.5"), "vxlan", {"VtepMAC": "0e:00:00:00:00:05"})
    await b.reconcile([peer(2), far])
    assert Route(N("10.244.2.0/24"), "eth0", A("198.18.0.12")) in k.state.routes
    assert Route(N("10.244.5.0/24"), "flannel.1", A("10.244.5.0"), True) in k.state.routes
    assert len(k.state.fdbs) == 1


async def test_hostgw_refuses_public_ip_not_on_interface() -> None:
    k, kt = fake()
    ext = external_interface("eth0", A("203.0.113.7"), kernel=k)
    b = HostGwBackend(HostGwConfig(), ext, kt)
    with pytest.raises(BackendError, match=r"203\.0\.113\.7 is not an address of eth0"):
        await b.prepare()
    await b.close()


async def test_hostgw_reconcile_programs_and_cleans_routes() -> None:
    k, kt = fake()
    b = HostGwBackend(HostGwConfig(), ext_for(k), kt)
    assert await b.prepare() == {}
    assert b.mtu == 1500
    await b.attach(OWN)
    peers = [Lease(N(f"10.244.{i}.0/24"), A(f"198.18.0.{10 + i}"), "host-gw") for i in (2, 3)]
    r = await b.reconcile(peers)
    assert r.added == 2 and r.peers == 2
    r = await b.reconcile(peers[:1])
    assert r.removed == 1
    assert k.state.routes == frozenset({Route(N("10.244.2.0/24"), "eth0", A("198.18.0.12"))})
    await b.close()


def test_external_interface_errors() -> None:
    k = FakeKernel()
    k.add_link("eth1")
    with pytest.raises(BackendError, match="'nope' does not exist"):
        external_interface("nope", kernel=k)
    with pytest.raises(BackendError, match="no IPv4 or IPv6 address"):
        external_interface("eth1", kernel=k)
    with pytest.raises(BackendError, match="no interface has the address"):
        external_interface("192.0.2.1", kernel=k)
    assert ROUTE_PROTO == 0x57


async def test_kernel_thread_turns_failures_into_backend_errors() -> None:
    from overlay.backend.netlink import KernelError

    kt = KernelThread(FakeKernel)

    def oserror(k: object) -> None:
        raise OSError(9, "Bad file descriptor")

    def bug(k: object) -> None:
        raise KeyError("oops")

    with pytest.raises(KernelError, match="Bad file descriptor"):
        await kt.run(oserror)
    with pytest.raises(BackendError, match="unexpected KeyError"):
        await kt.run(bug)
    assert await kt.run(lambda k: 42) == 42
    kt.close()
    kt.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        await kt.run(lambda k: 42)


async def test_routes_of_another_network_are_left_alone() -> None:
    k, kt = fake()
    other = Route(N("10.99.1.0/24"), "eth0", A("198.18.0.9"))  # another daemon's, same proto
    k.state = k.state.__class__(routes=frozenset({other}))
    b = make_backend("host-gw", {}, ext_for(k), network=N("10.244.0.0/16"), kernel=kt)
    await b.prepare()
    await b.attach(OWN)
    r = await b.reconcile([Lease(N("10.244.2.0/24"), A("198.18.0.12"), "host-gw")])
    assert r.removed == 0 and other in k.state.routes and len(k.state.routes) == 2
    await b.close()


def test_the_name_table_is_the_one_source() -> None:
    """BACKENDS names every backend once: config validation, weftctl's choices and the
    options all derive from it, and each row's module provides its parser and class."""
    import importlib

    from overlay.backend.base import BACKEND_OPTIONS, BACKENDS
    from overlay.config import ConfigError, check_network_config

    for name, spec in BACKENDS.items():
        module = importlib.import_module(spec.module)
        assert module.BACKEND_CLASS.name == name
        assert callable(module.parse_config)
        check_network_config({"Network": "10.244.0.0/16", "Backend": {"Type": name}})
    with pytest.raises(ConfigError, match="known: vxlan, host-gw, udp"):
        check_network_config({"Network": "10.244.0.0/16", "Backend": {"Type": "ipip"}})
    assert BACKEND_OPTIONS == {"vni": ("vxlan",), "port": ("vxlan", "udp"),
                               "direct-routing": ("vxlan",)}


def test_kernel_protocol_is_small_and_its_fake_is_checked() -> None:
    """The netlink seam stays at <= 7 methods; the real kernel and the fake implement
    each with the protocol's parameters."""
    import inspect

    from overlay.backend.netlink import Kernel, NetlinkKernel

    methods = sorted(n for n, v in vars(Kernel).items()
                     if callable(v) and not n.startswith("_"))
    assert len(methods) <= 7, methods
    for impl in (NetlinkKernel, FakeKernel):
        for name in methods:
            want = inspect.signature(getattr(Kernel, name)).parameters
            assert inspect.signature(getattr(impl, name)).parameters.keys() == want.keys(), \
                (impl.__name__, name)

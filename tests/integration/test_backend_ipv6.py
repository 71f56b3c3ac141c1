"""vxlan and host-gw over IPv6 on the netns testbed: dual-stack, IPv6-only, flannel interop.

Each weft host runs the backend harness (``tests.backend_driver``) in its
namespace; leases travel as flannel's stored JSON under flannel's dual-stack key
(``10.244.1.0-24&fd00:10:244:1::-64``). A "flannel host" is configured by hand
with the ``ip``/``bridge`` commands that reproduce flannel's vxlan IPv6 layout
(``flannel-v6.1``, ``<v6 subnet>/128``, permanent neighbour, FDB, onlink route).
The underlay is ``fd00:198:18::/64`` inside the test's namespaces only; every
IPv6 address is ``nodad`` so it is usable at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from overlay.backend.plan import derive_vtep_mac
from overlay.lease.model import Lease, decode_lease, encode_lease, lease_key
from overlay.testbed import Testbed, open_testbed
from tests.backend_driver import DriverProcess, lease_backend_type, lease_to_json

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PREFIX = "/coreos.com/network"
NETWORK = "10.244.0.0/16"
NETWORK6 = "fd00:10:244::/48"
ZERO = ipaddress.IPv4Network("0.0.0.0/0")


def subnet4(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.244.{i}.0/24")


def subnet6(i: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"fd00:10:244:{i}::/64")


def stored(lease: Lease) -> Lease:
    """``lease`` as a peer reads it back from the store (flannel's key and JSON)."""
    return decode_lease(lease_key(PREFIX, lease), encode_lease(lease))


@dataclass
class Hosts:
    """weft hosts (one backend harness each) and hand-configured flannel hosts' leases."""

    tb: Testbed
    btype: str
    config: Mapping[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    weft: dict[str, tuple[DriverProcess, Lease]] = field(default_factory=dict)
    foreign: dict[str, Lease] = field(default_factory=dict)

    def start(self, name: str, *, v4: bool = True, container: bool = True) -> Lease:
        host = self.tb.hosts[name]
        i = int(name[1:])
        log = str(self.log_dir / f"{name}.log") if self.log_dir else None
        d = DriverProcess(host.netns, self.btype, host.iface, config=self.config,
                          network=NETWORK, network6=NETWORK6, python=sys.executable,
                          log_path=log)
        try:
            data = d.call({"op": "prepare"})["data"] if v4 else {}
            ready6 = d.call({"op": "prepare_v6"})
            assert host.ip6 is not None
            lease = stored(Lease(subnet4(i) if v4 else ZERO,
                                 host.ip if v4 else ipaddress.IPv4Address(0),
                                 lease_backend_type(self.btype), data,
                                 ipv6_subnet=subnet6(i), public_ipv6=host.ip6,
                                 backend_v6_data=ready6["data"]))
            d.call({"op": "attach", "lease": lease_to_json(lease)})
        except BaseException:
            d.stop()
            raise
        self.weft[name] = (d, lease)
        if container and f"{name}/c" not in self.tb.containers:
            self.tb.add_container(name, "c", ipaddress.IPv4Interface(f"10.244.{i}.2/24")
                                  if v4 else None, mtu=int(ready6["mtu"]),
                                  address6=ipaddress.IPv6Interface(f"fd00:10:244:{i}::2/64"))
        return lease

    def stop(self, name: str) -> None:
        self.weft.pop(name)[0].stop()

    def reconcile(self, name: str) -> dict[str, Any]:
        d, own = self.weft[name]
        leases = [lease for _, lease in self.weft.values()] + list(self.foreign.values())
        peers = [lease_to_json(p) for p in leases if p is not own]
        report: dict[str, Any] = d.call({"op": "reconcile", "peers": peers})["report"]
        return report

    def reconcile_all(self) -> dict[str, dict[str, Any]]:
        return {name: self.reconcile(name) for name in self.weft}

    def close(self) -> None:
        for name in list(self.weft):
            self.stop(name)


@contextlib.contextmanager
def hosts(tb: Testbed, btype: str, config: Mapping[str, Any] | None = None,
          log_dir: Path | None = None) -> Iterator[Hosts]:
    h = Hosts(tb, btype, dict(config or {}), log_dir)
    try:
        yield h
    finally:
        h.close()


def ping_all(tb: Testbed, names: list[str], family: int) -> list[str]:
    """Every container pings every other one over ``family``; the failures."""
    failed = []
    for a in names:
        for b in names:
            if a == b:
                continue
            c = tb.containers[f"{b}/c"]
            target = c.ip6 if family == 6 else c.ip
            assert target is not None
            if not tb.wait_ping(tb.containers[f"{a}/c"].netns, str(target.ip), within=5):
                failed.append(f"{a}->{b} (IPv{family})")
    return failed


def show(tb: Testbed, host: str, *argv: str) -> str:
    return tb.exec(tb.hosts[host].netns, argv).stdout


def random_mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


# -- a host configured by hand as flannel configures one ------------------------------


def flannel_device(tb: Testbed, name: str, dev: str, local: str, mac: str, mtu: int,
                   address: str) -> None:
    ns = tb.hosts[name].netns
    tb.exec(ns, ["ip", "link", "add", dev, "type", "vxlan", "id", "1", "local", local, "dev",
                 "eth0", "dstport", "8472", "nolearning"])
    tb.exec(ns, ["ip", "link", "set", dev, "address", mac, "mtu", str(mtu), "up"])
    tb.exec(ns, ["ip", "addr", "add", address, "dev", dev, *(["nodad"] if ":" in address
                                                             else [])])


def flannel_peer(tb: Testbed, name: str, peer: Lease, v4: bool = True) -> None:
    """flannel's three steps per peer and family: neighbour, FDB, onlink route."""
    ns = tb.hosts[name].netns
    halves = []
    if v4 and peer.subnet != ZERO:
        halves.append(("-4", "flannel.1", peer.subnet, peer.public_ip, peer.backend_data))
    if peer.ipv6_subnet is not None and peer.public_ipv6 is not None:
        halves.append(("-6", "flannel-v6.1", peer.ipv6_subnet, peer.public_ipv6,
                       peer.backend_v6_data))
    for fam, dev, net, pub, data in halves:
        gw = str(net.network_address)
        mac = data["VtepMAC"]
        tb.exec(ns, ["ip", fam, "neigh", "replace", gw, "lladdr", mac, "dev", dev, "nud",
                     "permanent"])
        tb.exec(ns, ["bridge", "fdb", "replace", mac, "dev", dev, "dst", str(pub), "self",
                     "permanent"])
        tb.exec(ns, ["ip", fam, "route", "replace", str(net), "via", gw, "dev", dev, "onlink"])


def flannel_host(tb: Testbed, name: str, mac4: str, mac6: str) -> Lease:
    """A dual-stack flannel vxlan host; its lease parsed from flannel's own JSON."""
    h = tb.hosts[name]
    i = int(name[1:])
    assert h.ip6 is not None
    flannel_device(tb, name, "flannel.1", str(h.ip), mac4, 1450, f"10.244.{i}.0/32")
    flannel_device(tb, name, "flannel-v6.1", str(h.ip6), mac6, 1430, f"fd00:10:244:{i}::/128")
    tb.add_container(name, "c", ipaddress.IPv4Interface(f"10.244.{i}.2/24"), mtu=1430,
                     address6=ipaddress.IPv6Interface(f"fd00:10:244:{i}::2/64"))
    raw = json.dumps({"PublicIP": str(h.ip), "PublicIPv6": str(h.ip6), "BackendType": "vxlan",
                      "BackendData": {"VNI": 1, "VtepMAC": mac4},
                      "BackendV6Data": {"VNI": 1, "VtepMAC": mac6}}, separators=(",", ":"))
    key = f"{PREFIX}/subnets/10.244.{i}.0-24&fd00:10:244:{i}::-64"
    return decode_lease(key, raw.encode())


def vxlan_state(tb: Testbed, name: str) -> list[str]:
    """The VTEPs' kernel state as flannel defines it, normalised for comparison (weft's
    route protocol number and the kernel's own link-local entries left out)."""
    out: list[str] = []
    for fam, dev in (("-4", "flannel.1"), ("-6", "flannel-v6.1")):
        link = show(tb, name, "ip", "-d", "link", "show", dev)
        out.append(re.sub(r"^\d+: ", "", link.splitlines()[0]).split(" qdisc")[0])
        out.append(link.splitlines()[1].strip())
        m = re.search(r"vxlan id .*? dstport \d+ \w+", link)
        out.append(m.group(0) if m else f"{dev}: no vxlan line")
        out += [f"addr {a}" for a in re.findall(r"inet6? (\S+)",
                                                show(tb, name, "ip", fam, "addr", "show", dev,
                                                     "scope", "global"))]
        out += [f"route {r.replace(' proto 87', '')}" for r in
                show(tb, name, "ip", fam, "route", "show", "dev", dev).splitlines()
                if "proto kernel" not in r]
        out += [f"neigh {n}" for n in show(tb, name, "ip", fam, "neigh", "show", "dev",
                                           dev).splitlines() if "PERMANENT" in n]
        out += [f"fdb {f}" for f in show(tb, name, "bridge", "fdb", "show", "dev",
                                         dev).splitlines() if " dst " in f]
    return sorted(out)


def counters(tb: Testbed, name: str, dev: str) -> int:
    """Packets sent on ``dev`` so far."""
    stats = json.loads(show(tb, name, "ip", "-j", "-s", "link", "show", dev))
    return int(stats[0]["stats64"]["tx"]["packets"])


# -- tests ------------------------------------------------------------------------------


def test_vxlan_dual_stack_equals_flannel_and_interoperates(tmp_path: Path) -> None:
    with open_testbed(3, ipv6=True) as tb, hosts(tb, "vxlan", log_dir=tmp_path) as c:
        for name in ("h1", "h2"):
            c.start(name)
        c.foreign["h3"] = flannel_host(tb, "h3", random_mac(), random_mac())
        for peer in c.weft.values():
            flannel_peer(tb, "h3", peer[1])
        for name, r in c.reconcile_all().items():
            assert (r["added"], r["peers"], r["errors"]) == (4, 2, []), (name, r)

        # -- flannel's layout on h1 ----------------------------------------------------
        mac6 = derive_vtep_mac(ipaddress.IPv6Address("fd00:198:18::11"), 1)
        h1 = c.weft["h1"][1]
        assert h1.backend_v6_data == {"VNI": 1, "VtepMAC": mac6}
        assert json.loads(encode_lease(h1))["PublicIPv6"] == "fd00:198:18::11"
        link = show(tb, "h1", "ip", "-d", "link", "show", "flannel-v6.1")
        for needle in ("mtu 1430", f"link/ether {mac6}",
                       "vxlan id 1 local fd00:198:18::11 dev eth0", "dstport 8472",
                       "nolearning"):
            assert needle in link, (needle, link)
        assert "inet6 fd00:10:244:1::/128" in show(tb, "h1", "ip", "-6", "addr", "show",
                                                   "flannel-v6.1")
        mac2 = c.weft["h2"][1].backend_v6_data["VtepMAC"]
        routes = show(tb, "h1", "ip", "-6", "route")
        assert ("fd00:10:244:2::/64 via fd00:10:244:2:: dev flannel-v6.1 proto 87 metric 1024 "
                "onlink") in routes, routes
        assert "fd00:10:244:3::/64 via fd00:10:244:3:: dev flannel-v6.1" in routes
        assert f"fd00:10:244:2:: lladdr {mac2} PERMANENT" in show(
            tb, "h1", "ip", "-6", "neigh", "show", "dev", "flannel-v6.1")
        assert f"{mac2} dst fd00:198:18::12 self permanent" in show(
            tb, "h1", "bridge", "fdb", "show", "dev", "flannel-v6.1")

        # -- traffic over both families, both ways with the flannel host -------------------
        before = counters(tb, "h1", "flannel-v6.1")
        assert ping_all(tb, ["h1", "h2", "h3"], 6) == []
        assert ping_all(tb, ["h1", "h2", "h3"], 4) == []
        assert counters(tb, "h1", "flannel-v6.1") > before  # IPv6 went through the v6 VTEP

        # -- h1's state equals a hand-configured flannel host with the same MACs ---------
        weft_state = vxlan_state(tb, "h1")
        c.stop("h1")  # nothing is torn down on exit
        ns = tb.hosts["h1"].netns
        for dev in ("flannel.1", "flannel-v6.1"):
            tb.exec(ns, ["ip", "link", "del", dev])  # its neighbours, FDB and routes go too
        flannel_device(tb, "h1", "flannel.1", "198.18.0.11", h1.backend_data["VtepMAC"], 1450,
                       "10.244.1.0/32")
        flannel_device(tb, "h1", "flannel-v6.1", "fd00:198:18::11", mac6, 1430,
                       "fd00:10:244:1::/128")
        for peer in (c.weft["h2"][1], c.foreign["h3"]):
            flannel_peer(tb, "h1", peer)
        assert vxlan_state(tb, "h1") == weft_state

        # -- weft takes the hand-made host over in place; then h3 leaves: all of it goes --
        c.start("h1", container=False)
        r = c.reconcile("h1")
        assert (r["added"], r["removed"], r["errors"]) == (4, 0, []), r  # routes re-owned
        assert vxlan_state(tb, "h1") == weft_state
        del c.foreign["h3"]
        r = c.reconcile("h1")
        assert (r["removed"], r["peers"]) == (2, 1), r
        assert "fd00:10:244:3::" not in show(tb, "h1", "ip", "-6", "route")
        assert "fd00:10:244:3::" not in show(tb, "h1", "ip", "-6", "neigh", "show", "dev",
                                             "flannel-v6.1")
        assert ping_all(tb, ["h1", "h2"], 6) == []


def test_vxlan_ipv6_only_underlay_and_overlay(tmp_path: Path) -> None:
    with open_testbed(3, ipv6=True) as tb, hosts(tb, "vxlan", log_dir=tmp_path) as c:
        for host in tb.hosts.values():  # an IPv6-only underlay: no IPv4 on the hosts' eth0
            tb.exec(host.netns, ["ip", "-4", "addr", "flush", "dev", "eth0"])
        for name in ("h1", "h2", "h3"):
            lease = c.start(name, v4=False)
            assert lease.subnet == ZERO and lease.backend_data == {}
            assert lease_key(PREFIX, lease).endswith(f"0.0.0.0-0&fd00:10:244:{name[1]}::-64")
        for name, r in c.reconcile_all().items():
            assert (r["added"], r["peers"], r["errors"]) == (2, 2, []), (name, r)
        assert "flannel.1" not in show(tb, "h1", "ip", "link")
        assert show(tb, "h1", "ip", "-4", "route", "show", "proto", "87") == ""
        assert ping_all(tb, ["h1", "h2", "h3"], 6) == []

        # -- stale IPv6 peers are reconciled at start: h3 left while h1 was down -------
        c.stop("h1")
        c.stop("h3")
        c.start("h1", v4=False, container=False)
        r = c.reconcile("h1")
        assert (r["added"], r["removed"], r["changed"], r["errors"]) == (0, 1, 0, []), r
        assert "fd00:10:244:3::" not in show(tb, "h1", "ip", "-6", "route")
        assert ping_all(tb, ["h1", "h2"], 6) == []


def test_hostgw_mixed_cluster_and_flannel_host(tmp_path: Path) -> None:
    """h1, h2: weft dual-stack; h3: weft IPv6-only lease; h4: flannel IPv6-only by hand."""
    with open_testbed(4, ipv6=True) as tb, hosts(tb, "host-gw", log_dir=tmp_path) as c:
        c.start("h1")
        c.start("h2")
        c.start("h3", v4=False)
        h4 = tb.hosts["h4"]
        tb.add_container("h4", "c", None, address6=ipaddress.IPv6Interface("fd00:10:244:4::2/64"))
        raw = json.dumps({"PublicIP": "0.0.0.0", "PublicIPv6": str(h4.ip6),
                          "BackendType": "host-gw", "BackendData": None},
                         separators=(",", ":"))
        c.foreign["h4"] = decode_lease(f"{PREFIX}/subnets/0.0.0.0-0&fd00:10:244:4::-64",
                                       raw.encode())
        for _, lease in c.weft.values():
            assert lease.ipv6_subnet is not None and lease.public_ipv6 is not None
            tb.exec(h4.netns, ["ip", "-6", "route", "replace", str(lease.ipv6_subnet), "via",
                               str(lease.public_ipv6), "dev", "eth0"])
        reports = c.reconcile_all()
        assert reports["h1"] == {"added": 4, "removed": 0, "changed": 0, "errors": [],
                                 "peers": 3}
        assert reports["h3"]["added"] == 3 and reports["h3"]["errors"] == []
        routes = show(tb, "h1", "ip", "-6", "route")
        assert "fd00:10:244:4::/64 via fd00:198:18::14 dev eth0 proto 87 metric 1024" in routes
        assert show(tb, "h3", "ip", "-4", "route", "show", "proto", "87") == ""
        assert ping_all(tb, ["h1", "h2", "h3", "h4"], 6) == []
        assert ping_all(tb, ["h1", "h2"], 4) == []
        # h2 leaves: both its routes go on h1, its IPv6 one on h3
        c.stop("h2")
        assert c.reconcile("h1")["removed"] == 2
        assert c.reconcile("h3")["removed"] == 1
        assert "fd00:10:244:2::" not in show(tb, "h1", "ip", "-6", "route")


def test_vxlan_direct_routing_v6(tmp_path: Path) -> None:
    with open_testbed(2, ipv6=True) as tb, \
            hosts(tb, "vxlan", {"DirectRouting": True}, tmp_path) as c:
        for name in ("h1", "h2"):
            c.start(name)
        for name, r in c.reconcile_all().items():
            assert (r["added"], r["errors"]) == (2, []), (name, r)
        routes = show(tb, "h1", "ip", "-6", "route")
        assert "fd00:10:244:2::/64 via fd00:198:18::12 dev eth0 proto 87" in routes, routes
        assert "PERMANENT" not in show(tb, "h1", "ip", "-6", "neigh", "show", "dev",
                                       "flannel-v6.1")  # same link: no VXLAN entries
        assert ping_all(tb, ["h1", "h2"], 6) == []
        assert ping_all(tb, ["h1", "h2"], 4) == []

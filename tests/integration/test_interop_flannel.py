"""Interop: a host configured by hand exactly as flannel 0.28 would, next to weft vxlan hosts.

The foreign host h4 gets flannel's kernel state from ``ip``/``bridge`` commands
built from the lease JSON weft published (flannel.1 with a random MAC, address
``<subnet>.0/32``, per peer neighbour, FDB, onlink route), and its own lease
JSON — flannel's format — is what the weft hosts reconcile with. Traffic must
flow both ways; then h4 changes its VTEP MAC (as flannel did on every reboot
before #1795), then migrates from flannel to weft in place, and finally leaves:
weft fixes, takes over, then removes its entries.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from pathlib import Path

import pytest

from overlay.lease.model import Lease, decode_lease, encode_lease, subnet_key
from overlay.testbed import Testbed, open_testbed
from tests.integration.test_backend_harness import (
    PREFIX,
    Cluster,
    cluster,
    container_ip,
    ip_show,
    ping_matrix,
    subnet_of,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

WEFT = ["h1", "h2", "h3"]


def random_mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def flannel_host(tb: Testbed, name: str, mac: str) -> Lease:
    """Configure ``name`` as flannel's vxlan backend does; return its lease (from JSON)."""
    h = tb.hosts[name]
    i = int(name[1:])
    ns = h.netns
    tb.exec(ns, ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local",
                 str(h.ip), "dev", "eth0", "dstport", "8472", "nolearning"])
    tb.exec(ns, ["ip", "link", "set", "flannel.1", "address", mac, "mtu", "1450", "up"])
    tb.exec(ns, ["ip", "addr", "add", f"{subnet_of(i).network_address}/32", "dev", "flannel.1"])
    tb.add_container(name, "c", container_ip(i), mtu=1450)
    raw = json.dumps({"PublicIP": str(h.ip), "PublicIPv6": None, "BackendType": "vxlan",
                      "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))
    return decode_lease(subnet_key(PREFIX, subnet_of(i)), raw.encode())


def flannel_add_peer(tb: Testbed, ns: str, stored: bytes, key: str) -> None:
    """flannel's three steps for one peer, from the peer's stored lease JSON."""
    lease = decode_lease(key, stored)
    mac = lease.backend_data["VtepMAC"]
    gw = str(lease.subnet.network_address)
    tb.exec(ns, ["ip", "neigh", "replace", gw, "lladdr", mac, "dev", "flannel.1", "nud",
                 "permanent"])
    tb.exec(ns, ["bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst",
                 str(lease.public_ip), "self", "permanent"])
    tb.exec(ns, ["ip", "route", "replace", str(lease.subnet), "via", gw, "dev", "flannel.1",
                 "onlink"])


def program_foreign(tb: Testbed, c: Cluster, name: str) -> None:
    for h in c.hosts.values():
        key = subnet_key(PREFIX, h.lease.subnet)
        flannel_add_peer(tb, tb.hosts[name].netns, encode_lease(h.lease), key)


def test_flannel_host_interop(tmp_path: Path) -> None:
    with open_testbed(4) as tb, cluster(tb, "vxlan", log_dir=tmp_path) as c:
        for name in WEFT:
            c.start(name)
        mac = random_mac()
        c.foreign["h4"] = flannel_host(tb, "h4", mac)
        program_foreign(tb, c, "h4")
        for name, r in c.reconcile_all().items():
            assert (r["added"], r["peers"], r["errors"]) == (3, 3, []), (name, r)
        # weft's lease JSON is flannel's, byte for byte in layout
        stored = json.loads(encode_lease(c.hosts["h1"].lease))
        assert list(stored) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"]
        assert stored["BackendType"] == "vxlan" and stored["BackendData"]["VNI"] == 1

        assert ping_matrix(tb, [*WEFT, "h4"]) == []

        # -- the flannel host comes back with a new VTEP MAC ----------------------------
        new_mac = random_mac()
        tb.exec(tb.hosts["h4"].netns, ["ip", "link", "set", "flannel.1", "address", new_mac])
        program_foreign(tb, c, "h4")  # a MAC change flushes the device's neighbours
        lease = c.foreign["h4"]
        c.foreign["h4"] = Lease(lease.subnet, lease.public_ip, "vxlan",
                                {"VNI": 1, "VtepMAC": new_mac})
        for name, r in c.reconcile_all().items():
            assert r["changed"] >= 1 and r["errors"] == [], (name, r)
        fdb = ip_show(tb, "h1", "bridge", "fdb", "show", "dev", "flannel.1")
        assert f"{new_mac} dst 198.18.0.14" in fdb and mac not in fdb, fdb
        assert f"10.244.4.0 lladdr {new_mac} PERMANENT" in ip_show(
            tb, "h1", "ip", "neigh", "show", "dev", "flannel.1")
        assert ping_matrix(tb, ["h1", "h4"]) == []

        # -- h4 switches from flannel to weft: its device and MAC are kept, so no
        # peer has to change anything, and its routes are taken over in place
        del c.foreign["h4"]
        migrated = c.start("h4", container=False)
        assert migrated.lease.backend_data["VtepMAC"] == new_mac
        for name, r in c.reconcile_all().items():
            want = 3 if name == "h4" else 0  # h4's flannel routes are replaced by weft's
            assert (r["added"], r["changed"], r["removed"], r["errors"]) == (want, 0, 0, []), \
                (name, r)
        assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 proto 87 onlink" in ip_show(
            tb, "h4", "ip", "route")
        assert ping_matrix(tb, [*WEFT, "h4"]) == []

        # -- h4 leaves: weft removes every entry (flannel never does) ---------------
        c.stop("h4")
        for name, r in c.reconcile_all().items():
            assert (r["removed"], r["peers"]) == (1, 2), (name, r)
        assert "10.244.4.0" not in ip_show(tb, "h1", "ip", "route")
        assert new_mac not in ip_show(tb, "h1", "bridge", "fdb", "show", "dev", "flannel.1")
        assert "10.244.4.0" not in ip_show(tb, "h1", "ip", "neigh", "show", "dev", "flannel.1")
        assert ping_matrix(tb, WEFT) == []
        assert not tb.ping(tb.containers["h1/c"].netns, str(container_ip(4).ip), timeout=1)
        assert ipaddress.IPv4Address("198.18.0.14") == tb.hosts["h4"].ip

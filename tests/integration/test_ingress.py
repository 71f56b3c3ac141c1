"""Members-only ingress on the netns testbed: a spoofed VXLAN datagram from an underlay
address that holds no lease is dropped and counted; members' traffic flows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import metrics
from overlay.backend.plan import derive_vtep_mac
from overlay.ingress import MembersOnly
from overlay.testbed import open_testbed
from tests.integration.test_backend_harness import cluster, ping_matrix

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SPOOF = """
import sys
from scapy.all import Ether, send
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.vxlan import VXLAN
src, dst, mac, port, n = sys.argv[1:6]
inner = Ether(dst=mac) / IP(src="10.244.2.2", dst="10.244.1.2") / ICMP()
send(IP(src=src, dst=dst) / UDP(sport=40000, dport=int(port)) / VXLAN(vni=1, flags=8) / inner,
     count=int(n), verbose=False)
"""


@pytest.mark.parametrize("btype,port", [("vxlan", 8472), ("udp", 8285)])
def test_spoofed_datagrams_dropped_and_counted_members_unaffected(
        tmp_path: Path, btype: str, port: int) -> None:
    with open_testbed(3) as tb, cluster(tb, btype, log_dir=tmp_path) as c:
        for name in ("h1", "h2"):  # h3 is on the underlay but holds no lease
            c.start(name)
        h1, h2, h3 = (tb.hosts[n] for n in ("h1", "h2", "h3"))
        guard = MembersOnly(btype, port, nft=("ip", "netns", "exec", h1.netns, "nft"))
        asyncio.run(guard.update([h2.ip]))  # before the routes, as flanneld does
        c.reconcile_all()
        try:
            assert ping_matrix(tb, ["h1", "h2"]) == []
            tb.exec(h3.netns, [sys.executable, "-c", SPOOF, str(h3.ip), str(h1.ip),
                               derive_vtep_mac(h1.ip, 1), str(port), "5"])
            assert asyncio.run(guard.poll())[0] == 5
            text = metrics.render(guard.families())
            assert f'weft_ingress_dropped_total{{backend="{btype}"}} 5' in text
            assert ping_matrix(tb, ["h1", "h2"]) == []  # members still pass, uncounted
            assert asyncio.run(guard.poll())[0] == 5
            # the departed member's datagrams are dropped from the next update on
            asyncio.run(guard.update([]))
            assert not tb.wait_ping(tb.containers["h2/c"].netns, "10.244.1.2", within=2)
        finally:
            assert asyncio.run(guard.remove())
        assert "weft_ingress" not in tb.exec(h1.netns, ["nft", "list", "tables"]).stdout
        assert ping_matrix(tb, ["h1", "h2"]) == []


def test_a_join_under_ping_loses_nothing(tmp_path: Path) -> None:
    """flanneld's order on a join: the member set first, then the routes. A member's
    flow runs through it without loss and the newcomer is reachable at once."""
    with open_testbed(3) as tb, cluster(tb, "vxlan", log_dir=tmp_path) as c:
        for name in ("h1", "h2"):
            c.start(name)
        h1, h2, h3 = (tb.hosts[n] for n in ("h1", "h2", "h3"))
        guard = MembersOnly("vxlan", 8472, nft=("ip", "netns", "exec", h1.netns, "nft"))
        asyncio.run(guard.update([h2.ip]))
        c.reconcile_all()
        try:
            assert ping_matrix(tb, ["h1", "h2"]) == []
            flow = subprocess.Popen(
                ["ip", "netns", "exec", tb.containers["h2/c"].netns, "ping", "-n", "-q",
                 "-i", "0.05", "-c", "60", "-W", "1", "10.244.1.2"],
                stdout=subprocess.PIPE, text=True)
            try:
                c.start("h3")
                asyncio.run(guard.update([h2.ip, h3.ip]))  # before h1 routes h3
                c.reconcile_all()
                h3c = tb.containers["h3/c"].netns
                joined = tb.exec(h3c, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1",
                                       "10.244.1.2"], check=False)
                out, _ = flow.communicate(timeout=30)
            finally:
                if flow.poll() is None:
                    flow.kill()
                    flow.wait()
            assert " 0% packet loss" in out, out
            assert " 0% packet loss" in joined.stdout, joined.stdout
            assert asyncio.run(guard.poll())[0] == 0
        finally:
            asyncio.run(guard.remove())


SPOOF6 = """
import sys
from scapy.all import send
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
src, dst, port, n = sys.argv[1:5]
send(IPv6(src=src, dst=dst) / UDP(sport=40000, dport=int(port)) / (b"\\x08" + bytes(15)),
     count=int(n), verbose=False)
"""


def test_vxlan_over_ipv6_from_a_non_member_is_dropped_and_the_old_table_goes() -> None:
    with open_testbed(3, ipv6=True) as tb:
        h1, h2, h3 = (tb.hosts[n] for n in ("h1", "h2", "h3"))
        assert h1.ip6 and h2.ip6 and h3.ip6
        # an earlier release's IPv4-only table must not outlive the upgrade
        tb.exec(h1.netns, ["nft", "add", "table", "ip", "weft_ingress"])
        guard = MembersOnly("vxlan", 8472, nft=("ip", "netns", "exec", h1.netns, "nft"))
        try:
            asyncio.run(guard.update([h2.ip, h2.ip6]))
            tables = tb.exec(h1.netns, ["nft", "list", "tables"]).stdout
            assert "table inet weft_ingress" in tables and "table ip weft_ingress" not in tables
            for src, n in ((h3, 4), (h2, 3)):  # h3 holds no lease; h2 does
                tb.exec(src.netns, [sys.executable, "-c", SPOOF6, str(src.ip6), str(h1.ip6),
                                    "8472", str(n)])
            assert asyncio.run(guard.poll())[0] == 4  # only the non-member's, over IPv6
            asyncio.run(guard.update([h2.ip]))  # h2's IPv6 half left: its datagrams drop too
            tb.exec(h2.netns, [sys.executable, "-c", SPOOF6, str(h2.ip6), str(h1.ip6),
                               "8472", "2"])
            assert asyncio.run(guard.poll())[0] == 6
        finally:
            assert asyncio.run(guard.remove())
        assert "weft_ingress" not in tb.exec(h1.netns, ["nft", "list", "tables"]).stdout

"""Members-only ingress on the netns testbed: a spoofed VXLAN datagram from an underlay
address that holds no lease is dropped and counted; members' traffic flows."""

from __future__ import annotations

import asyncio
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

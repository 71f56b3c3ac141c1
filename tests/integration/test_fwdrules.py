"""-iptables-forward-rules on a testbed host whose iptables FORWARD policy is DROP (as
Docker sets it): weft's nft accept alone cannot get a pod's packets through, flannel's
FLANNEL-FWD chain does; drift is repaired and remove() leaves the host as it found it."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.fwdrules import CHAIN, ForwardRules
from overlay.masq import Masquerade
from overlay.testbed import open_testbed

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

NET = ipaddress.IPv4Network("10.244.0.0/16")
POD = ipaddress.IPv4Network("10.244.1.0/24")


async def test_forward_rules_beat_a_docker_style_drop_policy() -> None:
    with open_testbed(1) as tb:
        h = tb.hosts["h1"]
        c = tb.add_container("h1", "c", ipaddress.IPv4Interface("10.244.1.2/24"))
        ipt = ("ip", "netns", "exec", h.netns, "iptables")
        outside = str(tb.underlay_ip)
        await Masquerade(NET, POD, nft=("ip", "netns", "exec", h.netns, "nft")).ensure()
        assert tb.wait_ping(c.netns, outside, within=5), "testbed: no path before the drop"

        tb.exec(h.netns, ["iptables", "-P", "FORWARD", "DROP"])
        assert not tb.ping(c.netns, outside, timeout=1), "the FORWARD drop did not drop"

        fwd = ForwardRules(NET, command=ipt)
        assert await fwd.ensure() is True
        assert tb.wait_ping(c.netns, outside, within=5), "FLANNEL-FWD did not let pods out"
        rules = tb.exec(h.netns, ["iptables", "-S"]).stdout
        assert '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD' in rules
        assert f'-A {CHAIN} -s 10.244.0.0/16 -m comment --comment "flanneld forward" ' \
               "-j ACCEPT" in rules
        assert await fwd.ensure() is False  # intact: nothing written

        tb.exec(h.netns, ["iptables", "-F", CHAIN])  # tampered with behind weft's back
        assert await fwd.ensure() is True
        tb.exec(h.netns, ["iptables", "-D", "FORWARD", "-m", "comment", "--comment",
                          "flanneld forward", "-j", CHAIN])
        assert await fwd.ensure() is True
        assert tb.exec(h.netns, ["iptables", "-S", "FORWARD"]).stdout.count(CHAIN) == 1

        assert await fwd.remove() is True
        assert CHAIN not in tb.exec(h.netns, ["iptables", "-S"]).stdout
        assert "-P FORWARD DROP" in tb.exec(h.netns, ["iptables", "-S"]).stdout
        assert not tb.ping(c.netns, outside, timeout=1)
        assert await fwd.remove() is False


async def test_ip6tables_chain_for_the_ipv6_network() -> None:
    with open_testbed(1) as tb:
        h = tb.hosts["h1"]
        net6 = ipaddress.IPv6Network("fd00:10:244::/56")
        fwd = ForwardRules(net6, command=("ip", "netns", "exec", h.netns, "ip6tables"))
        assert await fwd.ensure() is True
        rules = tb.exec(h.netns, ["ip6tables", "-S"]).stdout
        assert f"-A {CHAIN} -d fd00:10:244::/56 -m comment" in rules
        assert await fwd.ensure() is False
        assert await fwd.remove() is True

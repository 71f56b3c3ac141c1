"""Masquerade on a testbed host: rules land in weft's table, work, come back, and go away."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.masq import Masquerade
from overlay.testbed import open_testbed

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

NET = ipaddress.IPv4Network("10.244.0.0/16")
POD = ipaddress.IPv4Network("10.244.1.0/24")


async def test_masquerade_rules_lifecycle() -> None:
    with open_testbed(1) as tb:
        h = tb.hosts["h1"]
        c = tb.add_container("h1", "c", ipaddress.IPv4Interface("10.244.1.2/24"))
        nft = ("ip", "netns", "exec", h.netns, "nft")
        outside = str(tb.underlay_ip)  # the underlay has no route back to pods
        # another table that weft must leave alone
        tb.exec(h.netns, ["nft", "add", "table", "ip", "other"])

        assert not tb.ping(c.netns, outside, timeout=1), "reached outside without masquerade"
        m = Masquerade(NET, POD, nft=nft)
        assert await m.ensure() is True
        ruleset = tb.exec(h.netns, ["nft", "list", "ruleset"]).stdout
        assert "table ip weft" in ruleset and "table ip other" in ruleset
        assert "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random" \
            in ruleset
        assert "meta mark & 0x00004000 == 0x00004000 return" in ruleset
        assert tb.wait_ping(c.netns, outside, within=5), "masquerade to the outside failed"
        assert await m.ensure() is False  # in place: nothing to do

        # removed behind weft's back: the periodic check restores it
        tb.exec(h.netns, ["nft", "delete", "table", "ip", "weft"])
        assert await m.ensure() is True
        assert "table ip weft" in tb.exec(h.netns, ["nft", "list", "tables"]).stdout
        # tampered with: restored to the rendered rules
        tb.exec(h.netns, ["nft", "flush", "chain", "ip", "weft", "postrouting"])
        assert await m.ensure() is True
        assert await m.listing() == m._installed

        # a restarted daemon with the same network finds it in place
        assert await Masquerade(NET, POD, nft=nft).ensure() is False

        # network change: remove() takes weft's table away and nothing else
        assert await m.remove() is True
        tables = tb.exec(h.netns, ["nft", "list", "tables"]).stdout
        assert "weft" not in tables and "table ip other" in tables
        assert await m.remove() is False


NET6 = ipaddress.IPv6Network("fd00:10:244::/56")
POD6 = ipaddress.IPv6Network("fd00:10:244:1::/64")


async def test_ipv6_masquerade_lifecycle_beside_ipv4() -> None:
    """flannel's flannel-ipv6 rules in weft's ip6 table: pods reach the outside over IPv6
    only with them; a dual-stack set keeps both tables, an IPv4-only one removes ip6's."""
    from overlay.config import parse_network_config
    from overlay.lease.model import Lease
    from overlay.masq import for_lease

    with open_testbed(1, ipv6=True) as tb:
        h = tb.hosts["h1"]
        c = tb.add_container("h1", "c", ipaddress.IPv4Interface("10.244.1.2/24"),
                             address6=ipaddress.IPv6Interface("fd00:10:244:1::2/64"))
        nft = ("ip", "netns", "exec", h.netns, "nft")
        outside6 = str(tb.underlay_ip6)  # no route back to pods
        assert not tb.ping(c.netns, outside6, timeout=1), "reached outside without masquerade"

        dual = parse_network_config(b'{"Network":"10.244.0.0/16","EnableIPv6":true,'
                                    b'"IPv6Network":"fd00:10:244::/56"}')
        own = Lease(POD, h.ip, ipv6_subnet=POD6, public_ipv6=h.ip6)
        both = for_lease(dual, own, nft=nft)
        assert await both.ensure() is True
        ruleset = tb.exec(h.netns, ["nft", "list", "ruleset"]).stdout
        assert "table ip weft" in ruleset and "table ip6 weft" in ruleset
        assert ("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"
                in ruleset)
        assert tb.wait_ping(c.netns, outside6, within=5), "IPv6 masquerade failed"
        assert tb.wait_ping(c.netns, str(tb.underlay_ip), within=5), "IPv4 masquerade failed"
        assert await both.ensure() is False
        # tampered with: the periodic check restores the ip6 table
        tb.exec(h.netns, ["nft", "delete", "table", "ip6", "weft"])
        assert await both.ensure() is True
        assert "table ip6 weft" in tb.exec(h.netns, ["nft", "list", "tables"]).stdout

        # the network went IPv4-only: the next start removes the ip6 table, keeps ip's
        v4 = for_lease(parse_network_config(b'{"Network":"10.244.0.0/16"}'),
                       Lease(POD, h.ip), nft=nft)
        assert await v4.ensure() is True
        tables = tb.exec(h.netns, ["nft", "list", "tables"]).stdout
        assert "table ip weft" in tables and "ip6 weft" not in tables
        # -ip-masq turned off: both families' tables go
        assert await both.remove() is True
        assert "weft" not in tb.exec(h.netns, ["nft", "list", "tables"]).stdout

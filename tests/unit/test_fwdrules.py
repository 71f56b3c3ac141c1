"""The FLANNEL-FWD rules as flannel writes them, and reading iptables -S back."""

from __future__ import annotations

import ipaddress

from overlay.fwdrules import ForwardRules, expected_chain, has_jump


def test_the_chain_is_flannels() -> None:
    assert expected_chain(ipaddress.IPv4Network("10.244.0.0/16")) == [
        "-N FLANNEL-FWD",
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    ]


def test_the_jump_is_found_among_other_rules() -> None:
    listing = ("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"
               '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n')
    assert has_jump(listing)
    assert not has_jump("-P FORWARD DROP\n-A FORWARD -j FLANNEL-FWD\n")


def test_the_family_picks_the_tool() -> None:
    assert ForwardRules(ipaddress.IPv6Network("fd00::/56")).command == ("ip6tables",)
    assert ForwardRules(ipaddress.IPv4Network("10.0.0.0/8")).command == ("iptables",)


def test_the_tool_is_named_behind_a_netns_wrapper() -> None:
    net = ipaddress.IPv6Network("fd00::/56")
    assert ForwardRules(net).tool == "ip6tables"
    assert ForwardRules(net, command=("ip", "netns", "exec", "ns1", "ip6tables")).tool == \
        "ip6tables"

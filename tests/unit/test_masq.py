"""nftables masquerade rules: rendering is pure and carries flannel's semantics in order."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.masq import render

NET = ipaddress.IPv4Network("10.244.0.0/16")
POD = ipaddress.IPv4Network("10.244.3.0/24")


def rules(text: str, chain: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines()]
    start = lines.index(f"chain {chain} {{")
    body = lines[start + 2:]
    return body[:body.index("}")]


def test_postrouting_rules_in_flannel_order() -> None:
    assert rules(render(NET, POD), "postrouting") == [
        "meta mark & 0x4000 == 0x4000 return",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ]


def test_forward_accepts_cluster_network() -> None:
    assert rules(render(NET, POD), "forward") == [
        "ip saddr 10.244.0.0/16 accept", "ip daddr 10.244.0.0/16 accept"]


@pytest.mark.parametrize("fully_random,suffix", [
    pytest.param(True, "masquerade fully-random", id="fully-random"),
    pytest.param(False, "masquerade", id="plain"),
])
def test_fully_random_switch(fully_random: bool, suffix: str) -> None:
    text = render(NET, POD, fully_random=fully_random)
    assert rules(text, "postrouting")[-1].endswith(suffix)


def test_script_replaces_only_weft_table_atomically() -> None:
    text = render(NET, POD)
    head = text.splitlines()[:3]
    # create-if-absent, delete, recreate: one transaction, never another table
    assert head == ["table ip weft {}", "delete table ip weft", "table ip weft {"]
    assert "flush ruleset" not in text
    assert text.count("table ip ") == 3


async def test_missing_nft_is_a_backend_error_not_a_crash() -> None:
    from overlay.backend.base import BackendError
    from overlay.masq import MasqError, Masquerade

    m = Masquerade(NET, POD, nft=("/nonexistent/nft",))
    with pytest.raises(MasqError, match="cannot run /nonexistent/nft") as ei:
        await m.ensure()
    assert isinstance(ei.value, BackendError)


NET6 = ipaddress.IPv6Network("fd00:10:244::/56")
POD6 = ipaddress.IPv6Network("fd00:10:244:3::/64")


def test_ipv6_rules_as_flannel_ipv6_table() -> None:
    text = render(NET6, POD6)
    assert text.splitlines()[:3] == ["table ip6 weft {}", "delete table ip6 weft",
                                     "table ip6 weft {"]
    assert rules(text, "postrouting") == [
        "meta mark & 0x4000 == 0x4000 return",
        "ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return",
        "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
        "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return",
        "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
    ]
    assert rules(text, "forward") == ["ip6 saddr fd00:10:244::/56 accept",
                                      "ip6 daddr fd00:10:244::/56 accept"]
    assert " ip " not in text.replace("table ip6", "")  # no IPv4 rule leaks in
    with pytest.raises(ValueError, match="different families"):
        render(NET6, POD)


@pytest.mark.parametrize(("config", "own", "wanted", "unwanted"), [
    (b'{"Network":"10.244.0.0/16"}', ("10.244.3.0/24", None), ["ip"], ["ip6"]),
    (b'{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}',
     ("10.244.3.0/24", "fd00:10:244:3::/64"), ["ip", "ip6"], []),
    (b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}',
     ("0.0.0.0/0", "fd00:10:244:3::/64"), ["ip6"], ["ip"]),
], ids=["ipv4", "dual-stack", "ipv6-only"])
def test_tables_follow_the_families_the_network_enables(
        config: bytes, own: tuple[str, str | None], wanted: list[str],
        unwanted: list[str]) -> None:
    from overlay.config import parse_network_config
    from overlay.lease.model import Lease
    from overlay.masq import for_lease

    cfg = parse_network_config(config)
    lease = Lease(ipaddress.IPv4Network(own[0]), ipaddress.IPv4Address("198.18.0.11"),
                  ipv6_subnet=None if own[1] is None else ipaddress.IPv6Network(own[1]))
    got = for_lease(cfg, lease)
    assert [m.family for m in got.wanted] == wanted
    assert [m.family for m in got.unwanted] == unwanted
    for m in got.wanted:  # never a 0.0.0.0/0 masquerade-everything rule
        assert m.subnet.prefixlen and m.network.prefixlen

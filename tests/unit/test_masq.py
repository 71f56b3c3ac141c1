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

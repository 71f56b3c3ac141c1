"""Subnet arithmetic."""

from __future__ import annotations

import ipaddress

import pytest

from overlay import ipnet

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


@pytest.mark.parametrize(("net", "length", "n", "want"), [
    ("10.244.0.0/16", 24, 0, "10.244.0.0/24"),
    ("10.244.0.0/16", 24, 1, "10.244.1.0/24"),
    ("10.244.0.0/16", 24, -1, "10.244.255.0/24"),
    ("10.1.0.0/28", 30, 3, "10.1.0.12/30"),
], ids=["first", "second", "last", "tiny"])
def test_nth_subnet(net: str, length: int, n: int, want: str) -> None:
    assert ipnet.nth_subnet(N(net), length, n) == N(want)


def test_nth_subnet_out_of_range() -> None:
    with pytest.raises(IndexError):
        ipnet.nth_subnet(N("10.1.0.0/28"), 30, 4)


def test_subnets_between_and_helpers() -> None:
    got = list(ipnet.subnets_between(A("10.0.1.0"), A("10.0.3.0"), 24))
    assert got == [N("10.0.1.0/24"), N("10.0.2.0/24"), N("10.0.3.0/24")]
    assert ipnet.subnet_count(N("10.0.0.0/16"), 24) == 256
    assert ipnet.is_aligned(A("10.0.4.0"), 22) and not ipnet.is_aligned(A("10.0.5.0"), 22)
    assert str(ipnet.gateway(N("10.244.3.0/24"))) == "10.244.3.1/24"

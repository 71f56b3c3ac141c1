"""cni.ip4 agrees with the standard library's ipaddress on everything the plugin uses."""

from __future__ import annotations

import ipaddress

import pytest

from cni.ip4 import IPv4, Net4, parse_interface

ADDRS = ["0.0.0.0", "10.244.5.1", "192.168.255.254", "255.255.255.255", "1.2.3.4"]
NETS = ["10.244.0.0/16", "10.244.5.0/24", "0.0.0.0/0", "10.1.2.3/32", "10.244.5.0/29"]


@pytest.mark.parametrize("text", ADDRS)
def test_address_round_trip(text: str) -> None:
    ref = ipaddress.IPv4Address(text)
    ip = IPv4.parse(text)
    assert str(ip) == str(ref) and int(ip) == int(ref) and ip.packed == ref.packed
    assert IPv4.from_packed(ref.packed) == ip and hash(IPv4.parse(text)) == hash(ip)


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "a.b.c.d",
                                  "1.2.3.-4", "1.2.3.4/24", "\u0661.2.3.4"])
def test_bad_addresses_rejected_like_ipaddress(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.IPv4Address(text)
    with pytest.raises(ValueError):
        IPv4.parse(text)


@pytest.mark.parametrize("text", [*NETS, "10.244.5.7/24"])
def test_network_matches_ipaddress(text: str) -> None:
    ref = ipaddress.IPv4Network(text, strict=False)
    net = Net4.parse(text, strict=False)
    assert str(net) == str(ref)
    assert str(net.broadcast_address) == str(ref.broadcast_address)
    for probe in ["10.244.5.3", "10.244.6.1", "10.1.2.3", "0.0.0.0"]:
        assert (IPv4.parse(probe) in net) == (ipaddress.IPv4Address(probe) in ref)


def test_strict_and_interface() -> None:
    with pytest.raises(ValueError):
        Net4.parse("10.244.5.7/24")
    with pytest.raises(ValueError):
        Net4.parse("10.0.0.0/33")
    ip, net = parse_interface("10.244.5.7/24")
    assert (str(ip), str(net)) == ("10.244.5.7", "10.244.5.0/24")
    assert IPv4.parse("10.0.0.1") < IPv4.parse("10.0.0.2") <= IPv4.parse("10.0.0.2")
    assert str(IPv4.parse("10.0.0.255") + 1) == "10.0.1.0"

"""``cni.ip6`` against ``ipaddress``: the same text forms (Go's too) and semantics."""

from __future__ import annotations

import ipaddress
import random

import pytest

from cni.ip4 import IPv4
from cni.ip6 import IPv6, Net6, family_of, parse_iface, parse_ip, parse_net


def test_text_form_matches_ipaddress_on_random_addresses() -> None:
    rnd = random.Random(6)
    for _ in range(5000):
        groups = [rnd.choice([0, 0, 0, 1, 0xFFFF, rnd.randrange(65536)]) for _ in range(8)]
        value = 0
        for g in groups:
            value = (value << 16) | g
        ref = ipaddress.IPv6Address(value)
        assert str(IPv6(value)) == str(ref)
        assert IPv6.parse(str(ref)).value == value
        assert IPv6.parse(ref.exploded).value == value
        assert IPv6.from_packed(ref.packed).packed == ref.packed


@pytest.mark.parametrize("text", ["::", "::1", "1::", "fd00::", "1:0:0:1:0:0:0:1",
                                  "1:0:0:0:1:0:0:1", "0:0:1::", "::ffff:10.1.2.3",
                                  "1:2:3:4:5:6:1.2.3.4", "FD00::A"])
def test_parse_and_format_edge_cases(text: str) -> None:
    ref = ipaddress.IPv6Address(text)
    assert IPv6.parse(text).value == int(ref)
    if "." not in text:  # 3.11 formats embedded IPv4 in hex, as we do
        assert str(IPv6.parse(text)) == str(ref)


@pytest.mark.parametrize("text", [":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "g::",
                                  "fe80::1%eth0", "1:2:3:4:5:6:7", "", "1.2.3.4", ":1::",
                                  "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3", "\uff11::"])
def test_rejects_what_ipaddress_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        IPv6.parse(text)


def test_networks() -> None:
    n = Net6.parse("fd00:10:244:5::1/64", strict=False)
    ref = ipaddress.IPv6Network("fd00:10:244:5::1/64", strict=False)
    assert str(n) == str(ref)
    assert str(n.broadcast_address) == str(ref.broadcast_address)
    assert IPv6.parse("fd00:10:244:5::99") in n and IPv6.parse("fd00:10:244:6::1") not in n
    assert IPv4.parse("10.0.0.1") not in n
    assert n.overlaps(Net6.parse("fd00:10:244::/48")) and not n.overlaps(
        Net6.parse("fd00:10:244:6::/64"))
    with pytest.raises(ValueError, match="host bits"):
        Net6.parse("fd00::1/64")
    with pytest.raises(ValueError):
        Net6.parse("fd00::/129")
    assert IPv6.parse("fe80::1").is_link_local and not IPv6.parse("fd00::1").is_link_local


def test_either_family() -> None:
    assert isinstance(parse_ip("10.1.2.3"), IPv4) and isinstance(parse_ip("fd00::3"), IPv6)
    assert str(parse_net("fd00::/8")) == "fd00::/8" and str(parse_net("10.0.0.0/8")) == \
        "10.0.0.0/8"
    ip, net = parse_iface("fd00:10:244:5::7/64")
    assert (str(ip), str(net)) == ("fd00:10:244:5::7", "fd00:10:244:5::/64")
    assert family_of(ip) == 6 and family_of(parse_ip("10.0.0.1")) == 4

"""Choosing the external interface on IPv6-only hosts, and the daemon's family check."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.backend.base import ExternalInterface
from overlay.config import ConfigError, parse_network_config
from overlay.daemon import check_interface
from overlay.iface import Interface, choose

A = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
IFACES = [Interface("lo", 1, 65536, (A("127.0.0.1"),)),
          Interface("v6only", 2, 1500, (), True, (A6("fd00:198:18::11"), A6("fd00:198:18::12"))),
          Interface("dual", 3, 1500, (A("198.18.0.11"),), True, (A6("fd00:1::11"),)),
          Interface("none", 4, 1500, ())]


@pytest.mark.parametrize(("iface", "regex", "default", "want"), [
    (["v6only"], [], None, ("v6only", "0.0.0.0", "fd00:198:18::11")),
    (["fd00:198:18::12"], [], None, ("v6only", "0.0.0.0", "fd00:198:18::12")),
    (["fd00:1::11"], [], None, ("dual", "198.18.0.11", "fd00:1::11")),
    ([], ["^fd00:198:18::12$"], None, ("v6only", "0.0.0.0", "fd00:198:18::12")),
    ([], ["^v6"], None, ("v6only", "0.0.0.0", "fd00:198:18::11")),
    ([], [], "v6only", ("v6only", "0.0.0.0", "fd00:198:18::11")),
    (["none", "v6only"], [], None, ("v6only", "0.0.0.0", "fd00:198:18::11")),
], ids=["by-name", "by-ipv6", "ipv6-on-dual-keeps-ipv4", "regex-ipv6-address",
        "regex-name", "ipv6-default-route", "unaddressed-skipped"])
def test_ipv6_only_interfaces_are_chosen(iface: list[str], regex: list[str],
                                         default: str | None,
                                         want: tuple[str, str, str]) -> None:
    ext = choose(IFACES, default, iface, regex)
    assert (ext.name, str(ext.public_ip), str(ext.public_ipv6)) == want


V4 = parse_network_config(b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_network_config(b'{"Network":"10.244.0.0/16","EnableIPv6":true,'
                            b'"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
V6 = parse_network_config(b'{"EnableIPv4":false,"EnableIPv6":true,'
                          b'"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')


def ext(ip: str, ip6: str | None) -> ExternalInterface:
    return ExternalInterface("eth0", 2, A(ip), A(ip), 1500, None if ip6 is None else A6(ip6),
                             None if ip6 is None else A6(ip6))


@pytest.mark.parametrize(("config", "e", "field"), [
    (V4, ext("198.18.0.11", None), None),
    (V4, ext("0.0.0.0", "fd00::11"), "EnableIPv4"),
    (DUAL, ext("198.18.0.11", "fd00::11"), None),
    (DUAL, ext("198.18.0.11", None), "EnableIPv6"),
    (DUAL, ext("0.0.0.0", "fd00::11"), "EnableIPv4"),
    (V6, ext("0.0.0.0", "fd00::11"), None),
    (V6, ext("198.18.0.11", None), "EnableIPv6"),
], ids=["v4", "v4-on-v6-host", "dual", "dual-without-v6", "dual-without-v4", "v6", "v6-on-v4"])
def test_the_daemon_names_the_family_the_interface_lacks(config: object, e: ExternalInterface,
                                                         field: str | None) -> None:
    if field is None:
        check_interface(config, e)  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError) as info:
        check_interface(config, e)  # type: ignore[arg-type]
    assert info.value.field == field
    assert "eth0" in str(info.value)


def test_iface_can_reach_takes_an_ipv6_address() -> None:
    from overlay.cli.flanneld import parse_args

    args, _, _ = parse_args(["-iface-can-reach", "fd00:198:18::1"], {})
    assert args.iface_can_reach == "fd00:198:18::1"

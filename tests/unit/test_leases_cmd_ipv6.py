"""`weftctl leases` with dual-stack and IPv6-only leases: the IPv6 half is shown."""

from __future__ import annotations

from typing import Any

from overlay.cli.network_cmd import format_leases


def test_ipv6_columns_appear_with_ipv6_leases() -> None:
    rows: list[dict[str, Any]] = [
            {"subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": "vxlan",
             "vtep_mac": "0e:aa:bb:cc:dd:ee", "ttl": "20s", "ipv6_subnet": "fd00:10:244:3::/64",
             "public_ipv6": "fd00:198:18::11"},
            {"subnet": "0.0.0.0/0", "public_ip": "0.0.0.0", "backend": "vxlan",
             "vtep_mac": "0e:aa:bb:cc:dd:ef", "ttl": "19s", "ipv6_subnet": "fd00:10:244:4::/64",
             "public_ipv6": "fd00:198:18::12"},
            {"subnet": "10.244.5.0/24", "public_ip": "198.18.0.13", "backend": "vxlan",
             "vtep_mac": "0e:aa:bb:cc:dd:f0", "ttl": "18s", "ipv6_subnet": None,
             "public_ipv6": None}]
    head, dual, v6only, v4only = format_leases(rows).splitlines()
    assert head.split() == ["SUBNET", "PUBLIC", "IP", "IPV6", "SUBNET", "PUBLIC", "IPV6",
                            "BACKEND", "VTEP", "MAC", "TTL"]
    assert dual.split()[:4] == ["10.244.3.0/24", "198.18.0.11", "fd00:10:244:3::/64",
                                "fd00:198:18::11"]
    assert v6only.split()[:4] == ["-", "-", "fd00:10:244:4::/64", "fd00:198:18::12"]
    assert v4only.split()[:4] == ["10.244.5.0/24", "198.18.0.13", "-", "-"]
    # IPv4-only clusters keep the old table
    assert format_leases(rows[2:]).splitlines()[0].split()[:3] == ["SUBNET", "PUBLIC", "IP"]
    assert "IPV6" not in format_leases(rows[2:])

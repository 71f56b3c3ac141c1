"""The network a cluster's subnets are leased from: flannel's network config, decoded.

``NetworkConfig`` is the value ``overlay.config.parse_network_config`` makes of the
JSON at ``<prefix>/config`` (flannel keeps it in its subnet package for the same
reason): the allocator hands out subnets within it and the lease manager acquires
them, so it sits below both, and below the backends that read its Backend object.

IPv6 (flannel's ``EnableIPv6``, ``IPv6Network``, ``IPv6SubnetLen``,
``IPv6SubnetMin``/``Max``) rides beside the IPv4 fields. An IPv6-only config
(``EnableIPv4: false``) keeps flannel's zero IPv4 values: ``network``
0.0.0.0/0, ``subnet_len`` 0, min and max 0.0.0.0 (``has_ipv4`` is False).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BACKEND = "vxlan"  # flannel's documented default Backend.Type


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend_type: str = DEFAULT_BACKEND
    backend: Mapping[str, Any] = field(default_factory=dict)  # the whole Backend object
    enable_ipv4: bool = True  # flannel's EnableIPv4 (default true)
    enable_ipv6: bool = False  # flannel's EnableIPv6
    ipv6_network: ipaddress.IPv6Network | None = None  # set when enable_ipv6
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None

    def fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """True when ``subnet`` is a subnet this config could hand out."""
        return (
            subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def fits6(self, subnet: ipaddress.IPv6Network | None) -> bool:
        """flannel's isIPv6SubnetConfigCompat: with IPv6 off only "no IPv6 subnet" fits."""
        if not self.enable_ipv6 or self.ipv6_network is None:
            return subnet is None
        if subnet is None or self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.ipv6_subnet_len
            and subnet.subnet_of(self.ipv6_network)
            and self.ipv6_subnet_min <= subnet.network_address <= self.ipv6_subnet_max
        )

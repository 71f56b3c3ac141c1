"""The network a cluster's subnets are leased from: flannel's network config, decoded.

``NetworkConfig`` is the value ``overlay.config.parse_network_config`` makes of the
JSON at ``<prefix>/config`` (flannel keeps it in its subnet package for the same
reason): the allocator hands out subnets within it and the lease manager acquires
them, so it sits below both, and below the backends that read its Backend object.
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

    def fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """True when ``subnet`` is a subnet this config could hand out."""
        return (
            subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

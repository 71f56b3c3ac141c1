"""Subnet arithmetic for the overlay: carving a network into host subnets. Pure.

The IPv4 helpers take and return IPv4 types; ``is_aligned`` and ``nth_subnet``
work for both families, ``subnets_between6`` and ``gateway6`` are the IPv6 twins
of ``subnets_between`` and ``gateway`` (an IPv6 network's subnets, flannel's
``IPv6Network``/``IPv6SubnetLen``).

Everything here works on ``ipaddress`` values and integers; nothing allocates,
logs or touches the system. The allocator and the config checks build on it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TypeVar

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address
IPv6Network = ipaddress.IPv6Network
IPv6Address = ipaddress.IPv6Address
Net = TypeVar("Net", IPv4Network, IPv6Network)


def block_size(prefixlen: int, bits: int = 32) -> int:
    """Addresses in one ``/prefixlen`` block (``bits`` 128 for IPv6)."""
    return 1 << (bits - prefixlen)


def is_aligned(addr: IPv4Address | IPv6Address, prefixlen: int) -> bool:
    """True when ``addr`` is the first address of a ``/prefixlen`` block."""
    return int(addr) % block_size(prefixlen, addr.max_prefixlen) == 0


def nth_subnet(network: Net, subnet_len: int, n: int) -> Net:
    """The ``n``-th ``/subnet_len`` block of ``network`` (0-based; negative counts back)."""
    count = subnet_count(network, subnet_len)
    if n < 0:
        n += count
    if not 0 <= n < count:
        raise IndexError(f"{network} has {count} /{subnet_len} subnets; no index {n}")
    base = int(network.network_address) + n * block_size(subnet_len, network.max_prefixlen)
    return network.__class__((base, subnet_len))


def subnet_count(network: IPv4Network | IPv6Network, subnet_len: int) -> int:
    """How many ``/subnet_len`` blocks ``network`` holds."""
    if subnet_len < network.prefixlen:
        return 0
    return 1 << (subnet_len - network.prefixlen)


def subnets_between(first: IPv4Address, last: IPv4Address, subnet_len: int
                    ) -> Iterator[IPv4Network]:
    """Every ``/subnet_len`` block from the one at ``first`` to the one at ``last``, in order."""
    step = block_size(subnet_len)
    start = int(first) - int(first) % step
    for base in range(start, int(last) + 1, step):
        yield IPv4Network((base, subnet_len))


def gateway(subnet: IPv4Network) -> ipaddress.IPv4Interface:
    """The first host address with the subnet's length: ``10.244.3.1/24`` (FLANNEL_SUBNET)."""
    return ipaddress.IPv4Interface((int(subnet.network_address) + 1, subnet.prefixlen))


def subnets_between6(first: IPv6Address, last: IPv6Address, subnet_len: int
                     ) -> Iterator[IPv6Network]:
    """``subnets_between`` for IPv6: every ``/subnet_len`` block from ``first`` to ``last``."""
    step = block_size(subnet_len, 128)
    start = int(first) - int(first) % step
    for base in range(start, int(last) + 1, step):
        yield IPv6Network((base, subnet_len))


def gateway6(subnet: IPv6Network) -> ipaddress.IPv6Interface:
    """``fd00:10:244:3::1/64``: the first host address (flannel's FLANNEL_IPV6_SUBNET)."""
    return ipaddress.IPv6Interface((int(subnet.network_address) + 1, subnet.prefixlen))

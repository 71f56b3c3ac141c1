"""IPv4 subnet arithmetic for the overlay: carving a network into host subnets. Pure.

Everything here works on ``ipaddress`` values and integers; nothing allocates,
logs or touches the system. The allocator and the config checks build on it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address


def block_size(prefixlen: int) -> int:
    """Addresses in one ``/prefixlen`` block."""
    return 1 << (32 - prefixlen)


def is_aligned(addr: IPv4Address, prefixlen: int) -> bool:
    """True when ``addr`` is the first address of a ``/prefixlen`` block."""
    return int(addr) % block_size(prefixlen) == 0


def nth_subnet(network: IPv4Network, subnet_len: int, n: int) -> IPv4Network:
    """The ``n``-th ``/subnet_len`` block of ``network`` (0-based; negative counts back)."""
    count = subnet_count(network, subnet_len)
    if n < 0:
        n += count
    if not 0 <= n < count:
        raise IndexError(f"{network} has {count} /{subnet_len} subnets; no index {n}")
    base = int(network.network_address) + n * block_size(subnet_len)
    return IPv4Network((base, subnet_len))


def subnet_count(network: IPv4Network, subnet_len: int) -> int:
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

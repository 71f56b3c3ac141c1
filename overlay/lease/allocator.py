"""Choosing this host's subnet: flannel's acquisition order as one pure function.

``choose_subnet`` looks at the leases in the store and decides, in order:

1. **Reuse**: a lease whose PublicIP is ours and that still fits the config is
   kept (the caller re-puts it with fresh backend data). Leases with our
   PublicIP that no longer fit are returned in ``stale`` for deletion.
2. **Previous**: the subnet from the old subnet file, if it fits and is free.
3. **Random**: scanning from SubnetMin, the first ``CANDIDATES`` free subnets
   are collected and one is picked with the injected ``random.Random``.

With IPv6 enabled (flannel's allocateSubnet) the same order picks the IPv6
subnet too: a reused lease must fit in both families (``fits6``), and a random
pick draws each family from its own first ``CANDIDATES`` free subnets. The
previous subnets count per half: a half that fits and is free is kept, the
other drawn at random. A lease of ours that no longer fits (stale) still
names a previous half when the subnet file does not, and its subnets are not
"taken" by anyone else: so a host whose network turns dual-stack keeps its
IPv4 subnet (its pods keep their addresses) and gains an IPv6 one, and the
reverse. In an IPv6-only network
the IPv4 half is flannel's zero 0.0.0.0/0 and a host is known by its PublicIPv6.

No subnet left raises ``NetworkFullError``. The function never touches the
store: the caller creates the key with a create-if-absent transaction and calls
again (with the fresh listing) when it loses a race.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from overlay import ipnet
from overlay.errors import LeaseError
from overlay.lease.model import Lease
from overlay.lease.network import NetworkConfig

CANDIDATES = 100  # flannel picks at random among the first 100 free subnets


class NetworkFullError(LeaseError, RuntimeError):
    """No free subnet is left between SubnetMin and SubnetMax."""

    def __init__(self, config: NetworkConfig, taken: int, ipv6: bool = False) -> None:
        super().__init__(
            f"network full: no free /{config.subnet_len} left in {config.network} between "
            f"{config.subnet_min} and {config.subnet_max} ({taken} leased)"
            if not ipv6 else
            f"network full: no free /{config.ipv6_subnet_len} left in IPv6Network "
            f"{config.ipv6_network} between {config.ipv6_subnet_min} and "
            f"{config.ipv6_subnet_max} ({taken} leased)")
        self.network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = (
            config.ipv6_network if ipv6 else config.network)
        self.taken = taken


class Reason(enum.Enum):
    REUSED = "reusing the lease with our PublicIP"
    PREVIOUS = "the previous subnet (subnet file or our old lease) is free"
    RANDOM = "picked a random free subnet"


@dataclass(frozen=True, slots=True)
class Choice:
    subnet: ipaddress.IPv4Network
    reason: Reason
    existing: Lease | None = None  # REUSED: the lease to re-put (compare on its revision)
    stale: tuple[Lease, ...] = ()  # leases with our PublicIP that no longer fit: delete
    subnet6: ipaddress.IPv6Network | None = None  # the IPv6 half when IPv6 is enabled


def choose_subnet(
    config: NetworkConfig,
    leases: Iterable[Lease],
    public_ip: ipaddress.IPv4Address,
    rng: random.Random,
    previous: ipaddress.IPv4Network | None = None,
    avoid: Collection[ipaddress.IPv4Network] = (),
    *,
    public_ipv6: ipaddress.IPv6Address | None = None,
    previous6: ipaddress.IPv6Network | None = None,
    avoid6: Collection[ipaddress.IPv6Network] = (),
) -> Choice:
    """Pick our subnet(s) from the current leases (see the module docstring).

    ``avoid``/``avoid6`` list subnets not to pick at random or as previous even if
    they look free (e.g. one we just lost a race for and whose winner is not listed
    yet).
    """
    leases = list(leases)
    if config.enable_ipv4:
        mine = [le for le in leases if le.public_ip == public_ip]
    else:  # IPv6-only: every PublicIP is 0.0.0.0, the host is its PublicIPv6
        mine = [le for le in leases if public_ipv6 is not None
                and le.public_ipv6 == public_ipv6]

    def fits(le: Lease) -> bool:  # an IPv6-only network wants the zero IPv4 half
        fits4 = config.fits(le.subnet) if config.enable_ipv4 else not le.subnet.prefixlen
        return fits4 and config.fits6(le.ipv6_subnet)

    stale = tuple(le for le in mine if not fits(le))
    fitting = sorted((le for le in mine if fits(le)),
                     key=lambda le: (int(le.subnet.network_address),
                                     int(le.ipv6_subnet.network_address)
                                     if le.ipv6_subnet is not None else 0))
    if fitting:
        # Several leases with our IP (e.g. left by a crashed twin): keep the first,
        # the others are ours too and only waste space, so they go as stale.
        keep = fitting[0]
        return Choice(keep.subnet, Reason.REUSED, keep, stale + tuple(fitting[1:]),
                      keep.ipv6_subnet)
    # 0.0.0.0/0 is an IPv6-only lease's zero IPv4 half, not an IPv4 subnet in use;
    # our stale leases are deleted before the write, so their subnets are free for us
    others = [le for le in leases if not any(le is st for st in stale)]
    taken = {le.subnet for le in others if le.subnet.prefixlen} | {
        a for a in avoid if a.prefixlen}
    taken6 = {le.ipv6_subnet for le in others if le.ipv6_subnet is not None} | set(avoid6)
    if previous is None:
        previous = next((le.subnet for le in stale if le.subnet.prefixlen
                         and config.fits(le.subnet)), None)
    if previous6 is None:
        previous6 = next((le.ipv6_subnet for le in stale if le.ipv6_subnet is not None
                          and config.enable_ipv6 and config.fits6(le.ipv6_subnet)), None)
    prev_ok = (config.enable_ipv4 and previous is not None and config.fits(previous)
               and previous not in taken and not any(previous.overlaps(t) for t in taken))
    prev6_ok = (config.enable_ipv6 and previous6 is not None and config.fits6(previous6)
                and not any(previous6.overlaps(t) for t in taken6))
    subnet = config.network  # IPv6-only: flannel's zero IPv4 half
    if prev_ok or prev6_ok:
        if prev_ok:
            assert previous is not None
            subnet = previous
        elif config.enable_ipv4:
            subnet = _random4(config, taken, rng, len(leases))
        subnet6 = previous6 if prev6_ok else (
            choose_subnet6(config, taken6, rng, len(leases)) if config.enable_ipv6 else None)
        return Choice(subnet, Reason.PREVIOUS, None, stale, subnet6)
    if config.enable_ipv4:
        subnet = _random4(config, taken, rng, len(leases))
    subnet6 = choose_subnet6(config, taken6, rng, len(leases)) if config.enable_ipv6 else None
    return Choice(subnet, Reason.RANDOM, None, stale, subnet6)


def choose_subnet6(config: NetworkConfig, taken: Collection[ipaddress.IPv6Network],
                   rng: random.Random, leased: int = 0) -> ipaddress.IPv6Network:
    """A random IPv6 subnet among the first ``CANDIDATES`` free ones (flannel's scan).

    Taken subnets of another length (an older IPv6SubnetLen) block what they overlap.
    """
    net6, smin, smax = config.ipv6_network, config.ipv6_subnet_min, config.ipv6_subnet_max
    if net6 is None or smin is None or smax is None:
        raise ValueError("choose_subnet6 needs a config with IPv6 enabled")
    odd = [t for t in taken if t.prefixlen != config.ipv6_subnet_len]
    free: list[ipaddress.IPv6Network] = []
    for cand in ipnet.subnets_between6(smin, smax, config.ipv6_subnet_len):
        if cand not in taken and not any(cand.overlaps(t) for t in odd):
            free.append(cand)
            if len(free) >= CANDIDATES:
                break
    if not free:
        raise NetworkFullError(config, leased, ipv6=True)
    return rng.choice(free)


def _random4(config: NetworkConfig, taken: set[ipaddress.IPv4Network], rng: random.Random,
             leased: int) -> ipaddress.IPv4Network:
    """A random IPv4 subnet among the first ``CANDIDATES`` free ones (flannel's scan)."""
    odd = _odd(taken, config)
    free: list[ipaddress.IPv4Network] = []
    for cand in ipnet.subnets_between(config.subnet_min, config.subnet_max,
                                      config.subnet_len):
        if cand not in taken and not any(cand.overlaps(t) for t in odd):
            free.append(cand)
            if len(free) >= CANDIDATES:
                break
    if not free:
        raise NetworkFullError(config, leased)
    return rng.choice(free)


def _odd(taken: set[ipaddress.IPv4Network], config: NetworkConfig
         ) -> list[ipaddress.IPv4Network]:
    """Taken subnets of another length (left by an older config) that may overlap."""
    return [t for t in taken if t.prefixlen != config.subnet_len]

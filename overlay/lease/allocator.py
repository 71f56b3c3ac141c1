"""Choosing this host's subnet: flannel's acquisition order as one pure function.

``choose_subnet`` looks at the leases in the store and decides, in order:

1. **Reuse**: a lease whose PublicIP is ours and that still fits the config is
   kept (the caller re-puts it with fresh backend data). Leases with our
   PublicIP that no longer fit are returned in ``stale`` for deletion.
2. **Previous**: the subnet from the old subnet file, if it fits and is free.
3. **Random**: scanning from SubnetMin, the first ``CANDIDATES`` free subnets
   are collected and one is picked with the injected ``random.Random``.

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

    def __init__(self, config: NetworkConfig, taken: int) -> None:
        super().__init__(
            f"network full: no free /{config.subnet_len} left in {config.network} between "
            f"{config.subnet_min} and {config.subnet_max} ({taken} leased)")
        self.network = config.network
        self.taken = taken


class Reason(enum.Enum):
    REUSED = "reusing the lease with our PublicIP"
    PREVIOUS = "the previous subnet from the subnet file is free"
    RANDOM = "picked a random free subnet"


@dataclass(frozen=True, slots=True)
class Choice:
    subnet: ipaddress.IPv4Network
    reason: Reason
    existing: Lease | None = None  # REUSED: the lease to re-put (compare on its revision)
    stale: tuple[Lease, ...] = ()  # leases with our PublicIP that no longer fit: delete


def choose_subnet(
    config: NetworkConfig,
    leases: Iterable[Lease],
    public_ip: ipaddress.IPv4Address,
    rng: random.Random,
    previous: ipaddress.IPv4Network | None = None,
    avoid: Collection[ipaddress.IPv4Network] = (),
) -> Choice:
    """Pick our subnet from the current leases (see the module docstring).

    ``avoid`` lists subnets not to pick at random or as previous even if they look
    free (e.g. one we just lost a race for and whose winner is not listed yet).
    """
    leases = list(leases)
    mine = [le for le in leases if le.public_ip == public_ip]
    stale = tuple(le for le in mine if not config.fits(le.subnet))
    fitting = sorted((le for le in mine if config.fits(le.subnet)),
                     key=lambda le: int(le.subnet.network_address))
    if fitting:
        # Several leases with our IP (e.g. left by a crashed twin): keep the first,
        # the others are ours too and only waste space, so they go as stale.
        keep = fitting[0]
        return Choice(keep.subnet, Reason.REUSED, keep, stale + tuple(fitting[1:]))
    taken = {le.subnet for le in leases} | set(avoid)
    if previous is not None and config.fits(previous) and previous not in taken:
        return Choice(previous, Reason.PREVIOUS, None, stale)
    odd = _odd(taken, config)
    free: list[ipaddress.IPv4Network] = []
    for subnet in ipnet.subnets_between(config.subnet_min, config.subnet_max,
                                        config.subnet_len):
        if subnet not in taken and not any(subnet.overlaps(t) for t in odd):
            free.append(subnet)
            if len(free) >= CANDIDATES:
                break
    if not free:
        raise NetworkFullError(config, len(leases))
    return Choice(rng.choice(free), Reason.RANDOM, None, stale)


def _odd(taken: set[ipaddress.IPv4Network], config: NetworkConfig
         ) -> list[ipaddress.IPv4Network]:
    """Taken subnets of another length (left by an older config) that may overlap."""
    return [t for t in taken if t.prefixlen != config.subnet_len]

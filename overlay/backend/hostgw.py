"""The host-gw backend: one plain route per peer, ``<peer subnet> via <PublicIP> dev <ext>``.

With ``EnableIPv6`` (``prepare_v6``) the leases' IPv6 halves get the same:
``<peer v6 subnet> via <PublicIPv6> dev <ext>`` (the public IPv6 address must be
on the interface too).

No encapsulation, so the MTU is the interface's own; it needs every peer on the
same L2 segment and the public IP to be an address of the interface (no NAT),
which ``prepare`` checks and refuses otherwise. Routes carry weft's route
protocol number, so ``reconcile`` removes stale peers' routes and never touches
routes it did not create.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.backend.base import BackendError, ExternalInterface, ReconcileReport
from overlay.backend.netlink import Kernel, KernelThread, NetlinkKernel, converge
from overlay.backend.plan import (
    IPAddress,
    LeaseId,
    desired_hostgw,
    lease_half,
    merge_reports,
)
from overlay.lease.model import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostGwConfig:
    pass


def parse_config(cfg: Mapping[str, Any]) -> HostGwConfig:
    """host-gw has no Backend fields."""
    return HostGwConfig()


class HostGwBackend:
    """flannel's host-gw data path, per address family (IPv6 with ``prepare_v6``)."""

    name = "host-gw"

    def __init__(self, config: HostGwConfig, ext: ExternalInterface,
                 kernel: KernelThread | None = None, *,
                 network: ipaddress.IPv4Network | None = None,
                 network6: ipaddress.IPv6Network | None = None) -> None:
        self.config = config
        self.ext = ext
        self.network = network  # routes outside it are never touched
        self.network6 = network6  # the same for the IPv6 half
        self._k = kernel or KernelThread(NetlinkKernel)
        self._own: Lease | None = None
        self._v4 = False  # prepare() ran: the IPv4 half is programmed
        self._v6 = False  # prepare_v6() ran

    @property
    def mtu(self) -> int:
        return self.ext.mtu

    async def _check_public(self, public: IPAddress | None, flag: str) -> None:
        """Refuse a public address that is not on the interface (NAT)."""
        ext = self.ext
        link = await self._k.run(lambda k: k.link(ext.name))
        addrs: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = (
            () if link is None else (*link.addresses, *link.addresses6))
        if public is None or public not in {a.ip for a in addrs}:
            have = ", ".join(str(a) for a in addrs) or "none"
            what = "an IPv6 address" if public is None else f"public IP {public}"
            raise BackendError(
                f"host-gw: {what} is not an address of {ext.name} "
                f"(it has: {have}); peers route to this host's public IP directly, so it "
                f"must be on the interface (no NAT) — use vxlan, or fix {flag}/-iface")

    async def prepare(self) -> Mapping[str, Any]:
        await self._check_public(self.ext.public_ip, "-public-ip")
        self._v4 = True
        return {}

    async def prepare_v6(self) -> Mapping[str, Any]:
        await self._check_public(self.ext.public_ipv6, "-public-ipv6")
        self._v6 = True
        return {}  # flannel's host-gw BackendV6Data

    async def attach(self, own: Lease) -> None:
        self._own = own

    def _reconcile(self, k: Kernel, peers: Sequence[Lease]) -> ReconcileReport:
        own = self._own
        report = ReconcileReport()
        owners: frozenset[LeaseId] = frozenset()
        if self._v4 and (own is None or lease_half(own, 4) is not None):
            plan = desired_hostgw(own, peers, self.ext.name)
            report = converge(k, plan, None, self.network, "host-gw")
            owners = plan.owners
        if self._v6 and (own is None or own.ipv6_subnet is not None):
            plan6 = desired_hostgw(own, peers, self.ext.name, family=6)
            owners |= plan6.owners
            report = merge_reports(report, converge(k, plan6, None, self.network6,
                                                    "host-gw-v6", family=6), len(owners))
        return report

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

    async def close(self) -> None:
        self._k.close()


BACKEND_CLASS = HostGwBackend

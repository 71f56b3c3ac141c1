"""The host-gw backend: one plain route per peer, ``<peer subnet> via <PublicIP> dev <ext>``.

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
from overlay.backend.plan import desired_hostgw
from overlay.lease.model import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostGwConfig:
    pass


def parse_config(cfg: Mapping[str, Any]) -> HostGwConfig:
    """host-gw has no Backend fields."""
    return HostGwConfig()


class HostGwBackend:
    """flannel's host-gw data path."""

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

    @property
    def mtu(self) -> int:
        return self.ext.mtu

    async def prepare(self) -> Mapping[str, Any]:
        ext = self.ext
        link = await self._k.run(lambda k: k.link(ext.name))
        addrs = link.addresses if link is not None else ()
        if ext.public_ip not in {a.ip for a in addrs}:
            have = ", ".join(str(a) for a in addrs) or "none"
            raise BackendError(
                f"host-gw: public IP {ext.public_ip} is not an address of {ext.name} "
                f"(it has: {have}); peers route to this host's public IP directly, so it "
                "must be on the interface (no NAT) — use vxlan, or fix -public-ip/-iface")
        return {}

    async def prepare_v6(self) -> Mapping[str, Any]:
        return {}  # flannel's host-gw BackendV6Data

    async def attach(self, own: Lease) -> None:
        self._own = own

    def _reconcile(self, k: Kernel, peers: Sequence[Lease]) -> ReconcileReport:
        plan = desired_hostgw(self._own, peers, self.ext.name)
        return converge(k, plan, None, self.network, "host-gw")

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

    async def close(self) -> None:
        self._k.close()


BACKEND_CLASS = HostGwBackend

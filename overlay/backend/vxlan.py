"""The vxlan backend: device ``flannel.<VNI>`` and per-peer neighbour, FDB and route.

Kernel state, exactly as flannel programs it (DESIGN.md §4):

* device ``flannel.<VNI>``: VXLAN id VNI, UDP port (8472), ``local`` = the
  external interface's address, ``dev`` = that interface, nolearning,
  MTU = underlay MTU - 50, address ``<subnet>.0/32``;
* per peer: permanent neighbour ``<peer>.0 -> VtepMAC``, FDB
  ``VtepMAC dst PublicIP`` (self, permanent), then
  ``<peer subnet> via <peer>.0 dev flannel.<VNI> onlink``;
* with ``DirectRouting``, a peer on the external interface's own subnet gets
  just ``<peer subnet> via <PublicIP> dev <ext>`` instead.

With ``EnableIPv6`` (``prepare_v6``) the same again for the leases' IPv6 halves
on ``flannel-v6.<VNI>`` (flannel's layout): ``local`` = the interface's IPv6
address, MTU = underlay - 70, address ``<v6 subnet network address>/128``;
per peer a permanent neighbour ``<peer v6 subnet address> -> BackendV6Data
VtepMAC``, FDB ``VtepMAC dst PublicIPv6``, and ``<peer v6 subnet> via <peer v6
subnet address> dev flannel-v6.<VNI> onlink`` (DirectRouting: ``via
PublicIPv6 dev <ext>`` for peers on the interface's IPv6 networks).

The VTEP MAC is derived from (public IP, VNI) (``plan.derive_vtep_mac``), so it
survives restarts and reboots; an existing device whose settings match is kept
with whatever MAC it has, a mismatching one is recreated. ``reconcile`` makes
the kernel match the peers exactly (stale peers removed, changed MACs fixed,
the old FDB entry deleted) and recreates the device if someone deleted it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.backend.base import (
    BackendConfigError,
    BackendError,
    ExternalInterface,
    ReconcileReport,
    bool_field,
    int_field,
)
from overlay.backend.netlink import (
    Kernel,
    KernelThread,
    Link,
    NetlinkKernel,
    VxlanSpec,
    converge,
)
from overlay.backend.plan import (
    IPNetwork,
    LeaseId,
    VxlanSettings,
    derive_vtep_mac,
    desired_vxlan,
    lease_half,
    merge_reports,
)
from overlay.lease.model import Lease

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50
VXLAN6_OVERHEAD = 70  # IPv6 underlay: 40-byte header instead of 20
DEFAULT_PORT = 8472


@dataclass(frozen=True, slots=True)
class VxlanConfig:
    vni: int = 1
    port: int = DEFAULT_PORT
    learning: bool = False
    direct_routing: bool = False
    mtu: int | None = None  # underlay MTU override (flannel's Backend.MTU)


def parse_config(cfg: Mapping[str, Any]) -> VxlanConfig:
    """flannel's vxlan Backend fields: VNI (1), Port (0 = 8472), Learning, DirectRouting,
    MTU (underlay MTU override), GBP (only false)."""
    if bool_field(cfg, "GBP"):
        raise BackendConfigError("GBP", "group-based policy is not supported by weft")
    return VxlanConfig(
        vni=int_field(cfg, "VNI", 1, 0, 16_777_215) or 1,
        port=int_field(cfg, "Port", 0, 0, 65_535) or DEFAULT_PORT,
        learning=bool_field(cfg, "Learning"),
        direct_routing=bool_field(cfg, "DirectRouting"),
        mtu=int_field(cfg, "MTU", 0, 0, 65_535) or None,
    )


class VxlanBackend:
    """flannel's vxlan data path on ``flannel.<VNI>`` (IPv4) and ``flannel-v6.<VNI>`` (IPv6).

    Each half exists once the daemon asked for it (``prepare`` / ``prepare_v6``) and
    is programmed from the leases' matching half; a half the own lease lacks (an
    IPv6-only network's ``0.0.0.0/0``) is skipped.
    """

    name = "vxlan"

    def __init__(self, config: VxlanConfig, ext: ExternalInterface,
                 kernel: KernelThread | None = None, *,
                 network: ipaddress.IPv4Network | None = None,
                 network6: ipaddress.IPv6Network | None = None) -> None:
        self.config = config
        self.ext = ext
        self.network = network  # routes outside it are never touched
        self.network6 = network6  # the same for the IPv6 half
        self.device = f"flannel.{config.vni}"
        self.device6 = f"flannel-v6.{config.vni}"
        self._k = kernel or KernelThread(NetlinkKernel)
        self._own: Lease | None = None
        self._index = 0  # flannel.<VNI>'s ifindex once prepared
        self._index6 = 0  # flannel-v6.<VNI>'s
        self.vtep_mac = ""
        self.vtep_mac6 = ""

    @property
    def mtu(self) -> int:
        """FLANNEL_MTU: the IPv4 device's (underlay - 50), or the IPv6 device's (underlay
        - 70) in an IPv6-only network."""
        if self._index6 and not self._index:
            return self.mtu6
        return (self.config.mtu or self.ext.mtu) - VXLAN_OVERHEAD

    @property
    def mtu6(self) -> int:
        """flannel-v6.<VNI>'s MTU: an IPv6 underlay header is 20 bytes longer (the
        kernel's own default for an IPv6 VXLAN device)."""
        return (self.config.mtu or self.ext.mtu) - VXLAN6_OVERHEAD

    def _spec(self) -> VxlanSpec:
        return VxlanSpec(name=self.device, vni=self.config.vni, port=self.config.port,
                         local=self.ext.ip, link=self.ext.index, mtu=self.mtu,
                         mac=derive_vtep_mac(self.ext.public_ip, self.config.vni),
                         learning=self.config.learning)

    def _spec6(self) -> VxlanSpec:
        local, public = self.ext.iface_ipv6, self.ext.public_ipv6
        if local is None or public is None:
            raise BackendError(
                f"vxlan: EnableIPv6 needs an IPv6 address on {self.ext.name} (none found; "
                "pick the interface with -iface or give -public-ipv6)")
        return VxlanSpec(name=self.device6, vni=self.config.vni, port=self.config.port,
                         local=local, link=self.ext.index, mtu=self.mtu6,
                         mac=derive_vtep_mac(public, self.config.vni),
                         learning=self.config.learning)

    @staticmethod
    def _ensure_device(k: Kernel, spec: VxlanSpec, name: str) -> Link:
        link = k.link(spec.name)
        if link is not None and spec.matches(link):
            if link.mtu != spec.mtu or not link.up:
                k.set_link(link.index, mtu=spec.mtu, up=True)
            return link
        if link is not None:
            log.info("%s exists with other settings (%s); recreating it", spec.name, link.vxlan)
            k.delete_link(link.index)
        else:
            log.info("creating %s (VNI %s, port %s, local %s, dev %s, mtu %s, mac %s)",
                     spec.name, spec.vni, spec.port, spec.local, name, spec.mtu, spec.mac)
        return k.create_vxlan(spec)

    def _address(self) -> list[ipaddress.IPv4Interface]:
        """``<subnet>.0/32``, none when the own lease has no IPv4 half."""
        own = self._own
        if own is None or lease_half(own, 4) is None:
            return []
        return [ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")]

    def _address6(self) -> list[ipaddress.IPv6Interface]:
        """The own IPv6 subnet's network address /128, as flannel addresses flannel-v6."""
        own = self._own
        if own is None or own.ipv6_subnet is None:
            return []
        return [ipaddress.IPv6Interface(f"{own.ipv6_subnet.network_address}/128")]

    async def prepare(self) -> Mapping[str, Any]:
        spec = self._spec()
        link = await self._k.run(lambda k: self._ensure_device(k, spec, self.ext.name))
        self._index = link.index
        self.vtep_mac = link.mac
        return {"VNI": self.config.vni, "VtepMAC": link.mac}

    async def prepare_v6(self) -> Mapping[str, Any]:
        spec = self._spec6()
        link = await self._k.run(lambda k: self._ensure_device(k, spec, self.ext.name))
        self._index6 = link.index
        self.vtep_mac6 = link.mac
        return {"VNI": self.config.vni, "VtepMAC": link.mac}

    async def attach(self, own: Lease) -> None:
        self._own = own
        await self._k.run(self._set_addresses)

    def _set_addresses(self, k: Kernel) -> None:
        for index, want, family, dev in ((self._index, self._address(), 4, self.device),
                                         (self._index6, self._address6(), 6, self.device6)):
            if index and want and k.set_addresses(index, want, family):
                log.info("%s addressed %s", dev, want[0])

    def _relink(self, k: Kernel, spec: VxlanSpec, index: int, published: str) -> int:
        """Recreate the device if someone deleted it; its (new) index."""
        link = self._ensure_device(k, spec, self.ext.name)
        if link.index != index:
            log.warning("%s was deleted or replaced; recreated it", spec.name)
        if link.mac != published:
            log.warning("%s now has MAC %s (published %s)", spec.name, link.mac, published)
        return link.index

    def _direct_nets(self, k: Kernel, family: int) -> tuple[IPNetwork, ...]:
        if not self.config.direct_routing:
            return ()
        ext = k.link(self.ext.name)
        if ext is None:
            return ()
        return tuple(a.network for a in (ext.addresses if family == 4 else ext.addresses6))

    def _reconcile(self, k: Kernel, peers: Sequence[Lease]) -> ReconcileReport:
        own = self._own
        report = ReconcileReport()
        owners: frozenset[LeaseId] = frozenset()
        if self._index and (own is None or lease_half(own, 4) is not None):
            self._index = self._relink(k, self._spec(), self._index, self.vtep_mac)
            settings = VxlanSettings(self.device, self.ext.name, self._direct_nets(k, 4),
                                     self.config.direct_routing)
            plan = desired_vxlan(own, peers, settings)
            report = converge(k, plan, self.device, self.network, "vxlan")
            owners = plan.owners
        if self._index6 and (own is None or own.ipv6_subnet is not None):
            self._index6 = self._relink(k, self._spec6(), self._index6, self.vtep_mac6)
            settings6 = VxlanSettings(self.device6, self.ext.name, self._direct_nets(k, 6),
                                      self.config.direct_routing, family=6)
            plan6 = desired_vxlan(own, peers, settings6)
            owners |= plan6.owners
            report = merge_reports(report, converge(k, plan6, self.device6, self.network6,
                                                    "vxlan-v6", family=6), len(owners))
        self._set_addresses(k)
        return report

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

    async def close(self) -> None:
        self._k.close()


BACKEND_CLASS = VxlanBackend

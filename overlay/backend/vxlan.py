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
    VxlanSettings,
    derive_vtep_mac,
    desired_vxlan,
)
from overlay.lease.model import Lease

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50
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
    """flannel's vxlan data path on ``flannel.<VNI>``."""

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
        self._k = kernel or KernelThread(NetlinkKernel)
        self._own: Lease | None = None
        self._index = 0
        self.vtep_mac = ""

    @property
    def mtu(self) -> int:
        return (self.config.mtu or self.ext.mtu) - VXLAN_OVERHEAD

    def _spec(self) -> VxlanSpec:
        return VxlanSpec(name=self.device, vni=self.config.vni, port=self.config.port,
                         local=self.ext.ip, link=self.ext.index, mtu=self.mtu,
                         mac=derive_vtep_mac(self.ext.public_ip, self.config.vni),
                         learning=self.config.learning)

    def _ensure_device(self, k: Kernel) -> Link:
        spec = self._spec()
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
                     spec.name, spec.vni, spec.port, spec.local, self.ext.name, spec.mtu,
                     spec.mac)
        return k.create_vxlan(spec)

    def _address(self) -> list[ipaddress.IPv4Interface]:
        assert self._own is not None
        return [ipaddress.IPv4Interface(f"{self._own.subnet.network_address}/32")]

    async def prepare(self) -> Mapping[str, Any]:
        link = await self._k.run(self._ensure_device)
        self._index = link.index
        self.vtep_mac = link.mac
        return {"VNI": self.config.vni, "VtepMAC": link.mac}

    async def prepare_v6(self) -> Mapping[str, Any]:
        raise BackendError("vxlan: the IPv6 half (flannel-v6.<VNI>) is not built yet")

    async def attach(self, own: Lease) -> None:
        self._own = own
        index = self._index
        changed = await self._k.run(lambda k: k.set_addresses(index, self._address()))
        if changed:
            log.info("%s addressed %s", self.device, self._address()[0])

    def _reconcile(self, k: Kernel, peers: Sequence[Lease]) -> ReconcileReport:
        link = self._ensure_device(k)
        if link.index != self._index:
            if self._index:
                log.warning("%s was deleted or replaced; recreated it", self.device)
            self._index = link.index
        if link.mac != self.vtep_mac and self.vtep_mac:
            log.warning("%s now has MAC %s (published %s)", self.device, link.mac,
                        self.vtep_mac)
        if self._own is not None and k.set_addresses(link.index, self._address()):
            log.info("%s addressed %s", self.device, self._address()[0])
        nets: tuple[ipaddress.IPv4Network, ...] = ()
        if self.config.direct_routing:
            ext = k.link(self.ext.name)
            nets = tuple(a.network for a in ext.addresses) if ext is not None else ()
        settings = VxlanSettings(self.device, self.ext.name, nets, self.config.direct_routing)
        plan = desired_vxlan(self._own, peers, settings)
        return converge(k, plan, self.device, self.network, "vxlan")

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

    async def close(self) -> None:
        self._k.close()


BACKEND_CLASS = VxlanBackend

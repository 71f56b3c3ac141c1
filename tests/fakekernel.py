"""FakeKernel: the in-memory ``overlay.backend.netlink.Kernel`` the unit tests program.

It keeps links (with addresses), weft's neighbours/FDB/routes and blackholes in
plain containers, records every call in ``calls`` and fails the op kinds listed in
``fail`` (``apply`` then reports them as errors, as netlink failures are).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from overlay.backend.netlink import Kernel, KernelError, Link, VxlanInfo, VxlanSpec
from overlay.backend.plan import Blackhole, KernelState, Neigh, Op, OpKind, Route

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class FakeKernel:
    """An in-memory ``Kernel`` for unit tests; ``calls`` records what was asked."""

    links: dict[str, Link] = field(default_factory=dict)
    addrs: dict[int, set[Addr]] = field(default_factory=dict)  # both families
    state: KernelState = field(default_factory=KernelState)
    calls: list[str] = field(default_factory=list)
    fail: set[OpKind] = field(default_factory=set)  # op kinds that fail in apply
    holes: set[ipaddress.IPv4Network] = field(default_factory=set)  # blackhole routes
    _next: int = 100

    def add_link(self, name: str, kind: str = "veth", mtu: int = 1500,
                 addrs: Sequence[Addr] = ()) -> Link:
        self._next += 1
        link = Link(self._next, name, kind, "02:00:00:00:00:%02x" % (self._next % 256), mtu,
                    True)
        self.links[name] = link
        self.addrs[link.index] = set(addrs)
        return link

    def link(self, name: str) -> Link | None:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            link = self.links.get(name)
        else:
            link = next((lk for lk in self.links.values()
                         if ip in {a.ip for a in self.addrs.get(lk.index, set())}), None)
        if link is None:
            return None
        have = self.addrs.get(link.index, set())
        return replace(
            link,
            addresses=tuple(sorted(a for a in have if isinstance(a, ipaddress.IPv4Interface))),
            addresses6=tuple(sorted(a for a in have if isinstance(a, ipaddress.IPv6Interface)
                                    and not a.ip.is_link_local)))

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        self.calls.append(f"create {spec.name} mac={spec.mac} mtu={spec.mtu}")
        if spec.name in self.links:
            raise KernelError(f"create vxlan {spec.name}", errno.EEXIST, "exists")
        self._next += 1
        link = Link(self._next, spec.name, "vxlan", spec.mac, spec.mtu, True,
                    VxlanInfo(spec.vni, spec.port, spec.local, spec.link, spec.learning))
        self.links[spec.name] = link
        self.addrs[link.index] = set()
        return link

    def delete_link(self, index: int) -> None:
        self.calls.append(f"delete {index}")
        for name, link in list(self.links.items()):
            if link.index == index:
                del self.links[name]
                self.addrs.pop(index, None)
                # the kernel drops what hung off the device with it (a VTEP holds
                # one family's neighbours and FDB entries)
                fam = link.vxlan.local.version if link.vxlan and link.vxlan.local else 0
                self.state = KernelState(
                    frozenset(n for n in self.state.neighs if n.ip.version != fam),
                    frozenset(f for f in self.state.fdbs if f.dst.version != fam),
                    frozenset(r for r in self.state.routes if r.dev != name))

    def set_link(self, index: int, *, mtu: int | None = None, up: bool = True) -> None:
        self.calls.append(f"set {index} mtu={mtu} up={up}")
        for name, link in self.links.items():
            if link.index == index:
                self.links[name] = replace(link, mtu=mtu or link.mtu, up=up)

    def set_addresses(self, index: int, want: Sequence[Addr], family: int = 4) -> bool:
        have = self.addrs.get(index, set())
        mine = {a for a in have if a.version == family and not a.ip.is_link_local}
        changed = mine != set(want)
        if changed:
            self.calls.append(f"addrs {index} {sorted(map(str, want))}")
        self.addrs[index] = (have - mine) | set(want)
        return changed

    def observe(self, vtep: str | None, family: int = 4) -> KernelState:
        self.calls.append("observe" if family == 4 else "observe6")
        st = self.state
        return KernelState(frozenset(n for n in st.neighs if n.ip.version == family),
                           frozenset(f for f in st.fdbs if f.dst.version == family),
                           frozenset(r for r in st.routes if r.dst.version == family),
                           frozenset(self.holes) if family == 4 else frozenset())

    def apply(self, ops: Sequence[Op], vtep: str | None) -> list[str]:
        errors: list[str] = []
        n, f, r = set(self.state.neighs), set(self.state.fdbs), set(self.state.routes)
        for op in ops:
            self.calls.append(str(op))
            if op.kind in self.fail:
                errors.append(f"{op}: injected failure")
                continue
            e = op.entry
            if isinstance(e, Blackhole):
                if op.kind is OpKind.BLACKHOLE_ADD:
                    self.holes.add(e.dst)
                else:
                    self.holes.discard(e.dst)
            elif isinstance(e, Route):
                r = {x for x in r if x.dst != e.dst}
                if op.kind is OpKind.ROUTE_SET:
                    r.add(e)
            elif isinstance(e, Neigh):
                n = {x for x in n if x.ip != e.ip}
                if op.kind is OpKind.NEIGH_SET:
                    n.add(e)
            else:
                f = {x for x in f if x.mac != e.mac} if op.kind is OpKind.FDB_ADD else f - {e}
                if op.kind is OpKind.FDB_ADD:
                    f.add(e)
        self.state = KernelState(frozenset(n), frozenset(f), frozenset(r))
        return errors



_: Kernel = FakeKernel()

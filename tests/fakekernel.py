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


@dataclass
class FakeKernel:
    """An in-memory ``Kernel`` for unit tests; ``calls`` records what was asked."""

    links: dict[str, Link] = field(default_factory=dict)
    addrs: dict[int, set[ipaddress.IPv4Interface]] = field(default_factory=dict)
    state: KernelState = field(default_factory=KernelState)
    calls: list[str] = field(default_factory=list)
    fail: set[OpKind] = field(default_factory=set)  # op kinds that fail in apply
    holes: set[ipaddress.IPv4Network] = field(default_factory=set)  # blackhole routes
    _next: int = 100

    def add_link(self, name: str, kind: str = "veth", mtu: int = 1500,
                 addrs: Sequence[ipaddress.IPv4Interface] = ()) -> Link:
        self._next += 1
        link = Link(self._next, name, kind, "02:00:00:00:00:%02x" % (self._next % 256), mtu,
                    True)
        self.links[name] = link
        self.addrs[link.index] = set(addrs)
        return link

    def link(self, name: str) -> Link | None:
        try:
            ip = ipaddress.IPv4Address(name)
        except ValueError:
            link = self.links.get(name)
        else:
            link = next((lk for lk in self.links.values()
                         if ip in {a.ip for a in self.addrs.get(lk.index, set())}), None)
        if link is None:
            return None
        return replace(link, addresses=tuple(sorted(self.addrs.get(link.index, set()))))

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
                # the kernel drops what hung off the device with it
                self.state = KernelState(
                    frozenset() if link.kind == "vxlan" else self.state.neighs,
                    frozenset() if link.kind == "vxlan" else self.state.fdbs,
                    frozenset(r for r in self.state.routes if r.dev != name))

    def set_link(self, index: int, *, mtu: int | None = None, up: bool = True) -> None:
        self.calls.append(f"set {index} mtu={mtu} up={up}")
        for name, link in self.links.items():
            if link.index == index:
                self.links[name] = replace(link, mtu=mtu or link.mtu, up=up)

    def set_addresses(self, index: int, want: Sequence[ipaddress.IPv4Interface]) -> bool:
        changed = self.addrs.get(index, set()) != set(want)
        if changed:
            self.calls.append(f"addrs {index} {sorted(map(str, want))}")
        self.addrs[index] = set(want)
        return changed

    def observe(self, vtep: str | None) -> KernelState:
        self.calls.append("observe")
        return replace(self.state, blackholes=frozenset(self.holes))

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

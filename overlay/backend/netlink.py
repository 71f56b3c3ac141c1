"""The netlink seam: the one place in overlay/ that talks to the kernel through pyroute2.

``Kernel`` is the small protocol the backends program against; ``NetlinkKernel``
implements it with pyroute2's (synchronous) ``IPRoute`` in the calling
process's network namespace (``tests/fakekernel.py`` has the in-memory fake the
unit tests use; it records every call). ``KernelThread`` runs a ``Kernel`` on one
dedicated worker thread so the asyncio daemon never blocks on netlink and
pyroute2's socket is only ever used from a single thread.

Efficiency: ``observe`` dumps neighbours, FDB and routes once per reconcile pass
(filtered to the VTEP device and to weft's route protocol) instead of asking
per peer; ``apply`` sends one request per operation. 1,000 peers = 3,000
requests, well under a second on this kind of machine.

pyroute2 is imported lazily so that importing the backends (and the registry)
stays cheap for processes that never touch netlink.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from overlay.backend.base import BackendError, ExternalInterface, ReconcileReport
from overlay.backend.plan import (
    BLACKHOLE_METRIC,
    ROUTE_PROTO,
    Blackhole,
    Fdb,
    IPAddress,
    IPNetwork,
    KernelState,
    Neigh,
    Op,
    OpKind,
    Plan,
    Route,
    blackhole_diff,
    diff,
    summarize,
    within,
)

log = logging.getLogger(__name__)

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
MAIN_TABLE = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
IFA_F_NODAD = 0x02
_ZERO_MAC = "00:00:00:00:00:00"
# deleting something already gone is success
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    vni: int
    port: int
    local: IPAddress | None  # IFLA_VXLAN_LOCAL or IFLA_VXLAN_LOCAL6
    link: int  # index of the underlay device (0 = none)
    learning: bool


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str  # "vxlan", "tun", "veth", "" ...
    mac: str
    mtu: int
    up: bool
    vxlan: VxlanInfo | None = None
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()  # its IPv4 addresses
    addresses6: tuple[ipaddress.IPv6Interface, ...] = ()  # its IPv6 ones, link-local excepted


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local: IPAddress  # an IPv6 address makes an IPv6 VTEP (flannel-v6.<VNI>)
    link: int
    mtu: int
    mac: str
    learning: bool = False

    def matches(self, link: Link) -> bool:
        """Whether an existing device can be kept (MTU and MAC are not compared)."""
        v = link.vxlan
        return (link.kind == "vxlan" and v is not None and v.vni == self.vni
                and v.port == self.port and v.local == self.local and v.link == self.link
                and v.learning == self.learning)


class KernelError(BackendError):
    """A netlink request failed; carries the errno and what was asked."""

    def __init__(self, what: str, code: int, message: str) -> None:
        super().__init__(f"{what}: {message} (errno {code})")
        self.what = what
        self.code = code


class Kernel(Protocol):
    """What the backends need from the kernel (one network namespace): links, addresses,
    and weft's routes, neighbours, FDB entries and blackholes as one observable state."""

    def link(self, name: str) -> Link | None:
        """The link named ``name`` (or, given an IP address, the link holding it), with
        its addresses; None when there is none."""
        ...

    def create_vxlan(self, spec: VxlanSpec) -> Link: ...

    def delete_link(self, index: int) -> None: ...

    def set_link(self, index: int, *, mtu: int | None = None, up: bool = True) -> None: ...

    def set_addresses(self, index: int,
                      want: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                      family: int = 4) -> bool:
        """Make the device's ``family`` addresses exactly ``want`` (IPv6: link-local ones
        are left alone, new ones skip DAD); True if anything changed."""
        ...

    def observe(self, vtep: str | None, family: int = 4) -> KernelState:
        """Permanent neighbours and remote FDB entries on ``vtep``, weft's routes and
        weft's blackhole routes (``ROUTE_PROTO``, ``BLACKHOLE_METRIC``), of one family."""
        ...

    def apply(self, ops: Sequence[Op], vtep: str | None) -> list[str]:
        """Run ``ops`` in order (neighbour/FDB ops on ``vtep``).

        Returns one message per failed operation; the others still run.
        """
        ...


def converge(k: Kernel, plan: Plan, vtep: str | None, network: IPNetwork | None,
             label: str, family: int = 4) -> ReconcileReport:
    """Make the kernel match ``plan`` (within ``network``, one address family), log what
    changed, report it.

    The one apply step every backend shares, for each half: observe once, diff
    against the plan (pure), run the operations, summarise. ``label`` prefixes the
    log lines.
    """
    ops = diff(plan.state, within(k.observe(vtep, family), network, family))
    errors = k.apply(ops, vtep) if ops else []
    for op in ops:
        log.debug("%s: %s", label, op)
    report = summarize(ops, errors, plan.problems, plan.peers)
    if ops or errors or plan.problems:
        log.info("%s reconcile: %d peers, +%d -%d ~%d, %d errors", label, report.peers,
                 report.added, report.removed, report.changed, len(report.errors))
    for e in report.errors:
        log.warning("%s: %s", label, e)
    return report


def sync_blackholes(k: Kernel, want: frozenset[ipaddress.IPv4Network],
                    network: ipaddress.IPv4Network | None) -> list[str]:
    """Make weft's blackhole routes in ``network`` exactly ``want``; one message per failure.

    Separate from ``converge``: the blackhole is the daemon's (``-ip-blackhole-route``),
    the same for every backend, and ``observe`` leaves it out of the backends' routes.
    """
    ops = blackhole_diff(want, k.observe(None).blackholes, network)
    errors: list[str] = []
    for kind, dsts in ((OpKind.BLACKHOLE_ADD, ops.add), (OpKind.BLACKHOLE_DEL, ops.remove)):
        for dst in dsts:
            failed = k.apply([Op(kind, Blackhole(dst))], None)
            errors += failed
            if not failed:
                log.info("%s blackhole route %s",
                         "added" if kind is OpKind.BLACKHOLE_ADD else "removed", dst)
    return errors


# ---------------------------------------------------------------------------
# pyroute2 implementation


class NetlinkKernel:
    """``Kernel`` over pyroute2 ``IPRoute`` in this process's network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self._ipr: Any = IPRoute()
        self._names: dict[str, int] = {}

    def close(self) -> None:
        self._ipr.close()

    # -- helpers ------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return fn()
        except NetlinkError as exc:
            raise KernelError(what, exc.code, str(exc)) from None

    def _index(self, name: str) -> int:
        idx = self._names.get(name)
        if idx is None:
            found = self._ipr.link_lookup(ifname=name)
            if not found:
                raise KernelError(f"link {name}", errno.ENODEV, "no such device")
            idx = int(found[0])
            self._names[name] = idx
        return idx

    @staticmethod
    def _to_link(msg: Any) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = ""
        vx: VxlanInfo | None = None
        if info is not None:
            kind = info.get_attr("IFLA_INFO_KIND") or ""
            data = info.get_attr("IFLA_INFO_DATA")
            if kind == "vxlan" and data is not None:
                local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
                vx = VxlanInfo(
                    vni=int(data.get_attr("IFLA_VXLAN_ID") or 0),
                    port=int(data.get_attr("IFLA_VXLAN_PORT") or 0),
                    local=ipaddress.ip_address(local) if local else None,
                    link=int(data.get_attr("IFLA_VXLAN_LINK") or 0),
                    learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                )
        return Link(index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME")), kind=kind,
                    mac=str(msg.get_attr("IFLA_ADDRESS") or ""),
                    mtu=int(msg.get_attr("IFLA_MTU") or 0),
                    up=bool(msg["flags"] & 1), vxlan=vx)

    # -- links --------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        try:
            ip: IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        if ip is not None:
            fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            for msg in self._ipr.get_addr(family=fam):
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr is not None and ipaddress.ip_address(addr) == ip:
                    owner = self._ipr.get_links(int(msg["index"]))[0].get_attr("IFLA_IFNAME")
                    return self.link(str(owner))
            return None
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            self._names.pop(name, None)
            return None
        link = self._to_link(self._ipr.get_links(int(found[0]))[0])
        self._names[name] = link.index
        return replace(link, addresses=self._addresses(link.index),
                       addresses6=self._addresses6(link.index))

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        local = "vxlan_local" if spec.local.version == 4 else "vxlan_local6"
        self._call(f"create vxlan {spec.name}", lambda: self._ipr.link(
            "add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
            vxlan_link=spec.link, vxlan_learning=int(spec.learning), address=spec.mac,
            mtu=spec.mtu, **{local: str(spec.local)}))
        link = self.link(spec.name)
        if link is None:
            raise KernelError(f"create vxlan {spec.name}", errno.ENODEV, "vanished after add")
        self._call(f"set {spec.name} up",
                   lambda: self._ipr.link("set", index=link.index, state="up"))
        return replace(link, up=True)

    def delete_link(self, index: int) -> None:
        self._names = {k: v for k, v in self._names.items() if v != index}
        self._call(f"delete link {index}", lambda: self._ipr.link("del", index=index))

    def set_link(self, index: int, *, mtu: int | None = None, up: bool = True) -> None:
        kw: dict[str, Any] = {"state": "up" if up else "down"}
        if mtu is not None:
            kw["mtu"] = mtu
        self._call(f"set link {index}", lambda: self._ipr.link("set", index=index, **kw))

    # -- addresses ----------------------------------------------------------

    def _addresses(self, index: int) -> tuple[ipaddress.IPv4Interface, ...]:
        out = []
        for msg in self._ipr.get_addr(index=index, family=socket.AF_INET):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            out.append(ipaddress.IPv4Interface(f"{addr}/{msg['prefixlen']}"))
        return tuple(out)

    def _addresses6(self, index: int) -> tuple[ipaddress.IPv6Interface, ...]:
        out = []
        for msg in self._ipr.get_addr(index=index, family=socket.AF_INET6):
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            a = ipaddress.IPv6Interface(f"{addr}/{msg['prefixlen']}")
            if not a.ip.is_link_local:
                out.append(a)
        return tuple(out)

    def set_addresses(self, index: int,
                      want: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                      family: int = 4) -> bool:
        have: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = set(
            self._addresses(index) if family == 4 else self._addresses6(index))
        changed = False
        for cmd, todo in (("del", have - set(want)), ("add", set(want) - have)):
            for a in todo:
                self._addr(cmd, index, a)
                changed = True
        return changed

    def _addr(self, cmd: str, index: int,
              a: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        kw: dict[str, Any] = {}
        if a.version == 6:
            kw = {"family": socket.AF_INET6}
            if cmd == "add":  # usable at once: an address on a VTEP needs no DAD
                kw["flags"] = IFA_F_NODAD
        self._call(f"{cmd} address {a}", lambda: self._ipr.addr(
            cmd, index=index, address=str(a.ip), prefixlen=a.network.prefixlen, **kw))

    # -- state ----------------------------------------------------------------

    def observe(self, vtep: str | None, family: int = 4) -> KernelState:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        ip_address = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        ip_network = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
        names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in self._ipr.get_links()}
        self._names = {v: k for k, v in names.items()}
        neighs: set[Neigh] = set()
        fdbs: set[Fdb] = set()
        vidx = self._names.get(vtep) if vtep else None
        if vidx is not None:
            for m in self._ipr.get_neighbours(ifindex=vidx, family=af):
                mac = m.get_attr("NDA_LLADDR")
                dst = m.get_attr("NDA_DST")
                if m["state"] & NUD_PERMANENT and mac and dst:
                    neighs.add(Neigh(ip_address(dst), str(mac).lower()))
            for m in self._ipr.fdb("dump", ifindex=vidx):
                mac = m.get_attr("NDA_LLADDR")
                dst = m.get_attr("NDA_DST")
                if m["ifindex"] != vidx or not mac or not dst or mac == _ZERO_MAC:
                    continue
                try:
                    fdbs.add(Fdb(str(mac).lower(), ip_address(dst)))
                except ValueError:  # a remote of the other family: not this pass's
                    continue
        routes: set[Route] = set()
        holes: set[ipaddress.IPv4Network] = set()
        for m in self._ipr.get_routes(family=af, table=MAIN_TABLE):
            if m["proto"] != ROUTE_PROTO:
                continue
            dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == 4 else "::")
            if m["type"] == RTN_BLACKHOLE:  # the -ip-blackhole-route blackhole: not a backend's
                if family == 4 and (m.get_attr("RTA_PRIORITY") or 0) == BLACKHOLE_METRIC:
                    holes.add(ipaddress.IPv4Network(f"{dst}/{m['dst_len']}"))
                continue
            if m["type"] != RTN_UNICAST:
                continue
            gw = m.get_attr("RTA_GATEWAY")
            oif = m.get_attr("RTA_OIF")
            routes.add(Route(
                ip_network(f"{dst}/{m['dst_len']}"),
                names.get(int(oif), f"if{oif}") if oif is not None else "",
                ip_address(gw) if gw else None,
                bool(m["flags"] & RTNH_F_ONLINK)))
        return KernelState(frozenset(neighs), frozenset(fdbs), frozenset(routes),
                           frozenset(holes))

    def apply(self, ops: Sequence[Op], vtep: str | None) -> list[str]:
        from pyroute2.netlink.exceptions import NetlinkError

        errors: list[str] = []
        for op in ops:
            try:
                self._apply_one(op, vtep)
            except NetlinkError as exc:
                if op.kind in (OpKind.ROUTE_DEL, OpKind.NEIGH_DEL, OpKind.FDB_DEL,
                               OpKind.BLACKHOLE_DEL) and exc.code in _GONE:
                    continue
                errors.append(f"{op}: {exc}")
            except KernelError as exc:
                errors.append(f"{op}: {exc}")
        return errors

    def _apply_one(self, op: Op, vtep: str | None) -> None:
        ipr = self._ipr
        e = op.entry
        if isinstance(e, Blackhole):
            ipr.route("replace" if op.kind is OpKind.BLACKHOLE_ADD else "del", dst=str(e.dst),
                      table=MAIN_TABLE, proto=ROUTE_PROTO, type=RTN_BLACKHOLE,
                      priority=BLACKHOLE_METRIC)
        elif isinstance(e, Route):
            kw: dict[str, Any] = {"dst": str(e.dst), "table": MAIN_TABLE, "proto": ROUTE_PROTO,
                                  "family": socket.AF_INET6 if e.dst.version == 6
                                  else socket.AF_INET}
            if op.kind is OpKind.ROUTE_DEL:
                ipr.route("del", **kw)
                return
            kw["oif"] = self._index(e.dev)
            if e.gateway is not None:
                kw["gateway"] = str(e.gateway)
                kw["scope"] = SCOPE_UNIVERSE
            else:
                kw["scope"] = SCOPE_LINK
            if e.onlink:
                kw["flags"] = RTNH_F_ONLINK
            ipr.route("replace", **kw)
        elif isinstance(e, Neigh):
            dev = self._vtep_index(op, vtep)
            fam = socket.AF_INET6 if e.ip.version == 6 else socket.AF_INET
            if op.kind is OpKind.NEIGH_DEL:
                ipr.neigh("del", ifindex=dev, dst=str(e.ip), lladdr=e.mac, family=fam)
            else:
                ipr.neigh("replace", ifindex=dev, dst=str(e.ip), lladdr=e.mac,
                          state=NUD_PERMANENT, family=fam)
        else:
            dev = self._vtep_index(op, vtep)
            if op.kind is OpKind.FDB_DEL:
                ipr.fdb("del", ifindex=dev, lladdr=e.mac, dst=str(e.dst))
            else:
                # pyroute2 applies no defaults on replace: permanent + self explicitly
                ipr.fdb("replace", ifindex=dev, lladdr=e.mac, dst=str(e.dst),
                        state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def _vtep_index(self, op: Op, vtep: str | None) -> int:
        if not vtep:
            raise KernelError(str(op), errno.ENODEV, "no VTEP device given")
        return self._index(vtep)


def external_interface(name_or_ip: str, public_ip: ipaddress.IPv4Address | None = None,
                       kernel: Kernel | None = None, *,
                       public_ipv6: ipaddress.IPv6Address | None = None) -> ExternalInterface:
    """Resolve ``-iface`` (a device name or one of its addresses) in this namespace.

    ``iface_ipv6`` is the interface's first non-link-local IPv6 address (the given
    one when ``name_or_ip`` is IPv6). A device with IPv6 but no IPv4 address (an
    IPv6-only underlay) gets ``ip`` 0.0.0.0. Raises ``BackendError`` naming the
    interface when it does not exist or has no address at all.
    """
    if kernel is None:
        # pyroute2's synchronous IPRoute cannot start inside a running event loop:
        # open it on a thread of its own, so this works from async code as well
        def fresh() -> ExternalInterface:
            k = NetlinkKernel()
            try:
                return external_interface(name_or_ip, public_ip, k, public_ipv6=public_ipv6)
            finally:
                k.close()

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink-iface") as pool:
            return pool.submit(fresh).result()
    k = kernel
    try:
        wanted: IPAddress | None = ipaddress.ip_address(name_or_ip)
    except ValueError:
        wanted = None
    link = k.link(name_or_ip)
    if link is None:
        raise BackendError(f"interface {name_or_ip!r} does not exist" if wanted is None
                           else f"no interface has the address {wanted}")
    if not link.addresses and not link.addresses6:
        raise BackendError(f"interface {name_or_ip!r} has no IPv4 or IPv6 address")
    ip = (wanted if isinstance(wanted, ipaddress.IPv4Address)
          else link.addresses[0].ip if link.addresses else ipaddress.IPv4Address(0))
    ip6 = (wanted if isinstance(wanted, ipaddress.IPv6Address)
           else link.addresses6[0].ip if link.addresses6 else None)
    return ExternalInterface(link.name, link.index, ip, public_ip or ip, link.mtu,
                             iface_ipv6=ip6, public_ipv6=public_ipv6 or ip6)


class KernelThread:
    """Runs blocking ``Kernel`` calls on one dedicated thread, awaitable from asyncio."""

    def __init__(self, kernel_factory: Callable[[], Kernel]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._factory = kernel_factory
        self._kernel: Kernel | None = None
        self._closed = False

    def _get(self) -> Kernel:
        if self._kernel is None:
            self._kernel = self._factory()
        return self._kernel

    async def run(self, fn: Callable[[Kernel], T]) -> T:
        """Run ``fn(kernel)`` on the netlink thread.

        This is the boundary: whatever goes wrong underneath (a netlink error, a
        closed socket, a bug) reaches the caller as ``BackendError``, so the
        daemon logs it and retries on its next pass instead of dying.
        """
        if self._closed:
            raise BackendError("the backend is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(self._get()))
        except BackendError:
            raise
        except OSError as exc:
            raise KernelError("netlink", exc.errno or 0, str(exc)) from exc
        except Exception as exc:
            code = getattr(exc, "code", 0)
            if type(exc).__name__ == "NetlinkError":
                raise KernelError("netlink", int(code or 0), str(exc)) from exc
            log.exception("unexpected failure programming the kernel")
            raise BackendError(f"unexpected {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the kernel handle and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            k = self._kernel
            closer = getattr(k, "close", None)
            if callable(closer):
                closer()
            self._kernel = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)

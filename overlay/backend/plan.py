"""The route plan: desired kernel entries from leases, and the ordered diff to get there.

Theory of operation
-------------------
A backend describes the kernel state it wants as a ``KernelState``: three sets
keyed the way the kernel keys them —

* neighbours on the VTEP (``<peer>.0 -> VtepMAC``), keyed by IP;
* FDB entries on the VTEP (``VtepMAC -> PublicIP``), keyed by (MAC, dst);
* routes *we own* (marked with ``ROUTE_PROTO`` so routes others created are
  never touched), keyed by destination prefix.

``desired_vxlan`` / ``desired_hostgw`` / ``desired_udp`` compute that state from
the own lease, the peers and the backend settings. The shell observes the same
three sets (one dump each, filtered to the device / our protocol) and
``diff(desired, observed)`` returns the operations, ordered so traffic never
blips and the kernel never ARPs for a peer on the VTEP:

1. delete routes that are no longer wanted (a gone peer: route first);
2. replace neighbours that are missing or differ;
3. add FDB entries that are missing;
4. replace routes that are missing or differ (last, so the path exists first);
5. delete stale neighbours, then stale FDB entries (e.g. a peer's old MAC,
   which flannel leaves behind).

Both address families use the same types and the same ``diff``: a lease has an
IPv4 half (``subnet``, ``PublicIP``, ``BackendData``; absent when the subnet is
flannel's ``0.0.0.0/0`` of an IPv6-only network) and an optional IPv6 half
(``IPv6Subnet``, ``PublicIPv6``, ``BackendV6Data``). A backend plans and
converges each half on its own (``family=4`` / ``6``; vxlan's IPv6 half lives on
``flannel-v6.<VNI>``), so a peer with only one half gets only that half's
entries, and ``within`` keeps one family's routes out of the other's pass.

Everything here is pure: no netlink, no clock. ``Lease`` values whose backend
data cannot be used are reported as ``PeerProblem`` instead of raising, so one
bad lease never stops the others from being programmed.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.backend.base import ReconcileReport
from overlay.lease.model import Lease

# Routes weft programs carry this rtnetlink protocol number ('W'), so reconcile
# only ever deletes routes it created itself.
ROUTE_PROTO = 0x57

# -ip-blackhole-route's metric. The kernel keys IPv4 routes by (dst, tos, metric),
# so a metric-0 blackhole for the own subnet would clash with the bridge's
# connected route (EEXIST when cni0 exists, and hiding the containers when it
# came first). Above it, the blackhole only catches what no bridge route covers.
BLACKHOLE_METRIC = 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LeaseId = tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]  # a lease's subnet pair

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True, slots=True, order=True)
class Neigh:
    """A permanent neighbour on the VTEP device."""

    ip: IPAddress
    mac: str


@dataclass(frozen=True, slots=True, order=True)
class Fdb:
    """A permanent FDB entry (self) on the VTEP: frames for ``mac`` go to ``dst``."""

    mac: str
    dst: IPAddress


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """``dst via gateway dev <dev> [onlink]`` (``gateway`` None = a device route)."""

    dst: IPNetwork
    dev: str
    gateway: IPAddress | None = None
    onlink: bool = False


@dataclass(frozen=True, slots=True, order=True)
class Blackhole:
    """weft's blackhole route for ``dst`` (``-ip-blackhole-route``; the daemon's, not a
    backend's)."""

    dst: ipaddress.IPv4Network

    def __str__(self) -> str:
        return str(self.dst)


@dataclass(frozen=True, slots=True)
class KernelState:
    neighs: frozenset[Neigh] = frozenset()
    fdbs: frozenset[Fdb] = frozenset()
    routes: frozenset[Route] = frozenset()  # weft's unicast routes (the backends')
    blackholes: frozenset[ipaddress.IPv4Network] = frozenset()  # never in a backend's diff


@dataclass(frozen=True, slots=True)
class PeerProblem:
    """A peer lease that could not be planned (bad VtepMAC etc.)."""

    subnet: IPNetwork
    reason: str

    def __str__(self) -> str:
        return f"peer {self.subnet}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a backend wants, plus the peers it had to skip."""

    state: KernelState
    problems: tuple[PeerProblem, ...] = ()
    peers: int = 0  # peers that contributed entries
    owners: frozenset[LeaseId] = frozenset()  # those peers (to count a dual-stack one once)


class OpKind(enum.Enum):
    ROUTE_DEL = "route-del"
    NEIGH_SET = "neigh-set"
    FDB_ADD = "fdb-add"
    ROUTE_SET = "route-set"
    NEIGH_DEL = "neigh-del"
    FDB_DEL = "fdb-del"
    BLACKHOLE_ADD = "blackhole-add"
    BLACKHOLE_DEL = "blackhole-del"


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    entry: Neigh | Fdb | Route | Blackhole
    change: bool = False  # replaces an existing entry with different content

    def __str__(self) -> str:
        return f"{self.kind.value} {self.entry}"


@dataclass(frozen=True, slots=True)
class VxlanSettings:
    device: str  # flannel.<VNI>
    ext_device: str
    ext_networks: tuple[IPNetwork, ...] = ()  # connected nets of ext (this family's)
    direct_routing: bool = False
    family: int = 4  # which half of the leases: 4 (flannel.<VNI>) or 6 (flannel-v6.<VNI>)


@dataclass(frozen=True, slots=True)
class Half:
    """One address family's part of a lease: its subnet, public address and backend data."""

    subnet: IPNetwork
    public_ip: IPAddress
    data: Mapping[str, Any]
    owner: LeaseId  # the lease it is a half of


def lease_half(lease: Lease, family: int) -> Half | None:
    """The IPv4 (``family=4``) or IPv6 half of ``lease``; None when it has none.

    An IPv6-only lease keeps flannel's zero IPv4 half (``0.0.0.0/0``): no IPv4 half.
    An IPv6 subnet without a ``PublicIPv6`` cannot be reached: no IPv6 half either
    (``_peers`` reports it).
    """
    if family == 4:
        if lease.subnet.prefixlen == 0:
            return None
        return Half(lease.subnet, lease.public_ip, lease.backend_data,
                    (lease.subnet, lease.ipv6_subnet))
    if lease.ipv6_subnet is None or lease.public_ipv6 is None:
        return None
    return Half(lease.ipv6_subnet, lease.public_ipv6, lease.backend_v6_data,
                (lease.subnet, lease.ipv6_subnet))


def normalize_mac(value: object) -> str | None:
    """``"0E:AA:…"`` -> ``"0e:aa:…"``; None when it is not a unicast MAC."""
    if not isinstance(value, str):
        return None
    mac = value.strip().lower()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        return None
    return mac


def derive_vtep_mac(public_ip: IPAddress, vni: int) -> str:
    """A locally administered unicast MAC from (public IP, VNI): stable across reboots.

    The same host with the same address always announces the same VtepMAC, so
    peers never keep a stale neighbour or FDB entry after a reboot (flannel's
    #1795), without any state on disk. ``flannel-v6.<VNI>`` gets its own MAC,
    derived from the public IPv6 address.
    """
    digest = hashlib.sha256(f"weft-vtep/{public_ip}/{vni}".encode()).digest()
    first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


def is_direct(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """True when ``ip`` is on a connected network of the external interface."""
    return any(ip.version == net.version and ip in net for net in networks)


def _peers(own: Lease | None, peers: Sequence[Lease], types: tuple[str, ...], family: int
           ) -> tuple[list[Half], list[PeerProblem]]:
    """The ``family`` halves of the peers of the wanted backend types, own subnet
    excluded, one per subnet; IPv6 subnets without a PublicIPv6 as problems."""
    mine = lease_half(own, family) if own is not None else None
    seen: dict[IPNetwork, Half] = {}
    problems: list[PeerProblem] = []
    for lease in peers:
        if lease.backend_type not in types:
            continue
        half = lease_half(lease, family)
        if half is None:
            if family == 6 and lease.ipv6_subnet is not None:
                problems.append(PeerProblem(lease.ipv6_subnet, "has no PublicIPv6"))
            continue
        if mine is not None and half.subnet == mine.subnet:
            continue
        seen[half.subnet] = half
    return [seen[k] for k in sorted(seen, key=_net_key)], problems


def _addr_key(a: IPAddress) -> tuple[int, int]:
    return a.version, int(a)


def _net_key(n: IPNetwork) -> tuple[int, int, int]:
    return n.version, int(n.network_address), n.prefixlen


def _fdb_key(f: Fdb) -> tuple[str, int, int]:
    return f.mac, f.dst.version, int(f.dst)


def desired_vxlan(own: Lease | None, peers: Sequence[Lease], s: VxlanSettings) -> Plan:
    """Neighbour + FDB + onlink route per vxlan peer (or a direct route, see DirectRouting),
    for the lease half ``s.family``: IPv4 ``<peer>.0 -> VtepMAC`` on ``flannel.<VNI>``,
    IPv6 ``<peer v6 subnet address> -> BackendV6Data.VtepMAC`` on ``flannel-v6.<VNI>``."""
    neighs: set[Neigh] = set()
    fdbs: set[Fdb] = set()
    routes: set[Route] = set()
    halves, problems = _peers(own, peers, ("vxlan",), s.family)
    field_name = "BackendData" if s.family == 4 else "BackendV6Data"
    owners: set[LeaseId] = set()
    for h in halves:
        if s.direct_routing and is_direct(h.public_ip, s.ext_networks):
            routes.add(Route(h.subnet, s.ext_device, h.public_ip))
            owners.add(h.owner)
            continue
        mac = normalize_mac(h.data.get("VtepMAC"))
        if mac is None:
            problems.append(PeerProblem(
                h.subnet, f"{field_name}.VtepMAC {h.data.get('VtepMAC')!r} "
                "is not a unicast MAC address"))
            continue
        gw = h.subnet.network_address
        neighs.add(Neigh(gw, mac))
        fdbs.add(Fdb(mac, h.public_ip))
        routes.add(Route(h.subnet, s.device, gw, onlink=True))
        owners.add(h.owner)
    return Plan(KernelState(frozenset(neighs), frozenset(fdbs), frozenset(routes)),
                tuple(problems), len(owners), frozenset(owners))


def desired_hostgw(own: Lease | None, peers: Sequence[Lease], ext_device: str,
                   family: int = 4) -> Plan:
    """``<peer subnet> via <peer PublicIP> dev <ext>`` per host-gw peer (``family=6``:
    ``<peer v6 subnet> via <peer PublicIPv6>``)."""
    halves, problems = _peers(own, peers, ("host-gw",), family)
    routes = {Route(h.subnet, ext_device, h.public_ip) for h in halves}
    return Plan(KernelState(routes=frozenset(routes)), tuple(problems), len(halves),
                frozenset(h.owner for h in halves))


def desired_udp(network: ipaddress.IPv4Network, device: str) -> Plan:
    """One route for the whole network via the TUN device; peers live in userspace."""
    return Plan(KernelState(routes=frozenset({Route(network, device)})))


@dataclass(frozen=True, slots=True)
class BlackholeOps:
    """What turns the observed blackhole routes into the wanted ones (adds first)."""

    add: tuple[ipaddress.IPv4Network, ...] = ()
    remove: tuple[ipaddress.IPv4Network, ...] = ()


def desired_blackholes(own: ipaddress.IPv4Network | None, enabled: bool
                       ) -> frozenset[ipaddress.IPv4Network]:
    """``-ip-blackhole-route``: one blackhole for the own subnet, or none at all.

    Off means none, so a blackhole a previous run left behind is removed, as
    ``-ip-masq`` rules are.
    """
    return frozenset({own}) if enabled and own is not None else frozenset()


def blackhole_diff(want: frozenset[ipaddress.IPv4Network],
                   have: Iterable[ipaddress.IPv4Network],
                   network: ipaddress.IPv4Network | None) -> BlackholeOps:
    """Adds for missing blackholes; removes for ours in ``network`` no longer wanted.

    ``have`` is every blackhole carrying ``ROUTE_PROTO``; those outside
    ``network`` belong to another daemon's network and are never removed.
    """
    seen = frozenset(have)
    ours = frozenset(d for d in seen if network is None or d.subnet_of(network))
    return BlackholeOps(tuple(sorted(want - seen)), tuple(sorted(ours - want)))


def within(observed: KernelState, network: IPNetwork | None,
           family: int | None = None) -> KernelState:
    """Only the entries of one address family (``family``, else ``network``'s; None and
    no network: all) and the routes inside the cluster network (None: all of them).

    Two daemons in one namespace serving different networks (one per
    ``-etcd-prefix``, flannel's multi-network answer) thus never remove each
    other's routes although both mark them with ``ROUTE_PROTO``; and a backend's
    IPv4 pass never removes the routes of its IPv6 pass, nor the reverse.
    """
    fam = family if family is not None else (network.version if network is not None else None)
    if fam is None:
        return observed
    return KernelState(
        frozenset(n for n in observed.neighs if n.ip.version == fam),
        frozenset(f for f in observed.fdbs if f.dst.version == fam),
        frozenset(r for r in observed.routes if r.dst.version == fam
                  and (network is None or network.version != fam
                       or r.dst.subnet_of(network))),  # type: ignore[arg-type]
        observed.blackholes)


def diff(desired: KernelState, observed: KernelState) -> tuple[Op, ...]:
    """Ordered operations turning ``observed`` into ``desired`` (see module doc)."""
    want_n = {n.ip: n for n in desired.neighs}
    have_n = {n.ip: n for n in observed.neighs}
    want_r = {r.dst: r for r in desired.routes}
    have_r = {r.dst: r for r in observed.routes}

    ops: list[Op] = []
    ops += [Op(OpKind.ROUTE_DEL, have_r[d]) for d in sorted(have_r, key=_net_key)
            if d not in want_r]
    ops += [Op(OpKind.NEIGH_SET, want_n[ip], change=ip in have_n)
            for ip in sorted(want_n, key=_addr_key) if have_n.get(ip) != want_n[ip]]
    ops += [Op(OpKind.FDB_ADD, f) for f in sorted(desired.fdbs - observed.fdbs, key=_fdb_key)]
    ops += [Op(OpKind.ROUTE_SET, want_r[d], change=d in have_r)
            for d in sorted(want_r, key=_net_key) if have_r.get(d) != want_r[d]]
    ops += [Op(OpKind.NEIGH_DEL, have_n[ip]) for ip in sorted(have_n, key=_addr_key)
            if ip not in want_n]
    ops += [Op(OpKind.FDB_DEL, f) for f in sorted(observed.fdbs - desired.fdbs, key=_fdb_key)]
    return tuple(ops)


def merge_reports(a: ReconcileReport, b: ReconcileReport, peers: int) -> ReconcileReport:
    """One report for a backend's two halves; ``peers`` counts each peer lease once
    (``len(plan4.owners | plan6.owners)``)."""
    return ReconcileReport(a.added + b.added, a.removed + b.removed, a.changed + b.changed,
                           (*a.errors, *b.errors), peers)


def summarize(ops: Sequence[Op], errors: Sequence[str], problems: Sequence[PeerProblem],
              peers: int) -> ReconcileReport:
    """A pass's report: routes (one per peer) added/removed, entries changed, all errors.

    Failed operations are still counted as attempted; their messages are in
    ``errors`` together with the peers that could not be planned.
    """
    added = sum(1 for o in ops if o.kind is OpKind.ROUTE_SET and not o.change)
    changed = sum(1 for o in ops if o.kind in (OpKind.ROUTE_SET, OpKind.NEIGH_SET) and o.change)
    removed = sum(1 for o in ops if o.kind is OpKind.ROUTE_DEL)
    return ReconcileReport(added=added, removed=removed, changed=changed,
                           errors=(*errors, *(str(p) for p in problems)), peers=peers)

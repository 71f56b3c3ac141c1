"""Choosing flanneld's external interface: -iface, -iface-regex, -public-ip, default route.

flannel's order: each ``-iface`` (a name or an address, in the order given),
else each ``-iface-regex`` (matched against addresses, then names), else the
interface routing to ``-iface-can-reach``, else the interface of the default
route. ``-public-ip`` overrides the advertised
address (NAT); without it the interface's first IPv4 address is advertised.

IPv6 (flannel's dual-stack lookup): an ``-iface`` may also be an IPv6 address,
which picks the interface holding it; the interface's IPv6 address is that one
or else its first global one (link-local and other scopes are never advertised),
and ``-public-ipv6`` overrides what is advertised as PublicIPv6. An interface with
only IPv6 addresses is chosen too (an IPv6-only host): its IPv4 address is then
0.0.0.0, and the daemon refuses an IPv4 network on it naming ``EnableIPv4``, as it
refuses an IPv6 network on a host without a global IPv6 address. Without
``-iface``, a host without an IPv4 default route uses its IPv6 default route's
interface. ``-iface-regex`` tries IPv4 addresses, then IPv6 ones, then names.

``choose`` is pure over ``Interface`` records; ``read_interfaces`` and
``default_route_interface`` read them from ``ip -j`` in the current network
namespace (flanneld runs inside the host's namespace).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from overlay.backend.base import ExternalInterface
from overlay.errors import WeftError

NO_IP = ipaddress.IPv4Address("0.0.0.0")  # the IPv4 address of an IPv6-only interface


class InterfaceError(WeftError, RuntimeError):
    """No usable external interface; says which flag asked for what."""


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    index: int
    mtu: int
    addresses: tuple[ipaddress.IPv4Address, ...]
    up: bool = True
    addresses6: tuple[ipaddress.IPv6Address, ...] = ()  # global scope only

    @property
    def addressed(self) -> bool:
        return bool(self.addresses or self.addresses6)


def choose(
    interfaces: Sequence[Interface],
    default_dev: str | None,
    iface: Sequence[str] = (),
    iface_regex: Sequence[str] = (),
    public_ip: ipaddress.IPv4Address | None = None,
    public_ipv6: ipaddress.IPv6Address | None = None,
) -> ExternalInterface:
    """The external interface by flannel's rules; ``InterfaceError`` names what failed."""
    by_name = {i.name: i for i in interfaces}
    chosen: Interface | None = None
    ip: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None
    if iface:
        for spec in iface:
            try:
                want = ipaddress.ip_address(spec)
            except ValueError:
                cand = by_name.get(spec)
                if cand is not None and cand.addressed:
                    chosen = cand
                    break
                continue
            for cand in interfaces:
                if isinstance(want, ipaddress.IPv6Address):
                    if want in cand.addresses6:
                        chosen, ip6 = cand, want
                        break
                elif want in cand.addresses:
                    chosen, ip = cand, want
                    break
            if chosen:
                break
        if chosen is None:
            raise InterfaceError(
                f"-iface {', '.join(iface)}: no such interface with an IPv4 or global IPv6 "
                f"address (have: {', '.join(sorted(by_name)) or 'none'})")
    elif iface_regex:
        for pattern in iface_regex:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise InterfaceError(f"-iface-regex {pattern!r}: {exc}") from None
            # flannel tries the addresses of every interface first, then the names
            for cand in interfaces:
                hit = next((a for a in cand.addresses if rx.search(str(a))), None)
                if hit is not None:
                    chosen, ip = cand, hit
                    break
                hit6 = next((a for a in cand.addresses6 if rx.search(str(a))), None)
                if hit6 is not None:
                    chosen, ip6 = cand, hit6
                    break
            else:
                for cand in interfaces:
                    if cand.addressed and rx.search(cand.name):
                        chosen = cand
                        break
            if chosen:
                break
        if chosen is None:
            raise InterfaceError(f"-iface-regex {', '.join(iface_regex)}: no interface matches")
    else:
        if default_dev is None:
            raise InterfaceError("no default route; pick the interface with -iface")
        chosen = by_name.get(default_dev)
        if chosen is None or not chosen.addressed:
            raise InterfaceError(f"default-route interface {default_dev} has no IPv4 or "
                                 "global IPv6 address")
    if ip is None:
        ip = chosen.addresses[0] if chosen.addresses else NO_IP
    if ip6 is None and chosen.addresses6:
        ip6 = chosen.addresses6[0]
    return ExternalInterface(chosen.name, chosen.index, ip, public_ip or ip, chosen.mtu,
                             ip6, public_ipv6 or ip6)


def parse_ip_addr_json(text: str) -> list[Interface]:
    """``ip -j addr show`` output as ``Interface`` records (IPv4 + global IPv6 addresses)."""
    out: list[Interface] = []
    for link in json.loads(text or "[]"):
        addrs = tuple(ipaddress.IPv4Address(a["local"]) for a in link.get("addr_info", ())
                      if a.get("family") == "inet" and "local" in a)
        addrs6 = tuple(ipaddress.IPv6Address(a["local"]) for a in link.get("addr_info", ())
                       if a.get("family") == "inet6" and "local" in a
                       and a.get("scope") == "global")
        out.append(Interface(link["ifname"], int(link["ifindex"]), int(link.get("mtu", 1500)),
                             addrs, "UP" in link.get("flags", ()), addrs6))
    return out


def read_interfaces() -> list[Interface]:
    proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                          check=False, timeout=10)
    if proc.returncode != 0:
        raise InterfaceError(f"ip -j addr show: {proc.stderr.strip()}")
    return parse_ip_addr_json(proc.stdout)


def _route_dev(*args: str, family: str = "-4") -> str | None:
    """The first ``dev`` in ``ip -j <family> route <args>``, or None (no route, ip failed)."""
    proc = subprocess.run(["ip", "-j", family, "route", *args], capture_output=True,
                          text=True, check=False, timeout=10)
    if proc.returncode != 0:
        return None
    for r in json.loads(proc.stdout or "[]"):
        if r.get("dev"):
            return str(r["dev"])
    return None


def default_route_interface() -> str | None:
    """The IPv4 default route's interface, else the IPv6 one's (IPv6-only host), or None."""
    return _route_dev("show", "default") or _route_dev("show", "default", family="-6")


def route_interface(dest: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The interface the kernel would use to reach ``dest`` (``ip route get``), or None."""
    return _route_dev("get", str(dest), family=f"-{dest.version}")


def discover(iface: Sequence[str] = (), iface_regex: Sequence[str] = (),
             public_ip: ipaddress.IPv4Address | None = None,
             can_reach: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
             public_ipv6: ipaddress.IPv6Address | None = None) -> ExternalInterface:
    """Read this namespace's interfaces and choose (the shell around ``choose``).

    Without -iface/-iface-regex the interface is the one routing to ``can_reach``
    (flannel's -iface-can-reach) or, failing that flag, the default route's.
    """
    default_dev = None
    if not (iface or iface_regex):
        if can_reach is not None:
            default_dev = route_interface(can_reach)
            if default_dev is None:
                raise InterfaceError(f"-iface-can-reach {can_reach}: no route to it")
        else:
            default_dev = default_route_interface()
    return choose(read_interfaces(), default_dev, iface, iface_regex, public_ip, public_ipv6)

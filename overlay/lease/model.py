"""Subnet leases as flannel stores them: the key, the JSON value, and events.

Key:   ``<prefix>/subnets/10.244.3.0-24``
Value: ``{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan",
         "BackendData":{"VNI":1,"VtepMAC":"0e:…"}}``

Dual-stack (flannel's MakeSubnetKey with an IPv6 subnet) keys the lease by both
subnets, the IPv6 one as Go prints it (RFC 5952, lowercase, ``::``):
``<prefix>/subnets/10.244.3.0-24&fd00:10:244:3::-64``, and the value gains
``"PublicIPv6":"fd00::11"`` and ``"BackendV6Data":{…}`` (omitted when empty, as
flannel's ``omitempty``). IPv6-only leases keep flannel's zero IPv4 half:
``0.0.0.0-0&fd00:10:244:3::-64`` with ``"PublicIP":"0.0.0.0"``.

``encode_lease`` emits flannel's field order, its omitempty fields (BackendType,
BackendData, BackendV6Data left out when empty) and spacing-free JSON so a
flannel host reading our value (and vice versa) sees exactly what it would write
itself.
Decoding is strict about what routing depends on (PublicIP must be an IPv4
address, PublicIPv6 null or an IPv6 address) and lenient about everything else
(unknown fields are ignored).
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overlay.errors import LeaseError

DEFAULT_PREFIX = "/coreos.com/network"  # flannel's -etcd-prefix: the key layout's root


class LeaseFormatError(LeaseError, ValueError):
    """A lease key or value that is not flannel's format; names the key."""

    def __init__(self, key: str, reason: str, revision: int = 0) -> None:
        super().__init__(f"lease {key}: {reason}")
        self.key = key
        self.reason = reason
        self.revision = revision  # the key's mod revision when known (0 = unknown)


@dataclass(frozen=True, slots=True)
class Lease:
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str = ""
    backend_data: Mapping[str, Any] = field(default_factory=dict)
    # bookkeeping from the store, not part of the JSON value
    lease_id: int = 0  # etcd lease (0 = none / unknown)
    mod_revision: int = 0
    # IPv6 half (flannel's IPv6Subnet, PublicIPv6, BackendV6Data); None/empty when IPv4-only
    ipv6_subnet: ipaddress.IPv6Network | None = None
    public_ipv6: ipaddress.IPv6Address | None = None
    backend_v6_data: Mapping[str, Any] = field(default_factory=dict)


# What a lease key names: its IPv4 subnet and its IPv6 subnet (None when IPv4-only).
# IPv6-only leases all share the IPv4 half 0.0.0.0/0, so tables of leases are keyed by
# the pair, never by the IPv4 subnet alone.
SubnetPair = tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]


def subnets_of(lease: Lease) -> SubnetPair:
    """The pair of subnets ``lease``'s key names (a lease table's key)."""
    return lease.subnet, lease.ipv6_subnet


def has_ipv4(lease: Lease) -> bool:
    """False for an IPv6-only lease (flannel's zero IPv4 half 0.0.0.0/0)."""
    return lease.subnet.prefixlen != 0


def describe(lease: Lease) -> str:
    """The lease's subnets for logs: ``10.244.3.0/24``, ``10.244.3.0/24+fd00::/64``,
    ``fd00::/64`` (IPv6-only)."""
    if lease.ipv6_subnet is None:
        return str(lease.subnet)
    if not has_ipv4(lease):
        return str(lease.ipv6_subnet)
    return f"{lease.subnet}+{lease.ipv6_subnet}"


def owner(lease: Lease) -> str:
    """The host a lease names, for logs: its PublicIP, or PublicIPv6 when IPv6-only."""
    if lease.public_ip.packed == bytes(4) and lease.public_ipv6 is not None:
        return str(lease.public_ipv6)
    return str(lease.public_ip)


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network,
               subnet6: ipaddress.IPv6Network | None = None) -> str:
    """``/coreos.com/network/subnets/10.244.3.0-24`` (``…&fd00:10:244:3::-64`` with IPv6)."""
    leaf = f"{subnet.network_address}-{subnet.prefixlen}"
    if subnet6 is not None:
        leaf += f"&{subnet6.network_address}-{subnet6.prefixlen}"
    return f"{prefix.rstrip('/')}/subnets/{leaf}"


def lease_key(prefix: str, lease: Lease) -> str:
    """The key ``lease`` lives under (both subnets when it has an IPv6 half)."""
    return subnet_key(prefix, lease.subnet, lease.ipv6_subnet)


def subnets_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/subnets/"


def config_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/config"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network:
    """The IPv4 subnet named by a lease key (the part after ``subnets/``).

    The dual-stack form ``10.1.2.0-24&fd00::-64`` yields its IPv4 half.
    """
    return parse_subnet_keys(key)[0]


def parse_subnet_keys(key: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """Both subnets of a lease key: ``10.1.2.0-24&fd00::-64`` gives (10.1.2.0/24, fd00::/64)."""
    leaf4, amp, leaf6 = key.rsplit("/", 1)[-1].partition("&")
    addr, sep, plen = leaf4.partition("-")
    if not sep:
        raise LeaseFormatError(key, "key does not end in <address>-<prefixlen>")
    try:
        subnet = ipaddress.IPv4Network(f"{addr}/{int(plen)}")
    except ValueError as exc:
        raise LeaseFormatError(key, f"bad subnet in key: {exc}") from None
    if not amp:
        return subnet, None
    addr6, sep6, plen6 = leaf6.rpartition("-")
    try:
        if not sep6 or not plen6.isdigit():
            raise ValueError("no -<prefixlen>")
        return subnet, ipaddress.IPv6Network(f"{addr6}/{int(plen6)}")
    except ValueError as exc:
        raise LeaseFormatError(key, f"bad IPv6 subnet in key: {exc}") from None


def encode_lease(lease: Lease) -> bytes:
    """flannel's JSON for a lease value (field order as flannel marshals it)."""
    value: dict[str, Any] = {
        "PublicIP": str(lease.public_ip),
        "PublicIPv6": None if lease.public_ipv6 is None else str(lease.public_ipv6),
    }
    # flannel's LeaseAttrs: BackendType, BackendData and BackendV6Data are
    # `json:",omitempty"` (udp's empty type, host-gw's and IPv6-only vxlan's absent
    # BackendData are left out); PublicIPv6 is not (null stays)
    if lease.backend_type:
        value["BackendType"] = lease.backend_type
    if lease.backend_data:
        value["BackendData"] = dict(lease.backend_data)
    if lease.backend_v6_data:
        value["BackendV6Data"] = dict(lease.backend_v6_data)
    return json.dumps(value, separators=(",", ":")).encode()


def decode_lease(key: str, value: bytes, lease_id: int = 0, mod_revision: int = 0) -> Lease:
    """Parse a lease key and value; ``LeaseFormatError`` says what is wrong."""
    subnet, subnet6 = parse_subnet_keys(key)
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LeaseFormatError(key, f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LeaseFormatError(key, "value is not a JSON object")
    try:
        raw_ip = obj.get("PublicIP")
        if not isinstance(raw_ip, str):  # IPv4Address(5) would accept an integer
            raise TypeError(raw_ip)
        public_ip = ipaddress.IPv4Address(raw_ip)
    except (ValueError, TypeError):
        raise LeaseFormatError(key, f"PublicIP {obj.get('PublicIP')!r} is not IPv4") from None
    btype = obj.get("BackendType") or ""
    if not isinstance(btype, str):
        raise LeaseFormatError(key, "BackendType is not a string")
    bdata = obj.get("BackendData") or {}
    if not isinstance(bdata, dict):
        raise LeaseFormatError(key, "BackendData is not an object")
    raw_ip6 = obj.get("PublicIPv6")
    try:
        if raw_ip6 is not None and not isinstance(raw_ip6, str):
            raise TypeError(raw_ip6)
        public_ipv6 = None if raw_ip6 is None else ipaddress.IPv6Address(raw_ip6)
    except (ValueError, TypeError):
        raise LeaseFormatError(key, f"PublicIPv6 {raw_ip6!r} is not IPv6") from None
    bdata6 = obj.get("BackendV6Data") or {}
    if not isinstance(bdata6, dict):
        raise LeaseFormatError(key, "BackendV6Data is not an object")
    return Lease(subnet, public_ip, btype, bdata, lease_id, mod_revision, subnet6,
                 public_ipv6, bdata6)


class EventKind(enum.Enum):
    ADDED = "added"  # new or changed lease
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    kind: EventKind
    lease: Lease

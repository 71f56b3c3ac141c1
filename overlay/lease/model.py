"""Subnet leases as flannel stores them: the key, the JSON value, and events.

Key:   ``<prefix>/subnets/10.244.3.0-24``
Value: ``{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan",
         "BackendData":{"VNI":1,"VtepMAC":"0e:…"}}``

``encode_lease`` emits flannel's field order and spacing-free JSON so a flannel
host reading our value (and vice versa) sees exactly what it would write itself.
Decoding is strict about what routing depends on (PublicIP must be an IPv4
address) and lenient about everything else (unknown fields, such as
``PublicIPv6``, are ignored).
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


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    """``/coreos.com/network/subnets/10.244.3.0-24``."""
    return f"{prefix.rstrip('/')}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def subnets_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/subnets/"


def config_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/config"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network:
    """The IPv4 subnet named by a lease key (the part after ``subnets/``).

    The dual-stack form ``10.1.2.0-24&fd00::-64`` yields its IPv4 half.
    """
    leaf = key.rsplit("/", 1)[-1].split("&", 1)[0]
    addr, sep, plen = leaf.partition("-")
    if not sep:
        raise LeaseFormatError(key, "key does not end in <address>-<prefixlen>")
    try:
        return ipaddress.IPv4Network(f"{addr}/{int(plen)}")
    except ValueError as exc:
        raise LeaseFormatError(key, f"bad subnet in key: {exc}") from None


def encode_lease(lease: Lease) -> bytes:
    """flannel's JSON for a lease value (field order as flannel marshals it)."""
    value: dict[str, Any] = {
        "PublicIP": str(lease.public_ip),
        "PublicIPv6": None,
        "BackendType": lease.backend_type,
        "BackendData": dict(lease.backend_data) if lease.backend_data else None,
    }
    return json.dumps(value, separators=(",", ":")).encode()


def decode_lease(key: str, value: bytes, lease_id: int = 0, mod_revision: int = 0) -> Lease:
    """Parse a lease key and value; ``LeaseFormatError`` says what is wrong."""
    subnet = parse_subnet_key(key)
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
    return Lease(subnet, public_ip, btype, bdata, lease_id, mod_revision)


class EventKind(enum.Enum):
    ADDED = "added"  # new or changed lease
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    kind: EventKind
    lease: Lease

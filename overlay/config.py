"""The network config (flannel's JSON at ``<prefix>/config``) and flanneld's own settings.

``parse_network_config`` turns the stored bytes into a frozen ``NetworkConfig``
or raises ``ConfigError`` naming the offending field. flannel's rules apply:

* ``Network`` is required and must be a /28 or larger.
* ``SubnetLen`` defaults to 24 when the Network prefix is ≤ 22, else prefix + 2;
  it must lie in ``prefix + 2 .. 30`` (room for four subnets, two hosts each).
* ``SubnetMin`` defaults to the second subnet (the first one is skipped),
  ``SubnetMax`` to the last; both must be inside Network and aligned to SubnetLen,
  and Min must not exceed Max.
* ``Backend`` defaults to ``{"Type": "vxlan"}``: flannel's documentation says vxlan
  (its code falls back to udp; weft follows the documentation).
* IPv6 (``EnableIPv6``) and ``EnableIPv4: false`` are refused: weft is IPv4-only.

``DaemonConfig`` holds flanneld's flags once parsed at the edge (cli/flanneld.py).
Nothing here reads the environment or the store.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay import ipnet
from overlay.lease.model import DEFAULT_PREFIX, Lease

DEFAULT_BACKEND = "vxlan"
KNOWN_BACKENDS = ("vxlan", "host-gw", "udp")
MIN_NETWORK_PREFIX = 28
MAX_SUBNET_LEN = 30


class ConfigError(ValueError):
    """The network config is invalid; ``field`` names the JSON field at fault."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"network config: {field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend_type: str = DEFAULT_BACKEND
    backend: Mapping[str, Any] = field(default_factory=dict)  # the whole Backend object

    def fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """True when ``subnet`` is a subnet this config could hand out."""
        return (
            subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


def default_subnet_len(network: ipaddress.IPv4Network) -> int:
    return 24 if network.prefixlen <= 22 else network.prefixlen + 2


def _address(obj: Mapping[str, Any], name: str) -> ipaddress.IPv4Address | None:
    raw = obj.get(name)
    if raw is None or raw == "":
        return None
    try:
        return ipaddress.IPv4Address(raw)
    except (ValueError, TypeError):
        raise ConfigError(name, f"{raw!r} is not an IPv4 address") from None


def _int(obj: Mapping[str, Any], name: str) -> int | None:
    raw = obj.get(name)
    if raw is None or raw == 0:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(name, f"{raw!r} is not an integer")
    return raw


def check_network_config(obj: Mapping[str, Any]) -> NetworkConfig:
    """Validate a decoded config object; ``ConfigError`` names the field at fault."""
    raw_net = obj.get("Network")
    if raw_net is None or raw_net == "":
        raise ConfigError("Network", "missing (e.g. \"10.244.0.0/16\")")
    if not isinstance(raw_net, str):
        raise ConfigError("Network", f"{raw_net!r} is not a string")
    try:
        network = ipaddress.IPv4Network(raw_net, strict=False)
    except ValueError as exc:
        raise ConfigError("Network", f"{raw_net!r} is not an IPv4 network: {exc}") from None
    if network.prefixlen > MIN_NETWORK_PREFIX:
        raise ConfigError("Network", f"{network} is too small; it must be a "
                          f"/{MIN_NETWORK_PREFIX} or larger")
    if obj.get("EnableIPv4") is False:
        raise ConfigError("EnableIPv4", "IPv6-only networks are not supported by weft")
    if obj.get("EnableIPv6"):
        raise ConfigError("EnableIPv6", "IPv6 is not supported by weft")

    subnet_len = _int(obj, "SubnetLen") or default_subnet_len(network)
    lo, hi = network.prefixlen + 2, MAX_SUBNET_LEN
    if not lo <= subnet_len <= hi:
        raise ConfigError("SubnetLen", f"{subnet_len} is out of range {lo}..{hi} for "
                          f"Network {network}")

    first, last = ipnet.nth_subnet(network, subnet_len, 1), ipnet.nth_subnet(
        network, subnet_len, -1)
    bounds: dict[str, ipaddress.IPv4Address] = {}
    for name, default in (("SubnetMin", first.network_address),
                          ("SubnetMax", last.network_address)):
        addr = _address(obj, name)
        if addr is None:
            bounds[name] = default
            continue
        if addr not in network:
            raise ConfigError(name, f"{addr} is outside Network {network}")
        if not ipnet.is_aligned(addr, subnet_len):
            raise ConfigError(name, f"{addr} is not aligned to SubnetLen /{subnet_len}")
        bounds[name] = addr
    if bounds["SubnetMin"] > bounds["SubnetMax"]:
        raise ConfigError("SubnetMin", f"{bounds['SubnetMin']} is above SubnetMax "
                          f"{bounds['SubnetMax']}")

    backend = obj.get("Backend")
    if backend is None:
        backend = {"Type": DEFAULT_BACKEND}
    if not isinstance(backend, dict):
        raise ConfigError("Backend", "is not a JSON object")
    btype = backend.get("Type", DEFAULT_BACKEND) or DEFAULT_BACKEND
    if not isinstance(btype, str):
        raise ConfigError("Backend.Type", f"{btype!r} is not a string")
    btype = btype.lower()
    if btype not in KNOWN_BACKENDS:
        raise ConfigError("Backend.Type", f"unknown backend type {btype!r} (known: "
                          f"{', '.join(KNOWN_BACKENDS)})")
    return NetworkConfig(network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"],
                         btype, dict(backend))


def parse_network_config(data: bytes | str) -> NetworkConfig:
    """Decode and validate the JSON stored at ``<prefix>/config``."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("(document)", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError("(document)", "not a JSON object")
    return check_network_config(obj)


def build_network_json(network: str, subnet_len: int | None = None,
                       backend: str = DEFAULT_BACKEND, vni: int | None = None,
                       port: int | None = None, direct_routing: bool = False,
                       subnet_min: str | None = None, subnet_max: str | None = None
                       ) -> dict[str, Any]:
    """The JSON ``weftctl network set`` stores; validated before it is returned."""
    obj: dict[str, Any] = {"Network": network}
    if subnet_len:
        obj["SubnetLen"] = subnet_len
    if subnet_min:
        obj["SubnetMin"] = subnet_min
    if subnet_max:
        obj["SubnetMax"] = subnet_max
    _check_requested_network(network)
    _check_backend_options(backend, vni, port, direct_routing)
    be: dict[str, Any] = {"Type": backend}
    if vni is not None:
        be["VNI"] = vni
    if port is not None:
        be["Port"] = port
    if direct_routing:
        be["DirectRouting"] = True
    obj["Backend"] = be
    check_network_config(obj)
    return obj


# Backend options ``weftctl network set`` takes, and the backends each applies to
# (flannel: VNI and DirectRouting are vxlan's, Port is vxlan's and udp's).
BACKEND_OPTIONS = {"vni": ("vxlan",), "port": ("vxlan", "udp"),
                   "direct-routing": ("vxlan",)}


def _check_requested_network(network: str) -> None:
    """An operator's ``--network`` must be a network address: host bits are a typo."""
    try:
        ipaddress.IPv4Network(network)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.IPv4Network(network, strict=False)
            raise ConfigError("Network", f"{network} has host bits set (did you mean "
                              f"{fixed}?)") from None
        # anything else is check_network_config's to explain


def _check_backend_options(backend: str, vni: int | None, port: int | None,
                           direct_routing: bool) -> None:
    given = {"vni": vni is not None, "port": port is not None,
             "direct-routing": direct_routing}
    for option, applies_to in BACKEND_OPTIONS.items():
        if given[option] and backend not in applies_to:
            raise ConfigError("Backend", f"--{option} does not apply to the {backend} "
                              f"backend (only to {' and '.join(applies_to)})")


@dataclass(frozen=True, slots=True)
class ChangeConflict:
    """A live lease a new network config would break, and why."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    reason: str

    def __str__(self) -> str:
        return f"{self.subnet} (host {self.public_ip}): {self.reason}"


def config_change_conflicts(new: NetworkConfig, leases: Sequence[Lease]
                            ) -> tuple[ChangeConflict, ...]:
    """The live leases ``new`` would orphan or whose data path it would change (pure).

    A lease is orphaned when ``new`` could not have handed its subnet out
    (outside Network or SubnetMin..SubnetMax, or another SubnetLen): its host
    keeps routing a subnet the cluster no longer owns. A backend change (type, or
    VNI for vxlan) under a live host leaves peers speaking different data paths
    until every flanneld restarts.
    """
    out: list[ChangeConflict] = []
    new_vni = _backend_vni(new.backend)
    for lease in sorted(leases, key=lambda le: int(le.subnet.network_address)):
        reasons = []
        if not new.fits(lease.subnet):
            reasons.append(f"outside the new Network {new.network} "
                           f"(SubnetLen {new.subnet_len}, {new.subnet_min}-{new.subnet_max})")
        ltype = (lease.backend_type or "").lower()
        if ltype and ltype != new.backend_type:
            reasons.append(f"its host runs the {ltype} backend, the new config says "
                           f"{new.backend_type}")
        elif ltype == "vxlan" == new.backend_type:
            lease_vni = _backend_vni(lease.backend_data)
            if lease_vni != new_vni:
                reasons.append(f"its host uses VNI {lease_vni}, the new config says {new_vni}")
        if reasons:
            out.append(ChangeConflict(lease.subnet, lease.public_ip, "; ".join(reasons)))
    return tuple(out)


def _backend_vni(backend: Mapping[str, Any]) -> int:
    raw = backend.get("VNI")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw else 1


DEFAULT_SUBNET_FILE = Path("/run/flannel/subnet.env")
DEFAULT_LEASE_TTL = 86400  # seconds
DEFAULT_RENEW_MARGIN = 60  # minutes


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """flanneld's settings, parsed once from flags/env at the edge."""

    prefix: str = DEFAULT_PREFIX
    subnet_file: Path = DEFAULT_SUBNET_FILE
    ip_masq: bool = False
    lease_ttl: int = DEFAULT_LEASE_TTL
    renew_margin: int = DEFAULT_RENEW_MARGIN  # minutes
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    notify_socket: str | None = None
    config_retry: float = 1.0  # seconds between config polls while absent/invalid
    resync_interval: float = 10.0  # full reconcile period (flannel host-gw: 10 s)
    masq_interval: float = 5.0  # masquerade rule re-check (flannel: -iptables-resync, 5 s)
    masq_fully_random: bool = True  # flannel: off with -ip-masq-fully-random-disable
    blackhole_route: bool = False  # flannel: -ip-blackhole-route, drop own-subnet strays

    def renew_interval(self) -> float:
        """Seconds between renewals: TTL - margin, or TTL/3 when the margin is not smaller.

        flannel renews 60 min before a 24 h lease ends. A short test TTL (a few
        seconds) would make that negative, so such leases renew at a third of
        their life, leaving two chances before expiry.
        """
        early = self.lease_ttl - self.renew_margin * 60
        return float(early) if early > 0 else self.lease_ttl / 3

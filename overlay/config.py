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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay import ipnet
from overlay.backend.base import BACKEND_OPTIONS as BACKEND_OPTIONS
from overlay.backend.base import BACKENDS
from overlay.errors import ConfigError as ConfigError  # raised here for the network config
from overlay.lease.model import DEFAULT_PREFIX
from overlay.lease.network import DEFAULT_BACKEND as DEFAULT_BACKEND
from overlay.lease.network import NetworkConfig as NetworkConfig

MIN_NETWORK_PREFIX = 28
MAX_SUBNET_LEN = 30


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
    if btype not in BACKENDS:
        raise ConfigError("Backend.Type", f"unknown backend type {btype!r} (known: "
                          f"{', '.join(BACKENDS)})")
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
    ingress_members_only: bool = True  # -vxlan-ingress-members-only (overlay.ingress)

    def renew_interval(self) -> float:
        """Seconds between renewals: TTL - margin, or TTL/3 when the margin is not smaller.

        flannel renews 60 min before a 24 h lease ends. A short test TTL (a few
        seconds) would make that negative, so such leases renew at a third of
        their life, leaving two chances before expiry.
        """
        early = self.lease_ttl - self.renew_margin * 60
        return float(early) if early > 0 else self.lease_ttl / 3

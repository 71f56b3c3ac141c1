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
* ``EnableIPv4`` defaults to true, ``EnableIPv6`` to false (both must be booleans;
  at least one must be true). With IPv4 off, the IPv4 fields are not checked
  (flannel's CheckNetworkConfig skips them) and keep flannel's zero values.
* With ``EnableIPv6``: ``IPv6Network`` is required and must be a /124 or larger;
  ``IPv6SubnetLen`` defaults to 64 when its prefix is ≤ 62, else prefix + 2, and
  must lie in ``prefix + 2 .. 126``; ``IPv6SubnetMin``/``Max`` default to the
  second and the last subnet and obey the IPv4 rules (inside, aligned, Min ≤ Max).

``DaemonConfig`` holds flanneld's flags once parsed at the edge (cli/flanneld.py).
Nothing here reads the environment or the store.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from overlay import ipnet
from overlay.backend.base import BACKEND_OPTIONS as BACKEND_OPTIONS
from overlay.backend.base import BACKENDS
from overlay.errors import ConfigError as ConfigError  # raised here for the network config
from overlay.lease.model import DEFAULT_PREFIX
from overlay.lease.network import DEFAULT_BACKEND as DEFAULT_BACKEND
from overlay.lease.network import NetworkConfig as NetworkConfig

MIN_NETWORK_PREFIX = 28
MAX_SUBNET_LEN = 30
MIN_IPV6_NETWORK_PREFIX = 124  # flannel: "Minimum useful network prefix is /124"
MAX_IPV6_SUBNET_LEN = 126
NO_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")  # flannel's zero Network when EnableIPv4 is false
Addr = TypeVar("Addr", ipaddress.IPv4Address, ipaddress.IPv6Address)
_Net = TypeVar("_Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


def default_subnet_len(network: ipaddress.IPv4Network) -> int:
    return 24 if network.prefixlen <= 22 else network.prefixlen + 2


def default_ipv6_subnet_len(network: ipaddress.IPv6Network) -> int:
    return 64 if network.prefixlen <= 62 else network.prefixlen + 2


def _bool(obj: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = obj.get(name)
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise ConfigError(name, f"{raw!r} is not true or false")
    return raw


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
    enable_ipv4 = _bool(obj, "EnableIPv4", True)
    enable_ipv6 = _bool(obj, "EnableIPv6", False)
    if not enable_ipv4 and not enable_ipv6:
        raise ConfigError("EnableIPv4", "false while EnableIPv6 is not true: no address "
                          "family is left")
    btype, backend = _check_backend(obj)
    net6, len6, min6, max6 = _check_ipv6(obj) if enable_ipv6 else (None, 0, None, None)
    if enable_ipv4:
        network, subnet_len, smin, smax = _check_ipv4(obj)
    else:
        network, subnet_len, smin, smax = NO_IPV4, 0, NO_IPV4[0], NO_IPV4[0]
    return NetworkConfig(network, subnet_len, smin, smax, btype, backend, enable_ipv4,
                         enable_ipv6, net6, len6, min6, max6)


def _network_field(obj: Mapping[str, Any], key: str, parse: Callable[..., _Net],
                   min_prefix: int, missing: str) -> _Net:
    """``obj[key]`` as a network of ``parse``'s family, at least a /``min_prefix``."""
    raw_net = obj.get(key)
    if raw_net is None or raw_net == "":
        raise ConfigError(key, missing)
    if not isinstance(raw_net, str):
        raise ConfigError(key, f"{raw_net!r} is not a string")
    try:
        network = parse(raw_net, strict=False)
    except ValueError as exc:
        version = 6 if parse is ipaddress.IPv6Network else 4
        raise ConfigError(key, f"{raw_net!r} is not an IPv{version} network: {exc}") from None
    if network.prefixlen > min_prefix:
        raise ConfigError(key, f"{network} is too small; it must be a /{min_prefix} "
                          "or larger")
    return network


def _check_ipv4(obj: Mapping[str, Any]) -> tuple[ipaddress.IPv4Network, int,
                                                   ipaddress.IPv4Address,
                                                   ipaddress.IPv4Address]:
    network = _network_field(obj, "Network", ipaddress.IPv4Network, MIN_NETWORK_PREFIX,
                             "missing (e.g. \"10.244.0.0/16\")")

    subnet_len = _int(obj, "SubnetLen") or default_subnet_len(network)
    lo, hi = network.prefixlen + 2, MAX_SUBNET_LEN
    if not lo <= subnet_len <= hi:
        raise ConfigError("SubnetLen", f"{subnet_len} is out of range {lo}..{hi} for "
                          f"Network {network}")

    first, last = ipnet.nth_subnet(network, subnet_len, 1), ipnet.nth_subnet(
        network, subnet_len, -1)
    smin, smax = _bounds(obj, "", network, subnet_len,
                         (first.network_address, last.network_address), _address)
    return network, subnet_len, smin, smax


def _check_ipv6(obj: Mapping[str, Any]) -> tuple[ipaddress.IPv6Network, int,
                                                   ipaddress.IPv6Address,
                                                   ipaddress.IPv6Address]:
    """flannel's IPv6 rules (CheckNetworkConfig's EnableIPv6 half)."""
    network = _network_field(obj, "IPv6Network", ipaddress.IPv6Network,
                             MIN_IPV6_NETWORK_PREFIX, "missing while EnableIPv6 is true "
                             "(e.g. \"fd00:10:244::/56\")")
    subnet_len = _int(obj, "IPv6SubnetLen") or default_ipv6_subnet_len(network)
    lo, hi = network.prefixlen + 2, MAX_IPV6_SUBNET_LEN
    if not lo <= subnet_len <= hi:
        raise ConfigError("IPv6SubnetLen", f"{subnet_len} is out of range {lo}..{hi} for "
                          f"IPv6Network {network} (it must leave at least four subnets "
                          f"of at least four addresses)")
    first, last = (ipnet.nth_subnet(network, subnet_len, 1),
                   ipnet.nth_subnet(network, subnet_len, -1))
    smin, smax = _bounds(obj, "IPv6", network, subnet_len,
                         (first.network_address, last.network_address), _address6)
    return network, subnet_len, smin, smax


def _address6(obj: Mapping[str, Any], name: str) -> ipaddress.IPv6Address | None:
    raw = obj.get(name)
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, str):
            raise TypeError(raw)
        return ipaddress.IPv6Address(raw)
    except (ValueError, TypeError):
        raise ConfigError(name, f"{raw!r} is not an IPv6 address") from None


def _bounds(obj: Mapping[str, Any], family: str,
            network: ipaddress.IPv4Network | ipaddress.IPv6Network, subnet_len: int,
            defaults: tuple[Addr, Addr], parse: Callable[[Mapping[str, Any], str], Addr | None]
            ) -> tuple[Addr, Addr]:
    """``<family>SubnetMin``/``Max``: given ones inside the network and aligned, Min ≤ Max."""
    lo_name, hi_name = f"{family}SubnetMin", f"{family}SubnetMax"
    found: list[Addr] = []
    for name, default in zip((lo_name, hi_name), defaults, strict=True):
        addr = parse(obj, name)
        if addr is None:
            found.append(default)
            continue
        if addr not in network:
            raise ConfigError(name, f"{addr} is outside {family}Network {network}")
        if not ipnet.is_aligned(addr, subnet_len):
            raise ConfigError(name, f"{addr} is not aligned to {family}SubnetLen /{subnet_len}")
        found.append(addr)
    if found[0] > found[1]:
        raise ConfigError(lo_name, f"{found[0]} is above {hi_name} {found[1]}")
    return found[0], found[1]


def _check_backend(obj: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
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
    return btype, dict(backend)


def parse_network_config(data: bytes | str) -> NetworkConfig:
    """Decode and validate the JSON stored at ``<prefix>/config``."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("(document)", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError("(document)", "not a JSON object")
    return check_network_config(obj)


def check_daemon_support(config: NetworkConfig) -> None:
    """What weft's flanneld cannot run although the config is valid for flannel hosts.

    The udp backend is IPv4-only, as flannel's (flannel refuses EnableIPv6 with it
    too): such a flanneld waits, saying so, rather than joining without its IPv6 half.
    """
    if config.enable_ipv6 and config.backend_type == "udp":
        raise ConfigError("EnableIPv6", "the udp backend is IPv4-only (as flannel's); "
                          "use vxlan or host-gw for an IPv6 or dual-stack network")


def build_network_json(network: str, subnet_len: int | None = None,
                       backend: str = DEFAULT_BACKEND, vni: int | None = None,
                       port: int | None = None, direct_routing: bool = False,
                       subnet_min: str | None = None, subnet_max: str | None = None,
                       *, ipv6_network: str | None = None, ipv6_subnet_len: int | None = None,
                       ipv4: bool = True) -> dict[str, Any]:
    """The JSON ``weftctl network set`` stores; validated before it is returned.

    ``network`` may be empty only with ``ipv4=False`` (flannel's IPv6-only
    ``"EnableIPv4": false``); ``ipv6_network`` sets ``EnableIPv6`` and
    ``IPv6Network`` as flannel's documentation writes a dual-stack config.
    """
    obj: dict[str, Any] = {}
    if network:
        obj["Network"] = network
        _check_requested_network(network)
    if subnet_len:
        obj["SubnetLen"] = subnet_len
    if subnet_min:
        obj["SubnetMin"] = subnet_min
    if subnet_max:
        obj["SubnetMax"] = subnet_max
    if not ipv4:
        obj["EnableIPv4"] = False
    if ipv6_network:
        obj["EnableIPv6"] = True
        obj["IPv6Network"] = ipv6_network
        _check_requested_network(ipv6_network, "IPv6Network")
    if ipv6_subnet_len:
        obj["IPv6SubnetLen"] = ipv6_subnet_len
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


def _check_requested_network(network: str, name: str = "Network") -> None:
    """An operator's ``--network`` must be a network address: host bits are a typo."""
    try:
        ipaddress.ip_network(network)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(network, strict=False)
            raise ConfigError(name, f"{network} has host bits set (did you mean "
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
    forward_rules: bool = True  # -iptables-forward-rules (overlay.fwdrules)

    def renew_interval(self) -> float:
        """Seconds between renewals: TTL - margin, or TTL/3 when the margin is not smaller.

        flannel renews 60 min before a 24 h lease ends. A short test TTL (a few
        seconds) would make that negative, so such leases renew at a third of
        their life, leaving two chances before expiry.
        """
        early = self.lease_ttl - self.renew_margin * 60
        return float(early) if early > 0 else self.lease_ttl / 3

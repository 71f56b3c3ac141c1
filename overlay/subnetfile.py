"""subnet.env: flannel's hand-off file to Docker and the CNI plugin, written atomically.

Format (flannel's, byte for byte)::

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

``FLANNEL_SUBNET`` is the subnet's first host address with the subnet length.
With IPv6 (flannel's WriteSubnetFile) ``FLANNEL_IPV6_NETWORK=fd00:10:244::/56``
and ``FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64`` follow the IPv4 pair, before
``FLANNEL_MTU``; an IPv6-only file has no ``FLANNEL_NETWORK``/``FLANNEL_SUBNET``.
``write`` goes through a temporary file in the same directory, fsync and
rename, so readers see the old file or the new one, never a torn one.
``read`` parses any ``KEY=VALUE`` file (flannel's or mk-docker-opts style
quoting) and is lenient: unknown lines are kept, malformed values raise
``SubnetFileError`` naming the file and variable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from overlay import ipnet
from overlay.errors import WeftError


class SubnetFileError(WeftError, ValueError):
    """A subnet file that cannot be read or parsed; names the file and variable."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


NO_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")  # network/subnet of an IPv6-only file
Net = TypeVar("Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


@dataclass(frozen=True, slots=True)
class SubnetEnv:
    network: ipaddress.IPv4Network  # NO_IPV4 when ipv4 is False
    subnet: ipaddress.IPv4Network  # the lease (FLANNEL_SUBNET names its first host)
    mtu: int
    ip_masq: bool
    ipv6_network: ipaddress.IPv6Network | None = None  # FLANNEL_IPV6_NETWORK
    ipv6_subnet: ipaddress.IPv6Network | None = None  # FLANNEL_IPV6_SUBNET's network
    ipv4: bool = True  # False: IPv6-only, no FLANNEL_NETWORK/FLANNEL_SUBNET lines

    def render(self) -> str:
        text = ""
        if self.ipv4:
            text += (f"FLANNEL_NETWORK={self.network}\n"
                     f"FLANNEL_SUBNET={ipnet.gateway(self.subnet)}\n")
        if self.ipv6_network is not None and self.ipv6_subnet is not None:
            text += (f"FLANNEL_IPV6_NETWORK={self.ipv6_network}\n"
                     f"FLANNEL_IPV6_SUBNET={ipnet.gateway6(self.ipv6_subnet)}\n")
        return text + (f"FLANNEL_MTU={self.mtu}\n"
                       f"FLANNEL_IPMASQ={'true' if self.ip_masq else 'false'}\n")


def parse_vars(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (optional quotes, ``#`` comments, ``export``) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def parse(text: str, path: Path = Path("subnet.env")) -> SubnetEnv:
    """A subnet.env's content as a ``SubnetEnv``; ``SubnetFileError`` names what is wrong."""
    env = parse_vars(text)
    ipv4 = "FLANNEL_NETWORK" in env or "FLANNEL_IPV6_NETWORK" not in env
    need: tuple[str, ...] = ("FLANNEL_NETWORK", "FLANNEL_SUBNET") if ipv4 else ()
    if "FLANNEL_IPV6_NETWORK" in env or "FLANNEL_IPV6_SUBNET" in env:
        need += ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")
    for name in (*need, "FLANNEL_MTU", "FLANNEL_IPMASQ"):
        if name not in env:
            raise SubnetFileError(path, f"{name} is missing")
    network = subnet = NO_IPV4
    if ipv4:
        network, subnet = _pair(env, "", ipaddress.IPv4Network, ipaddress.IPv4Interface, path)
    net6 = sub6 = None
    if "FLANNEL_IPV6_NETWORK" in need:
        net6, sub6 = _pair(env, "IPV6_", ipaddress.IPv6Network, ipaddress.IPv6Interface, path)
    try:
        mtu = int(env["FLANNEL_MTU"])
    except ValueError:
        raise SubnetFileError(path, f"FLANNEL_MTU {env['FLANNEL_MTU']!r} is not a number"
                              ) from None
    masq = env["FLANNEL_IPMASQ"].strip().lower()
    if masq not in ("true", "false"):
        raise SubnetFileError(path, f"FLANNEL_IPMASQ {masq!r} is not true/false")
    return SubnetEnv(network, subnet, mtu, masq == "true", net6, sub6, ipv4)


def _pair(env: dict[str, str], family: str, net_type: Callable[..., Net],
          iface_type: Callable[[str], ipaddress.IPv4Interface | ipaddress.IPv6Interface],
          path: Path) -> tuple[Net, Net]:
    """``FLANNEL_<family>NETWORK`` and the network of ``FLANNEL_<family>SUBNET``."""
    values: list[Net] = []
    for name in (f"FLANNEL_{family}NETWORK", f"FLANNEL_{family}SUBNET"):
        try:
            text = env[name]
            values.append(net_type(text, strict=False) if name.endswith("NETWORK")
                          else net_type(iface_type(text).network))
        except ValueError as exc:
            raise SubnetFileError(path, f"{name}: {exc}") from None
    return values[0], values[1]


def read(path: Path) -> SubnetEnv:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SubnetFileError(path, exc.strerror or str(exc)) from None
    return parse(text, path)


def read_previous_subnet(path: Path) -> ipaddress.IPv4Network | None:
    """The subnet recorded in an old subnet file, or None (missing or unreadable)."""
    try:
        env = read(path)
    except SubnetFileError:
        return None
    return env.subnet if env.ipv4 else None


def read_previous_subnet6(path: Path) -> ipaddress.IPv6Network | None:
    """The IPv6 subnet (FLANNEL_IPV6_SUBNET) in an old subnet file, or None."""
    try:
        return read(path).ipv6_subnet
    except SubnetFileError:
        return None


def write_atomic(path: Path, content: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write(path: Path, env: SubnetEnv) -> None:
    write_atomic(path, env.render())

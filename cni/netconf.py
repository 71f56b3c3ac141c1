"""Parsing at the edge: CNI environment, CNI_ARGS, the network config and subnet.env.

Everything the commands need is parsed once here into small immutable value
objects (``__slots__`` classes rather than dataclasses: importing
``dataclasses`` pulls in ``inspect`` and costs ~7 ms on every exec, a third of
the ADD latency budget). Nothing below this module reads ``os.environ``.
"""

from __future__ import annotations

from cni import wire
from cni.errors import ConfigError, DecodeError, EnvError, TryAgainError, VersionError
from cni.ip4 import IPv4, Net4, parse_interface
from cni.ip6 import IPv6, Net6, parse_interface6

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    A = TypeVar("A", IPv4, IPv6)
    N = TypeVar("N", Net4, Net6)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_BRIDGE = "cni0"
KNOWN_ARGS = frozenset({"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def version_key(v: str) -> tuple[int, ...]:
    """``"0.3.1"`` -> ``(0, 3, 1)``; anything unparsable sorts first."""
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (-1,)


class Env:
    """The CNI_* environment of one invocation, validated for its command."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str,
                 args: Mapping[str, str], path: str) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path


def check_ifname(name: str) -> None:
    """Linux interface name rules (as libcni's ValidateInterfaceName)."""
    if not name:
        raise EnvError("CNI_IFNAME is empty")
    if len(name) > 15:
        raise EnvError(f"CNI_IFNAME {name!r} is longer than 15 characters")
    if name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise EnvError(f"CNI_IFNAME {name!r} is not a valid interface name")


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K=V`` -> dict; unknown keys rejected unless ``IgnoreUnknown`` is true."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EnvError(f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(k for k in out if k not in KNOWN_ARGS)
    if unknown and not ignore:
        raise EnvError(f"CNI_ARGS: unknown key(s) {', '.join(unknown)}",
                       "set IgnoreUnknown=1 to allow keys this plugin does not use")
    return out


def parse_env(environ: Mapping[str, str]) -> Env:
    """Validate the variables the spec requires for ``CNI_COMMAND``."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise EnvError("CNI_COMMAND is not set")
    if command not in COMMANDS:
        raise EnvError(f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    cid = environ.get("CNI_CONTAINERID", "")
    netns = environ.get("CNI_NETNS", "")
    ifname = environ.get("CNI_IFNAME", "")
    path = environ.get("CNI_PATH", "")
    if command in ("ADD", "DEL", "CHECK"):
        if not cid:
            raise EnvError("CNI_CONTAINERID is not set")
        if cid[0] in "_.-" or not set(cid) <= _ID_CHARS:
            raise EnvError(f"CNI_CONTAINERID {cid!r} has characters outside [a-zA-Z0-9_.-]")
        if command != "DEL" and not netns:
            raise EnvError("CNI_NETNS is not set")
        if not ifname:
            raise EnvError("CNI_IFNAME is not set")
        check_ifname(ifname)
    if command != "VERSION" and not path:
        raise EnvError("CNI_PATH is not set")
    args = parse_cni_args(environ.get("CNI_ARGS", "")) if command != "VERSION" else {}
    return Env(command, cid, netns, ifname, args, path)


def decode_stdin(data: bytes) -> dict[str, Any]:
    """stdin -> JSON object, or ``DecodeError`` saying what is wrong."""
    if not data.strip():
        raise DecodeError("stdin is empty: expected the network configuration as JSON")
    try:
        obj = wire.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"stdin is not valid JSON: {e}") from None
    except RecursionError:
        raise DecodeError("stdin JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise DecodeError("stdin JSON is not an object")
    return obj


def check_version(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise VersionError("network configuration has no cniVersion",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if version not in SUPPORTED_VERSIONS:
        raise VersionError(f"cniVersion {version!r} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return version


def _str(conf: Mapping[str, Any], key: str, default: str) -> str:
    value = conf.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config field {key!r} must be a non-empty string")
    return value


def _bool(conf: Mapping[str, Any], key: str, default: bool | None) -> bool | None:
    value = conf.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"config field {key!r} must be true or false")
    return value


class NetConf:
    """The plugin's network configuration (one entry of a conflist, as injected)."""

    __slots__ = ("bridge", "cni_version", "data_dir", "hairpin", "ip_masq",
                 "is_default_gateway", "mtu", "name", "prev_result", "raw", "runtime",
                 "subnet_file")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.cni_version = check_version(raw)
        name = raw.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ConfigError("config field 'name' must be a non-empty string without '/'")
        self.name = name
        ipam_raw = raw.get("ipam")
        ipam: dict[str, Any] = ipam_raw if isinstance(ipam_raw, dict) else {}
        self.subnet_file = _str(raw, "subnetFile", DEFAULT_SUBNET_FILE)
        self.data_dir = _str(raw, "dataDir", ipam.get("dataDir", DEFAULT_DATA_DIR))
        self.bridge = _str(raw, "bridge", DEFAULT_BRIDGE)
        check_ifname_config(self.bridge)
        self.hairpin = bool(_bool(raw, "hairpinMode", True))
        self.ip_masq = _bool(raw, "ipMasq", None)  # None: NOT FLANNEL_IPMASQ, as flannel
        self.is_default_gateway = bool(_bool(raw, "isDefaultGateway", True))
        mtu = raw.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                                or not 68 <= mtu <= 65535):
            raise ConfigError("config field 'mtu' must be an integer in 68..65535")
        self.mtu: int | None = mtu
        runtime = raw.get("runtimeConfig", {})
        if not isinstance(runtime, dict):
            raise ConfigError("config field 'runtimeConfig' must be an object")
        self.runtime: dict[str, Any] = runtime
        prev = raw.get("prevResult")
        if prev is not None and not isinstance(prev, dict):
            raise ConfigError("config field 'prevResult' must be an object")
        self.prev_result: dict[str, Any] | None = prev


def check_ifname_config(name: str) -> None:
    try:
        check_ifname(name)
    except EnvError as e:
        raise ConfigError(f"bridge name: {e.msg}") from None


def requested_ips(conf: NetConf, env: Env) -> list[tuple[str, str]]:
    """Specific IPs asked for, as (source, text): CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips."""
    out: list[tuple[str, str]] = []
    if env.args.get("IP"):
        out.extend(("CNI_ARGS IP", ip) for ip in env.args["IP"].split(","))
    args = conf.raw.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        ips = args["cni"].get("ips", [])
        if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
            raise ConfigError("args.cni.ips must be a list of strings")
        out.extend(("args.cni.ips", ip) for ip in ips)
    ips = conf.runtime.get("ips", [])
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise ConfigError("runtimeConfig.ips must be a list of strings")
    out.extend(("runtimeConfig.ips", ip) for ip in ips)
    return out


def valid_attachments(raw: Mapping[str, Any]) -> set[tuple[str, str]]:
    """GC's ``cni.dev/valid-attachments`` (or the older ``cni.dev/attachments``) as
    (containerID, ifname) pairs. A missing key (or null) is no valid attachment: libcni's
    GC without GCArgs, as ``cnitool gc`` sends, has already DELeted every attachment it
    cached and leaves the plugin to free the rest. A key that is present but malformed is
    a ConfigError: freeing everything on a typo would take down running containers."""
    key = "cni.dev/valid-attachments"
    items = raw.get(key, raw.get("cni.dev/attachments"))
    if items is None:
        return set()
    if not isinstance(items, list):
        raise ConfigError(f"{key} must be a list of {{containerID, ifname}}, not {items!r}")
    valid: set[tuple[str, str]] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise ConfigError(f"{key} entry {item!r} lacks containerID")
        valid.add((item["containerID"], str(item.get("ifname", ""))))
    return valid


def requested_mac(conf: NetConf, env: Env) -> bytes | None:
    """A MAC from runtimeConfig.mac or CNI_ARGS MAC=, as 6 bytes."""
    text = conf.runtime.get("mac") or env.args.get("MAC")
    if not text:
        return None
    source = "runtimeConfig.mac" if conf.runtime.get("mac") else "CNI_ARGS MAC"
    parts = str(text).split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(parts) != 6 or len(mac) != 6 or any(len(p) != 2 for p in parts):
        raise ConfigError(f"{source} {text!r} is not a MAC address like 0a:58:0a:f4:01:05")
    if mac[0] & 1:
        raise ConfigError(f"{source} {text!r} is a multicast address")
    return mac


class SubnetEnv:
    """flanneld's subnet.env: the host's leased subnet(s), the cluster network(s), MTU, masq.

    The IPv4 trio (``network``, ``subnet``, ``gateway``) is None on an IPv6-only
    host, the IPv6 trio (``network6``...) when the file has no FLANNEL_IPV6_* lines.
    """

    __slots__ = ("gateway", "gateway6", "ipmasq", "mtu", "network", "network6", "subnet",
                 "subnet6")

    def __init__(self, network: Net4 | None, subnet: Net4 | None, gateway: IPv4 | None,
                 mtu: int, ipmasq: bool, network6: Net6 | None = None,
                 subnet6: Net6 | None = None, gateway6: IPv6 | None = None) -> None:
        self.network = network
        self.subnet = subnet
        self.gateway = gateway
        self.mtu = mtu
        self.ipmasq = ipmasq
        self.network6 = network6
        self.subnet6 = subnet6
        self.gateway6 = gateway6

    def cluster(self, version: int) -> Net4 | Net6 | None:
        """The cluster network of one family (FLANNEL_NETWORK / FLANNEL_IPV6_NETWORK)."""
        return self.network if version == 4 else self.network6


def subnet_vars(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (optional matching quotes, ``#`` comments, ``export``).

    The same rules as ``overlay.subnetfile.parse_vars``, kept here so the plugin does
    not import ``overlay`` (its ``ipaddress`` use alone costs a slice of the ADD
    budget); tests/unit/test_subnet_env.py runs both on one table of inputs.
    """
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


def _field_error(where: str, key: str, text: str, family: int, e: ValueError) -> ConfigError:
    return ConfigError(f"{where}: {key} {text!r} is not an IPv{family} network ({e})",
                       "flanneld writes this file; is it corrupted?")


def _check_room(where: str, key: str, text: str, prefixlen: int, limit: int) -> None:
    if prefixlen > limit:
        raise ConfigError(f"{where}: {key} {text} is too small for containers")


def _pair(values: dict[str, str], where: str, family: str, net: Callable[[str, bool], N],
          iface: Callable[[str], tuple[A, N]], limit: int) -> tuple[N, N, A]:
    """(FLANNEL_<family>NETWORK, FLANNEL_<family>SUBNET's network, the gateway =
    FLANNEL_<family>SUBNET's address) of one family; errors name the variable."""
    key = f"FLANNEL_{family}NETWORK"
    text = values[key].split(",")[0]
    try:
        network = net(text, False)
        key = f"FLANNEL_{family}SUBNET"
        text = values[key]
        ip, subnet = iface(text)
    except ValueError as e:
        raise _field_error(where, key, text, 6 if family else 4, e) from None
    _check_room(where, key, text, subnet.prefixlen, limit)
    return network, subnet, ip if ip != subnet.network_address else ip + 1


def parse_subnet_env(text: str, where: str) -> SubnetEnv:
    """Parse ``KEY=VALUE`` lines; missing or bad keys are named in the error.

    IPv4 needs FLANNEL_NETWORK + FLANNEL_SUBNET, IPv6 FLANNEL_IPV6_NETWORK +
    FLANNEL_IPV6_SUBNET; a file has one pair or both (flanneld's dual-stack and
    IPv6-only files), plus FLANNEL_MTU and FLANNEL_IPMASQ.
    """
    values = subnet_vars(text)
    v6 = "FLANNEL_IPV6_NETWORK" in values or "FLANNEL_IPV6_SUBNET" in values
    v4 = "FLANNEL_NETWORK" in values or "FLANNEL_SUBNET" in values or not v6
    need = [*(("FLANNEL_NETWORK", "FLANNEL_SUBNET") if v4 else ()),
            *(("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET") if v6 else ()),
            "FLANNEL_MTU", "FLANNEL_IPMASQ"]
    missing = [k for k in need if k not in values]
    if missing:
        raise TryAgainError(f"{where} lacks {', '.join(missing)}",
                            "flanneld writes this file once it holds a lease")
    try:
        mtu = int(values["FLANNEL_MTU"])
    except ValueError:
        raise ConfigError(f"{where}: FLANNEL_MTU {values['FLANNEL_MTU']!r} is not a number"
                          ) from None
    net4, sub4, gw4 = (_pair(values, where, "", Net4.parse, parse_interface, 30) if v4
                       else (None, None, None))
    net6, sub6, gw6 = (_pair(values, where, "IPV6_", Net6.parse, parse_interface6, 126) if v6
                       else (None, None, None))
    return SubnetEnv(net4, sub4, gw4, mtu, values["FLANNEL_IPMASQ"].lower() in ("true", "1"),
                     net6, sub6, gw6)


def read_subnet_env(path: str) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TryAgainError(f"subnet file {path} does not exist: this host has no lease yet",
                            "start flanneld (it writes the file once it holds a lease), "
                            "or point 'subnetFile' in the network config at it") from None
    except OSError as e:
        raise ConfigError(f"cannot read subnet file {path}: {e.strerror}") from None
    return parse_subnet_env(text, path)

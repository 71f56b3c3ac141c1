"""weftctl's network commands: ``network set|get``, ``leases`` and ``docker-opts``.

* ``network set`` validates and writes flannel's config JSON to ``<prefix>/config``.
* ``network get`` prints the stored config (and says what is wrong with it).
* ``leases`` prints a table of the subnet leases: subnet, public IP, backend,
  VTEP MAC and the TTL left on each lease's etcd lease.
* ``docker-opts`` turns subnet.env into Docker daemon options the way flannel's
  ``mk-docker-opts.sh`` does (same flags ``-f -d -i -c -k -m``, same variables).

Store flags (``-etcd-endpoints``, ``-etcd-prefix``, TLS files, ``-etcd-username``
and ``-etcd-password``) take one or two dashes, with ``FLANNELD_ETCD_*`` from the
environment as defaults, so the values a host's flanneld uses work here
unchanged; the password is also read from ``WEFT_ETCD_PASSWORD``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from overlay import subnetfile
from overlay.backend.base import BACKENDS
from overlay.config import (
    DEFAULT_SUBNET_FILE,
    ConfigError,
    build_network_json,
    check_daemon_support,
    check_network_config,
    parse_network_config,
)
from overlay.flags import FLANNELD_STORE_ENV, store_config
from overlay.flags import add_store_flags as add_store_flags_to
from overlay.lease.change import config_change_conflicts
from overlay.lease.model import (
    DEFAULT_PREFIX,
    Lease,
    LeaseFormatError,
    config_key,
    decode_lease,
    subnets_prefix,
)
from overlay.store.api import KeyValue, Store, StoreError

DEFAULT_DOCKER_ENV = Path("/run/docker_opts.env")


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """The store flags (overlay.flags) plus ``-etcd-prefix``, with flanneld's variables."""
    add_store_flags_to(p, FLANNELD_STORE_ENV)
    p.add_argument("-etcd-prefix", "--etcd-prefix", dest="etcd_prefix",
                   default=os.environ.get("FLANNELD_ETCD_PREFIX", DEFAULT_PREFIX),
                   help=f"network key prefix [default {DEFAULT_PREFIX}]")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    net = subparsers.add_parser("network", help="set or show the overlay network config")
    nsub = net.add_subparsers(dest="network_command", metavar="ACTION")
    s = nsub.add_parser("set", help="write the network config (flannel JSON)")
    s.add_argument("--network", default="", help="cluster CIDR, e.g. 10.244.0.0/16 "
                   "(required unless --no-ipv4)")
    s.add_argument("--subnet-len", type=int, help="host subnet length [24 for /22 or larger]")
    s.add_argument("--subnet-min", help="first subnet to hand out [the second one]")
    s.add_argument("--subnet-max", help="last subnet to hand out [the last one]")
    s.add_argument("--ipv6-network", help="IPv6 cluster CIDR, e.g. fd00:10:244::/56: "
                   "dual-stack (flannel's EnableIPv6 + IPv6Network)")
    s.add_argument("--ipv6-subnet-len", type=int,
                   help="IPv6 host subnet length [64 for /62 or larger, else prefix + 2]")
    s.add_argument("--no-ipv4", action="store_true",
                   help="IPv6-only (flannel's \"EnableIPv4\": false); needs --ipv6-network")
    s.add_argument("--backend", default="vxlan", choices=tuple(BACKENDS),
                   help="data path [vxlan, flannel's documented default]")
    s.add_argument("--vni", type=int, help="VXLAN network identifier [1]")
    s.add_argument("--port", type=int, help="VXLAN/UDP port [8472 for vxlan, 8285 for udp]")
    s.add_argument("--direct-routing", action="store_true",
                   help="vxlan: plain routes to peers on the same L2 network")
    s.add_argument("--encryption-key-file", action="append", default=[], metavar="PATH",
                   help="udp: encrypt with the 32-byte cluster key in PATH on every host "
                        "(Encryption.KeyFile; the key itself never goes into the store); "
                        "twice during a key roll, the new key first")
    s.add_argument("--force", action="store_true",
                   help="write even when live leases fall outside the new network or their "
                        "hosts run another backend (they keep their old subnets until "
                        "flanneld restarts)")
    add_store_flags(s)
    s.set_defaults(func=cmd_set)
    g = nsub.add_parser("get", help="print the stored network config")
    add_store_flags(g)
    g.set_defaults(func=cmd_get)

    def network_help(args: argparse.Namespace) -> int:
        net.print_help()
        return 2

    net.set_defaults(func=network_help)

    le = subparsers.add_parser("leases", help="list subnet leases (subnet, public IP, backend, "
                               "VTEP MAC, TTL left)")
    le.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_store_flags(le)
    le.set_defaults(func=cmd_leases)

    d = subparsers.add_parser("docker-opts", help="Docker options from subnet.env "
                              "(like flannel's mk-docker-opts.sh)")
    d.add_argument("-f", dest="subnet_file", default=str(DEFAULT_SUBNET_FILE),
                   help=f"subnet file to read [{DEFAULT_SUBNET_FILE}]")
    d.add_argument("-d", dest="output", default=str(DEFAULT_DOCKER_ENV),
                   help=f"file to write, '-' for stdout [{DEFAULT_DOCKER_ENV}]")
    d.add_argument("-i", dest="individual", action="store_true",
                   help="write individual DOCKER_OPT_* variables")
    d.add_argument("-c", dest="combined", action="store_true",
                   help="write one combined variable (see -k)")
    d.add_argument("-k", dest="key", default="DOCKER_OPTS",
                   help="name of the combined variable [DOCKER_OPTS]")
    d.add_argument("-m", dest="no_masq", action="store_true", help="leave out --ip-masq")
    d.set_defaults(func=cmd_docker_opts)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        result: int = asyncio.run(coro)
        return result
    except (StoreError, ValueError) as exc:
        sys.stderr.write(f"weftctl: {exc}\n")
        return 1


async def _store(args: argparse.Namespace) -> Store:
    from overlay.store.client import connect

    return await connect(store_config(args, FLANNELD_STORE_ENV))


def _check_family_options(args: argparse.Namespace) -> None:
    """Combinations of family options ``build_network_json`` would write but no host runs."""
    if args.ipv6_subnet_len and not args.ipv6_network:
        raise ConfigError("IPv6SubnetLen", "--ipv6-subnet-len needs --ipv6-network "
                          "(IPv6SubnetLen without EnableIPv6/IPv6Network is never used)")


def _add_encryption(obj: dict[str, Any], backend: str, key_files: list[str]) -> None:
    """``--encryption-key-file``: the udp backend's ``Encryption`` object (one path, or
    a list of two during a roll); the files are read by flanneld on each host."""
    if not key_files:
        return
    if backend != "udp":
        raise ConfigError("Encryption", f"--encryption-key-file: only the udp backend "
                          f"encrypts (the {backend} backend sends what the kernel sends)")
    if len(key_files) > 2:
        raise ConfigError("Encryption", "--encryption-key-file: at most two files (the new "
                          "key and the old one, during a roll)")
    obj["Backend"]["Encryption"] = {
        "KeyFile": key_files[0] if len(key_files) == 1 else list(key_files)}


def cmd_set(args: argparse.Namespace) -> int:
    try:
        _check_family_options(args)
        obj = build_network_json(args.network, args.subnet_len, args.backend, args.vni,
                                 args.port, args.direct_routing, args.subnet_min,
                                 args.subnet_max, ipv6_network=args.ipv6_network,
                                 ipv6_subnet_len=args.ipv6_subnet_len, ipv4=not args.no_ipv4)
        _add_encryption(obj, args.backend, args.encryption_key_file)
    except ConfigError as exc:
        sys.stderr.write(f"weftctl network set: {exc}\n")
        return 2
    from overlay.backend.base import BackendConfigError
    from overlay.backend.registry import parse_backend

    try:  # the data path's own checks (VNI and port ranges...), so flanneld won't refuse it
        parse_backend(args.backend, obj["Backend"])
    except BackendConfigError as exc:
        sys.stderr.write(f"weftctl network set: {exc}\n")
        return 2

    new = check_network_config(obj)
    try:  # valid for flannel hosts, but no flanneld (weft's or flannel's) could run it
        check_daemon_support(new)
    except ConfigError as exc:
        sys.stderr.write(f"weftctl network set: {exc}\n")
        return 2

    async def go() -> int:
        store = await _store(args)
        try:
            if not args.force:
                listing = await store.list(subnets_prefix(args.etcd_prefix).encode())
                conflicts = config_change_conflicts(new, _live_leases(listing.items))
                if conflicts:
                    sys.stderr.write(
                        f"weftctl network set: refusing to change the network config under "
                        f"{len(conflicts)} live lease(s):\n"
                        + "".join(f"  {c}\n" for c in conflicts)
                        + "stop flanneld on those hosts and let the leases expire (or "
                          "delete them), or pass --force\n")
                    return 1
            await store.put(config_key(args.etcd_prefix).encode(),
                            json.dumps(obj, separators=(",", ":")).encode())
        finally:
            await store.close()
        sys.stdout.write(f"{config_key(args.etcd_prefix)} = {json.dumps(obj)}\n")
        return 0

    return _run(go())


def _live_leases(items: Sequence[KeyValue]) -> list[Lease]:
    """The well-formed leases of a listing (a malformed one has no data path to break)."""
    leases = []
    for kv in items:
        try:
            leases.append(decode_lease(kv.key.decode("utf-8", "replace"), kv.value))
        except LeaseFormatError:
            continue
    return leases


def cmd_get(args: argparse.Namespace) -> int:
    async def go() -> int:
        store = await _store(args)
        try:
            kv = await store.get(config_key(args.etcd_prefix).encode())
        finally:
            await store.close()
        if kv is None:
            sys.stderr.write(f"no network config at {config_key(args.etcd_prefix)}\n")
            return 1
        sys.stdout.write(kv.value.decode("utf-8", "replace").rstrip() + "\n")
        try:
            parse_network_config(kv.value)
        except ConfigError as exc:
            sys.stderr.write(f"warning: {exc}\n")
            return 1
        return 0

    return _run(go())


def format_leases(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of lease rows (pure, for tests); IPv6 columns appear when a
    lease has an IPv6 half (an IPv6-only lease's IPv4 columns read ``-``)."""
    header: tuple[str, ...] = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "TTL")
    lines: list[tuple[str, ...]] = [
        (r["subnet"], r["public_ip"], r["backend"], r["vtep_mac"], r["ttl"]) for r in rows]
    if any(r.get("ipv6_subnet") for r in rows):
        header = ("SUBNET", "PUBLIC IP", "IPV6 SUBNET", "PUBLIC IPV6", "BACKEND", "VTEP MAC",
                  "TTL")
        lines = [("-" if r["subnet"] == "0.0.0.0/0" else r["subnet"],
                  "-" if r["public_ip"] == "0.0.0.0" else r["public_ip"],
                  r.get("ipv6_subnet") or "-", r.get("public_ipv6") or "-", r["backend"],
                  r["vtep_mac"], r["ttl"]) for r in rows]
    lines = [header, *lines]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                   + "\n" for line in lines)


def _ttl_text(ttl: int | None) -> str:
    if ttl is None:
        return "none"
    if ttl < 0:
        return "expired"
    h, rest = divmod(ttl, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def cmd_leases(args: argparse.Namespace) -> int:
    async def go() -> int:
        store = await _store(args)
        rows: list[dict[str, Any]] = []
        try:
            listing = await store.list(subnets_prefix(args.etcd_prefix).encode())
            for kv in listing.items:
                key = kv.key.decode("utf-8", "replace")
                ttl: int | None = None
                if kv.lease:
                    ttl = (await store.time_to_live(kv.lease)).ttl
                try:
                    lease = decode_lease(key, kv.value)
                except LeaseFormatError as exc:
                    rows.append({"subnet": key.rsplit("/", 1)[-1], "public_ip": "?",
                                 "backend": "(malformed)", "vtep_mac": "-",
                                 "ttl": _ttl_text(ttl), "error": exc.reason})
                    continue
                mac = (lease.backend_data.get("VtepMAC")
                       or lease.backend_v6_data.get("VtepMAC") or "-")
                rows.append({"subnet": str(lease.subnet), "public_ip": str(lease.public_ip),
                             "backend": lease.backend_type or "-", "vtep_mac": str(mac),
                             "ttl": _ttl_text(ttl), "ttl_seconds": ttl,
                             "ipv6_subnet": None if lease.ipv6_subnet is None
                             else str(lease.ipv6_subnet),
                             "public_ipv6": None if lease.public_ipv6 is None
                             else str(lease.public_ipv6)})
        finally:
            await store.close()
        rows.sort(key=lambda r: (_sort_key(r["subnet"]), str(r.get("ipv6_subnet") or "")))
        if args.json:
            for r in rows:
                sys.stdout.write(json.dumps(r) + "\n")
        else:
            sys.stdout.write(format_leases(rows))
        return 0

    return _run(go())


def _sort_key(text: str) -> tuple[int, str]:
    try:
        return int(ipaddress.IPv4Network(text).network_address), ""
    except ValueError:
        return 1 << 33, text


def docker_opts(env: dict[str, str], individual: bool, combined: bool, key: str,
                no_masq: bool) -> str:
    """mk-docker-opts.sh's output for subnet.env variables ``env`` (pure)."""
    if not individual and not combined:
        individual = combined = True
    opts: list[tuple[str, str]] = []
    if env.get("FLANNEL_SUBNET"):
        opts.append(("DOCKER_OPT_BIP", f"--bip={env['FLANNEL_SUBNET']}"))
    if not no_masq and env.get("FLANNEL_IPMASQ"):
        flannel_masq = env["FLANNEL_IPMASQ"].strip().lower() == "true"
        opts.append(("DOCKER_OPT_IPMASQ", f"--ip-masq={'false' if flannel_masq else 'true'}"))
    if env.get("FLANNEL_IPV6_SUBNET"):  # weft's addition (flannel's script has no IPv6)
        try:
            fixed = str(ipaddress.IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network)
        except ValueError:
            fixed = env["FLANNEL_IPV6_SUBNET"]  # passed on as written; dockerd says why
        opts.append(("DOCKER_OPT_IPV6", f"--ipv6 --fixed-cidr-v6={fixed}"))
    if env.get("FLANNEL_MTU"):
        opts.append(("DOCKER_OPT_MTU", f"--mtu={env['FLANNEL_MTU']}"))
    out: list[str] = []
    if individual:
        out += [f'{name}="{value}"' for name, value in opts]
    if combined:
        out.append(f'{key}=" {" ".join(value for _, value in opts)}"')
    return "\n".join(out) + "\n"


def cmd_docker_opts(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    path = Path(args.subnet_file)
    try:
        text = path.read_text()
    except OSError as exc:
        sys.stderr.write(f"weftctl docker-opts: {path}: {exc.strerror}\n")
        return 1
    env = subnetfile.parse_vars(text)
    if "FLANNEL_SUBNET" not in env and "FLANNEL_IPV6_SUBNET" not in env:
        sys.stderr.write(f"weftctl docker-opts: {path}: FLANNEL_SUBNET is missing\n")
        return 1
    content = docker_opts(env, args.individual, args.combined, args.key, args.no_masq)
    if args.output == "-":
        (stdout or sys.stdout).write(content)
    else:
        subnetfile.write_atomic(Path(args.output), content)
    return 0

"""``weftctl sandbox up|status|exec|logs|kill|start|down``: argument parsing; ``cluster`` works."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable
from pathlib import Path

from overlay.sandbox import cluster
from overlay.sandbox.model import (
    BACKENDS,
    DEFAULT_LEASE_TTL,
    DEFAULT_STATE_DIR,
    MAX_HOSTS,
    NETWORK,
    NETWORK6,
    STORES,
    AlreadyUpError,
    Options,
    SandboxError,
)

STATE_DIR_ENV = "WEFT_SANDBOX_DIR"

Handler = Callable[[argparse.Namespace], int]


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).absolute()


def _guard(func: Handler) -> Handler:
    """Boundary: sandbox errors become one clear line on stderr and exit status 1."""
    def handler(args: argparse.Namespace) -> int:
        if os.geteuid() != 0:
            sys.stderr.write("weftctl sandbox: needs root (it creates network namespaces)\n")
            return 1
        try:
            status: int = func(args)
            return status
        except AlreadyUpError as exc:
            sys.stderr.write(f"weftctl sandbox: {exc}\n")
            return 3
        except SandboxError as exc:
            sys.stderr.write(f"weftctl sandbox: {exc}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write("weftctl sandbox: interrupted\n")
            return 130
    return handler


def _network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv4 network CIDR: {exc}") from None


def _network6(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv6 network CIDR: {exc}") from None


def _up(args: argparse.Namespace) -> int:
    options = Options(hosts=args.hosts, store=args.store, backend=args.backend,
                      state_dir=_state_dir(args), lease_ttl=args.lease_ttl,
                      network=args.network, ipv6=args.ipv6 or args.network6 is not None,
                      network6=args.network6 or NETWORK6, encrypt=args.encrypt)
    return cluster.up(options, sys.stdout)


def _status(args: argparse.Namespace) -> int:
    return cluster.status(_state_dir(args), sys.stdout, as_json=args.json)


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    # REMAINDER swallows options given after the target: take ours back before "--"
    while argv and argv[0].startswith("--state-dir"):
        if "=" in argv[0]:
            args.state_dir = argv.pop(0).partition("=")[2]
        elif len(argv) > 1:
            argv.pop(0)
            args.state_dir = argv.pop(0)
        else:
            break
    if argv and argv[0] == "--":
        argv = argv[1:]
    return cluster.exec_in(_state_dir(args), args.target, argv)


def _logs(args: argparse.Namespace) -> int:
    return cluster.logs(_state_dir(args), args.daemon, sys.stdout, args.lines, args.follow)


def _kill(args: argparse.Namespace) -> int:
    return cluster.kill(_state_dir(args), args.target, sys.stdout)


def _store_url(text: str) -> str:
    """``--store-endpoint``: one http(s)://HOST:PORT URL."""
    scheme, sep, rest = text.partition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not sep or scheme not in ("http", "https") or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: want http://HOST:PORT")
    return text.rstrip("/")


def _start(args: argparse.Namespace) -> int:
    return cluster.start(_state_dir(args), args.target, sys.stdout, args.store_endpoint)


def _down(args: argparse.Namespace) -> int:
    return cluster.down(_state_dir(args), sys.stdout)


def _partition(args: argparse.Namespace) -> int:
    return cluster.set_partition(_state_dir(args), args.host, True, sys.stdout)


def _failover(args: argparse.Namespace) -> int:
    return cluster.failover(_state_dir(args), sys.stdout)


def _heal(args: argparse.Namespace) -> int:
    return cluster.set_partition(_state_dir(args), args.host, False, sys.stdout)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    default_dir = os.environ.get(STATE_DIR_ENV, str(DEFAULT_STATE_DIR))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=default_dir, metavar="DIR",
                        help=f"where the sandbox keeps pids, logs and daemon state "
                             f"(default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")
    sandbox = subparsers.add_parser(
        "sandbox", help="a whole weft cluster in network namespaces on this machine",
        description="Run a whole weft cluster (store, flanneld, dnsd, CNI containers) in "
                    "network namespaces. Needs root; never touches the root namespace.")
    sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)

    p = sub.add_parser("up", parents=[common], help="build and start the cluster, then prove it")
    p.add_argument("--hosts", type=int, default=3, metavar="N",
                   help=f"number of hosts, 1..{MAX_HOSTS} (default 3)")
    p.add_argument("--store", choices=STORES, default="embedded",
                   help="embedded `weftctl store serve` or Debian's etcd (default embedded)")
    p.add_argument("--backend", choices=BACKENDS, default="vxlan",
                   help="flannel backend (default vxlan)")
    p.add_argument("--lease-ttl", type=int, default=DEFAULT_LEASE_TTL, metavar="S",
                   help=f"flanneld subnet lease TTL in seconds (default {DEFAULT_LEASE_TTL}), "
                        "so peers visibly drop a killed host")
    p.add_argument("--network", type=_network, default=NETWORK, metavar="CIDR",
                   help=f"overlay network (default {NETWORK})")
    p.add_argument("--ipv6", action="store_true",
                   help="dual-stack: IPv6 underlay (fd00:198:18::/64) and overlay (EnableIPv6, "
                        "--network6); the proof pings and digs (AAAA) over IPv6 too "
                        "(vxlan or host-gw)")
    p.add_argument("--network6", type=_network6, default=None, metavar="CIDR",
                   help=f"the overlay's IPv6Network; implies --ipv6 (default {NETWORK6}; must "
                        "lie in fd00::/8 or 2001:db8::/32)")
    p.add_argument("--encrypt", action="store_true",
                   help="udp backend only: encrypt the data path with a fresh cluster key "
                        "(written to the state dir, removed by down)")
    p.set_defaults(func=_guard(_up))

    p = sub.add_parser("status", parents=[common],
                       help="the host table (with each lease as the store sees it) and the "
                            "health of every daemon (exit 1 if unhealthy)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.set_defaults(func=_guard(_status))

    p = sub.add_parser("exec", parents=[common], help="run a command in a host or container",
                       description="TARGET: h1.., c1.h1 (or h1/c1, c1.h1.skydns.local), "
                                   "underlay. Without CMD, a shell.")
    p.add_argument("target", metavar="HOST|CONTAINER")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=_guard(_exec))

    p = sub.add_parser("logs", parents=[common], help="print a daemon's log, e.g. flanneld@h2")
    p.add_argument("daemon", metavar="DAEMON@HOST")
    p.add_argument("-n", "--lines", type=int, default=None, help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines until interrupted")
    p.set_defaults(func=_guard(_logs))

    targets = ("TARGET: a host (h2: its daemons), the store (store or underlay), or one "
               "daemon (dnsd, flanneld@h2)")
    p = sub.add_parser("kill", parents=[common], description=targets,
                       help="SIGKILL a host's daemons (its lease then expires, peers drop it), "
                            "the store (an outage) or one daemon")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(func=_guard(_kill))

    p = sub.add_parser("start", parents=[common], description=targets,
                       help="start killed daemons again: a host comes back as after a reboot "
                            "(same subnet), the store's outage ends")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--store-endpoint", metavar="URL", type=_store_url,
                   help="from now on the daemons use this store (e.g. after `weftctl store "
                        "migrate` to an etcd): the target's running daemons restart on it")
    p.set_defaults(func=_guard(_start))

    p = sub.add_parser("partition", parents=[common],
                       help="cut a host's underlay link: its daemons live on, the store and "
                            "its peers are out of reach")
    p.add_argument("host", metavar="HOST")
    p.set_defaults(func=_guard(_partition))

    p = sub.add_parser("heal", parents=[common], help="restore a partitioned host's underlay link")
    p.add_argument("host", metavar="HOST")
    p.set_defaults(func=_guard(_heal))

    p = sub.add_parser("failover", parents=[common],
                       help="kill the host of the demo unit web.service and show it move "
                            "(the end of `make demo`)")
    p.set_defaults(func=_guard(_failover))

    p = sub.add_parser("down", parents=[common],
                       help="stop everything, delete the namespaces and the state dir")
    p.set_defaults(func=_guard(_down))

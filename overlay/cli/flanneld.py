"""The ``flanneld`` command: flannel's flags and FLANNELD_* env in, a running ``Flanneld`` out.

Wiring only: parse flags once into ``DaemonConfig`` and a ``StoreConfig``, pick
the external interface, connect to the store (retrying while it is down), hand
``overlay.backend.registry.make_backend`` and ``overlay.masq`` to the daemon,
serve health/metrics, and stop cleanly on SIGTERM/SIGINT (leaving the lease and
kernel state in place, as flannel does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from overlay.backend.base import Backend, ExternalInterface
from overlay.config import (
    DEFAULT_LEASE_TTL,
    DEFAULT_RENEW_MARGIN,
    DEFAULT_SUBNET_FILE,
    DaemonConfig,
    NetworkConfig,
)
from overlay.daemon import BlackholeSync, IngressGuard, Masquerade
from overlay.flags import (
    FlagParser,
    StoreFlagEnv,
    add_store_flags,
    ignored_warning,
    store_config,
)
from overlay.lease.model import DEFAULT_PREFIX, Lease
from overlay.service import LOG_FORMATS, setup_logging
from overlay.store.api import StoreConfig

log = logging.getLogger("flanneld")

# the parser's prefix names every store variable (FLANNELD_ETCD_*): nothing more
FLANNELD_ENV = StoreFlagEnv(username=(), password=())

DESCRIPTION = """\
flanneld: weft's flannel-compatible overlay daemon. It reads the network config
from <etcd-prefix>/config, leases a subnet for this host under
<etcd-prefix>/subnets/, programs the data path (vxlan, host-gw or udp) for every
peer, and writes the subnet file for Docker and the CNI plugin.

Every flag takes one or two dashes (-flag=value, --flag value) and can be set as
FLANNELD_<UPPER_SNAKE> in the environment; the command line wins."""


def build_parser(environ: Mapping[str, str] | None = None) -> FlagParser:
    p = FlagParser("flanneld", DESCRIPTION, env_prefixes=("FLANNELD_",), environ=environ)
    add_store_flags(p, FLANNELD_ENV)
    p.add("etcd-prefix", "store key prefix of the network", default=DEFAULT_PREFIX,
          metavar="PREFIX")
    p.add("iface", "interface (name or IP address) for inter-host traffic; repeatable, "
          "first match wins [default: the default route's interface]", repeat=True,
          metavar="IFACE")
    p.add("iface-regex", "regex matched against interface addresses, then names; repeatable; "
          "used when -iface is not given", repeat=True, metavar="REGEX")
    p.add("iface-can-reach", "use the interface that routes to this address, IPv4 or IPv6 "
          "(when neither -iface nor -iface-regex is given)", metavar="IP")
    p.add("public-ip", "IP address other hosts reach this one at (NAT) [default: the "
          "interface's address]", metavar="IP")
    p.add("public-ipv6", "IPv6 address other hosts reach this one at, advertised as the "
          "lease's PublicIPv6 in dual-stack and IPv6-only networks (EnableIPv6) [default: "
          "the interface's first global IPv6 address]", metavar="IP6")
    p.add("subnet-file", "file the leased subnet is written to", default=str(DEFAULT_SUBNET_FILE),
          metavar="PATH")
    p.add_bool("ip-masq", "masquerade traffic leaving the overlay network (nftables)")
    p.add_bool("ip-masq-fully-random-disable", "masquerade without the fully-random port "
               "mapping")
    p.add_bool("ip-blackhole-route", "add a blackhole route for this host's subnet, so "
               "traffic to its addresses no container holds is dropped here instead of "
               "following the default route (the bridge's own route still wins)")
    p.add_bool("vxlan-ingress-members-only", "drop VXLAN/udp datagrams to the backend's port "
               "from any address that holds no lease (nftables table inet weft_ingress; "
               "vxlan and udp backends); =false turns it off and removes the table",
               default=True)
    p.add_bool("iptables-forward-rules", "accept the cluster network in iptables' FORWARD "
               "chain (flannel's FLANNEL-FWD chain; needed where Docker set the FORWARD "
               "policy to DROP, which no nftables accept overrides); =false removes them",
               default=True)
    p.add("iptables-resync", "seconds between checks that the masquerade and FORWARD rules "
          "are intact (kept under flannel's name)", default=5, type=int, metavar="SECONDS")
    p.add("subnet-lease-renew-margin", "renew the lease this many minutes before it expires "
          "(1-1439)", default=DEFAULT_RENEW_MARGIN, type=int, metavar="MINUTES")
    p.add("subnet-lease-ttl", "lifetime of the subnet lease in seconds (short values for tests)",
          default=DEFAULT_LEASE_TTL, type=int, metavar="SECONDS")
    p.add("healthz-ip", "address the health/metrics server listens on", default="0.0.0.0",
          metavar="IP")
    p.add("healthz-port", "port of /healthz, /readyz and /metrics (0 = off)", default=0,
          type=int, metavar="PORT")
    p.add("v", "log verbosity (0 = info, 1+ = debug)", default=0, type=int, metavar="LEVEL")
    p.add("log-format", "text (journald priority prefixes instead of timestamps when "
          "systemd's JOURNAL_STREAM is our stderr) or json (one object per line)",
          default="text", env=("WEFT_LOG_FORMAT",), metavar="FORMAT")
    p.add_bool("version", "print the version and exit")
    for name, why, boolean in FLANNEL_REFUSED:
        help = f"flannel's; refused when set: {why.split('. ')[0]}"
        if boolean:
            p.add_bool(name, help)
        else:
            p.add(name, help, metavar="VALUE")
    for name, why, boolean in FLANNEL_IGNORED:
        p.add_ignored(name, why, boolean)
    return p


# flannel's flags for modes weft does not have: (name, why, boolean); set (true or
# non-empty), flanneld exits 2 saying why and what to do instead, rather than run
# something other than what the unit asks for
FLANNEL_REFUSED: tuple[tuple[str, str, bool], ...] = (
    ("kube-subnet-mgr", "weft's flanneld leases subnets from etcd (or `weftctl store "
     "serve`), not from the Kubernetes API. Drop -kube-subnet-mgr (and "
     "FLANNELD_KUBE_SUBNET_MGR), point -etcd-endpoints at the store and put the network "
     "config (net-conf.json) under <etcd-prefix>/config with `weftctl network set`", True),
    ("networks", "flannel 0.9's multi-network mode is not in weft. Run one flanneld per "
     "network, each with its own -etcd-prefix and -subnet-file", False),
    ("listen", "flannel 0.9's server mode is not in weft: every flanneld talks to the "
     "store itself. Drop -listen and give the clients -etcd-endpoints", False),
    ("remote", "flannel 0.9's client mode is not in weft: every flanneld talks to the "
     "store itself. Replace -remote with -etcd-endpoints", False),
)
_KUBE_ONLY = "used only with -kube-subnet-mgr, which weft does not have"
_KLOG = "klog's; weft's log detail is set by -v alone"
# flannel's flags (and the glog/klog ones its units pass) that mean nothing in weft:
# (name, why, boolean). Accepted so a flannel unit's ExecStart or a DaemonSet's args
# start weft unchanged; named in one warning at start-up.
FLANNEL_IGNORED: tuple[tuple[str, str, bool], ...] = (
    ("kube-api-url", _KUBE_ONLY, False),
    ("kubeconfig-file", _KUBE_ONLY, False),
    ("kube-annotation-prefix", _KUBE_ONLY, False),
    ("net-config-path", _KUBE_ONLY + "; the network config is <etcd-prefix>/config", False),
    ("set-node-network-unavailable", _KUBE_ONLY, True),
    ("use-multi-cluster-cidr", _KUBE_ONLY, True),
    ("vmodule", _KLOG, False),
    ("log_backtrace_at", _KLOG, False),
    ("logtostderr", "weft always logs to stderr", True),
    ("alsologtostderr", "weft always logs to stderr", True),
    ("log_dir", "weft always logs to stderr", False),
    ("stderrthreshold", "weft always logs to stderr", False),
    ("subnet-dir", "used only with flannel 0.9's -networks", False),
    ("remote-keyfile", "used only with flannel 0.9's -remote", False),
    ("remote-certfile", "used only with flannel 0.9's -remote", False),
    ("remote-cafile", "used only with flannel 0.9's -remote", False),
)


def program_version() -> str:
    """flannel prints its bare version (``v0.28.0``); flanneld prints weft's the same way."""
    from overlay.version import weft_version

    return weft_version()


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
               ) -> tuple[argparse.Namespace, DaemonConfig, StoreConfig]:
    """Flags and env into (raw namespace, DaemonConfig, StoreConfig); exits 2 on bad input."""
    env = os.environ if environ is None else environ
    parser = build_parser(env)
    args = parser.parse(argv)
    if args.version:
        return args, DaemonConfig(), StoreConfig()
    for name, why, _ in FLANNEL_REFUSED:
        if getattr(args, name.replace("-", "_")):
            parser.error(f"-{name}: {why}")
    if not 1 <= args.subnet_lease_renew_margin <= 1439:
        parser.error(f"-subnet-lease-renew-margin {args.subnet_lease_renew_margin}: must be "
                     "1..1439 minutes")
    if args.subnet_lease_ttl < 2:
        parser.error(f"-subnet-lease-ttl {args.subnet_lease_ttl}: must be at least 2 seconds")
    if args.iptables_resync < 1:
        parser.error(f"-iptables-resync {args.iptables_resync}: must be at least 1 second")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"-log-format {args.log_format!r}: must be one of {', '.join(LOG_FORMATS)}")
    if not 0 <= args.healthz_port <= 65535:
        parser.error(f"-healthz-port {args.healthz_port}: not a port")
    if args.public_ip:
        try:
            ipaddress.IPv4Address(args.public_ip)
        except ValueError:
            parser.error(f"-public-ip {args.public_ip!r}: not an IPv4 address")
    if args.iface_can_reach:
        try:
            ipaddress.ip_address(args.iface_can_reach)
        except ValueError:
            parser.error(f"-iface-can-reach {args.iface_can_reach!r}: not an IP address")
    if args.public_ipv6:
        try:
            ipaddress.IPv6Address(args.public_ipv6)
        except ValueError:
            parser.error(f"-public-ipv6 {args.public_ipv6!r}: not an IPv6 address")
    try:
        store_cfg = store_config(args, FLANNELD_ENV)
    except ValueError as exc:
        parser.error(str(exc))
    cfg = DaemonConfig(
        prefix=args.etcd_prefix,
        subnet_file=Path(args.subnet_file),
        ip_masq=bool(args.ip_masq),
        masq_interval=float(args.iptables_resync),
        masq_fully_random=not args.ip_masq_fully_random_disable,
        blackhole_route=bool(args.ip_blackhole_route),
        ingress_members_only=bool(args.vxlan_ingress_members_only),
        forward_rules=bool(args.iptables_forward_rules),
        lease_ttl=args.subnet_lease_ttl,
        renew_margin=args.subnet_lease_renew_margin,
        healthz_ip=args.healthz_ip,
        healthz_port=args.healthz_port,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
    )
    return args, cfg, store_cfg


def make_backend(config: NetworkConfig, ext: ExternalInterface) -> Backend:
    """The data path named by ``Backend.Type`` (overlay.backend.registry)."""
    from overlay.backend.registry import make_backend as from_registry  # pyroute2: load late

    return from_registry(config.backend_type, config.backend, ext, network=config.network,
                         network6=config.ipv6_network)


def ingress_factory(config: NetworkConfig) -> IngressGuard | None:
    """The members-only guard on the tunnel backend's UDP port (overlay.ingress);
    None for host-gw, which has no tunnel."""
    from overlay.backend.registry import parse_backend
    from overlay.ingress import MembersOnly

    settings = parse_backend(config.backend_type, config.backend)
    port = getattr(settings, "port", None)
    if not isinstance(port, int) or not port:
        return None
    return MembersOnly(config.backend_type or "vxlan", port)


def masq_factory(cfg: DaemonConfig) -> Callable[[NetworkConfig, Lease], Masquerade]:
    """flannel's -ip-masq rules for the own subnet(s) in the network, one nft table per
    family the network enables (overlay.masq)."""
    from overlay.masq import for_lease

    def make(config: NetworkConfig, own: Lease) -> Masquerade:
        return for_lease(config, own, fully_random=cfg.masq_fully_random)

    return make


def forward_rules(config: NetworkConfig) -> list[Masquerade]:
    """-iptables-forward-rules' chains: iptables for Network, ip6tables for IPv6Network."""
    from overlay.fwdrules import ForwardRules

    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    if config.enable_ipv4:
        nets.append(config.network)
    if config.enable_ipv6 and config.ipv6_network is not None:
        nets.append(config.ipv6_network)
    return [ForwardRules(n) for n in nets]


@contextlib.asynccontextmanager
async def blackhole_sync() -> AsyncIterator[BlackholeSync]:
    """-ip-blackhole-route's kernel edge: its own netlink thread, closed on exit."""
    from overlay.backend.netlink import KernelThread, NetlinkKernel, sync_blackholes

    kernel = KernelThread(NetlinkKernel)

    async def sync(want: frozenset[ipaddress.IPv4Network], network: ipaddress.IPv4Network
                   ) -> list[str]:
        return await kernel.run(lambda k: sync_blackholes(k, want, network))

    try:
        yield sync
    finally:
        kernel.close()


async def amain(cfg: DaemonConfig, store_cfg: StoreConfig, ext: ExternalInterface) -> int:
    from overlay.daemon import FatalError, Flanneld
    from overlay.health import HealthState, start_server
    from overlay.store.api import StoreAuthError, StoreUnavailableError
    from overlay.store.client import connect

    health = HealthState()
    server = None
    if cfg.healthz_port:
        server = await start_server(health, cfg.healthz_ip, cfg.healthz_port)
    delay, logged = 0.1, False
    while True:
        try:
            store = await connect(store_cfg)
            break
        except ValueError as exc:  # unreadable TLS files, malformed endpoints
            raise FatalError(f"cannot use the store settings: {exc}") from exc
        except StoreAuthError as exc:  # wrong credentials, store without auth
            raise FatalError(f"cannot log in to the store: {exc}") from exc
        except StoreUnavailableError as exc:
            if not logged:
                log.error("store unreachable (%s); retrying", exc)
                logged = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    log.info("connected to the store at %s", ", ".join(store_cfg.endpoints))
    try:
        async with blackhole_sync() as blackhole:
            daemon = Flanneld(cfg, store, ext, make_backend, masq_factory(cfg),
                              health=health, blackhole=blackhole, ingress=ingress_factory,
                              forward=forward_rules)
            await daemon.run()
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(Exception):
            await store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg, store_cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        sys.stdout.write(f"{program_version()}\n")
        return 0
    setup_logging(logging.DEBUG if args.v > 0 else logging.INFO, args.log_format)
    if (ignored := ignored_warning(args)) is not None:
        log.warning("%s", ignored)
    from overlay.iface import InterfaceError, discover

    try:
        ext = discover(args.iface or (), args.iface_regex or (),
                       ipaddress.IPv4Address(args.public_ip) if args.public_ip else None,
                       ipaddress.ip_address(args.iface_can_reach) if args.iface_can_reach
                       else None,
                       ipaddress.IPv6Address(args.public_ipv6) if args.public_ipv6 else None)
    except InterfaceError as exc:
        log.error("cannot choose the external interface: %s", exc)
        return 1
    log.info("using interface %s (%s), public IP %s, MTU %d", ext.name, ext.ip, ext.public_ip,
             ext.mtu)
    if ext.public_ipv6 is not None:
        log.info("public IPv6 %s (advertised in networks with EnableIPv6)", ext.public_ipv6)
    return run_until_signalled(amain(cfg, store_cfg, ext))


def run_until_signalled(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro``; SIGTERM/SIGINT cancel it and exit 0 (state is left in place)."""

    async def runner() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            result: int = await task
            return result
        except asyncio.CancelledError:
            log.info("stopping (signal); lease and data path stay in place")
            return 0

    try:
        return asyncio.run(runner())
    except Exception as exc:  # boundary: report, exit non-zero
        from overlay.daemon import FatalError

        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        for err in errors:
            if isinstance(err, FatalError):
                log.error("%s", err)  # a clear refusal, not a bug: no traceback
            else:
                log.error("flanneld failed: %s", err, exc_info=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())

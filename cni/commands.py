"""Five of the six CNI commands: ADD, DEL, CHECK, GC, STATUS (VERSION is answered by the skel).

Theory of operation (ADD)
-------------------------
1. Read subnet.env (the host's lease) and reserve one IP from each range set
   under the IPAM flock: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, whichever the
   file has (dual-stack, IPv4-only, IPv6-only), or ``ipam.ranges`` in
   host-local's layout; the lock is held only for the reservation, so parallel
   ADDs overlap their kernel work.
2. Make sure bridge ``cni0`` exists, is up and carries each family's gateway
   (``<subnet>.1/len``, ``<subnet6>::1/len``). If it carries another subnet's
   gateway (the host got a new lease), fix it when no port is attached, else
   fail saying which containers to remove.
3. One netlink request creates the veth pair, host end on the bridge, peer
   already in the container netns as ``CNI_IFNAME``; then hairpin, (IPv6: DAD
   off, as the reference bridge) addresses and routes (default and the cluster
   network of each family via its gateway) in the container.
4. Optional ipMasq (nft, host namespace) and forwarding of each family.

Every step pushes its undo onto a stack; a failure unwinds it, so a failed ADD
leaves nothing behind. The host end's name is derived from (network,
containerID, ifname) (``veth`` + 8 hex of a CRC32), so DEL and GC find it
even after the container netns is gone or the plugin was killed mid-ADD; IPAM
reserves before any link exists, so GC sees every crashed ADD through its file.
"""

from __future__ import annotations

import os
import zlib

from cni import masq
from cni.errors import (
    AttachmentExistsError,
    BridgeConflictError,
    CheckFailedError,
    CniError,
    ConfigError,
    EnvError,
    KernelError,
    NotAvailableError,
    TryAgainError,
    VersionError,
)
from cni.ip4 import IPv4, Net4
from cni.ip6 import IPv6, Net6, family_of, parse_iface, parse_ip, parse_net
from cni.ipam import DiskStore, Range, parse_ranges
from cni.netconf import (
    Env,
    NetConf,
    SubnetEnv,
    read_subnet_env,
    requested_ips,
    requested_mac,
    valid_attachments,
    version_key,
)
from cni.netlink import (
    AF_INET,
    AF_INET6,
    EEXIST,
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    IFF_UP,
    Link,
    Netlink,
    format_mac,
    random_mac,
    write_sysctls,
)
from cni.result import shape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Container, Iterable, Sequence
    from typing import Any

    from cni.log import Log

    Pause = Callable[[str], None]
    Addr = IPv4 | IPv6
    Net = Net4 | Net6


def host_veth_name(network: str, cid: str, ifname: str) -> str:
    """The host end's name: stable for (network, containerID, ifname)."""
    key = "\0".join((network, cid, ifname)).encode()
    return f"veth{zlib.crc32(key):08x}"


def host_veth_alias(network: str, cid: str, ifname: str) -> str:
    """Marks a host veth as weft's for ``network``, so GC never sweeps others' links."""
    return f"weft:{network}:{cid}:{ifname}"


def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise EnvError(f"CNI_NETNS {path} does not exist") from None
    except OSError as e:
        raise EnvError(f"CNI_NETNS {path} cannot be opened: {e.strerror}") from None


def container_netlink(nsfd: int, path: str) -> Netlink:
    """A netlink socket inside the container netns; EnvError if ``path`` is not one."""
    try:
        return Netlink.open_in(nsfd)
    except KernelError as e:
        raise EnvError(f"CNI_NETNS {path} is not a network namespace ({e.msg})") from None


def _from_packed(data: bytes) -> Addr:
    return IPv6.from_packed(data) if len(data) == 16 else IPv4.from_packed(data)


def ensure_bridge(nl: Netlink, name: str, gateways: Sequence[tuple[Addr, Net]], mtu: int,
                  log: Log, previous6: Sequence[Net6] = (),
                  keep: Sequence[tuple[Addr, Net]] = ()) -> Link:
    """Bridge ``name`` up with the gateway address of each of ``gateways`` (gw, subnet);
    ``keep`` are the other gateways the configuration has (never stale).

    IPv6 also gets accept_ra=0 (the reference bridge: we own its routes), IPv6
    enabled on it, and DAD off on it (accept_dad=0) with its gateway added without
    DAD: the kernel sends no neighbour solicitation for a forwarded packet (from
    another host) while the bridge's link-local address is tentative, which it is
    for a second or more after the first port comes up; containers must be
    reachable from other hosts the moment ADD returns.
    """
    link = nl.get_link(name)
    if link is None:
        nl.create_bridge(name, mtu, random_mac())
        link = nl.get_link(name)
        if link is None:
            raise KernelError(f"bridge {name} vanished right after creation", 19)
        log.info("created bridge %s", name)
    elif link.kind != "bridge":
        raise ConfigError(f"{name} exists but is a {link.kind or 'non-bridge'} device, "
                          "not a bridge", "set 'bridge' in the network config to another name")
    if not link.flags & IFF_UP:
        nl.set_up(link.index)
    if any(isinstance(gw, IPv6) for gw, _ in gateways):
        failed = dict(write_sysctls([(f"net/ipv6/conf/{name}/disable_ipv6", "0"),
                                     (f"net/ipv6/conf/{name}/accept_ra", "0"),
                                     (f"net/ipv6/conf/{name}/accept_dad", "0")]))
        if f"net/ipv6/conf/{name}/disable_ipv6" in failed:
            raise KernelError(f"cannot enable IPv6 on bridge {name}: "
                              f"{failed[f'net/ipv6/conf/{name}/disable_ipv6']}", 1)
    kept = {(g.packed, n.prefixlen) for g, n in (*gateways, *keep)}
    for gw, subnet in gateways:
        _ensure_gateway(nl, link, gw, subnet, log, previous6, kept)
    return link


def _ensure_gateway(nl: Netlink, link: Link, gw: Addr, subnet: Net, log: Log,
                    previous6: Sequence[Net6], kept: Container[tuple[bytes, int]]) -> None:
    """``gw/len`` on the bridge. Another address in its place is stale (the host got a
    new lease): replaced when no port is attached, else an error naming them. For
    IPv4 that is any other address; for IPv6 (which keeps its link-local address and
    may carry several subnets) one overlapping ``subnet`` or in the cluster network
    ``previous6``; never a gateway of the configuration (``kept``)."""
    v6 = isinstance(gw, IPv6)
    plen = subnet.prefixlen
    addrs = [(a, p) for a, p, _ in nl.addresses(link.index, AF_INET6 if v6 else AF_INET)]
    if (gw.packed, plen) in addrs:
        return

    def stale(a: bytes, p: int) -> bool:
        if (a, p) in kept:
            return False
        if not isinstance(subnet, Net6):
            return True
        ip = IPv6.from_packed(a)
        return not ip.is_link_local and (Net6(ip, p, strict=False).overlaps(subnet)
                                         or any(ip in c for c in previous6))

    old_addrs = [(a, p) for a, p in addrs if stale(a, p)]
    if old_addrs:
        old = ", ".join(f"{_from_packed(a)}/{p}" for a, p in old_addrs)
        ports = [lk.name for lk in nl.links() if lk.master == link.index]
        if ports:
            raise BridgeConflictError(
                f"{link.name} already has IP address {old} different from this host's gateway "
                f"{gw}/{plen} (subnet.env changed: new lease {subnet})",
                f"{len(ports)} container interface(s) still attached to {link.name} "
                f"({', '.join(sorted(ports)[:5])}{', ...' if len(ports) > 5 else ''}): "
                "remove those containers (CNI DEL) so weft can re-address the bridge, or "
                f"delete the bridge (`ip link delete {link.name}`) and recreate the containers")
        for a, p in old_addrs:
            nl.delete_address(link.index, a, p)
        log.info("bridge %s: replaced stale address %s with %s/%s", link.name, old, gw, plen)
    nl.add_address(link.index, gw.packed, plen,
                   None if v6 else subnet.broadcast_address.packed, nodad=v6)


def range_sets(conf: NetConf, senv: SubnetEnv) -> list[list[Range]]:
    """The range sets to allocate from: ``ipam.ranges``/``ipam.subnet`` when the config
    has them (host-local's layout), else the lease: FLANNEL_SUBNET then
    FLANNEL_IPV6_SUBNET, each with the gateway flanneld names (as flannel's CNI)."""
    ipam = conf.raw.get("ipam")
    sets = parse_ranges(ipam) if isinstance(ipam, dict) else None
    if sets is not None:
        return sets
    out: list[list[Range]] = []
    if senv.subnet is not None:
        out.append([Range(senv.subnet, senv.gateway)])
    if senv.subnet6 is not None:
        out.append([Range(senv.subnet6, senv.gateway6)])
    return out


def _extra_routes(conf: NetConf) -> list[object]:
    """``routes`` of the config and ``ipam.routes`` (host-local's), as given."""
    out: list[object] = []
    ipam = conf.raw.get("ipam")
    for where, raw in (("routes", conf.raw.get("routes", [])),
                       ("ipam.routes", ipam.get("routes", []) if isinstance(ipam, dict)
                        else [])):
        if not isinstance(raw, list):
            raise ConfigError(f"config field {where!r} must be a list of {{dst, gw}}")
        out.extend(raw)
    return out


def _routes(conf: NetConf, senv: SubnetEnv, got: Sequence[tuple[Addr, Range]],
            ) -> list[tuple[Net, Addr]]:
    """Per family with an address: the default route (isDefaultGateway) and the cluster
    network via its gateway, then the configured routes (gw defaults to the gateway of
    the destination's family)."""
    routes: list[tuple[Net, Addr]] = []
    gws: dict[int, Addr] = {}
    for _, rng in got:
        if rng.version in gws:
            continue
        gw = gws[rng.version] = rng.gateway
        if conf.is_default_gateway:
            routes.append((Net6(IPv6(0), 0) if rng.version == 6 else Net4(IPv4(0), 0), gw))
        cluster = senv.cluster(rng.version)
        if cluster is not None and cluster != rng.subnet:
            routes.append((cluster, gw))
    for r in _extra_routes(conf):
        try:
            dst = parse_net(r["dst"])  # type: ignore[index]
            gw_text = r.get("gw")  # type: ignore[attr-defined]
            gw_ = parse_ip(gw_text) if gw_text else gws.get(family_of(dst))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"config 'routes' entry {r!r} is not {{dst, gw}}") from None
        if gw_ is None:
            raise ConfigError(f"config 'routes' entry {r!r}: this network has no "
                              f"IPv{family_of(dst)} address to route it via")
        if family_of(gw_) != family_of(dst):
            raise ConfigError(f"config 'routes' entry {r!r} mixes IPv4 and IPv6")
        if (dst, gw_) not in routes:
            routes.append((dst, gw_))
    return routes


def _masq_on(conf: NetConf, senv: SubnetEnv | None) -> bool | None:
    """ipMasq: explicit, else NOT FLANNEL_IPMASQ (flannel's rule); None when unknown."""
    if conf.ip_masq is not None:
        return conf.ip_masq
    return None if senv is None else not senv.ipmasq


def _container_ipv6(env: Env, nsfd: int) -> None:
    """Before the container link comes up: IPv6 on (lo too, as the reference's
    ConfigureIface) and DAD off on it (the bridge plugin's default: with hairpin on,
    the echo of its own probe would fail DAD). The addresses are added without DAD as
    well, so they are usable (not tentative) the moment ADD returns."""
    conf_dir = f"net/ipv6/conf/{env.ifname}"
    failed = write_sysctls([("net/ipv6/conf/lo/disable_ipv6", "0"),
                            (f"{conf_dir}/disable_ipv6", "0"),
                            (f"{conf_dir}/accept_dad", "0")], nsfd)
    if failed:
        raise KernelError(f"cannot enable IPv6 for {env.ifname} in {env.netns}: "
                          + "; ".join(f"{k}: {why}" for k, why in failed), 1,
                          "is IPv6 disabled in the kernel (ipv6.disable=1)?")


def add(env: Env, conf: NetConf, log: Log, pause: Pause) -> dict[str, Any]:
    senv = read_subnet_env(conf.subnet_file)
    sets = range_sets(conf, senv)
    if not sets:
        raise ConfigError(f"no address range: {conf.subnet_file} has neither FLANNEL_SUBNET "
                          "nor FLANNEL_IPV6_SUBNET and the config has no ipam.ranges")
    requested = requested_ips(conf, env)
    container_mac = requested_mac(conf, env) or random_mac()
    mtu = conf.mtu or senv.mtu
    if mtu < 1280 and any(rset[0].version == 6 for rset in sets):
        raise ConfigError(f"mtu {mtu} is below IPv6's minimum of 1280 "
                          f"({'config field mtu' if conf.mtu else 'FLANNEL_MTU'})",
                          "the kernel turns IPv6 off on links with a smaller MTU")
    host_name = host_veth_name(conf.name, env.container_id, env.ifname)
    nsfd = open_netns(env.netns)
    try:
        # opened first: proves CNI_NETNS is a network namespace before anything changes
        cnl = container_netlink(nsfd, env.netns)
    except BaseException:
        os.close(nsfd)
        raise
    undo: list[Callable[[], object]] = []
    try:
        store = DiskStore(conf.data_dir, conf.name).ensure_dir()
        store.check_duplicate(sets, env.container_id, env.ifname)
        with store:
            got = store.allocate_sets(sets, env.container_id, env.ifname, requested)
        ips = [ip for ip, _ in got]
        undo.append(lambda: _release(conf, ips))
        log.debug("reserved %s for %s/%s", ", ".join(map(str, ips)), env.container_id,
                  env.ifname)
        v6 = any(rng.version == 6 for _, rng in got)
        pause("allocated")
        nl = Netlink.open()
        try:
            # a previous lease's IPv6 gateway lies in the cluster network; configured
            # ranges may put several gateways there, all kept
            previous6 = [senv.network6] if senv.network6 is not None else []
            bridge = ensure_bridge(nl, conf.bridge, [(r.gateway, r.subnet) for _, r in got],
                                   mtu, log, previous6,
                                   [(r.gateway, r.subnet) for rset in sets for r in rset])
            host_mac = random_mac()
            try:
                nl.create_veth(host_name, host_mac, env.ifname, container_mac, nsfd, mtu,
                               bridge.index)
            except KernelError as e:
                if e.errno != EEXIST:
                    raise
                if nl.get_link(host_name) is not None:
                    raise AttachmentExistsError(
                        f"host interface {host_name} for container {env.container_id} "
                        f"interface {env.ifname} already exists",
                        "DEL the attachment (or run GC) before adding it again") from None
                raise AttachmentExistsError(
                    f"interface {env.ifname} already exists in {env.netns}") from None
            undo.append(lambda: _delete_host_veth(host_name))
            pause("veth")
            hv = nl.get_link(host_name)
            if hv is None:
                raise KernelError(f"{host_name} vanished right after creation", 19)
            nl.set_alias(hv.index, host_veth_alias(conf.name, env.container_id, env.ifname))
            if conf.hairpin:
                nl.set_hairpin(hv.index, True)
        finally:
            nl.close()
        c = cnl.get_link(env.ifname)
        if c is None:
            raise KernelError(f"{env.ifname} not found in {env.netns} after creation", 19)
        if v6:
            _container_ipv6(env, nsfd)
        cnl.set_up(c.index)
        for ip, rng in got:
            v6_ip = rng.version == 6
            cnl.add_address(c.index, ip.packed, rng.subnet.prefixlen,
                            None if v6_ip else rng.subnet.broadcast_address.packed,
                            nodad=v6_ip)
        routes = _routes(conf, senv, got)
        for dst, gw in routes:
            cnl.add_route(dst.network_address.packed, dst.prefixlen, gw.packed, c.index)
        pause("addressed")
        if _masq_on(conf, senv):
            clusters = [senv.cluster(r.version) or r.subnet for _, r in got]
            with masq.MasqLock(conf.data_dir, conf.name, exclusive=False):
                masq.apply(masq.render_setup(conf.name, clusters,
                                             [(ip, env.container_id) for ip in ips]))
            undo.append(lambda: _release_and_unmasq(conf, ips))
        for version in sorted({r.version for _, r in got}):
            masq.enable_forwarding(version)
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception as e:  # undo is best effort; the original error wins
                log.warning("undo after failed ADD: %s", e)
        raise
    finally:
        cnl.close()
        os.close(nsfd)
    log.info("ADD %s/%s: %s on %s via %s", env.container_id, env.ifname,
             ", ".join(map(str, ips)), host_name, conf.bridge)
    interfaces: list[dict[str, Any]] = [
        {"name": conf.bridge, "mac": format_mac(bridge.mac)},
        {"name": host_name, "mac": format_mac(host_mac)},
        {"name": env.ifname, "mac": format_mac(container_mac), "sandbox": env.netns,
         "mtu": mtu},
    ]
    ip_list = [{"address": f"{ip}/{rng.subnet.prefixlen}", "gateway": str(rng.gateway),
                "interface": 2} for ip, rng in got]
    route_list = [{"dst": str(d), "gw": str(g)} for d, g in routes]
    dns = conf.raw.get("dns") if isinstance(conf.raw.get("dns"), dict) else {}
    return shape(conf.cni_version, interfaces, ip_list, route_list, dns)


def _release(conf: NetConf, ips: Sequence[Addr]) -> None:
    with DiskStore(conf.data_dir, conf.name) as store:
        for ip in ips:
            store.release(ip)


def _release_and_unmasq(conf: NetConf, ips: Sequence[Addr]) -> None:
    """Release first, so that removing the elements can see they were the last ones."""
    _release(conf, ips)
    _masq_remove(conf, ips)


def _delete_host_veth(name: str) -> None:
    with Netlink.open() as nl:
        nl.delete_link(name)


def _masq_remove(conf: NetConf, ips: Sequence[Addr]) -> None:
    """Drop ``ips`` from the masquerade sets; the tables go with the last allocation.

    A shared lock suffices while other allocations remain; the tables are removed
    only under the exclusive lock, after checking again that none appeared. One
    nft transaction per family, so an element already gone from one family's set
    does not keep the other's from being removed.
    """
    store = DiskStore(conf.data_dir, conf.name)
    last = not store.taken()
    with masq.MasqLock(conf.data_dir, conf.name, exclusive=last):
        if last and not store.taken():
            masq.apply(masq.render_remove(conf.name, None, True), tolerate_missing=True)
            return
        for version in (4, 6):
            script = "".join(masq.render_remove(conf.name, ip, False) for ip in ips
                             if family_of(ip) == version)
            masq.apply(script, tolerate_missing=True)


def _try_subnet_env(conf: NetConf) -> SubnetEnv | None:
    try:
        return read_subnet_env(conf.subnet_file)
    except CniError:
        return None


def delete(env: Env, conf: NetConf, log: Log) -> None:
    """Best effort, idempotent: a missing netns, interface or allocation is success."""
    host_name = host_veth_name(conf.name, env.container_id, env.ifname)
    with Netlink.open() as nl:
        gone = nl.delete_link(host_name)  # takes the container end with it
    if not gone and env.netns and os.path.exists(env.netns):
        try:
            nsfd = os.open(env.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            nsfd = -1
        if nsfd >= 0:
            try:
                with Netlink.open_in(nsfd) as cnl:
                    cnl.delete_link(env.ifname)
            except KernelError as e:
                log.warning("DEL: cannot remove %s in %s: %s", env.ifname, env.netns, e.msg)
            finally:
                os.close(nsfd)
    masq_on = _masq_on(conf, _try_subnet_env(conf))
    store = DiskStore(conf.data_dir, conf.name)
    hints = _prev_ips(conf.prev_result)  # one file read instead of a scan of them all
    ips = store.find_hinted(env.container_id, env.ifname, hints)  # unlocked: see check_duplicate
    if ips:
        with store:
            for ip in ips:
                store.release(ip)
        if masq_on is not False:
            _masq_remove(conf, ips)
    log.info("DEL %s/%s: released %s", env.container_id, env.ifname,
             ", ".join(map(str, ips)) or "nothing")


def _prev_list(prev: dict[str, Any], field: str) -> list[Any]:
    """prevResult's ``field`` list; empty when missing or not a list (DEL is best effort)."""
    items = prev.get(field)
    return items if isinstance(items, list) else []


def _prev_address(ipd: object) -> Addr | None:
    """The address of one prevResult ``ips`` entry; None when the entry is malformed."""
    if not isinstance(ipd, dict) or not isinstance(ipd.get("address"), str):
        return None
    try:
        return parse_iface(ipd["address"])[0]
    except ValueError:
        return None


def _prev_ips(prev: dict[str, Any] | None) -> list[Addr]:
    addrs = (_prev_address(ipd) for ipd in _prev_list(prev or {}, "ips"))
    return [ip for ip in addrs if ip is not None]


def _prev_routes(prev: dict[str, Any]) -> list[Net]:
    """prevResult's route destinations; malformed entries are skipped."""
    out: list[Net] = []
    for r in _prev_list(prev, "routes"):
        if isinstance(r, dict) and isinstance(r.get("dst"), str):
            try:
                out.append(parse_net(r["dst"], strict=False))
            except ValueError:
                continue
    return out


def _prev_container_ips(prev: dict[str, Any], ifname: str) -> tuple[list[Addr], str | None]:
    """prevResult's addresses of ``ifname`` (entries without an interface index count as
    its, as runtimes read them) and its MAC."""
    mac = None
    index = None
    for i, itf in enumerate(_prev_list(prev, "interfaces")):
        if isinstance(itf, dict) and itf.get("name") == ifname and itf.get("sandbox"):
            index, mac = i, itf["mac"] if isinstance(itf.get("mac"), str) else None
    out = []
    for ipd in _prev_list(prev, "ips"):
        if not isinstance(ipd, dict):
            continue
        if index is None or ipd.get("interface") in (None, index):
            ip = _prev_address(ipd)
            if ip is not None:
                out.append(ip)
    return out, mac


def check(env: Env, conf: NetConf, log: Log) -> None:
    if version_key(conf.cni_version) < (0, 4, 0):
        raise VersionError(f"CHECK is not defined for cniVersion {conf.cni_version}",
                           "CHECK needs cniVersion 0.4.0 or later")
    if conf.prev_result is None:
        raise ConfigError("CHECK needs prevResult in the network config")
    wants, want_mac = _prev_container_ips(conf.prev_result, env.ifname)
    held = DiskStore(conf.data_dir, conf.name).find(env.container_id, env.ifname)
    if not held:
        raise CheckFailedError(f"no IP is allocated to {env.container_id}/{env.ifname}")
    for want in wants:
        if want not in held:
            raise CheckFailedError(f"prevResult IP {want} is not the allocated "
                                   f"{', '.join(map(str, held))}")
    host_name = host_veth_name(conf.name, env.container_id, env.ifname)
    with Netlink.open() as nl:
        bridge = nl.get_link(conf.bridge)
        hv = nl.get_link(host_name)
    if bridge is None:
        raise CheckFailedError(f"bridge {conf.bridge} does not exist")
    if hv is None or hv.master != bridge.index:
        raise CheckFailedError(f"host interface {host_name} is missing or not on "
                               f"{conf.bridge}")
    want_routes = _prev_routes(conf.prev_result)
    versions = sorted({family_of(ip) for ip in held} | {family_of(d) for d in want_routes})
    family = {4: AF_INET, 6: AF_INET6}
    nsfd = open_netns(env.netns)
    try:
        with container_netlink(nsfd, env.netns) as cnl:
            c = cnl.get_link(env.ifname)
            if c is None:
                raise CheckFailedError(f"interface {env.ifname} is missing in {env.netns}")
            addrs = {v: cnl.addresses(c.index, family[v]) for v in versions}
            routes = {v: cnl.routes(family[v]) for v in versions}
    finally:
        os.close(nsfd)
    if want_mac and format_mac(c.mac) != want_mac.lower():
        raise CheckFailedError(f"{env.ifname} has MAC {format_mac(c.mac)}, "
                               f"prevResult says {want_mac}")
    for ip in held:
        flags = {_from_packed(a): f for a, _, f in addrs[family_of(ip)]}
        if ip not in flags:
            raise CheckFailedError(f"{env.ifname} in {env.netns} lacks address {ip}")
        if flags[ip] & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            state = ("failed duplicate address detection" if flags[ip] & IFA_F_DADFAILED
                     else "is still tentative (duplicate address detection)")
            raise CheckFailedError(f"{env.ifname} in {env.netns}: address {ip} {state}")
    for v in versions:
        if conf.is_default_gateway and not any(dl == 0 and oif == c.index
                                               for _, dl, _, oif in routes[v]):
            raise CheckFailedError(f"{env.ifname} in {env.netns} has no IPv{v} default route")
    for dst in want_routes:  # as the reference's ValidateExpectedRoute: each dst is there
        have = routes[family_of(dst)]
        if not any(d == dst.network_address.packed and dl == dst.prefixlen
                   for d, dl, _, _ in have):
            raise CheckFailedError(f"{env.netns} lacks the prevResult route to {dst}")
    log.debug("CHECK %s/%s ok", env.container_id, env.ifname)


def _masq_clusters(conf: NetConf, senv: SubnetEnv, ips: Iterable[Addr]) -> list[Net]:
    """The cluster network of each family among ``ips``: subnet.env's, else the subnet
    of the configured range holding one of them."""
    out: list[Net] = []
    ipam = conf.raw.get("ipam")
    try:
        sets = (parse_ranges(ipam) if isinstance(ipam, dict) else None) or []
    except ConfigError:
        sets = []
    held = list(ips)
    for version in sorted({family_of(ip) for ip in held}):
        cluster = senv.cluster(version)
        if cluster is None:
            cluster = next((r.subnet for rset in sets for r in rset
                            if r.version == version and any(r.contains(ip) for ip in held)),
                           None)
        if cluster is not None:
            out.append(cluster)
    return out


def gc(conf: NetConf, log: Log) -> None:
    """Free every allocation (of either family) and host interface not in
    ``cni.dev/valid-attachments`` (all of this network's when the key is absent)."""
    valid = valid_attachments(conf.raw)
    valid_cids = {cid for cid, _ in valid}
    keep_veths = {host_veth_name(conf.name, cid, ifn) for cid, ifn in valid}
    errors: list[str] = []
    senv = _try_subnet_env(conf)
    with DiskStore(conf.data_dir, conf.name) as store, Netlink.open() as nl, \
            masq.MasqLock(conf.data_dir, conf.name, exclusive=True):
        for ip, (cid, ifname) in store.allocations().items():
            if (cid, ifname) in valid or (not ifname and cid in valid_cids):
                continue
            try:
                if ifname:
                    nl.delete_link(host_veth_name(conf.name, cid, ifname))
                store.release(ip)
                log.info("GC: freed %s (%s/%s)", ip, cid, ifname)
            except (CniError, OSError) as e:
                errors.append(f"{ip}: {e}")
        # host veths of this network with no allocation left (marked by their alias)
        ours = f"weft:{conf.name}:"
        for link in nl.links():
            if link.alias.startswith(ours) and link.name not in keep_veths:
                try:
                    nl.delete_link(link.name)
                    log.info("GC: removed stray interface %s (%s)", link.name, link.alias)
                except CniError as e:
                    errors.append(f"{link.name}: {e.msg}")
        survivors = store.allocations()
        masq_on = _masq_on(conf, senv)
        try:
            if masq_on is not False and not survivors:
                masq.apply(masq.render_remove(conf.name, None, True), tolerate_missing=True)
            elif masq_on and senv is not None:
                clusters = _masq_clusters(conf, senv, survivors)
                kept = {family_of(c) for c in clusters}
                masq.apply(masq.render_setup(conf.name, clusters,
                                             [(ip, o[0]) for ip, o in survivors.items()
                                              if family_of(ip) in kept],
                                             flush_members=True))
        except CniError as e:
            errors.append(e.msg)
    if errors:
        raise TryAgainError(f"GC could not remove {len(errors)} item(s)", "; ".join(errors))


def status(conf: NetConf) -> None:
    """Ready when subnet.env parses (it is checked to leave a host range) and dataDir is usable."""
    try:
        read_subnet_env(conf.subnet_file)
    except TryAgainError as e:
        raise NotAvailableError(f"weft is not ready: {e.msg}", e.details) from None
    except ConfigError as e:
        raise NotAvailableError(f"weft is not ready: {e.msg}") from None
    if not os.path.isdir(conf.data_dir) and not os.access(
            os.path.dirname(conf.data_dir.rstrip("/")) or "/", os.W_OK):
        raise NotAvailableError(f"IPAM dataDir {conf.data_dir} cannot be created")

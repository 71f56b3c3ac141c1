"""Five of the six CNI commands: ADD, DEL, CHECK, GC, STATUS (VERSION is answered by the skel).

Theory of operation (ADD)
-------------------------
1. Read subnet.env (the host's lease) and reserve an IP under the IPAM flock;
   the lock is held only for the reservation, so parallel ADDs overlap their
   kernel work.
2. Make sure bridge ``cni0`` exists, is up and carries ``<subnet>.1/len``. If
   it carries another subnet's gateway (the host got a new lease), fix it when
   no port is attached, else fail saying which containers to remove.
3. One netlink request creates the veth pair, host end on the bridge, peer
   already in the container netns as ``CNI_IFNAME``; then hairpin, address and
   routes (default and FLANNEL_NETWORK via the gateway) in the container.
4. Optional ipMasq (nft, host namespace) and ip_forward.

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
from cni.ip4 import IPv4, Net4, parse_interface
from cni.ipam import DiskStore, Range
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
from cni.netlink import EEXIST, IFF_UP, Link, Netlink, format_mac, random_mac
from cni.result import shape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from cni.log import Log

    Pause = Callable[[str], None]


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


def ensure_bridge(nl: Netlink, name: str, senv: SubnetEnv, mtu: int, log: Log) -> Link:
    """Bridge ``name`` up with the gateway address of the current lease."""
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
    gw = senv.gateway.packed
    plen = senv.subnet.prefixlen
    addrs = nl.addresses(link.index)
    if (gw, plen) in addrs:
        return link
    stale = [(a, p) for a, p in addrs if (a, p) != (gw, plen)]
    if stale:
        old = ", ".join(f"{IPv4.from_packed(a)}/{p}" for a, p in stale)
        ports = [lk.name for lk in nl.links() if lk.master == link.index]
        if ports:
            raise BridgeConflictError(
                f"{name} already has IP address {old} different from this host's gateway "
                f"{senv.gateway}/{plen} (subnet.env changed: new lease {senv.subnet})",
                f"{len(ports)} container interface(s) still attached to {name} "
                f"({', '.join(sorted(ports)[:5])}{', ...' if len(ports) > 5 else ''}): "
                "remove those containers (CNI DEL) so weft can re-address the bridge, or "
                f"delete the bridge (`ip link delete {name}`) and recreate the containers")
        for a, p in stale:
            nl.delete_address(link.index, a, p)
        log.info("bridge %s: replaced stale address %s with %s/%s", name, old, senv.gateway,
                 plen)
    nl.add_address(link.index, gw, plen, senv.subnet.broadcast_address.packed)
    return link


def _routes(conf: NetConf, senv: SubnetEnv) -> list[tuple[Net4, IPv4]]:
    routes: list[tuple[Net4, IPv4]] = []
    if conf.is_default_gateway:
        routes.append((Net4(IPv4(0), 0), senv.gateway))
    if senv.network != senv.subnet:
        routes.append((senv.network, senv.gateway))
    extra = conf.raw.get("routes", [])
    if not isinstance(extra, list):
        raise ConfigError("config field 'routes' must be a list of {dst, gw}")
    for r in extra:
        try:
            dst = Net4.parse(r["dst"])
            gw = IPv4.parse(r["gw"]) if r.get("gw") else senv.gateway
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(f"config 'routes' entry {r!r} is not {{dst, gw}}") from None
        if (dst, gw) not in routes:
            routes.append((dst, gw))
    return routes


def _masq_on(conf: NetConf, senv: SubnetEnv | None) -> bool | None:
    """ipMasq: explicit, else NOT FLANNEL_IPMASQ (flannel's rule); None when unknown."""
    if conf.ip_masq is not None:
        return conf.ip_masq
    return None if senv is None else not senv.ipmasq


def add(env: Env, conf: NetConf, log: Log, pause: Pause) -> dict[str, Any]:
    senv = read_subnet_env(conf.subnet_file)
    rng = Range(senv.subnet, senv.gateway)
    requested = requested_ips(conf, env)
    container_mac = requested_mac(conf, env) or random_mac()
    mtu = conf.mtu or senv.mtu
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
        store.check_duplicate(rng, env.container_id, env.ifname)
        with store:
            ip = store.allocate(rng, env.container_id, env.ifname, requested)
        undo.append(lambda: _release(conf, ip))
        log.debug("reserved %s for %s/%s", ip, env.container_id, env.ifname)
        pause("allocated")
        nl = Netlink.open()
        try:
            bridge = ensure_bridge(nl, conf.bridge, senv, mtu, log)
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
        cnl.set_up(c.index)
        cnl.add_address(c.index, ip.packed, rng.subnet.prefixlen,
                        rng.subnet.broadcast_address.packed)
        routes = _routes(conf, senv)
        for dst, gw in routes:
            cnl.add_route(dst.network_address.packed, dst.prefixlen, gw.packed, c.index)
        pause("addressed")
        if _masq_on(conf, senv):
            with masq.MasqLock(conf.data_dir, conf.name, exclusive=False):
                masq.apply(masq.render_setup(conf.name, senv.network,
                                             [(ip, env.container_id)]))
            undo.append(lambda: _release_and_unmasq(conf, ip))
        masq.enable_forwarding()
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
    log.info("ADD %s/%s: %s on %s via %s", env.container_id, env.ifname, ip, host_name,
             conf.bridge)
    interfaces: list[dict[str, Any]] = [
        {"name": conf.bridge, "mac": format_mac(bridge.mac)},
        {"name": host_name, "mac": format_mac(host_mac)},
        {"name": env.ifname, "mac": format_mac(container_mac), "sandbox": env.netns,
         "mtu": mtu},
    ]
    ips = [{"address": f"{ip}/{rng.subnet.prefixlen}", "gateway": str(senv.gateway),
            "interface": 2}]
    route_list = [{"dst": str(d), "gw": str(g)} for d, g in routes]
    dns = conf.raw.get("dns") if isinstance(conf.raw.get("dns"), dict) else {}
    return shape(conf.cni_version, interfaces, ips, route_list, dns)


def _release(conf: NetConf, ip: IPv4) -> None:
    with DiskStore(conf.data_dir, conf.name) as store:
        store.release(ip)


def _release_and_unmasq(conf: NetConf, ip: IPv4) -> None:
    """Release first, so that removing the element can see it was the last one."""
    _release(conf, ip)
    _masq_remove(conf, [ip])


def _delete_host_veth(name: str) -> None:
    with Netlink.open() as nl:
        nl.delete_link(name)


def _masq_remove(conf: NetConf, ips: list[IPv4]) -> None:
    """Drop ``ips`` from the masquerade set; the table goes with the last allocation.

    A shared lock suffices while other allocations remain; the table is removed
    only under the exclusive lock, after checking again that none appeared.
    """
    store = DiskStore(conf.data_dir, conf.name)
    last = not store.taken()
    with masq.MasqLock(conf.data_dir, conf.name, exclusive=last):
        if last and not store.taken():
            script = masq.render_remove(conf.name, None, True)
        else:
            script = "".join(masq.render_remove(conf.name, ip, False) for ip in ips)
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


def _prev_address(ipd: object) -> IPv4 | None:
    """The address of one prevResult ``ips`` entry; None when the entry is malformed."""
    if not isinstance(ipd, dict) or not isinstance(ipd.get("address"), str):
        return None
    try:
        return parse_interface(ipd["address"])[0]
    except ValueError:
        return None


def _prev_ips(prev: dict[str, Any] | None) -> list[IPv4]:
    addrs = (_prev_address(ipd) for ipd in _prev_list(prev or {}, "ips"))
    return [ip for ip in addrs if ip is not None]


def _prev_container_ip(prev: dict[str, Any], ifname: str,
                       ) -> tuple[IPv4 | None, str | None]:
    mac = None
    index = None
    for i, itf in enumerate(_prev_list(prev, "interfaces")):
        if isinstance(itf, dict) and itf.get("name") == ifname and itf.get("sandbox"):
            index, mac = i, itf["mac"] if isinstance(itf.get("mac"), str) else None
    for ipd in _prev_list(prev, "ips"):
        if not isinstance(ipd, dict):
            continue
        if index is None or ipd.get("interface") in (None, index):
            ip = _prev_address(ipd)
            if ip is not None:
                return ip, mac
    return None, mac


def check(env: Env, conf: NetConf, log: Log) -> None:
    if version_key(conf.cni_version) < (0, 4, 0):
        raise VersionError(f"CHECK is not defined for cniVersion {conf.cni_version}",
                           "CHECK needs cniVersion 0.4.0 or later")
    if conf.prev_result is None:
        raise ConfigError("CHECK needs prevResult in the network config")
    want, want_mac = _prev_container_ip(conf.prev_result, env.ifname)
    held = DiskStore(conf.data_dir, conf.name).find(env.container_id, env.ifname)
    if not held:
        raise CheckFailedError(f"no IP is allocated to {env.container_id}/{env.ifname}")
    if want is not None and want not in held:
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
    nsfd = open_netns(env.netns)
    try:
        with container_netlink(nsfd, env.netns) as cnl:
            c = cnl.get_link(env.ifname)
            if c is None:
                raise CheckFailedError(f"interface {env.ifname} is missing in {env.netns}")
            addrs = cnl.addresses(c.index)
            routes = cnl.routes()
    finally:
        os.close(nsfd)
    if want_mac and format_mac(c.mac) != want_mac.lower():
        raise CheckFailedError(f"{env.ifname} has MAC {format_mac(c.mac)}, "
                               f"prevResult says {want_mac}")
    ips = [IPv4.from_packed(a) for a, _ in addrs]
    for ip in held:
        if ip not in ips:
            raise CheckFailedError(f"{env.ifname} in {env.netns} lacks address {ip}")
    if conf.is_default_gateway and not any(dl == 0 and oif == c.index
                                           for _, dl, _, oif in routes):
        raise CheckFailedError(f"{env.ifname} in {env.netns} has no default route")
    log.debug("CHECK %s/%s ok", env.container_id, env.ifname)


def gc(conf: NetConf, log: Log) -> None:
    """Free every allocation and host interface not in ``cni.dev/valid-attachments``
    (all of this network's when the key is absent)."""
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
                masq.apply(masq.render_setup(conf.name, senv.network,
                                             [(ip, o[0]) for ip, o in survivors.items()],
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

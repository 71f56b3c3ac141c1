"""The namespace testbed: hosts and containers as network namespaces on one machine.

Theory of operation
-------------------
An *underlay* namespace holds a Linux bridge ``ul0`` standing in for the LAN
(198.18.0.0/24 by default; RFC 2544 benchmark space, never routed), itself
addressed ``198.18.0.1`` so a cluster store can listen there for every host. Each *host*
is a namespace joined to that bridge by a veth pair whose host end is ``eth0``
with address ``198.18.0.<10+i>/24``. Each *container* is a namespace that the
caller wires up (the CNI plugin does it in the real flow; ``add_container``
does it by hand for tests that predate the plugin).

With ``ipv6=True`` the underlay is dual-stack: ``ul0`` also holds
``fd00:198:18::1/64`` and host i ``fd00:198:18::<10+i>/64`` (ULA space, only
inside the namespaces), IPv6 forwarding is on in the hosts, and containers may
get an IPv6 address beside (or instead of) the IPv4 one. Every IPv6 address is
added ``nodad`` so it is usable at once (no duplicate address detection wait).

Nothing here touches the root namespace: every ``ip`` command runs with
``-n <ns>`` or inside ``ip netns exec``; veth pairs are created inside the
underlay namespace and their peers moved straight into the host namespace.

Names carry a unique tag (``w`` + 6 hex digits by default), so two runs never
collide, and ``Testbed.destroy`` (also run at interpreter exit and by the
context manager) kills every process started in the namespaces and deletes
them, even after a failure halfway through ``build``.

Used by the integration and e2e tests, the benchmarks and ``weftctl sandbox``.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from overlay.errors import WeftError

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY6 = ipaddress.IPv6Network("fd00:198:18::/64")  # with ipv6=True only
HOST_BASE = 10  # host i gets UNDERLAY[HOST_BASE + i] (and ip6_of(i) with ipv6)


def ip6_of(index: int) -> ipaddress.IPv6Address:
    """Host ``index``'s IPv6 underlay address: fd00:198:18::<10+index> (decimal digits,
    so host 1 is ``fd00:198:18::11`` like its ``198.18.0.11``)."""
    return ipaddress.IPv6Address(f"{UNDERLAY6.network_address}{HOST_BASE + index}")


class TestbedError(WeftError):
    """A namespace command failed; carries the command and its stderr."""

    def __init__(self, cmd: Sequence[str], stderr: str) -> None:
        super().__init__(f"{' '.join(cmd)}: {stderr.strip()}")
        self.cmd = tuple(cmd)
        self.stderr = stderr


def run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, raising ``TestbedError`` with its stderr on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise TestbedError(cmd, proc.stderr or proc.stdout)
    return proc


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def delete_netns(name: str) -> None:
    """Kill every process in namespace ``name`` and delete it (idempotent)."""
    if not netns_exists(name):
        return
    pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        if pids:
            time.sleep(0.02)
    run(["ip", "netns", "del", name], check=False)


@dataclass
class Host:
    name: str  # short name, e.g. "h1"
    netns: str  # namespace name
    ip: ipaddress.IPv4Address  # underlay address on eth0
    iface: str = "eth0"
    ip6: ipaddress.IPv6Address | None = None  # IPv6 underlay address (ipv6 testbeds)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Container:
    name: str
    netns: str
    host: Host
    ip: ipaddress.IPv4Interface | None = None
    ip6: ipaddress.IPv6Interface | None = None

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Testbed:
    __test__ = False  # not a pytest class

    """A set of host namespaces on an underlay bridge. Use as a context manager."""

    tag: str = field(default_factory=lambda: "w" + secrets.token_hex(3))
    mtu: int = 1500
    ipv6: bool = False  # dual-stack underlay (see the module docstring)
    hosts: dict[str, Host] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _destroyed: bool = False

    # -- construction -------------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        return f"{self.tag}-ul"

    @property
    def underlay_ip(self) -> ipaddress.IPv4Address:
        """Address of the underlay namespace itself (where a shared store listens)."""
        return UNDERLAY[1]

    @property
    def underlay_ip6(self) -> ipaddress.IPv6Address:
        """The underlay namespace's IPv6 address (ipv6 testbeds)."""
        return UNDERLAY6[1]

    def build(self, n_hosts: int) -> Testbed:
        """Create the underlay and ``n_hosts`` hosts (h1..hN); undo all on failure."""
        atexit.register(self.destroy)
        try:
            self._make_ns(self.underlay_ns)
            ul = self.underlay_ns
            run(["ip", "-n", ul, "link", "add", "ul0", "type", "bridge"])
            run(["ip", "-n", ul, "link", "set", "ul0", "mtu", str(self.mtu), "up"])
            run(["ip", "-n", ul, "addr", "add", f"{self.underlay_ip}/{UNDERLAY.prefixlen}",
                 "dev", "ul0"])
            if self.ipv6:
                run(["ip", "-n", ul, "addr", "add",
                     f"{self.underlay_ip6}/{UNDERLAY6.prefixlen}", "dev", "ul0", "nodad"])
            for i in range(1, n_hosts + 1):
                self.add_host(f"h{i}")
        except BaseException:
            self.destroy()
            raise
        return self

    def add_host(self, name: str) -> Host:
        """Add one host namespace on the underlay (address by its position)."""
        index = len(self.hosts) + 1
        ip = UNDERLAY[HOST_BASE + index]
        ns = f"{self.tag}-{name}"
        host = Host(name, ns, ip, ip6=ip6_of(index) if self.ipv6 else None)
        self._make_ns(ns)
        self.hosts[name] = host
        ul = self.underlay_ns
        port = f"p{index}"
        run(["ip", "-n", ul, "link", "add", port, "mtu", str(self.mtu), "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", ul, "link", "set", port, "master", "ul0", "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu), "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "eth0"])
        self.sysctl(ns, "net.ipv4.ip_forward", "1")
        if host.ip6 is not None:
            run(["ip", "-n", ns, "addr", "add", f"{host.ip6}/{UNDERLAY6.prefixlen}",
                 "dev", "eth0", "nodad"])
            self.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        return host

    def add_container(self, host: str, name: str,
                      address: ipaddress.IPv4Interface | None = None,
                      gateway: ipaddress.IPv4Address | None = None,
                      bridge: str = "cni0", mtu: int | None = None,
                      address6: ipaddress.IPv6Interface | None = None) -> Container:
        """A container namespace; with ``address`` (and/or ``address6``) it is wired to
        ``bridge`` by hand.

        Without an address only the namespace (with lo up) is made, for the CNI
        plugin to wire. With one: a veth into ``bridge`` on the host (created with
        the gateway address if absent; the IPv6 gateway is the subnet's ``::1``,
        as flannel's FLANNEL_IPV6_SUBNET) and default routes via the gateways.
        """
        h = self.hosts[host]
        ns = f"{self.tag}-{host}{name}"
        self._make_ns(ns)
        c = Container(name, ns, h, address, address6)
        self.containers[f"{host}/{name}"] = c
        if address is None and address6 is None:
            return c
        hn = h.netns
        mtu_args = ["mtu", str(mtu)] if mtu else []
        fresh = run(["ip", "-n", hn, "link", "show", bridge], check=False).returncode != 0
        if fresh:
            run(["ip", "-n", hn, "link", "add", bridge, *mtu_args, "type", "bridge"])
            run(["ip", "-n", hn, "link", "set", bridge, "up"])
        veth = f"v{name}"[:15]
        run(["ip", "-n", hn, "link", "add", veth, *mtu_args, "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", hn, "link", "set", veth, "master", bridge, "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", *mtu_args, "up"])
        for addr, gw in ((address, gateway), (address6, None)):
            if addr is None:
                continue
            gw_ip = gw or next(addr.network.hosts())
            nodad = ["nodad"] if addr.version == 6 else []
            fam = f"-{addr.version}"
            have = run(["ip", "-n", hn, fam, "addr", "show", "dev", bridge]).stdout
            if f" {gw_ip}/" not in have:
                run(["ip", "-n", hn, "addr", "add", f"{gw_ip}/{addr.network.prefixlen}",
                     "dev", bridge, *nodad])
            run(["ip", "-n", ns, "addr", "add", str(addr), "dev", "eth0", *nodad])
            run(["ip", "-n", ns, fam, "route", "add", "default", "via", str(gw_ip)])
        return c

    def _make_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    @staticmethod
    def sysctl(netns: str, key: str, value: str) -> None:
        run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])

    # -- running things -----------------------------------------------------

    def namespaces(self) -> list[str]:
        return [self.underlay_ns, *(h.netns for h in self.hosts.values()),
                *(c.netns for c in self.containers.values())]

    def exec(self, netns: str, argv: Sequence[str], *, check: bool = True,
             timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``netns`` and wait for it."""
        return run(["ip", "netns", "exec", netns, *argv], check=check, timeout=timeout,
                   input=input)

    def spawn(self, netns: str, argv: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``netns``; it is killed on ``destroy``."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        finally:
            if not isinstance(out, int):
                out.close()
        self._procs.append(proc)
        return proc

    def ping(self, netns: str, target: str, count: int = 1, timeout: float = 5) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(int(max(1, timeout))),
                "-i", "0.2", target]
        return self.exec(netns, argv, check=False, timeout=timeout + count).returncode == 0

    def wait_ping(self, netns: str, target: str, within: float = 10) -> bool:
        """True once one ping from ``netns`` to ``target`` succeeds within ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.ping(netns, target, timeout=1):
                return True
        return False

    # -- teardown -----------------------------------------------------------

    def kill_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    def destroy(self) -> None:
        """Kill every process and delete every namespace (idempotent)."""
        if self._destroyed:
            return
        self._destroyed = True
        self.kill_processes()
        # containers first: their veths vanish with them, then hosts, then the underlay
        for c in self.containers.values():
            delete_netns(c.netns)
        for h in self.hosts.values():
            delete_netns(h.netns)
        delete_netns(self.underlay_ns)
        # anything else with our tag (e.g. created by a plugin under test)
        for ns in list_netns():
            if ns.startswith(self.tag + "-"):
                delete_netns(ns)
        atexit.unregister(self.destroy)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()


def list_netns() -> list[str]:
    return sorted(p.name for p in Path("/run/netns").glob("*")) if Path("/run/netns").exists() \
        else []


@contextlib.contextmanager
def open_testbed(n_hosts: int, tag: str | None = None, *, ipv6: bool = False
                 ) -> Iterator[Testbed]:
    """``with open_testbed(3) as tb:`` — built on entry, destroyed on exit, whatever happens.
    ``ipv6=True`` makes the underlay dual-stack."""
    tb = Testbed(tag=tag, ipv6=ipv6) if tag else Testbed(ipv6=ipv6)
    tb.build(n_hosts)
    try:
        yield tb
    finally:
        tb.destroy()

"""A test cluster of real flanneld processes on the netns testbed, with the store in the underlay.

Shared by tests/integration/test_flanneld*.py and bench/overlay.py. The store
(real etcd or weft's embedded server) listens on the underlay namespace's
address 198.18.0.1, which every host reaches over the testbed bridge; nothing
binds in the root namespace. Every process runs inside a testbed namespace and
dies with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path

from overlay import subnetfile
from overlay.store.embedded.launch import StoreProcess, start_embedded, start_etcd
from overlay.testbed import Container, Testbed, open_testbed

BIN = Path(sys.executable).parent
FLANNELD = str(BIN / "flanneld")
WEFTCTL = str(BIN / "weftctl")
STORE_PORT = 2379  # inside the underlay namespace only


class Cluster:
    """Store + flanneld per host on ``tb``; ``close()`` (or the testbed) cleans up."""

    def __init__(self, tb: Testbed, store: str, tmp: Path) -> None:
        self.tb = tb
        self.tmp = tmp
        self.kind = store
        self.host_ip = str(tb.underlay_ip)
        self.endpoint = f"http://{self.host_ip}:{STORE_PORT}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.store: StoreProcess
        self._start_store()

    def _wait_store(self, within: float = 20) -> None:
        deadline = time.monotonic() + within
        probe = ["bash", "-c", f"exec 3<>/dev/tcp/{self.host_ip}/{STORE_PORT}"]
        while time.monotonic() < deadline:
            if self.tb.exec(self.tb.underlay_ns, probe, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.kind} store did not listen on {self.endpoint} "
                             f"within {within}s")

    def _start_store(self) -> None:
        data = self.tmp / f"store-{self.kind}"
        if self.kind == "etcd":
            self.store = start_etcd(data, self.host_ip, STORE_PORT, log=self.tmp / "etcd.log",
                                    netns=self.tb.underlay_ns)
        else:
            self.store = start_embedded(data, self.host_ip, STORE_PORT,
                                        log=self.tmp / "store.log", netns=self.tb.underlay_ns)
        self._wait_store()

    def restart_store(self, down_for: float = 1.0) -> None:
        """Kill the store, keep it down ``down_for`` s, start it again on the same data."""
        self.store.stop(kill=True)
        time.sleep(down_for)
        self._start_store()

    @contextlib.contextmanager
    def store_frozen(self, frozen: bool | float = True) -> Iterator[None]:
        """The store process stopped (SIGSTOP: connections stay open, nothing answers)
        inside the block, resumed on leaving it, also on failure; a no-op if falsy."""
        if not frozen:
            yield
            return
        os.kill(self.store.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.store.proc.pid, signal.SIGCONT)

    # -- store access (from the underlay namespace) ---------------------------

    def etcdctl(self, *args: str, check: bool = True) -> str:
        env_cmd = ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", self.endpoint, *args]
        return self.tb.exec(self.tb.underlay_ns, env_cmd, check=check).stdout

    def weftctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.tb.exec(self.tb.underlay_ns, [WEFTCTL, *args, "-etcd-endpoints",
                                                  self.endpoint], check=False)

    def network_set(self, backend: str = "vxlan", network: str = "10.244.0.0/16",
                    ipv6_network: str | None = None, ipv4: bool = True) -> None:
        """``weftctl network set``; ``ipv6_network`` makes it dual-stack, ``ipv4=False``
        IPv6-only."""
        args = ["network", "set", "--backend", backend]
        if ipv4:
            args += ["--network", network]
        if ipv6_network is not None:
            args += ["--ipv6-network", ipv6_network]
        if not ipv4:
            args += ["--no-ipv4"]
        proc = self.weftctl(*args)
        assert proc.returncode == 0, proc.stderr

    def put_raw(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    # -- flanneld ---------------------------------------------------------------

    def subnet_file(self, host: str) -> Path:
        return self.tmp / host / "subnet.env"

    def log(self, host: str) -> Path:
        return self.tmp / f"flanneld-{host}.log"

    def start(self, host: str, ttl: int = 30, extra: Sequence[str] = (),
              iface: str | None = "eth0", env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Spawn flanneld on ``host`` (``iface=None``: let it pick the default route's)."""
        h = self.tb.hosts[host]
        argv = [FLANNELD, "-etcd-endpoints", self.endpoint,
                "-subnet-file", str(self.subnet_file(host)), "-subnet-lease-ttl", str(ttl),
                *(["-iface", iface] if iface else []), *extra]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = self.tb.spawn(h.netns, argv, log=self.log(host), env=full_env)
        self.procs[host] = proc
        return proc

    def ready_count(self, host: str) -> int:
        try:
            return self.log(host).read_text(errors="replace").count(" ready: subnet ")
        except FileNotFoundError:
            return 0

    def wait_ready(self, host: str, count: int = 1, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while self.ready_count(host) < count:
            proc = self.procs.get(host)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"flanneld on {host} exited ({proc.returncode}):\n"
                                     + self.log(host).read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"flanneld on {host} not ready within {within}s:\n"
                                     + self.log(host).read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def stop(self, host: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(host)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(10)

    def subnet(self, host: str) -> ipaddress.IPv4Network:
        return subnetfile.read(self.subnet_file(host)).subnet

    def env(self, host: str) -> subnetfile.SubnetEnv:
        return subnetfile.read(self.subnet_file(host))

    def routes(self, host: str, family: int = 4) -> set[str]:
        """Destinations of the host's IPv4 (``family=6``: IPv6) routes (``ip -j route``)."""
        out = self.tb.exec(self.tb.hosts[host].netns,
                           ["ip", "-j", f"-{family}", "route", "show"]).stdout
        return {r["dst"] for r in json.loads(out or "[]")}

    def wait_routes(self, host: str, present: Set[str] = frozenset(),
                    absent: Set[str] = frozenset(), within: float = 10) -> float:
        """Wait until ``host`` routes every subnet in ``present`` and none in ``absent``."""
        start = time.monotonic()
        while True:
            routes = self.routes(host)
            if present <= routes and not (absent & routes):
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise AssertionError(f"{host}: routes {sorted(routes)} after {within}s; wanted "
                                     f"{sorted(present)} present, {sorted(absent)} absent")
            time.sleep(0.05)

    def container(self, host: str) -> Container:
        """A container on ``host``'s subnet(s): <subnet>.2 and, with an IPv6 half in
        subnet.env, <subnet6>::2 (gateways .1 and ::1, as the CNI plugin wires them)."""
        env = self.env(host)
        addr = addr6 = None
        gw = None
        if env.ipv4:
            gw = next(env.subnet.hosts())
            addr = ipaddress.IPv4Interface(f"{gw + 1}/{env.subnet.prefixlen}")
        if env.ipv6_subnet is not None:
            addr6 = ipaddress.IPv6Interface(
                f"{env.ipv6_subnet.network_address + 2}/{env.ipv6_subnet.prefixlen}")
        return self.tb.add_container(host, "c", addr, gateway=gw, mtu=env.mtu, address6=addr6)

    def close(self) -> None:
        for host in list(self.procs):
            self.stop(host, signal.SIGKILL)
        self.store.stop(kill=True)


@contextlib.contextmanager
def running_cluster(n_hosts: int, store: str, tmp: Path, *, ipv6: bool = False
                    ) -> Iterator[Cluster]:
    """A testbed of ``n_hosts`` with its store started; everything gone on leaving.
    ``ipv6=True``: a dual-stack underlay (``open_testbed(..., ipv6=True)``)."""
    with open_testbed(n_hosts, ipv6=ipv6) as tb:
        c = Cluster(tb, store, tmp)
        try:
            yield c
        finally:
            c.close()

"""flanneld control-plane benchmark: convergence over 50 joins and start-up with 1,000 peers.

Run as root (it builds a netns testbed; nothing touches the root namespace)::

    .venv/bin/python bench/overlay.py [--joins 50] [--peers 1000] [--store embedded|etcd]
                                      [--scale-rounds 3] [--skip-datapath] [--skip-scale]
                                      [--skip-ipv6]

1. **Convergence**: three real flanneld hosts (vxlan) share a store in the
   underlay namespace. 50 new hosts "join" one at a time: a lease is written to
   the store by an injector process living in the underlay namespace, and the
   time from the put's acknowledgement to the route being present on *all three*
   hosts is taken from ``ip monitor route`` streams (CLOCK_MONOTONIC is shared by
   all namespaces). Reference in the same run: the store's own notification
   floor, put acknowledgement to the event arriving at a plain watcher.
1b. **IPv6 joins** (unless ``--skip-ipv6``): the same on a dual-stack underlay
   and network (issue 17): each join is a dual-stack lease, and the time to its
   IPv6 route (``flannel-v6.1``) on all three hosts is taken beside the time to
   its IPv4 route in the same join; the IPv4 figure and the IPv4-only run above
   are the same-run references.
2. **Scale**: 1,000 peer leases in the store, then flanneld starts on a fresh
   host: time until all 1,000 routes are in its kernel, and its RSS (steady and
   peak). References in the same run: the same 1,000 routes added by hand with
   one ``ip -batch`` (the kernel floor), and the RSS of a bare interpreter that
   imports the same libraries.
3. **Data path** (unless ``--skip-datapath``): runs ``bench/overlay_datapath.py``
   (the data-plane engineer's iperf3 comparison) and prints its figures.

Goals (issue 3; issue 17 for IPv6 joins): convergence p99 < 250 ms; 1,000 peers
programmed < 5 s; RSS < 80 MiB.
Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PREFIX = "/coreos.com/network"

INJECTOR = r"""
import asyncio, json, sys, time
from overlay.store.api import StoreConfig
from overlay.store.client import connect

async def main(endpoint):
    store = await connect(StoreConfig((endpoint,)))
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        req = json.loads(line)
        if req["op"] == "put":
            t0 = time.monotonic()
            await store.put(req["key"].encode(), req["value"].encode())
            print(json.dumps({"t0": t0, "t": time.monotonic()}), flush=True)
        elif req["op"] == "putmany":
            for k, v in req["items"]:
                await store.put(k.encode(), v.encode())
            print(json.dumps({"t": time.monotonic()}), flush=True)
        elif req["op"] == "watchfloor":
            # the store's notification floor: a put until a plain watcher sees its event
            prefix = req["prefix"].encode()
            rev0 = (await store.list(prefix)).revision
            seen = {}

            async def watcher():
                async for batch in store.watch(prefix, rev0 + 1):
                    now = time.monotonic()
                    for ev in batch:
                        seen.setdefault(ev.kv.key.decode(), now)

            task = asyncio.ensure_future(watcher())
            await asyncio.sleep(0.2)
            out = []
            for k, v in req["items"]:
                t0 = time.monotonic()
                await store.put(k.encode(), v.encode())
                while k not in seen:
                    await asyncio.sleep(0.0005)
                out.append(seen[k] - t0)
                await asyncio.sleep(0.01)
            task.cancel()
            print(json.dumps({"floor": out}), flush=True)
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


class Injector:
    """A store client inside the underlay namespace, driven by JSON lines."""

    def __init__(self, netns: str, endpoint: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PY, "-c", INJECTOR, endpoint], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._read(30)

    def _read(self, timeout: float) -> dict[str, object]:
        assert self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("injector did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"injector exited ({self.proc.poll()})")
        reply: dict[str, object] = json.loads(line)
        return reply

    def call(self, req: dict[str, object], timeout: float = 60) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def warm_up(inj: Injector, monitors: Sequence[RouteMonitor], key: str, value: str,
            dst: str) -> None:
    """One unmeasured join: every ``ip monitor`` is subscribed (a loaded machine may start
    one late and miss the first event) and every flanneld has run a reconcile pass."""
    inj.call({"op": "put", "key": key, "value": value})
    deadline = time.monotonic() + 15
    while not all(dst in m.seen for m in monitors):
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up join: route {dst} not on all hosts in 15 s")
        time.sleep(0.01)


class RouteMonitor:
    """``ip monitor route`` in one namespace; records when each destination first appears."""

    def __init__(self, netns: str) -> None:
        self.seen: dict[str, float] = {}
        self.proc = subprocess.Popen(["ip", "-n", netns, "monitor", "route"],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._events: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if line.startswith("Deleted"):
                continue
            dst = line.split(" ", 1)[0]
            self.seen.setdefault(dst, now)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def lease_json(ip: str, mac: str) -> str:
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))


CONV_NETWORK = "10.244.0.0/16"  # convergence: 50 joins fit
SCALE_NETWORK = "10.0.0.0/8"  # scale: 1,000 peers do not fit a /16 of /24s
SCALE_BASE = "10.100.0.0"


CONV_NETWORK6 = "fd00:10:244::/56"  # IPv6 joins: /64s, fake peers from :64:: (100) up


def fake_peer6(i: int) -> tuple[str, str, str, str]:
    """(subnet, subnet6, key, value) of dual-stack fake peer ``i`` (flannel's key and value)."""
    net = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.244.100.0")) + i * 256, 24))
    net6 = ipaddress.IPv6Network((int(ipaddress.IPv6Address("fd00:10:244::"))
                                  + ((100 + i) << 64), 64))
    ip = str(ipaddress.IPv4Address("198.19.0.0") + i)  # never a live host
    ip6 = str(ipaddress.IPv6Address("fd00:198:19::") + 1 + i)
    mac = f"0e:5e:00:00:{(i >> 8) & 255:02x}:{i & 255:02x}"
    mac6 = f"0e:5e:06:00:{(i >> 8) & 255:02x}:{i & 255:02x}"
    key = (f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"
           f"&{net6.network_address}-{net6.prefixlen}")
    value = json.dumps({"PublicIP": ip, "PublicIPv6": ip6, "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": mac},
                        "BackendV6Data": {"VNI": 1, "VtepMAC": mac6}}, separators=(",", ":"))
    return str(net), str(net6), key, value


def fake_peer(i: int, base: str = "10.244.100.0") -> tuple[str, str, str]:
    """(subnet, key, value) of fake peer ``i``: the ``i``-th /24 from ``base``."""
    net = ipaddress.IPv4Network((int(ipaddress.IPv4Address(base)) + i * 256, 24))
    ip = str(ipaddress.IPv4Address("198.19.0.0") + i)  # never a live host
    mac = f"0e:5e:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
    key = f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"
    return str(net), key, lease_json(ip, mac)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


IDLE_WINDOW = 30.0  # seconds: spans periodic resyncs (10 s, stretched on big clusters)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_convergence(store: str, joins: int, tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from overlay.testbed import open_testbed
    from tests.integration.flanneld_cluster import Cluster

    with open_testbed(3) as tb:
        c = Cluster(tb, store, tmp)
        inj = None
        monitors: list[RouteMonitor] = []
        try:
            c.network_set("vxlan", CONV_NETWORK)
            for h in tb.hosts:
                c.start(h)
            for h in tb.hosts:
                c.wait_ready(h)
            inj = Injector(tb.underlay_ns, c.endpoint)
            monitors = [RouteMonitor(h.netns) for h in tb.hosts.values()]
            time.sleep(0.3)
            subnet, key, value = fake_peer(joins)
            warm_up(inj, monitors, key, value, subnet)
            lat: list[float] = []
            for i in range(joins):
                subnet, key, value = fake_peer(i)
                # from just before the put is sent: includes the store's commit
                reply = inj.call({"op": "put", "key": key, "value": value})
                t_put = float(str(reply["t0"]))
                deadline = time.monotonic() + 5
                while not all(subnet in m.seen for m in monitors):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"join {i}: route {subnet} not on all hosts in 5 s")
                    time.sleep(0.002)
                lat.append(max(m.seen[subnet] for m in monitors) - t_put)
            floor_items = [(f"/bench/floor/{i}", "x") for i in range(20)]
            floor = inj.call({"op": "watchfloor", "prefix": "/bench/floor/",
                              "items": floor_items})["floor"]
            assert isinstance(floor, list)
        finally:
            for m in monitors:
                m.close()
            if inj is not None:
                inj.close()
            c.close()
    return {"p50": statistics.median(lat), "p99": percentile(lat, 99), "max": max(lat),
            "floor_p50": statistics.median(floor)}


def bench_convergence6(store: str, joins: int, tmp: Path) -> dict[str, float]:
    """Dual-stack joins on a dual-stack cluster: IPv6 and IPv4 route times of each join."""
    sys.path.insert(0, str(ROOT))
    from overlay.testbed import open_testbed
    from tests.integration.flanneld_cluster import Cluster

    with open_testbed(3, ipv6=True) as tb:
        c = Cluster(tb, store, tmp)
        inj = None
        monitors: list[RouteMonitor] = []
        try:
            c.network_set("vxlan", CONV_NETWORK, ipv6_network=CONV_NETWORK6)
            for h in tb.hosts:
                c.start(h)
            for h in tb.hosts:
                c.wait_ready(h)
            inj = Injector(tb.underlay_ns, c.endpoint)
            monitors = [RouteMonitor(h.netns) for h in tb.hosts.values()]
            time.sleep(0.3)
            _, subnet6, key, value = fake_peer6(joins)
            warm_up(inj, monitors, key, value, subnet6)
            lat6: list[float] = []
            lat4: list[float] = []
            for i in range(joins):
                subnet, subnet6, key, value = fake_peer6(i)
                reply = inj.call({"op": "put", "key": key, "value": value})
                t_put = float(str(reply["t0"]))
                deadline = time.monotonic() + 5
                while not all(subnet in m.seen and subnet6 in m.seen for m in monitors):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"join {i}: routes {subnet}, {subnet6} not on all "
                                           "hosts in 5 s")
                    time.sleep(0.002)
                lat6.append(max(m.seen[subnet6] for m in monitors) - t_put)
                lat4.append(max(m.seen[subnet] for m in monitors) - t_put)
        finally:
            for m in monitors:
                m.close()
            if inj is not None:
                inj.close()
            c.close()
    return {"p50": statistics.median(lat6), "p99": percentile(lat6, 99), "max": max(lat6),
            "v4_p50": statistics.median(lat4), "v4_p99": percentile(lat4, 99)}


def bench_scale(store: str, peers: int, tmp: Path, rounds: int = 3) -> dict[str, float]:
    """Median over ``rounds`` fresh hosts of flanneld's start with ``peers`` leases stored."""
    sys.path.insert(0, str(ROOT))
    from overlay.testbed import open_testbed
    from tests.integration.flanneld_cluster import Cluster

    with open_testbed(rounds + 1) as tb:
        c = Cluster(tb, store, tmp)
        inj = None
        try:
            c.network_set("vxlan", SCALE_NETWORK)
            inj = Injector(tb.underlay_ns, c.endpoint)
            items = [fake_peer(i, SCALE_BASE)[1:] for i in range(peers)]
            for start in range(0, peers, 250):
                inj.call({"op": "putmany", "items": items[start:start + 250]}, timeout=120)
            times: list[float] = []
            idle_cpu = 0.0
            rss: list[int] = []
            hwm: list[int] = []
            for r in range(1, rounds + 1):
                host = f"h{r}"
                ns = tb.hosts[host].netns
                t0 = time.monotonic()
                proc = c.start(host)
                t_all = None
                while time.monotonic() - t0 < 60:
                    out = tb.exec(ns, ["ip", "-4", "route", "show", "dev", "flannel.1"],
                                  check=False).stdout
                    if out.count("\n") >= peers:
                        t_all = time.monotonic() - t0
                        break
                    time.sleep(0.02)
                if t_all is None:
                    raise RuntimeError(f"flanneld on {host} did not program all peers in 60 s")
                times.append(t_all)
                c.wait_ready(host)
                time.sleep(1.0)
                now, peak = rss_kib(proc.pid)
                rss.append(now)
                hwm.append(peak)
                if r == 1:  # idle cost with 1,000 peers: watch + the 10 s periodic resync
                    cpu0, w0 = cpu_seconds(proc.pid), time.monotonic()
                    time.sleep(IDLE_WINDOW)
                    idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0)
                c.stop(host)
            # references: the same routes by hand in one ip -batch, and a bare interpreter
            ref = tb.hosts[f"h{rounds + 1}"].netns
            tb.exec(ref, ["ip", "link", "add", "br9", "type", "bridge"])
            tb.exec(ref, ["ip", "link", "set", "br9", "up"])
            tb.exec(ref, ["ip", "addr", "add", "10.244.1.0/32", "dev", "br9"])
            batch = "".join(
                f"route add {net} via {ipaddress.IPv4Network(net)[0]} dev br9 onlink\n"
                for net in (fake_peer(i, SCALE_BASE)[0] for i in range(peers)))
            t1 = time.monotonic()
            tb.exec(ref, ["ip", "-batch", "-"], input=batch)
            t_hand = time.monotonic() - t1
            bare = subprocess.Popen([PY, "-c", "import asyncio, grpc, aetcd, pyroute2, time; "
                                     "print('x', flush=True); time.sleep(30)"],
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert bare.stdout is not None
            bare.stdout.readline()
            bare_rss, _ = rss_kib(bare.pid)
            bare.kill()
            bare.wait()
        finally:
            if inj is not None:
                inj.close()
            c.close()
    return {"t_all": statistics.median(times), "t_min": min(times), "t_max": max(times),
            "rss_mib": statistics.median(rss) / 1024, "hwm_mib": max(hwm) / 1024,
            "t_hand": t_hand, "bare_mib": bare_rss / 1024, "idle_cpu": idle_cpu}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    ap.add_argument("--joins", type=int, default=50)
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--scale-rounds", type=int, default=3)
    ap.add_argument("--store", choices=("embedded", "etcd"), default="embedded")
    ap.add_argument("--skip-datapath", action="store_true")
    ap.add_argument("--skip-scale", action="store_true", help="convergence only")
    ap.add_argument("--skip-ipv6", action="store_true", help="no IPv6-join convergence")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/overlay.py needs root (network namespaces)", file=sys.stderr)
        return 2
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="weft-bench-overlay-") as d:
        tmp = Path(d)
        (tmp / "conv").mkdir()
        (tmp / "scale").mkdir()
        conv = bench_convergence(args.store, args.joins, tmp / "conv")
        print(f"convergence ({args.store}, vxlan, 3 hosts, {args.joins} joins): "
              f"p50 {conv['p50'] * 1000:.1f} ms, p99 {conv['p99'] * 1000:.1f} ms, "
              f"max {conv['max'] * 1000:.1f} ms")
        print(f"  reference: store put->watch floor p50 {conv['floor_p50'] * 1000:.1f} ms; "
              f"ratio p50/floor {conv['p50'] / conv['floor_p50']:.1f}x; "
              f"p99/goal(250 ms) {conv['p99'] / 0.25:.2f}")
        if not args.skip_ipv6:
            (tmp / "conv6").mkdir()
            c6 = bench_convergence6(args.store, args.joins, tmp / "conv6")
            print(f"IPv6 joins ({args.store}, vxlan dual-stack, 3 hosts, {args.joins} joins): "
                  f"IPv6 route p50 {c6['p50'] * 1000:.1f} ms, p99 {c6['p99'] * 1000:.1f} ms, "
                  f"max {c6['max'] * 1000:.1f} ms (p99/goal(250 ms) {c6['p99'] / 0.25:.2f})")
            print(f"  references: the IPv4 route of the same joins p50 "
                  f"{c6['v4_p50'] * 1000:.1f} ms, p99 {c6['v4_p99'] * 1000:.1f} ms (IPv6/IPv4 "
                  f"p99 {c6['p99'] / c6['v4_p99']:.2f}x); the IPv4-only joins above (IPv6/IPv4 "
                  f"p99 {c6['p99'] / conv['p99']:.2f}x)")
        if args.skip_scale:
            print(f"total {time.monotonic() - started:.0f} s")
            return 0
        sc = bench_scale(args.store, args.peers, tmp / "scale", args.scale_rounds)
        print(f"scale ({args.peers} peers, median of {args.scale_rounds} starts): all routes "
              f"programmed {sc['t_all']:.2f} s after start (min {sc['t_min']:.2f}, max "
              f"{sc['t_max']:.2f}; goal < 5 s, ratio {sc['t_all'] / 5:.2f}); "
              f"RSS {sc['rss_mib']:.1f} MiB, "
              f"peak {sc['hwm_mib']:.1f} MiB (goal < 80 MiB, ratio {sc['hwm_mib'] / 80:.2f})")
        print(f"  references: {args.peers} routes by hand (ip -batch) {sc['t_hand']:.3f} s "
              f"(flanneld/hand {sc['t_all'] / sc['t_hand']:.1f}x); bare interpreter with the "
              f"same imports {sc['bare_mib']:.1f} MiB (flanneld/bare "
              f"{sc['rss_mib'] / sc['bare_mib']:.2f}x)")
        print(f"  idle with {args.peers} peers: {sc['idle_cpu'] * 100:.1f}% of one core "
              f"(over {IDLE_WINDOW:.0f} s of periodic resyncs)")
    if not args.skip_datapath and (ROOT / "bench" / "overlay_datapath.py").exists():
        remaining = max(30.0, 170 - (time.monotonic() - started))
        print("data path (bench/overlay_datapath.py --seconds 3 --rounds 1):", flush=True)
        try:
            subprocess.run([PY, str(ROOT / "bench" / "overlay_datapath.py"), "--seconds", "3",
                            "--rounds", "1"], cwd=ROOT, timeout=remaining, check=False)
        except subprocess.TimeoutExpired:
            print("  data path bench cut short (time bound)")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

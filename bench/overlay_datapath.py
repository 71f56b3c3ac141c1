"""Data-path throughput: weft's backends vs the same topology configured by hand as flannel does.

A scenario is a pair of netns hosts with one container each, programmed either
by weft's backend (the backend harness, ``python -m tests.backend_driver``)
or by hand with the ip/bridge commands flannel's code issues; iperf3 runs
container-to-container with the client and the server pinned to different
cores. Prints each figure and the ratio against its reference.

Comparisons (weft vs hand, same backend) run **concurrently** by default: one
testbed holds both pairs (h1-h2 and h3-h4) and both iperf3 flows run at the
same time on the same cores, so whatever else loads the machine hits both
alike and the ratio compares equal data paths under equal contention (the
absolute figures are then per flow, roughly half a lone flow's). ``--mode
sequential`` measures each scenario alone on its own testbed instead, pairs
back to back in alternating order, ratio = median of the per-round ratios.

    .venv/bin/python bench/overlay_datapath.py [--seconds 4] [--rounds 3]
        [--mode concurrent|sequential] [--streams 1] [--only weft-vxlan-v6 hand-vxlan-v6 ...]

The ``*-v6`` scenarios run the same topologies IPv6 end to end (issue 17): an
IPv6-only network (flannel's ``EnableIPv4: false``) over the dual-stack
testbed's IPv6 underlay (``fd00:198:18::/64``), containers ``fd00:10:244:<i>::2``;
vxlan on ``flannel-v6.1`` (MTU 1430), host-gw routes via the peers' PublicIPv6.

Importable without side effects: ``measure(kind, seconds)`` returns Gbit/s of
one scenario from ``SCENARIOS`` alone; ``measure_pair(a, b, seconds)`` runs two
concurrently; ``run(...)`` returns every figure and ratio as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == _ROOT / "bench":
    sys.path[0] = str(_ROOT)  # run as a script: bench/overlay.py must not shadow the package

from overlay.testbed import Testbed, open_testbed  # noqa: E402
from tests.backend_driver import (  # noqa: E402
    DriverProcess,
    lease_backend_type,
    lease_from_json,
)

# udp rows (issue 16): weft's forwarder step by step, each flow against a kernel VXLAN
# flow under the same contention, and a naive loop for scale
UDP_SCENARIOS = ("weft-udp", "weft-udp-seg", "weft-udp-plain", "weft-udp-enc", "naive-udp")
UDP_NOTES = {
    "weft-udp": "TUN offloads, weft chunks between weft hosts (the default)",
    "weft-udp-seg": "TUN offloads, flannel's format (as to a flannel host)",
    "weft-udp-plain": "WEFT_UDP_OFFLOAD=0: one packet per TUN read/write",
    "weft-udp-enc": "encrypted: one seal per super-packet, in weft chunks",
    "naive-udp": "naive single-threaded select loop, bench/naive_tunudp.py",
}
UDP_PAIRS = (*((k, "hand-vxlan") for k in UDP_SCENARIOS),
             ("weft-udp-enc", "weft-udp"))  # encryption's cost
UDP_GOALS = {"ratio:weft-udp/hand-vxlan": 0.3, "ratio:weft-udp-enc/weft-udp": 0.5}
CPU: dict[str, list[tuple[float, float]]] = {}  # udp kind -> (tx, rx) CPU s per Gbit
SCENARIOS = ("underlay", "hand-vxlan", "weft-vxlan", "hand-host-gw", "weft-host-gw",
             *UDP_SCENARIOS)
PAIRS = (("weft-vxlan", "hand-vxlan"), ("weft-host-gw", "hand-host-gw"), *UDP_PAIRS)
# IPv6 rows (v6-kernel's): each pair compares weft with flannel's layout by hand
SCENARIOS_V6 = ("hand-vxlan-v6", "weft-vxlan-v6", "hand-host-gw-v6", "weft-host-gw-v6")
PAIRS_V6 = (("weft-vxlan-v6", "hand-vxlan-v6"), ("weft-host-gw-v6", "hand-host-gw-v6"))
ALL_SCENARIOS = SCENARIOS + SCENARIOS_V6
NETWORK = "10.244.0.0/16"
NETWORK6 = "fd00:10:244::/48"
PORT = 5201

Pair = tuple[str, str]  # (client host, server host)


def _subnet(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.244.{i}.0/24")


def _cores() -> tuple[str, str]:
    return ("0", "1") if (os.cpu_count() or 1) >= 2 else ("0", "0")


def _random_mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _subnet6(i: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"fd00:10:244:{i}::/64")


def _public(tb: Testbed, name: str, v6: bool) -> str:
    """Host ``name``'s underlay address of the family in use."""
    if not v6:
        return str(tb.hosts[name].ip)
    ip6 = tb.hosts[name].ip6
    if ip6 is None:
        raise RuntimeError("an IPv6 scenario needs the dual-stack testbed (ipv6=True)")
    return str(ip6)


def _hand_vxlan(tb: Testbed, pair: Pair, v6: bool = False) -> int:
    """flannel's vxlan state, by hand: device, address, per-peer neigh/FDB/onlink route
    (``v6``: flannel-v6.1, MTU 1430, ``<v6 subnet>/128``)."""
    dev, mtu, fam = ("flannel-v6.1", 1430, "-6") if v6 else ("flannel.1", 1450, "-4")
    subnet = _subnet6 if v6 else _subnet
    macs = {name: _random_mac() for name in pair}
    for i, name in enumerate(pair, 1):
        ns = tb.hosts[name].netns
        tb.exec(ns, ["ip", "link", "add", dev, "type", "vxlan", "id", "1", "local",
                     _public(tb, name, v6), "dev", "eth0", "dstport", "8472", "nolearning"])
        tb.exec(ns, ["ip", "link", "set", dev, "address", macs[name], "mtu", str(mtu), "up"])
        tb.exec(ns, ["ip", "addr", "add",
                     f"{subnet(i).network_address}/{subnet(i).max_prefixlen}", "dev", dev,
                     *(["nodad"] if v6 else [])])
    for name in pair:
        for j, peer in enumerate(pair, 1):
            if peer == name:
                continue
            ns, gw = tb.hosts[name].netns, str(subnet(j).network_address)
            tb.exec(ns, ["ip", fam, "neigh", "replace", gw, "lladdr", macs[peer], "dev", dev,
                         "nud", "permanent"])
            tb.exec(ns, ["bridge", "fdb", "replace", macs[peer], "dev", dev, "dst",
                         _public(tb, peer, v6), "self", "permanent"])
            tb.exec(ns, ["ip", fam, "route", "replace", str(subnet(j)), "via", gw, "dev", dev,
                         "onlink"])
    return mtu


def _hand_hostgw(tb: Testbed, pair: Pair, v6: bool = False) -> int:
    subnet = _subnet6 if v6 else _subnet
    for name in pair:
        for j, peer in enumerate(pair, 1):
            if peer != name:
                tb.exec(tb.hosts[name].netns, ["ip", "-6" if v6 else "-4", "route", "replace",
                                               str(subnet(j)), "via", _public(tb, peer, v6),
                                               "dev", "eth0"])
    return 1500


@contextlib.contextmanager
def _weft(tb: Testbed, btype: str, pair: Pair, v6: bool = False) -> Iterator[int]:
    """Run weft's backend on both hosts of ``pair`` for the duration of the block
    (``udp-enc``: udp with Encryption, a fresh key in a temporary file; ``v6``: an
    IPv6-only network, prepare_v6 only, leases with flannel's 0.0.0.0/0 IPv4 half)."""
    config: dict[str, object] = {}
    chunks = btype != "udp-seg"  # udp-seg: leases without "Chunks" (flannel's format)
    plain = btype == "udp-plain"  # the driver inherits WEFT_UDP_OFFLOAD=0
    if btype in ("udp-seg", "udp-plain"):
        btype = "udp"
    if btype == "udp-enc":
        key = Path(f"/tmp/weft-bench-{secrets.token_hex(4)}.key")
        key.write_text(secrets.token_hex(32))
        stack_key: Path | None = key
        btype, config = "udp", {"Type": "udp", "Encryption": {"KeyFile": str(key)}}
    else:
        stack_key = None
    drivers: list[DriverProcess] = []
    leases: list[dict[str, object]] = []
    mtu = 1500
    try:
        for i, name in enumerate(pair, 1):
            saved = os.environ.get("WEFT_UDP_OFFLOAD")
            if plain:
                os.environ["WEFT_UDP_OFFLOAD"] = "0"
            try:
                d = DriverProcess(tb.hosts[name].netns, btype, "eth0", network=NETWORK,
                                  config=config, python=sys.executable,
                                  network6=NETWORK6 if v6 else None)
            finally:
                if plain:
                    os.environ.pop("WEFT_UDP_OFFLOAD")
                    if saved is not None:
                        os.environ["WEFT_UDP_OFFLOAD"] = saved
            drivers.append(d)
            ready = d.call({"op": "prepare_v6" if v6 else "prepare"})
            mtu = int(ready["mtu"])
            data = {k: v for k, v in ready["data"].items() if chunks or k != "Chunks"}
            lease: dict[str, object] = {
                "subnet": str(_subnet(i)), "public_ip": _public(tb, name, False),
                "type": lease_backend_type(btype), "data": data}
            if v6:
                lease.update({"subnet": "0.0.0.0/0", "public_ip": "0.0.0.0", "data": {},
                              "subnet6": str(_subnet6(i)), "public_ip6": _public(tb, name, v6),
                              "data6": ready["data"]})
            lease_from_json(lease)  # validates the shape
            leases.append(lease)
            d.call({"op": "attach", "lease": lease})
        for i, d in enumerate(drivers):
            d.call({"op": "reconcile", "peers": [p for j, p in enumerate(leases) if j != i]})
        yield mtu
    finally:
        for d in drivers:
            d.stop()
        if stack_key is not None:
            stack_key.unlink(missing_ok=True)


def _flow6(tb: Testbed, kind: str, pair: Pair, stack: contextlib.ExitStack
           ) -> tuple[str, str, str]:
    """``_flow`` for the ``*-v6`` scenarios (IPv6-only containers)."""
    a, b = pair
    if kind == "hand-vxlan-v6":
        mtu = _hand_vxlan(tb, pair, v6=True)
    elif kind == "hand-host-gw-v6":
        mtu = _hand_hostgw(tb, pair, v6=True)
    else:
        mtu = stack.enter_context(_weft(tb, kind.removeprefix("weft-").removesuffix("-v6"),
                                        pair, v6=True))
    for i, name in enumerate(pair, 1):
        tb.add_container(name, "c", None, mtu=mtu,
                         address6=ipaddress.IPv6Interface(f"fd00:10:244:{i}::2/64"))
    c1, c2 = tb.containers[f"{a}/c"], tb.containers[f"{b}/c"]
    target = "fd00:10:244:2::2"
    if not tb.wait_ping(c1.netns, target, within=10):
        raise RuntimeError(f"{kind}: containers on {a} and {b} cannot reach each other")
    return c2.netns, c1.netns, target


@contextlib.contextmanager
def _naive(tb: Testbed, pair: Pair) -> Iterator[int]:
    """The naive TUN <-> UDP loop (bench/naive_tunudp.py) on both hosts of ``pair``."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, name in enumerate(pair, 1):
            peers = [f"--peer={_subnet(j)}={tb.hosts[p].ip}" for j, p in enumerate(pair, 1)
                     if p != name]
            proc = subprocess.Popen(
                ["ip", "netns", "exec", tb.hosts[name].netns, sys.executable,
                 str(_ROOT / "bench" / "naive_tunudp.py"), "--local", str(tb.hosts[name].ip),
                 "--address", str(_subnet(i).network_address), "--network", NETWORK,
                 "--mtu", "1472", *peers], stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"naive loop on {name} did not start")
        yield 1472
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _ticks(netns: str) -> int:
    """CPU time (clock ticks) used so far by the processes of namespace ``netns`` (a
    host's: its forwarder; iperf3 runs in the containers' namespaces)."""
    total = 0
    for pid in subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                              check=False).stdout.split():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total


def _flow(tb: Testbed, kind: str, pair: Pair, stack: contextlib.ExitStack) -> tuple[str, str, str]:
    """Program ``kind`` on ``pair``; return (server netns, client netns, target address)."""
    if kind in SCENARIOS_V6:
        return _flow6(tb, kind, pair, stack)
    a, b = pair
    if kind == "underlay":
        return tb.hosts[b].netns, tb.hosts[a].netns, str(tb.hosts[b].ip)
    if kind == "naive-udp":
        mtu = stack.enter_context(_naive(tb, pair))
    elif kind == "hand-vxlan":
        mtu = _hand_vxlan(tb, pair)
    elif kind == "hand-host-gw":
        mtu = _hand_hostgw(tb, pair)
    else:
        mtu = stack.enter_context(_weft(tb, kind.removeprefix("weft-"), pair))
    for i, name in enumerate(pair, 1):
        tb.add_container(name, "c", ipaddress.IPv4Interface(f"10.244.{i}.2/24"), mtu=mtu)
    c1, c2 = tb.containers[f"{a}/c"], tb.containers[f"{b}/c"]
    if not tb.wait_ping(c1.netns, "10.244.2.2", within=10):
        raise RuntimeError(f"{kind}: containers on {a} and {b} cannot reach each other")
    return c2.netns, c1.netns, "10.244.2.2"


def _iperf(tb: Testbed, flows: Sequence[tuple[str, str, str]], seconds: float,
           streams: int, cpu: list[tuple[float, float]] | None = None) -> list[float]:
    """Gbit/s received per flow; all flows at once, clients and servers on different cores.
    ``cpu`` receives, per flow, the CPU seconds per Gbit of the processes in the sending
    and in the receiving container's host namespace (the forwarders)."""
    host_of = {c.netns: tb.hosts[name.split("/")[0]].netns for name, c in tb.containers.items()}
    sides = [(host_of.get(cli, cli), host_of.get(srv, srv)) for srv, cli, _ in flows]
    cs, cc = _cores()
    servers = [subprocess.Popen(["ip", "netns", "exec", srv, "taskset", "-c", cs, "iperf3",
                                 "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
               for srv, _, _ in flows]
    clients: list[subprocess.Popen[str]] = []
    try:
        for srv, _, _ in flows:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # wait for the listener
                ss = tb.exec(srv, ["ss", "-ltn", f"sport = :{PORT}"], check=False).stdout
                if f":{PORT}" in ss:
                    break
                time.sleep(0.05)
        before = [(_ticks(tx), _ticks(rx)) for tx, rx in sides]
        clients = [subprocess.Popen(["ip", "netns", "exec", cli, "taskset", "-c", cc, "iperf3",
                                     "-c", target, "-p", str(PORT), "-t", str(seconds), "-P",
                                     str(streams), "-J"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
                   for _, cli, target in flows]
        out = []
        for c in clients:
            stdout, _ = c.communicate(timeout=seconds + 30)
            result = json.loads(stdout)
            out.append(float(result["end"]["sum_received"]["bits_per_second"]) / 1e9)
        if cpu is not None:
            hz = os.sysconf("SC_CLK_TCK")
            for (tx, rx), (tx0, rx0), gbps in zip(sides, before, out, strict=True):
                gbit = max(gbps * seconds, 1e-9)
                cpu.append(((_ticks(tx) - tx0) / hz / gbit, (_ticks(rx) - rx0) / hz / gbit))
        return out
    finally:
        for p in [*clients, *servers]:
            if p.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
            if p.poll() is None:
                p.kill()
                p.wait()


def measure(kind: str, seconds: float = 4, streams: int = 1) -> float:
    """Throughput in Gbit/s of one scenario from ``SCENARIOS``, alone on a fresh testbed."""
    if kind not in ALL_SCENARIOS:
        raise ValueError(f"unknown scenario {kind!r}; one of {ALL_SCENARIOS}")
    with open_testbed(2, ipv6=kind in SCENARIOS_V6) as tb, contextlib.ExitStack() as stack:
        flow = _flow(tb, kind, ("h1", "h2"), stack)
        cpu: list[tuple[float, float]] = []
        gbps = _iperf(tb, [flow], seconds, streams, cpu)[0]
        if kind in UDP_SCENARIOS:
            CPU.setdefault(kind, []).append(cpu[0])
        return gbps


def measure_pair(a: str, b: str, seconds: float = 4, streams: int = 1) -> tuple[float, float]:
    """Gbit/s of scenarios ``a`` (on h1-h2) and ``b`` (on h3-h4) running at the same time."""
    for k in (a, b):
        if k not in ALL_SCENARIOS:
            raise ValueError(f"unknown scenario {k!r}; one of {ALL_SCENARIOS}")
    with open_testbed(4, ipv6=a in SCENARIOS_V6 or b in SCENARIOS_V6) as tb, \
            contextlib.ExitStack() as stack:
        flows = [_flow(tb, a, ("h1", "h2"), stack), _flow(tb, b, ("h3", "h4"), stack)]
        cpu: list[tuple[float, float]] = []
        ga, gb = _iperf(tb, flows, seconds, streams, cpu)
        for k, used in zip((a, b), cpu, strict=True):
            if k in UDP_SCENARIOS:
                CPU.setdefault(k, []).append(used)
        return ga, gb


def _udp_cpu(kinds: Sequence[str]) -> dict[str, float]:
    """``cpu-tx:<kind>`` / ``cpu-rx:<kind>``: median forwarder CPU seconds per Gbit on the
    sending / receiving host, for the udp kinds measured."""
    out = {}
    for k in kinds:
        if CPU.get(k):
            out[f"cpu-tx:{k}"] = statistics.median(tx for tx, _ in CPU[k])
            out[f"cpu-rx:{k}"] = statistics.median(rx for _, rx in CPU[k])
    return out


def run(seconds: float = 4, rounds: int = 3, streams: int = 1,
        kinds: tuple[str, ...] = ALL_SCENARIOS, mode: str = "concurrent") -> dict[str, float]:
    """Median Gbit/s per scenario plus ``ratio:*`` entries (median of per-round ratios)."""
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    paired: dict[str, list[float]] = {}
    for rnd in range(rounds):
        for a, b in PAIRS + PAIRS_V6:
            if a not in kinds or b not in kinds:
                continue
            # alternate which side goes first (sequential) / which hosts it gets (concurrent)
            first, second = (a, b) if rnd % 2 == 0 else (b, a)
            if mode == "concurrent":
                g1, g2 = measure_pair(first, second, seconds, streams)
            else:
                g1, g2 = measure(first, seconds, streams), measure(second, seconds, streams)
            got = {first: g1, second: g2}
            samples[a].append(got[a])
            samples[b].append(got[b])
            if got[b] > 0:
                paired.setdefault(f"ratio:{a}/{b}", []).append(got[a] / got[b])
    for k in kinds:  # the underlay (informational), or half a pair: one sample each, alone
        if not samples[k]:
            samples[k].append(measure(k, seconds, streams))
    out = {k: statistics.median(v) for k, v in samples.items() if v}
    out.update({k: statistics.median(v) for k, v in paired.items()})
    out.update(_udp_cpu(kinds))
    vx = "weft-vxlan"
    if mode == "concurrent" and vx in kinds and "underlay" in kinds:
        vx = "weft-vxlan-alone"  # the informational ratios compare flows measured alone
        out[vx] = measure("weft-vxlan", seconds, streams)
    for a, b in ((vx, "underlay"),):
        if a in out and b in out and out[b] > 0:
            out[f"ratio:{a}/{b}"] = out[a] / out[b]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--mode", choices=("concurrent", "sequential"), default="concurrent")
    ap.add_argument("--only", nargs="*", choices=ALL_SCENARIOS, default=list(ALL_SCENARIOS))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    res = run(args.seconds, args.rounds, args.streams, tuple(args.only), args.mode)
    alone = {"underlay", "weft-vxlan-alone"}
    for k, v in res.items():
        if k.startswith("cpu-rx:"):
            continue
        if k.startswith("cpu-tx:"):
            kind = k.removeprefix("cpu-tx:")
            print(f"{'cpu/Gbit ' + kind:36s} tx {v:5.2f} s, rx {res['cpu-rx:' + kind]:5.2f} s"
                  "  (forwarder CPU seconds per Gbit, sending / receiving host)")
        elif k.startswith("ratio:"):
            a, b = k.removeprefix("ratio:").split("/")
            goal = f"  (goal >= {UDP_GOALS[k]})" if k in UDP_GOALS else \
                "  (goal >= 0.95)" if a.removeprefix("weft-") == b.removeprefix("hand-") else ""
            print(f"{k:36s} {v:6.3f}x{goal}")
        else:
            note = "  (alone)" if args.mode == "sequential" or k in alone else \
                "  (per flow, two flows at once)"
            print(f"{k:36s} {v:6.2f} Gbit/s{note}"
                  + (f"  [{UDP_NOTES[k]}]" if k in UDP_NOTES else ""))
    if any(k.startswith("cpu-tx:") for k in res):
        print("(kernel VXLAN's work runs in softirq, charged to the iperf3 processes: no "
              "forwarder CPU to show)")
    print(f"(iperf3 {args.seconds:g} s x {args.streams} stream(s), {args.mode}, medians over "
          f"{args.rounds} rounds, {time.monotonic() - started:.0f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

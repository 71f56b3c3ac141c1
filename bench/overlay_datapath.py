"""Data-path throughput: weft's backends vs the same topology configured by hand as flannel does.

Each scenario builds a fresh two-host netns testbed with one container per host,
programs it (by weft's backend harness, or by hand with ip/bridge commands the
way flannel configures it), and runs iperf3 container-to-container with the
client and server pinned to different cores. weft/hand pairs are interleaved
over several rounds and the median taken, so load from other processes hits
both sides alike. Prints each figure and the ratio against its reference.

    .venv/bin/python bench/overlay_datapath.py [--seconds 5] [--rounds 3] [--streams 1]

Importable without side effects: ``measure(kind, seconds)`` returns Gbit/s for
one of ``SCENARIOS``; ``run(seconds, rounds)`` returns all figures and ratios.
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
from collections.abc import Iterator
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == _ROOT / "bench":
    sys.path[0] = str(_ROOT)  # run as a script: bench/overlay.py must not shadow the package

from overlay.backend.registry import (  # noqa: E402
    DriverProcess,
    lease_backend_type,
    lease_from_json,
)
from overlay.testbed import Testbed, open_testbed  # noqa: E402

SCENARIOS = ("underlay", "hand-vxlan", "weft-vxlan", "hand-host-gw", "weft-host-gw", "weft-udp")
HOSTS = ("h1", "h2")
NETWORK = "10.244.0.0/16"
PORT = 5201


def _subnet(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.244.{i}.0/24")


def _cores() -> tuple[str, str]:
    n = os.cpu_count() or 1
    return ("0", "1") if n >= 2 else ("0", "0")


def _random_mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _hand_vxlan(tb: Testbed) -> int:
    """flannel's vxlan state, by hand: device, address, per-peer neigh/FDB/onlink route."""
    macs = {name: _random_mac() for name in HOSTS}
    for i, name in enumerate(HOSTS, 1):
        h = tb.hosts[name]
        ns = h.netns
        tb.exec(ns, ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local",
                     str(h.ip), "dev", "eth0", "dstport", "8472", "nolearning"])
        tb.exec(ns, ["ip", "link", "set", "flannel.1", "address", macs[name], "mtu", "1450",
                     "up"])
        tb.exec(ns, ["ip", "addr", "add", f"{_subnet(i).network_address}/32", "dev",
                     "flannel.1"])
    for name in HOSTS:
        for j, peer in enumerate(HOSTS, 1):
            if peer == name:
                continue
            ns, gw = tb.hosts[name].netns, str(_subnet(j).network_address)
            tb.exec(ns, ["ip", "neigh", "replace", gw, "lladdr", macs[peer], "dev",
                         "flannel.1", "nud", "permanent"])
            tb.exec(ns, ["bridge", "fdb", "replace", macs[peer], "dev", "flannel.1", "dst",
                         str(tb.hosts[peer].ip), "self", "permanent"])
            tb.exec(ns, ["ip", "route", "replace", str(_subnet(j)), "via", gw, "dev",
                         "flannel.1", "onlink"])
    return 1450


def _hand_hostgw(tb: Testbed) -> int:
    for name in HOSTS:
        for j, peer in enumerate(HOSTS, 1):
            if peer != name:
                tb.exec(tb.hosts[name].netns, ["ip", "route", "replace", str(_subnet(j)),
                                               "via", str(tb.hosts[peer].ip), "dev", "eth0"])
    return 1500


@contextlib.contextmanager
def _weft(tb: Testbed, btype: str) -> Iterator[int]:
    """Run weft's backend on both hosts for the duration of the block."""
    drivers: list[DriverProcess] = []
    leases: list[dict[str, object]] = []
    mtu = 1500
    try:
        for i, name in enumerate(HOSTS, 1):
            d = DriverProcess(tb.hosts[name].netns, btype, "eth0", network=NETWORK,
                              python=sys.executable)
            drivers.append(d)
            ready = d.call({"op": "prepare"})
            mtu = int(ready["mtu"])
            lease = {"subnet": str(_subnet(i)), "public_ip": str(tb.hosts[name].ip),
                     "type": lease_backend_type(btype), "data": ready["data"]}
            lease_from_json(lease)  # validates the shape
            leases.append(lease)
            d.call({"op": "attach", "lease": lease})
        for i, d in enumerate(drivers):
            d.call({"op": "reconcile", "peers": [p for j, p in enumerate(leases) if j != i]})
        yield mtu
    finally:
        for d in drivers:
            d.stop()


def _iperf(tb: Testbed, server_ns: str, client_ns: str, target: str, seconds: float,
           streams: int) -> float:
    """Gbit/s received, client and server pinned to different cores."""
    cs, cc = _cores()
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "taskset", "-c", cs, "iperf3",
                            "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait for the listener
            ss = tb.exec(server_ns, ["ss", "-ltn", f"sport = :{PORT}"], check=False).stdout
            if f":{PORT}" in ss:
                break
            time.sleep(0.05)
        out = tb.exec(client_ns, ["taskset", "-c", cc, "iperf3", "-c", target, "-p", str(PORT),
                                  "-t", str(seconds), "-P", str(streams), "-J"],
                      timeout=seconds + 30).stdout
        result = json.loads(out)
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.wait(timeout=5)
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def measure(kind: str, seconds: float = 5, streams: int = 1) -> float:
    """Throughput in Gbit/s of one scenario from ``SCENARIOS`` on a fresh testbed."""
    if kind not in SCENARIOS:
        raise ValueError(f"unknown scenario {kind!r}; one of {SCENARIOS}")
    with open_testbed(len(HOSTS)) as tb:
        if kind == "underlay":
            return _iperf(tb, tb.hosts["h2"].netns, tb.hosts["h1"].netns, str(tb.hosts["h2"].ip),
                          seconds, streams)
        with contextlib.ExitStack() as stack:
            if kind == "hand-vxlan":
                mtu = _hand_vxlan(tb)
            elif kind == "hand-host-gw":
                mtu = _hand_hostgw(tb)
            else:
                mtu = stack.enter_context(_weft(tb, kind.removeprefix("weft-")))
            for i, name in enumerate(HOSTS, 1):
                tb.add_container(name, "c", ipaddress.IPv4Interface(f"10.244.{i}.2/24"),
                                 mtu=mtu)
            c1, c2 = tb.containers["h1/c"], tb.containers["h2/c"]
            if not tb.wait_ping(c1.netns, "10.244.2.2", within=10):
                raise RuntimeError(f"{kind}: containers cannot reach each other")
            return _iperf(tb, c2.netns, c1.netns, "10.244.2.2", seconds, streams)


def run(seconds: float = 5, rounds: int = 3, streams: int = 1,
        kinds: tuple[str, ...] = SCENARIOS) -> dict[str, float]:
    """Median Gbit/s per scenario (pairs interleaved per round) plus ``ratio:*`` entries."""
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            if k in ("underlay", "weft-udp") and samples[k]:
                continue  # one sample of the informational figures is enough
            samples[k].append(measure(k, seconds, streams))
    out = {k: statistics.median(v) for k, v in samples.items() if v}
    for a, b in (("weft-vxlan", "hand-vxlan"), ("weft-host-gw", "hand-host-gw"),
                 ("weft-udp", "weft-vxlan"), ("hand-vxlan", "underlay")):
        if a in out and b in out and out[b] > 0:
            out[f"ratio:{a}/{b}"] = out[a] / out[b]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    res = run(args.seconds, args.rounds, args.streams, tuple(args.only))
    for k, v in res.items():
        if k.startswith("ratio:"):
            goal = "  (goal >= 0.95)" if "hand" in k.split("/")[1] and "weft" in k else ""
            print(f"{k:36s} {v:6.3f}x{goal}")
        else:
            print(f"{k:36s} {v:6.2f} Gbit/s")
    print(f"(iperf3 {args.seconds:g} s x {args.streams} stream(s), median of {args.rounds} "
          f"rounds, {time.monotonic() - started:.0f} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

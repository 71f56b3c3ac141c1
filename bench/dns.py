"""dnsd vs Knot under dnsperf: queries/s, lost queries and latency, same names, same run.

Run: ``.venv/bin/python bench/dns.py [--seconds 10] [--names 200] [--rounds 2]``.
Starts a private etcd and registers NAMES services (A records); starts dnsd three
times (default recvmmsg batching on 127.0.0.1; the same on a wildcard ``-addr :PORT``,
whose replies carry the queried address as their source; and ``-udp-batch=false``)
and Knot (``knotd``, one UDP worker, a zone file with the same names), all on free
loopback ports and pinned to CPU 0; drives each with dnsperf pinned to CPU 1 for
SECONDS (A queries for every name plus one missing name in ten), alternating
servers for ROUNDS rounds so load from other work on the machine hits them alike.
Prints every figure, the ratios to Knot and the wildcard's to 127.0.0.1's.
Processes and temp dirs are removed at the end, also on failure. Loopback only
(dnsd-any listens on every address of the namespace, but only 127.0.0.1 is queried).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONE = "skydns.local"


def _cpu_pins() -> tuple[str, str]:
    n = os.cpu_count() or 1
    return ("0", "1") if n >= 2 else ("0", "0")


def _names(count: int) -> list[tuple[str, str]]:
    return [(f"svc{i}.bench.{ZONE}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
            for i in range(1, count + 1)]


def _queries(names: list[tuple[str, str]], path: Path) -> None:
    lines = []
    for i, (name, _) in enumerate(names):
        lines.append(f"{name} A")
        if i % 10 == 0:
            lines.append(f"missing{i}.bench.{ZONE} A")
    path.write_text("\n".join(lines) + "\n")


def _wait_dns(port: int, name: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port),
                            "@127.0.0.1", name, "A"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return True
        time.sleep(0.2)
    return False


def dnsperf(port: int, queries: Path, seconds: int, cpu: str) -> dict[str, float]:
    argv = ["taskset", "-c", cpu, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
            "-d", str(queries), "-l", str(seconds), "-t", "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout

    def grab(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    return {
        "sent": grab(r"Queries sent:\s+(\d+)"),
        "completed": grab(r"Queries completed:\s+(\d+)"),
        "lost": grab(r"Queries lost:\s+(\d+)"),
        "qps": grab(r"Queries per second:\s+([\d.]+)"),
        "avg_ms": grab(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "argv": " ".join(argv),  # type: ignore[dict-item]
    }


async def _load(endpoint: str, names: list[tuple[str, str]]) -> None:
    from overlay.store.api import StoreConfig
    from overlay.store.client import connect

    store = await connect(StoreConfig.from_flag(endpoint))
    try:
        for name, ip in names:
            key = "/skydns/" + "/".join(reversed(name.split(".")))
            await store.put(key.encode(), json.dumps({"host": ip}).encode())
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--names", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    args = ap.parse_args(argv)
    for tool in ("etcd", "etcdctl", "knotd", "dnsperf", "dig", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/dns.py: needs {tool} (make deps installs it)", file=sys.stderr)
            return 2
    sys.path.insert(0, str(ROOT))
    from overlay.store.embedded.launch import free_port, start_etcd

    server_cpu, client_cpu = _cpu_pins()
    load0 = os.getloadavg()[0]
    names = _names(args.names)
    tmp = Path(tempfile.mkdtemp(prefix="weft-bench-dns-"))
    procs: list[subprocess.Popen[bytes]] = []
    etcd = None
    try:
        etcd = start_etcd(tmp / "etcd")
        asyncio.run(_load(etcd.endpoint, names))
        queries = tmp / "queries.txt"
        _queries(names, queries)

        ports: dict[str, int] = {}
        for label, host, extra in (("dnsd", "127.0.0.1", []), ("dnsd-any", "", []),
                                   ("dnsd-plain", "127.0.0.1", ["-udp-batch=false"])):
            dport = free_port()
            ports[label] = dport
            procs.append(subprocess.Popen(
                ["taskset", "-c", server_cpu, str(ROOT / ".venv/bin/dnsd"),
                 f"-addr={host}:{dport}", "-etcd-endpoints", etcd.endpoint, *extra],
                stderr=open(tmp / f"{label}.log", "wb")))  # noqa: SIM115
            if not _wait_dns(dport, names[0][0]):
                print(f"{label} did not come up; log:",
                      (tmp / f"{label}.log").read_text()[-2000:])
                return 1

        kport = free_port()
        zone = tmp / f"{ZONE}.zone"
        zone.write_text(
            f"$ORIGIN {ZONE}.\n$TTL 3600\n"
            f"@ SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 28800 7200 604800 60\n"
            f"@ NS ns.dns.{ZONE}.\nns.dns A 127.0.0.1\n"
            + "".join(f"{n}. A {ip}\n" for n, ip in names))
        conf = tmp / "knot.conf"
        conf.write_text(
            f"server:\n    rundir: {tmp}\n    listen: 127.0.0.1@{kport}\n"
            f"    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
            f"database:\n    storage: {tmp}\n"
            f"template:\n  - id: default\n    storage: {tmp}\n"
            f"zone:\n  - domain: {ZONE}\n    file: {zone}\n")
        procs.append(subprocess.Popen(
            ["taskset", "-c", server_cpu, "knotd", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "knot.log", "wb")))  # noqa: SIM115
        if not _wait_dns(kport, names[0][0]):
            print("knotd did not come up; log:", (tmp / "knot.log").read_text()[-2000:])
            return 1

        ports["knot"] = kport
        # Alternate the servers so a load change on this shared machine hits them all.
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in ports}
        for _ in range(args.rounds):
            for label, port in ports.items():
                runs[label].append(dnsperf(port, queries, args.seconds, client_cpu))
        print(f"load average before: {os.getloadavg()[0]:.1f} ({load0:.1f} at start); "
              f"server CPU {server_cpu}, dnsperf CPU {client_cpu}, {len(names)} names")
        for label, rounds in runs.items():
            for i, r in enumerate(rounds):
                print(f"{label:10s} round {i + 1}: {r['qps']:>10,.0f} q/s  avg "
                      f"{r['avg_ms']:.3f} ms  lost {r['lost']:.0f}/{r['sent']:.0f}")
        print(f"dnsperf: {runs['dnsd'][0]['argv']}  (port differs per server)")
        wild = [a["qps"] / d["qps"] for a, d in zip(runs["dnsd-any"], runs["dnsd"], strict=True)]
        print("ratio dnsd-any/dnsd per round (wildcard -addr vs 127.0.0.1): "
              + ", ".join(f"{x:.2f}x" for x in wild))
        for label in ("dnsd", "dnsd-any", "dnsd-plain"):
            ratios = [d["qps"] / k["qps"] for d, k in zip(runs[label], runs["knot"], strict=True)]
            best = max(r["qps"] for r in runs[label]) / max(r["qps"] for r in runs["knot"])
            print(f"ratio {label}/knot per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
                  + f"; best rounds {best:.2f}x")
        print("goal: dnsd >= 0.75x Knot, no lost queries, avg < 1 ms "
              "(dnsd = recvmmsg batching, the default; dnsd-any = the same on -addr :PORT; "
              "dnsd-plain = -udp-batch=false)")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if etcd is not None:
            etcd.stop(kill=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

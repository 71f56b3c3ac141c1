"""Scheduler benchmark (issue 13): launch at scale, store writes per unit, crash failover,
steady-state cost. No root needed: everything runs on loopback.

    .venv/bin/python bench/sched.py [--units 1000] [--agents 50] [--kills 10]
                                    [--steady-seconds 20] [--skip-reference]

The store is weft's embedded store in its own process, with every gRPC request counted
by method (``--serve-store`` mode of this script: the server's method table wrapped, the
server itself unchanged) and its revision sampled, so writes and requests are counted on
the store side. Agents are real ``overlay.sched.agent.Agent`` objects wired as
``weftctl agent`` wires them (supervisor runner, engine in every agent), each in its own
process (``--agents-worker`` mode), all on 127.0.0.1; units are no-op
(``ExecStart=/bin/sleep``).

1. **Launch**: ``--units`` units started at once (``weftctl start --no-block`` over the
   registry API) onto ``--agents`` agents: time until every unit reports ``active``, and
   store writes per unit from submit to launched (revision delta / units; goal <= 10).
   Reference (same run): the same number of writes as single puts from one client, the
   store's own floor for that much writing.
2. **Steady state** with every unit launched: store requests per second other than lease
   keep-alives (goal 0), agent RSS (max over agents; goal < 60 MiB) and CPU. Reference:
   the RSS of a bare interpreter that imports the agent's modules.
3. **Failover**: 15 stable agents (one of them leader) and ``--kills`` victim agents (no
   engine), one unit on each victim; every victim process is SIGKILLed at once (a host
   crash: its units die with it) and the time from the kill to the unit reporting active
   on another machine is measured per unit: p50/p99, goal p99 < 15 s with default
   timings. Reference (same run, same engine): fleet's timing model, presence TTL 30 s
   beaten every 15 s and no grace; fleet's 2 s engine interval and 5 s agent loop are
   polling delays our event-driven engine and agent do not have, so they are added as
   sampled uniform delays (seeded) and printed separately.

Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: bench/overlay.py must not shadow the package
PY = sys.executable
NOOP = "[Service]\nExecStart=/bin/sleep 1000000\n"
HOST = "127.0.0.1"


# -- the counting store (runs in its own process) -----------------------------------------


def serve_store(data: str, port: int, counts_path: str) -> None:
    """Run the embedded store on ``port``, writing request counts and the revision to
    ``counts_path`` every 0.25 s (atomic rename)."""
    from overlay.store.embedded import server as srv
    from overlay.store.embedded.grpcwire import Method

    counts: dict[str, int] = {}
    original = srv.methods

    def counted_methods(service: Any) -> dict[bytes, Method]:
        table = original(service)
        for path, m in list(table.items()):
            name = path.decode().rsplit("/", 1)[-1]
            if m.unary is not None:
                async def unary(req: Any, ctx: Any, h: Any = m.unary, n: str = name) -> Any:
                    counts[n] = counts.get(n, 0) + 1
                    return await h(req, ctx)
                table[path] = Method(m.parse, unary=unary)
            elif m.stream is not None:
                async def stream(reqs: Any, ctx: Any, h: Any = m.stream, n: str = name) -> Any:
                    async def each() -> Any:
                        async for r in reqs:
                            counts[n] = counts.get(n, 0) + 1
                            yield r
                    async for resp in h(each(), ctx):
                        yield resp
                table[path] = Method(m.parse, stream=stream)
        return table

    srv.methods = counted_methods  # type: ignore[assignment]

    async def main() -> None:
        server = srv.EmbeddedServer(Path(data), HOST, port)
        await server.start()
        tmp = counts_path + ".tmp"
        while True:
            assert server.state is not None
            with open(tmp, "w") as f:
                json.dump({"revision": server.state.revision, "counts": counts,
                           "t": time.monotonic()}, f)
            os.replace(tmp, counts_path)
            await asyncio.sleep(0.25)

    asyncio.run(main())


class CountingStore:
    def __init__(self, workdir: Path) -> None:
        from overlay.store.embedded.launch import free_port, wait_tcp

        self.port = free_port(HOST)
        self.counts_path = workdir / "counts.json"
        with open(workdir / "store.log", "w") as log:
            self.proc = subprocess.Popen(
                [PY, __file__, "--serve-store", str(workdir / "store"), str(self.port),
                 str(self.counts_path)], cwd=ROOT, stderr=log)
        if not wait_tcp(HOST, self.port, 30) or not self._wait_counts():
            raise RuntimeError("the counting store did not start (see store.log)")
        self.endpoint = f"http://{HOST}:{self.port}"

    def _wait_counts(self) -> bool:
        for _ in range(200):
            if self.counts_path.exists():
                return True
            time.sleep(0.05)
        return False

    def sample(self) -> dict[str, Any]:
        before = json.loads(self.counts_path.read_text())
        while True:  # a fresh sample, written after this call
            time.sleep(0.05)
            now = json.loads(self.counts_path.read_text())
            if now["t"] != before["t"]:
                return dict(now)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- agents (each worker process runs one or more) ----------------------------------------


def agents_worker(spec_json: str) -> None:
    """Run the agents described by ``spec_json``; print one JSON line per ready agent."""
    spec = json.loads(spec_json)
    import ipaddress
    import logging

    if os.environ.get("WEFT_BENCH_LOG_DIR"):  # debugging a run: one log file per worker
        logging.basicConfig(
            filename=os.path.join(os.environ["WEFT_BENCH_LOG_DIR"],
                                  f"{spec['agents'][0]['id']}.log"),
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from overlay.sched.agent import Agent, AgentConfig
    from overlay.sched.engine import run_engine
    from overlay.sched.fence import Timings
    from overlay.sched.supervisor import Supervisor
    from overlay.store.api import StoreConfig
    from overlay.store.client import EtcdStore

    async def one(a: dict[str, Any]) -> None:
        timings = Timings(**spec["timings"])
        cfg = AgentConfig(a["id"], ipaddress.IPv4Address(HOST), 0, a.get("metadata", {}),
                          spec["root"], "bench.local.", timings,
                          Path(spec["state_dir"]) / a["id"], a.get("engine", True))
        store = EtcdStore(StoreConfig((spec["endpoint"],)))

        async def engine(agent: Agent) -> None:
            await run_engine(agent.store, cfg.machine_id, cfg.timings, agent.keys)

        agent = Agent(cfg, store, lambda cb: Supervisor(cb), None, engine)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        print(json.dumps({"ready": a["id"], "pid": os.getpid()}), flush=True)
        await task

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for a in spec["agents"]:
                tg.create_task(one(a))

    asyncio.run(main())


class Agents:
    """Agent worker processes; each started in its own process group."""

    def __init__(self, endpoint: str, root: str, state_dir: Path,
                 timings: dict[str, float]) -> None:
        self.endpoint, self.root, self.state_dir, self.timings = (
            endpoint, root, state_dir, timings)
        self.procs: dict[str, subprocess.Popen[str]] = {}  # first agent id -> process

    def start(self, agents: list[dict[str, Any]]) -> subprocess.Popen[str]:
        spec = {"endpoint": self.endpoint, "root": self.root, "state_dir": str(self.state_dir),
                "timings": self.timings, "agents": agents}
        proc = subprocess.Popen([PY, __file__, "--agents-worker", json.dumps(spec)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.procs[agents[0]["id"]] = proc
        return proc

    @staticmethod
    def wait_ready(procs: Sequence[subprocess.Popen[str]], per_proc: int,
                   timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in procs:
            for _ in range(per_proc):
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line or time.monotonic() > deadline:
                    raise RuntimeError("an agent did not become ready")

    def kill(self, first_id: str) -> None:
        proc = self.procs.pop(first_id)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- store helpers run in the bench process -------------------------------------------------


async def _connect(endpoint: str) -> Any:
    from overlay.store.api import StoreConfig
    from overlay.store.client import connect
    return await connect(StoreConfig((endpoint,)))


async def watch_active(store: Any, root: str, start_rev: int, units: dict[str, str | None],
                       t0: float, timeout: float) -> dict[str, float]:
    """Seconds after ``t0`` at which each unit reported active on a machine other than
    ``units[unit]`` (None: any machine); stops at ``timeout`` with what it has."""
    from overlay.sched.keys import Layout
    from overlay.sched.registry import Snapshot, Verb, Waiter

    layout = Layout(root)
    waiter = Waiter(Verb.START, units, Snapshot(), layout)
    when: dict[str, float] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            async for batch in store.watch(root.encode(), start_rev):
                waiter.feed(batch)
                for unit, old in units.items():
                    if unit not in when and any(m != old for m in waiter.where(unit)):
                        when[unit] = time.monotonic() - t0
                if len(when) == len(units):
                    break
    return when


async def submit_and_wait(endpoint: str, root: str, names: Sequence[str], workdir: Path,
                          timeout: float) -> tuple[float, dict[str, float]]:
    """Start ``names`` (no-op units) and wait until each reports active somewhere.
    Returns (seconds from submit to all active, unit -> seconds to active)."""
    import io

    from overlay.cli.fleet_cmd import run_verb
    from overlay.sched.keys import Layout
    from overlay.sched.registry import Verb

    for n in names:
        (workdir / n).write_text(NOOP)
    store = await _connect(endpoint)
    try:
        start_rev = (await store.list(b"/bench-nothing/")).revision + 1
        t0 = time.monotonic()
        await run_verb(store, Layout(root), Verb.START, [str(workdir / n) for n in names],
                       block=False, attempts=0, out=io.StringIO())
        when = await watch_active(store, root, start_rev, dict.fromkeys(names), t0, timeout)
        return time.monotonic() - t0, when
    finally:
        await store.close()


async def put_floor(endpoint: str, writes: int) -> float:
    store = await _connect(endpoint)
    try:
        t0 = time.monotonic()
        for i in range(writes):
            await store.put(f"/bench-floor/{i}".encode(), NOOP.encode())
        return time.monotonic() - t0
    finally:
        await store.close()


async def leader_of(endpoint: str, root: str) -> str | None:
    from overlay.sched.keys import Layout
    from overlay.sched.model import Leader
    store = await _connect(endpoint)
    try:
        kv = await store.get(Layout(root).leader().encode())
        return None if kv is None else Leader.from_json("leader", kv.value).machine
    finally:
        await store.close()


async def failover_times(endpoint: str, root: str, victims: dict[str, str | None],
                         kill: Any, timeout: float) -> dict[str, float]:
    """Kill every victim at once; unit -> seconds until it is active on another machine."""
    store = await _connect(endpoint)
    try:
        rev = (await store.list(b"/bench-nothing/")).revision + 1
        t0 = time.monotonic()
        kill()
        return await watch_active(store, root, rev, victims, t0, timeout)
    finally:
        await store.close()


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# -- scenarios --------------------------------------------------------------------------------


def launch_and_steady(store: CountingStore, workdir: Path, n_units: int, n_agents: int,
                      steady_s: float) -> dict[str, Any]:
    from overlay.sched.fence import Timings
    t = Timings()
    agents = Agents(store.endpoint, "/bench/launch/", workdir / "agents-launch",
                    {"ttl": t.ttl, "renew": t.renew, "grace": t.grace,
                     "probe_timeout": t.probe_timeout})
    try:
        procs = [agents.start([{"id": f"m{i:02d}"}]) for i in range(n_agents)]
        Agents.wait_ready(procs, 1, 180)
        names = [f"noop-{i:04d}.service" for i in range(n_units)]
        (workdir / "units").mkdir()
        before = store.sample()
        total, when = asyncio.run(submit_and_wait(store.endpoint, "/bench/launch/", names,
                                                  workdir / "units", 600))
        after = store.sample()
        writes = after["revision"] - before["revision"]
        floor = asyncio.run(put_floor(store.endpoint, writes))
        # steady state
        time.sleep(3)
        pids = [p.pid for p in procs]
        s0, c0 = store.sample(), {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(steady_s)
        s1, c1 = store.sample(), {pid: cpu_seconds(pid) for pid in pids}
        dt = s1["t"] - s0["t"]
        diff = {k: s1["counts"].get(k, 0) - s0["counts"].get(k, 0)
                for k in set(s1["counts"]) | set(s0["counts"])}
        keepalives = diff.pop("LeaseKeepAlive", 0)
        other = {k: v for k, v in diff.items() if v}
        rss = [rss_mib(pid) for pid in pids]
        cpu = [(c1[pid] - c0[pid]) / dt * 100 for pid in pids]
        return {"launch_s": total, "p50_unit_s": statistics.median(when.values()),
                "writes": writes, "writes_per_unit": writes / n_units, "floor_s": floor,
                "steady_other_rps": sum(other.values()) / dt, "steady_other": other,
                "keepalive_rps": keepalives / dt, "revision_delta": s1["revision"] - s0[
                    "revision"], "rss_max": max(rss), "rss_median": statistics.median(rss),
                "cpu_mean_pct": statistics.mean(cpu), "cpu_max_pct": max(cpu),
                "agents": n_agents}
    finally:
        agents.stop_all()


def failover(store: CountingStore, workdir: Path, label: str, timings: dict[str, float],
             kills: int, stable: int = 15) -> list[float]:
    root = f"/bench/failover-{label}/"
    agents = Agents(store.endpoint, root, workdir / f"agents-{label}", timings)
    try:
        stable_proc = agents.start([{"id": f"s{i:02d}"} for i in range(stable)])
        Agents.wait_ready([stable_proc], stable, 120)
        fillers = [f"fill-{i:02d}.service" for i in range(2 * stable)]
        (workdir / f"units-{label}").mkdir()
        asyncio.run(submit_and_wait(store.endpoint, root, fillers, workdir / f"units-{label}",
                                    120))
        for _ in range(100):
            if asyncio.run(leader_of(store.endpoint, root)):
                break
            time.sleep(0.1)
        victims = [agents.start([{"id": f"v{i:02d}", "engine": False}]) for i in range(kills)]
        Agents.wait_ready(victims, 1, 120)
        names = [f"fo-{i:02d}.service" for i in range(kills)]
        _, _ = asyncio.run(submit_and_wait(store.endpoint, root, names,
                                           workdir / f"units-{label}", 120))
        where = asyncio.run(_placement(store.endpoint, root, names))
        victim_ids = {f"v{i:02d}" for i in range(kills)}
        on_victims: dict[str, str | None] = {u: m for u, m in where.items() if m in victim_ids}

        def kill() -> None:
            for vid in sorted(victim_ids):
                agents.kill(vid)

        budget = 20 + 3 * timings["ttl"] + timings["grace"]
        got = asyncio.run(failover_times(store.endpoint, root, on_victims, kill, budget))
        missing = set(on_victims) - set(got)
        if missing:
            print(f"  {label}: {len(missing)} unit(s) did not come back within {budget:.0f} s")
        return list(got.values())
    finally:
        agents.stop_all()


async def _placement(endpoint: str, root: str, names: Sequence[str]) -> dict[str, str]:
    from overlay.sched.keys import Layout
    from overlay.sched.registry import read_snapshot
    store = await _connect(endpoint)
    try:
        snap = await read_snapshot(store, Layout(root))
        return {n: snap.assignments[n][0] for n in names if snap.assignments.get(n)}
    finally:
        await store.close()


def bare_rss() -> float:
    code = ("import overlay.sched.agent, overlay.sched.engine, overlay.sched.supervisor, "
            "overlay.store.client, sys, time; print('x', flush=True); time.sleep(30)")
    proc = subprocess.Popen([PY, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steady-seconds", type=float, default=20.0)
    ap.add_argument("--skip-reference", action="store_true",
                    help="skip fleet's timing model (saves about a minute)")
    ap.add_argument("--serve-store", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--agents-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_store:
        serve_store(args.serve_store[0], int(args.serve_store[1]), args.serve_store[2])
        return 0
    if args.agents_worker:
        agents_worker(args.agents_worker)
        return 0

    from overlay.sched.fence import Timings
    with tempfile.TemporaryDirectory(prefix="weft-bench-sched-") as tmp:
        workdir = Path(tmp)
        store = CountingStore(workdir)
        try:
            print(f"== launch: {args.units} units onto {args.agents} agents (no-op units)")
            r = launch_and_steady(store, workdir, args.units, args.agents, args.steady_seconds)
            print(f"  all launched in {r['launch_s']:.2f} s (median unit {r['p50_unit_s']:.2f} s)"
                  f"; reference: the same {r['writes']} writes as single puts from one client "
                  f"{r['floor_s']:.2f} s -> ratio {r['launch_s'] / r['floor_s']:.2f}x")
            print(f"  store writes per unit, submit to launched: {r['writes_per_unit']:.2f} "
                  f"(goal <= 10)")
            print(f"== steady state, {args.units} launched units, {args.steady_seconds:.0f} s")
            print(f"  store requests/s other than lease keep-alives: "
                  f"{r['steady_other_rps']:.2f} (goal 0) {r['steady_other'] or ''}; "
                  f"keep-alives {r['keepalive_rps']:.1f}/s; revisions written "
                  f"{r['revision_delta']}")
            ref = bare_rss()
            print(f"  agent RSS max {r['rss_max']:.1f} MiB, median {r['rss_median']:.1f} MiB "
                  f"(goal < 60); reference bare interpreter with the agent's imports "
                  f"{ref:.1f} MiB -> ratio {r['rss_max'] / ref:.2f}x")
            print(f"  agent CPU mean {r['cpu_mean_pct']:.2f}% of a core, max "
                  f"{r['cpu_max_pct']:.2f}%")
            t = Timings()
            ours_t = {"ttl": t.ttl, "renew": t.renew, "grace": t.grace,
                      "probe_timeout": t.probe_timeout}
            print(f"== failover: {args.kills} hosts crash at once (SIGKILL); defaults TTL "
                  f"{t.ttl:g} s, renew {t.renew:g} s, grace {t.grace:g} s")
            ours = failover(store, workdir, "weft", ours_t, args.kills)
            if ours:
                print(f"  weft: p50 {pct(ours, 50):.2f} s, p99 {pct(ours, 99):.2f} s over "
                      f"{len(ours)} units (goal p99 < 15 s)")
            if not args.skip_reference:
                fleet_t = {"ttl": 30.0, "renew": 15.0, "grace": 0.0, "probe_timeout": 1.0}
                ref_times = failover(store, workdir, "fleet", fleet_t, args.kills)
                if ref_times and ours:
                    rng = random.Random(7)
                    modelled = [x + rng.uniform(0, 2) + rng.uniform(0, 5) for x in ref_times]
                    print(f"  reference, fleet's timings on the same engine (TTL 30 s, "
                          f"heartbeat 15 s, no grace): p50 {pct(ref_times, 50):.2f} s, "
                          f"p99 {pct(ref_times, 99):.2f} s; plus fleet's 2 s engine and 5 s "
                          f"agent polling (sampled): p50 {pct(modelled, 50):.2f} s, p99 "
                          f"{pct(modelled, 99):.2f} s -> weft/fleet p99 ratio "
                          f"{pct(ours, 99) / pct(modelled, 99):.2f}x")
        finally:
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The agent against a real store (the embedded server as a process): it registers its
presence, runs what is assigned to it, reports state under its lease, restarts a
crashed unit, stops a unit whose assignment goes away, serves /presence and /journal,
and fences: with the store gone and no peer sharing the outage it stops its units
within the presence TTL."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from overlay.sched.agent import Agent, AgentConfig, http_get
from overlay.sched.fence import Timings
from overlay.sched.keys import LAYOUT
from overlay.sched.model import Assignment, DesiredState, MachineRecord
from overlay.sched.supervisor import Supervisor
from overlay.store.api import StoreConfig
from overlay.store.client import connect
from overlay.store.embedded.launch import StoreProcess, start_embedded

# short enough to keep the fencing test quick, long enough that a loaded machine (load
# average 20 on 2 cores) does not miss renewals and re-register in the middle of a test
FAST = Timings(ttl=3, renew=0.5, grace=1.5, probe_timeout=0.3)


def unit(code: str, extra: str = "") -> str:
    return (f"[Unit]\nDescription=test\n\n[Service]\nExecStart={sys.executable} -c \"{code}\"\n"
            f"{extra}")


async def until(check: Callable[[], object], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def store_proc(tmp_path: Path) -> AsyncIterator[StoreProcess]:
    proc = start_embedded(tmp_path / "data", log=tmp_path / "store.log")
    try:
        yield proc  # type: ignore[misc]
    finally:
        proc.stop(kill=True)


@contextlib.asynccontextmanager
async def running_agent(endpoint: str, tmp: Path, mid: str = "m1") -> AsyncIterator[Agent]:
    store = await connect(StoreConfig((endpoint,), timeout=1.0))
    cfg = AgentConfig(mid, ipaddress.IPv4Address("127.0.0.1"), 0, {"host": "h1"},
                      timings=FAST, state_dir=tmp / mid, engine=False)
    agent = Agent(cfg, store, lambda cb: Supervisor(cb), None)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_runs_restarts_reports_and_stops(store_proc: StoreProcess, tmp_path: Path) -> None:
    keys = LAYOUT
    admin = await connect(StoreConfig((store_proc.endpoint,)))
    try:
        async with running_agent(store_proc.endpoint, tmp_path) as agent:
            m = await admin.get(keys.machine("m1").encode())
            assert m is not None and m.lease == agent.lease
            assert json.loads(m.value)["metadata"] == {"host": "h1"}
            text = unit("import os,time; print('pid', os.getpid(), flush=True); time.sleep(60)",
                        "Restart=always\nRestartSec=0.2\n")
            a = Assignment("sleeper.service", "h1", text, DesiredState.LAUNCHED)
            await admin.put(keys.assign("m1", "sleeper.service").encode(), a.to_json())

            async def state() -> dict[str, object] | None:
                kv = await admin.get(keys.state("sleeper.service", "m1").encode())
                return json.loads(kv.value) if kv else None

            await until(lambda: _sub(state(), "running"))
            first = await state()
            assert first is not None and first["machine"] == "m1"
            kv = await admin.get(keys.state("sleeper.service", "m1").encode())
            assert kv is not None and kv.lease == agent.lease
            async def pids_logged() -> int:
                body = await http_get("127.0.0.1", agent.http_port,
                                      "/journal/sleeper.service?n=50", 2)
                return sum(1 for line in json.loads(body)["lines"] if line.startswith("pid "))

            # the state says running at spawn: wait for the unit's own first line before the
            # kill, or a loaded machine kills it before it ever logs
            await until(lambda: _at_least(pids_logged(), 1))
            # crash it: Restart=always brings it back with a new pid
            import os
            import signal
            os.kill(int(str(first["pid"])), signal.SIGKILL)
            await until(lambda: _pid_changed(state(), first["pid"]))

            await until(lambda: _at_least(pids_logged(), 2))
            presence = json.loads(await http_get("127.0.0.1", agent.http_port, "/presence", 2))
            assert presence["machine"] == "m1" and presence["holding"] is True
            # unassign: stopped, state removed
            await admin.delete(keys.assign("m1", "sleeper.service").encode())
            await until(lambda: _gone(state()))
            st = agent.runner.status("sleeper.service")
            assert st is not None and not st.running
    finally:
        await admin.close()


async def test_loaded_unit_reports_inactive_and_its_state_goes_with_the_assignment(
        store_proc: StoreProcess, tmp_path: Path) -> None:
    keys = LAYOUT
    admin = await connect(StoreConfig((store_proc.endpoint,)))
    try:
        async with running_agent(store_proc.endpoint, tmp_path):
            a = Assignment("idle.service", "h", unit("import time; time.sleep(60)"),
                           DesiredState.LOADED)
            akey = keys.assign("m1", "idle.service").encode()
            skey = keys.state("idle.service", "m1").encode()
            await admin.put(akey, a.to_json())
            await until(lambda: admin.get(skey))
            kv = await admin.get(skey)
            assert kv is not None and json.loads(kv.value)["active"] == "inactive"
            await admin.delete(akey)
            await until(lambda: _gone(admin.get(skey)))
    finally:
        await admin.close()


async def _sub(coro: object, sub: str) -> bool:
    got = await coro  # type: ignore[misc]
    return bool(got) and got.get("sub") == sub


async def _pid_changed(coro: object, old: object) -> bool:
    got = await coro  # type: ignore[misc]
    return bool(got) and got.get("sub") == "running" and got.get("pid") not in (None, old)


async def _at_least(coro: object, n: int) -> bool:
    return int(await coro) >= n  # type: ignore[misc]


async def _gone(coro: object) -> bool:
    return await coro is None  # type: ignore[misc]


async def test_cut_off_agent_stops_its_units_within_ttl(store_proc: StoreProcess,
                                                        tmp_path: Path) -> None:
    keys = LAYOUT
    admin = await connect(StoreConfig((store_proc.endpoint,)))
    async with running_agent(store_proc.endpoint, tmp_path) as agent:
        for peer in ("m2", "m3"):  # listed, but never answering /presence
            await admin.put(keys.member(peer).encode(), MachineRecord(
                peer, ipaddress.IPv4Address("127.0.0.1"), 1).to_json())
        a = Assignment("s.service", "h", unit("import time; time.sleep(60)"),
                       DesiredState.LAUNCHED)
        await admin.put(keys.assign("m1", "s.service").encode(), a.to_json())
        await until(lambda: (s := agent.runner.status("s.service")) is not None
                    and s.sub == "running")
        await until(lambda: len(agent.members) == 3)
        await admin.close()
        store_proc.stop(kill=True)
        cut = time.monotonic()
        await until(lambda: (s := agent.runner.status("s.service")) is not None
                    and not s.running, FAST.ttl + 5)
        took = time.monotonic() - cut
        assert took <= FAST.ttl + FAST.renew + 2.0, took
        assert agent.fence.value == "stop"

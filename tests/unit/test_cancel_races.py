"""A cancel that lands as an awaited operation completes must still cancel.

On Python 3.11 ``asyncio.wait_for`` returns the result instead when the operation
finishes in the same loop iteration as the cancel of the task awaiting it (fixed only
in 3.12): a stopped scheduler engine kept running that way. Each place that waited
with a timeout now uses ``asyncio.timeout`` (or ``asyncio.wait`` where the operation
must outlive the wait). Per place: the race (tests/cancelrace.py) and a check that
its timeout still fires. The last test keeps ``asyncio.wait_for`` out of the daemons.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dnsd.daemon import read_config_until_answered
from overlay.clock import SystemClock
from overlay.sched import netattach, supervisor
from overlay.sched.runner import RunSpec
from overlay.sched.supervisor import Supervisor, _Unit
from overlay.sched.unitfile import ExecCommand
from overlay.store.api import StoreConfig
from overlay.store.embedded import grpcwire
from tests.cancelrace import assert_cancel_never_lost, settle, start

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel from 3.12 on")
async def test_the_check_catches_wait_for_on_3_11() -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = start(asyncio.wait_for(fut, 5))
        await settle()
        return task, lambda: fut.set_result(1)

    with pytest.raises(AssertionError, match="swallowed"):
        await assert_cancel_never_lost(scenario)


# -- the supervisor's child processes ------------------------------------------------

class FakeProc:
    """What the supervisor uses of asyncio.subprocess.Process; it exits when told to.
    Its pid cannot exist (above any pid_max), so a stray signal reaches nothing."""

    def __init__(self, n: int = 0) -> None:
        self.pid = 2**30 + n
        self.returncode: int | None = None
        self.stdout = asyncio.StreamReader()
        self._waiters: list[asyncio.Future[None]] = []

    def exit(self, code: int = 0) -> None:
        self.returncode = code
        for w in self._waiters:
            if not w.done():
                w.set_result(None)

    async def wait(self) -> int:
        if self.returncode is None:
            w: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            await w
        assert self.returncode is not None
        return self.returncode


def _unit(monkeypatch: pytest.MonkeyPatch, signals: list[tuple[int, int]], *,
          running: FakeProc | None = None, spawns: tuple[FakeProc, ...] = (),
          **spec: Any) -> _Unit:
    """A unit whose commands are ``spawns`` in turn (``running``: its ExecStart, already
    started); SIGKILL ends a fake process, SIGTERM is ignored."""
    unit = _Unit(RunSpec("u.service", ExecCommand(("true",)), **spec), lambda name: None, {},
                 SystemClock())
    queue = list(spawns)
    procs = {p.pid: p for p in (*spawns, *([running] if running else []))}

    async def spawn(cmd: ExecCommand) -> FakeProc:
        return queue.pop(0)

    def killpg(pid: int, sig: int) -> None:
        signals.append((pid, sig))
        if sig == signal.SIGKILL and pid in procs:
            procs[pid].exit(-sig)

    monkeypatch.setattr(unit, "_spawn", spawn)
    monkeypatch.setattr(supervisor, "_killpg", killpg)
    if running is not None:
        unit.proc = running  # type: ignore[assignment]
        unit.task = start(asyncio.Event().wait())  # as run() is, blocked on the process
    return unit


@pytest.mark.parametrize("exiting", ["the unit's process", "its ExecStop command"])
async def test_supervisor_stop_keeps_a_cancel_landing_as_a_process_exits(
        monkeypatch: pytest.MonkeyPatch, exiting: str) -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        proc, stopper = FakeProc(0), FakeProc(1)
        with_stop = exiting.endswith("ExecStop command")
        unit = _unit(monkeypatch, [], running=proc, spawns=(stopper,) if with_stop else (),
                     exec_stop=(ExecCommand(("true",)),) if with_stop else ())
        task = start(unit.stop())
        await settle()
        return task, (stopper if with_stop else proc).exit

    await assert_cancel_never_lost(scenario)


async def test_supervisor_stop_still_kills_after_stop_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    proc, stopper = FakeProc(0), FakeProc(1)
    signals: list[tuple[int, int]] = []
    unit = _unit(monkeypatch, signals, running=proc, spawns=(stopper,),
                 exec_stop=(ExecCommand(("true",)),), stop_timeout=0.05)
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        await unit.stop()  # neither ExecStop nor SIGTERM ends anything: timeouts, SIGKILL
    assert time.monotonic() - t0 < 1.5  # not the 2 s wait after SIGKILL
    assert signals == [(stopper.pid, signal.SIGKILL), (proc.pid, signal.SIGTERM),
                       (proc.pid, signal.SIGKILL)]
    assert any("did not stop within" in line for _, line in unit.lines)
    assert (unit.status.active, unit.status.sub) == ("inactive", "dead")


async def test_supervisor_keeps_a_cancel_landing_as_the_output_drains(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        proc = FakeProc()
        unit = _unit(monkeypatch, [], spawns=(proc,))
        task = start(unit._run_to_exit(ExecCommand(("true",))))
        await settle()
        proc.exit(0)  # the pipe stays open (a grandchild holds it) until finish()
        await settle()
        return task, proc.stdout.feed_eof

    await assert_cancel_never_lost(scenario)


async def test_supervisor_drain_still_gives_up_on_a_pipe_held_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "DRAIN_S", 0.05)
    proc = FakeProc()
    unit = _unit(monkeypatch, [], spawns=(proc,))
    proc.stdout.feed_data(b"last words\n")
    proc.exit(3)
    async with asyncio.timeout(5):
        assert await unit._run_to_exit(ExecCommand(("true",))) == 3
    assert [line for _, line in unit.lines] == ["last words"]


async def test_journal_follow_keeps_a_cancel_landing_as_a_line_arrives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        sup = Supervisor()
        unit = _unit(monkeypatch, [])
        sup._units[unit.spec.name] = unit
        task = start(sup.wait_lines(unit.spec.name, "0", 5))
        await settle()
        return task, lambda: unit.note("a line")

    await assert_cancel_never_lost(scenario)


async def test_journal_follow_still_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = Supervisor()
    unit = _unit(monkeypatch, [])
    sup._units[unit.spec.name] = unit
    t0 = time.monotonic()
    await sup.wait_lines(unit.spec.name, "0", 0.05)
    assert 0.04 < time.monotonic() - t0 < 2


# -- the CNI plugins the agent execs -----------------------------------------------

class FakeCNIProc:
    def __init__(self) -> None:
        self.returncode: int | None = None
        self._done: asyncio.Future[tuple[bytes, bytes]] = (
            asyncio.get_running_loop().create_future())

    def finish(self) -> None:
        self.returncode = 0
        self._done.set_result((b"{}", b""))

    async def communicate(self, stdin: bytes) -> tuple[bytes, bytes]:
        return await self._done


async def test_cni_exec_keeps_a_cancel_landing_as_the_plugin_exits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        proc = FakeCNIProc()

        async def exec_(*argv: str, **kw: Any) -> FakeCNIProc:
            return proc

        monkeypatch.setattr(netattach.asyncio, "create_subprocess_exec", exec_)
        task = start(netattach._run(["weft"], b"{}"))
        await settle()
        return task, proc.finish

    await assert_cancel_never_lost(scenario)


async def test_cni_exec_still_kills_a_plugin_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netattach, "_TIMEOUT", 0.05)
    t0 = time.monotonic()
    rc, out, err = await netattach._run(["sleep", "30"])
    assert (rc, out) == (124, "") and "timed out" in err
    assert time.monotonic() - t0 < 5


# -- dnsd's configuration read ---------------------------------------------------------

async def test_dnsd_config_read_keeps_a_cancel_landing_as_the_store_answers() -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        async def read(cfg: StoreConfig, key: str) -> bytes | None:
            return await answer

        task = start(read_config_until_answered(StoreConfig(), "/skydns/config", read=read,
                                                 attempt_timeout=5))
        await settle()
        return task, lambda: answer.set_result(b"{}")

    await assert_cancel_never_lost(scenario)


async def test_dnsd_config_read_still_retries_an_attempt_that_hangs() -> None:
    attempts: list[int] = []
    sleeps: list[float] = []

    async def read(cfg: StoreConfig, key: str) -> bytes | None:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # no answer: the attempt times out
        return b"{}"

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with asyncio.timeout(5):
        got = await read_config_until_answered(StoreConfig(), "/k", read=read, sleep=sleep,
                                               attempt_timeout=0.05, first_delay=0.5)
    assert (got, len(attempts), sleeps) == (b"{}", 2, [0.5])


# -- the embedded store's gRPC listener ------------------------------------------------

class SlowClose:
    """An asyncio.Server whose wait_closed() returns when told to."""

    def __init__(self, real: asyncio.Server) -> None:
        self.real = real
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        self.real.close()

    async def wait_closed(self) -> None:
        await self.closed


async def _listening(srv: grpcwire.Server) -> SlowClose:
    await srv.start("127.0.0.1", 0)
    assert srv._server is not None
    slow = SlowClose(srv._server)
    srv._server = slow  # type: ignore[assignment]
    return slow


async def test_store_listener_stop_keeps_a_cancel_landing_as_it_closes() -> None:
    async def scenario() -> tuple[asyncio.Task[Any], Callable[[], None]]:
        srv = grpcwire.Server({}, 1 << 20)
        slow = await _listening(srv)
        task = start(srv.stop())
        await settle()
        return task, lambda: slow.closed.set_result(None)

    await assert_cancel_never_lost(scenario)


async def test_store_listener_stop_still_gives_up_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpcwire, "_CLOSE_WAIT_S", 0.05)
    srv = grpcwire.Server({}, 1 << 20)
    slow = await _listening(srv)
    async with asyncio.timeout(5):
        await srv.stop()  # wait_closed() never returns
        await srv.wait_closed()
    assert not slow.real.is_serving()


async def test_a_cancelled_store_listener_stop_still_counts_as_closed() -> None:
    srv = grpcwire.Server({}, 1 << 20)
    await _listening(srv)
    task = start(srv.stop())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        await srv.wait_closed()


# -- no asyncio.wait_for in the daemons ------------------------------------------------

WAIT_FOR = re.compile(r"\basyncio\.wait_for\(|^\s*from\s+asyncio\s+import\s[^#\n]*\bwait_for\b",
                      re.MULTILINE)
# "path": "why this site needs wait_for" (none does)
ALLOWED: dict[str, str] = {}


def test_no_asyncio_wait_for_in_the_daemons() -> None:
    found = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
             for top in ("overlay", "dnsd", "cni")
             for path in sorted((ROOT / top).rglob("*.py"))
             if str(path.relative_to(ROOT)) not in ALLOWED
             for text in [path.read_text()]
             for m in WAIT_FOR.finditer(text)]
    assert not found, ("asyncio.wait_for drops a cancel that lands as the awaited thing "
                       "completes on Python 3.11: use `async with asyncio.timeout(...)`: "
                       + ", ".join(found))

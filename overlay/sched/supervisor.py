"""Supervisor: runs units as child processes of the agent when systemd is not PID 1.

Theory of operation
-------------------
Each unit gets one asyncio task (``_Unit.run``) that plays systemd's service state
machine for ``Type=simple``: ExecStartPre commands in order (a failure not prefixed
``-`` fails the start), then ExecStart, whose exit decides, through ``Restart=``, between
a restart after ``restart_delay`` (auto-restart) and a final inactive/failed.

Every command runs in a session and process group of its own (so a stop reaches every
process the unit forked: ``killpg``), with the parent-death signal set to SIGKILL
(``setpriv --pdeathsig``), so a crashed or killed agent leaves no unit running behind
its back — that is what lets the engine start the unit elsewhere once the agent's
presence is gone (a host crash in the sandbox kills the agent, and with it its units).
``Network=true`` units run through ``ip netns exec <ns>`` (which also bind-mounts
``/etc/netns/<ns>/`` files such as resolv.conf).

stdout and stderr are merged into one pipe; every line goes to the unit's ring buffer
(``RING_LINES``) with a sequence number, which is the journal cursor.

Stop: ExecStop commands (with ``$MAINPID``), SIGTERM to the group, SIGKILL to the group
after ``stop_timeout``; the unit ends inactive/dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence

from overlay.clock import Clock, SystemClock
from overlay.sched.runner import (
    JournalPage,
    Runner,
    RunnerError,
    RunSpec,
    RunStatus,
    restart_delay,
    should_restart,
)
from overlay.sched.unitfile import ExecCommand

log = logging.getLogger(__name__)

RING_LINES = 1000
DRAIN_S = 1.0  # how long an exited command's output may still be read
# util-linux's setpriv sets the parent-death signal and execs the command: no preexec_fn,
# which is unsafe in a process with threads (gRPC's)
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


class _Unit:
    def __init__(self, spec: RunSpec, notify: Callable[[str], None],
                 base_env: dict[str, str], clock: Clock) -> None:
        self._clock = clock
        self.spec = spec
        self._notify = notify
        self._env = {**base_env, **dict(spec.environment)}
        self.status = RunStatus("activating", "start-pre", self._clock.now())
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.lines: deque[tuple[int, str]] = deque(maxlen=RING_LINES)
        self.seq = 0
        self.new_lines = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _set(self, active: str, sub: str, *, exit: int | None = None,
             keep_exit: bool = True) -> None:
        last_exit = self.status.exit if keep_exit and exit is None else exit
        pid = self.proc.pid if self.proc and self.proc.returncode is None else None
        self.status = RunStatus(active, sub, self._clock.now(), last_exit, pid)
        log.info("unit %s: %s/%s%s", self.spec.name, active, sub,
                 "" if last_exit is None else f" (last exit {last_exit})")
        self._notify(self.spec.name)

    def note(self, line: str) -> None:
        self.seq += 1
        self.lines.append((self.seq, line))
        self.new_lines.set()
        self.new_lines = asyncio.Event()

    def _argv(self, cmd: ExecCommand) -> list[str]:
        if self.spec.netns:
            return [*DIE_WITH_PARENT, "ip", "netns", "exec", self.spec.netns, *cmd.argv]
        return [*DIE_WITH_PARENT, *cmd.argv]

    async def _spawn(self, cmd: ExecCommand) -> asyncio.subprocess.Process:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(cmd), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=self._env, start_new_session=True)
        except OSError as exc:
            raise RunnerError(self.spec.name, f"cannot run {cmd.argv[0]}: {exc}") from exc
        return proc

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit: keep what we can
                raw = await proc.stdout.read(65536)
            if not raw:
                return
            self.note(raw.decode(errors="replace").rstrip("\n"))

    async def _run_to_exit(self, cmd: ExecCommand) -> int:
        proc = await self._spawn(cmd)
        self.proc = proc
        pump = asyncio.create_task(self._pump(proc))
        try:
            code = await proc.wait()
            await _drain(pump)
        finally:
            pump.cancel()
        return code

    async def run(self) -> None:
        crashes = 0
        while not self.stopping:
            self._set("activating", "start-pre")
            failed_pre: int | None = None
            for cmd in self.spec.exec_start_pre:
                try:
                    code = await self._run_to_exit(cmd)
                except RunnerError as exc:
                    self.note(str(exc))
                    code = 203  # systemd's EXIT_EXEC
                if code != 0 and not cmd.ignore_failure:
                    failed_pre = code
                    break
                if self.stopping:
                    break
            if self.stopping:
                break
            started = self._clock.monotonic()
            if failed_pre is not None:
                code = failed_pre
            else:
                try:
                    proc = await self._spawn(self.spec.exec_start)
                except RunnerError as exc:
                    self.note(str(exc))
                    code = 203
                else:
                    self.proc = proc
                    self._set("active", "running")
                    pump = asyncio.create_task(self._pump(proc))
                    code = await proc.wait()
                    await _drain(pump)
                    pump.cancel()
            if self.stopping:
                break
            self.note(f"weft-agent: {self.spec.name} exited with status {code}")
            if not should_restart(self.spec.restart, code, stopping=False):
                clean = code == 0
                self._set("inactive" if clean else "failed", "dead" if clean else "failed",
                          exit=code)
                return
            crashes = 1 if self._clock.monotonic() - started >= 10.0 else crashes + 1
            delay = restart_delay(self.spec.restart_sec, crashes)
            self._set("activating", "auto-restart", exit=code)
            self.note(f"weft-agent: restarting {self.spec.name} in {delay:.1f} s")
            await self._clock.sleep(delay)

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self._set("deactivating", "stop")
            env_pid = {"MAINPID": str(proc.pid)}
            for cmd in self.spec.exec_stop:
                self._env.update(env_pid)
                with contextlib.suppress(RunnerError):
                    stopper = await self._spawn(cmd)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.spec.stop_timeout):
                            await stopper.wait()
                    _killpg(stopper.pid, signal.SIGKILL)
            _killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.spec.stop_timeout):
                    await proc.wait()
            except TimeoutError:
                self.note(f"weft-agent: {self.spec.name} did not stop within "
                          f"{self.spec.stop_timeout:.0f} s; killing it")
            _killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await proc.wait()
        if self.task is not None:
            self.task.cancel()
            # not `await self.task` under suppress(CancelledError): that would also
            # swallow a cancel of this stop() landing while the unit task winds down
            await asyncio.wait([self.task])
            if not self.task.cancelled():
                self.task.result()  # a failure of run() surfaces here, as before
        self.proc = None
        self._set("inactive", "dead")


async def _drain(pump: asyncio.Task[None]) -> None:
    """Give the output pump ``DRAIN_S`` to read what the exited process left in the pipe
    (a grandchild may hold it open: then the caller cancels the pump). asyncio.wait, not
    wait_for(shield(pump)): on 3.11 wait_for drops a cancel that lands as the pump ends."""
    await asyncio.wait([pump], timeout=DRAIN_S)


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """Runs units as supervised child processes (see the module docstring)."""

    def __init__(self, on_change: Callable[[str], None] = lambda name: None,
                 base_env: dict[str, str] | None = None, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._units: dict[str, _Unit] = {}
        self._on_change = on_change
        self._base_env = base_env if base_env is not None else {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                   "/sbin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8")}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def start(self, spec: RunSpec) -> None:
        async with self._lock(spec.name):
            unit = self._units.get(spec.name)
            if unit is not None and unit.spec == spec and unit.task and not unit.task.done():
                return
            if unit is not None and not unit.stopping:
                await unit.stop()
            fresh = _Unit(spec, self._on_change, self._base_env, self._clock)
            if unit is not None:  # the journal carries over a restart with a new spec
                fresh.lines.extend(unit.lines)
                fresh.seq = unit.seq
            self._units[spec.name] = unit = fresh
            unit.task = asyncio.create_task(unit.run(), name=f"unit {spec.name}")

    async def stop(self, name: str) -> None:
        async with self._lock(name):
            unit = self._units.get(name)
            if unit is not None and not unit.stopping:
                await unit.stop()

    def status(self, name: str) -> RunStatus | None:
        unit = self._units.get(name)
        return unit.status if unit else None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._units))

    def forget(self, name: str) -> None:
        """Drop a stopped unit's record (state and journal)."""
        unit = self._units.get(name)
        if unit is not None and not unit.status.running:
            del self._units[name]

    async def journal(self, name: str, n: int, cursor: str | None = None) -> JournalPage:
        unit = self._units.get(name)
        if unit is None:
            return JournalPage((), cursor or "0")
        after = int(cursor) if cursor and cursor.isdigit() else None
        entries: Sequence[tuple[int, str]] = list(unit.lines)
        if after is not None:
            entries = [e for e in entries if e[0] > after][:n]
        else:
            entries = entries[-n:] if n > 0 else []
        last = entries[-1][0] if entries else (after if after is not None else unit.seq)
        return JournalPage(tuple(line for _, line in entries), str(last))

    async def wait_lines(self, name: str, cursor: str, timeout: float) -> None:
        """Return once lines after ``cursor`` exist or ``timeout`` passes (journal follow)."""
        unit = self._units.get(name)
        if unit is None or (cursor.isdigit() and unit.seq > int(cursor)):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await unit.new_lines.wait()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self._units)))


_: Runner = Supervisor()

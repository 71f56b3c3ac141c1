"""SystemdRunner: runs units through systemd when it is PID 1 (a real host).

Theory of operation
-------------------
As fleet did, the agent writes each unit to ``/run/systemd/system/<unit>`` (runtime
units: gone at reboot, which is right — the engine decides where a unit runs after
one), then ``systemctl daemon-reload`` and ``systemctl start``. The file is rendered
from the ``RunSpec`` (``render_unit``, pure), not copied from the user's text: the agent
adds ``NetworkNamespacePath=`` for ``Network=true`` units, the container address in
``Environment=`` and a ``TimeoutStopSec=`` short enough for fencing. systemd itself
then does Restart=/RestartSec=, process-group kills and logging.

State comes from ``systemctl show`` (``parse_show``, pure) polled once a second for the
units this agent started — a local call, no store traffic — and changes reach the
agent through its ``on_change`` callback. Logs come from ``journalctl -u``, the journal
cursor being the runner's cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from overlay.sched.runner import JournalPage, Runner, RunnerError, RunSpec, RunStatus
from overlay.sched.unitfile import ExecCommand

log = logging.getLogger(__name__)

UNIT_DIR = Path("/run/systemd/system")
POLL = 1.0
SHOW_PROPS = ("ActiveState", "SubState", "MainPID", "ExecMainStatus", "ExecMainCode",
              "StateChangeTimestampMonotonic", "LoadState")


def systemd_is_init() -> bool:
    """systemd is PID 1 and this process shares its network namespace (a unit started
    through systemd would otherwise land in another namespace than the agent's host)."""
    try:
        comm = Path("/proc/1/comm").read_text().strip()
        same_net = os.stat("/proc/1/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    return comm == "systemd" and same_net and UNIT_DIR.parent.is_dir()


def _quote(word: str) -> str:
    if word and all(c.isalnum() or c in "/._-+=:,@%" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_line(cmd: ExecCommand) -> str:
    return ("-" if cmd.ignore_failure else "") + " ".join(_quote(w) for w in cmd.argv)


def render_unit(spec: RunSpec) -> str:
    """The runtime unit file for ``spec`` (pure)."""
    lines = ["# written by weft-agent; removed when the unit stops here", "[Unit]",
             f"Description=weft unit {spec.name}", "", "[Service]", "Type=simple"]
    lines += [f"ExecStartPre={_exec_line(c)}" for c in spec.exec_start_pre]
    lines.append(f"ExecStart={_exec_line(spec.exec_start)}")
    lines += [f"ExecStop={_exec_line(c)}" for c in spec.exec_stop]
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in spec.environment]
    lines += [f"Restart={spec.restart}", f"RestartSec={spec.restart_sec:g}s",
              f"TimeoutStopSec={spec.stop_timeout:g}s", "KillMode=control-group"]
    if spec.netns:
        lines.append(f"NetworkNamespacePath=/run/netns/{spec.netns}")
    return "\n".join(lines) + "\n"


def parse_show(text: str, boot_wall: float) -> RunStatus:
    """``systemctl show -p ...`` output -> RunStatus. ``boot_wall``: wall time at
    monotonic zero, to turn StateChangeTimestampMonotonic (µs) into unix seconds."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition("=")
        props[k.strip()] = v.strip()
    pid = int(props.get("MainPID", "0") or 0)
    status = props.get("ExecMainStatus", "")
    code = props.get("ExecMainCode", "0")
    exit_status: int | None = int(status) if status.lstrip("-").isdigit() else None
    if exit_status is not None and code == "2":  # CLD_KILLED: status is the signal
        exit_status = -exit_status
    if code == "0":
        exit_status = None  # the main process never exited
    mono = props.get("StateChangeTimestampMonotonic", "0")
    since = boot_wall + int(mono) / 1e6 if mono.isdigit() and int(mono) else time.time()
    return RunStatus(props.get("ActiveState", "inactive"), props.get("SubState", "dead"),
                     since, exit_status, pid or None)


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class SystemdRunner:
    """Runs units as systemd runtime units (see the module docstring)."""

    def __init__(self, on_change: Callable[[str], None] = lambda name: None,
                 unit_dir: Path = UNIT_DIR) -> None:
        self._on_change = on_change
        self._dir = unit_dir
        self._specs: dict[str, RunSpec] = {}
        self._status: dict[str, RunStatus] = {}
        self._poller: asyncio.Task[None] | None = None
        self._boot_wall = time.time() - time.monotonic()

    async def _systemctl(self, *args: str) -> str:
        rc, out, err = await _run("systemctl", *args)
        if rc != 0:
            raise RunnerError(args[-1], f"systemctl {' '.join(args)}: {err.strip() or rc}")
        return out

    async def start(self, spec: RunSpec) -> None:
        if self._specs.get(spec.name) == spec and (s := self._status.get(spec.name)) and \
                s.running:
            return
        path = self._dir / spec.name
        tmp = self._dir / f".{spec.name}.tmp"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(render_unit(spec))
            os.replace(tmp, path)
        except OSError as exc:
            raise RunnerError(spec.name, f"cannot write {path}: {exc.strerror}") from exc
        self._specs[spec.name] = spec
        await self._systemctl("daemon-reload")
        await self._systemctl("restart", spec.name)
        await self._refresh(spec.name)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    async def stop(self, name: str) -> None:
        if name not in self._specs:
            return
        with contextlib.suppress(RunnerError):
            await self._systemctl("stop", name)
        await self._refresh(name)
        with contextlib.suppress(OSError):
            (self._dir / name).unlink()
        with contextlib.suppress(RunnerError):
            await self._systemctl("daemon-reload")

    def status(self, name: str) -> RunStatus | None:
        return self._status.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    async def _refresh(self, name: str) -> None:
        try:
            out = await self._systemctl("show", "-p", ",".join(SHOW_PROPS), name)
        except RunnerError as exc:
            log.debug("%s", exc)
            return
        st = parse_show(out, self._boot_wall)
        old = self._status.get(name)
        self._status[name] = st
        if old is None or (old.active, old.sub, old.pid) != (st.active, st.sub, st.pid):
            self._on_change(name)

    async def _poll(self) -> None:
        while self._specs:
            await asyncio.sleep(POLL)
            for name in list(self._specs):
                await self._refresh(name)

    async def journal(self, name: str, n: int, cursor: str | None = None) -> JournalPage:
        args = ["journalctl", "-u", name, "-o", "cat", "--no-pager", "--show-cursor"]
        args += [f"--after-cursor={cursor}"] if cursor else ["-n", str(max(n, 0))]
        _rc, out, _ = await _run(*args)
        lines = out.splitlines()
        next_cursor = cursor or ""
        if lines and lines[-1].startswith("-- cursor: "):
            next_cursor = lines.pop()[len("-- cursor: "):]
        return JournalPage(tuple(lines[:n] if cursor else lines), next_cursor)

    async def wait_lines(self, name: str, cursor: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.journal(name, 1, cursor)).lines:
                return
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        for name in list(self._specs):
            st = self._status.get(name)
            if st is None or st.running:
                await self.stop(name)
        if self._poller is not None:
            self._poller.cancel()


_: Runner = SystemdRunner()

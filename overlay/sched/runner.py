"""The seam between the agent and whatever runs a unit's processes: the ``Runner`` protocol.

Two runners implement it: ``overlay.sched.supervisor.Supervisor`` (child processes of the
agent, when systemd is not PID 1: the sandbox and containers) and
``overlay.sched.systemd.SystemdRunner`` (systemd as PID 1: transient units through
``systemd-run``, ``systemctl`` and ``journalctl``). The agent builds a ``RunSpec`` from
a unit file (``run_spec``) and never looks at processes itself.

States follow systemd's vocabulary so ``weftctl list-units`` reads as ``systemctl`` does:
``active`` is one of activating / active / deactivating / inactive / failed, and ``sub``
one of start-pre / running / stop / auto-restart / dead / failed.

Only ``Type=simple`` (and ``exec``) services are run: one ExecStart process is the
service; ExecStartPost is not run (the unit file is refused at start with a message).

``run_spec`` turns a parsed unit file into a ``RunSpec``; ``restart_delay`` is the pure
back-off both runners' callers share: ``RestartSec`` after
the first crash, doubling for each further crash in quick succession, capped at
``MAX_RESTART_DELAY``; a run that lasted ``STABLE_RUN`` seconds resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

from overlay.sched.unitfile import ExecCommand, UnitFile

RestartPolicy = Literal["no", "always", "on-success", "on-failure", "on-abnormal",
                        "on-abort", "on-watchdog"]
RESTART_POLICIES: tuple[str, ...] = ("no", "always", "on-success", "on-failure",
                                     "on-abnormal", "on-abort", "on-watchdog")
DEFAULT_RESTART_SEC = 0.1  # systemd's default RestartSec=100ms
MAX_RESTART_DELAY = 30.0
STABLE_RUN = 10.0
DEFAULT_STOP_TIMEOUT = 5.0  # SIGTERM, then SIGKILL of the whole group after this


class RunnerError(Exception):
    """A runner could not start or stop a unit; ``unit`` names it."""

    def __init__(self, unit: str, reason: str) -> None:
        super().__init__(f"{unit}: {reason}")
        self.unit = unit
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What a runner needs to run one unit."""

    name: str
    exec_start: ExecCommand
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    restart: str = "no"
    restart_sec: float = DEFAULT_RESTART_SEC
    netns: str | None = None  # run inside this named network namespace (/run/netns/<name>)
    stop_timeout: float = DEFAULT_STOP_TIMEOUT


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A unit's state as ``systemctl show`` would give it."""

    active: str
    sub: str
    since: float  # wall-clock seconds of the last state change
    exit: int | None = None  # last exit status (negative: killed by that signal)
    pid: int | None = None

    @property
    def running(self) -> bool:
        return self.active in ("activating", "active")


@dataclass(frozen=True, slots=True)
class JournalPage:
    """Log lines of a unit and the cursor to ask for the ones after them."""

    lines: tuple[str, ...]
    cursor: str


class Runner(Protocol):
    """Starts, stops and reports units; tells its owner of changes via a callback it was
    built with (``on_change(unit_name)``)."""

    async def start(self, spec: RunSpec) -> None:
        """Start ``spec`` (a no-op when it already runs with this very spec)."""
        ...

    async def stop(self, name: str) -> None:
        """ExecStop, then SIGTERM and finally SIGKILL to everything the unit started.
        Returns once nothing of it runs; a unit not running is a no-op."""
        ...

    def status(self, name: str) -> RunStatus | None:
        """The unit's current state, None for a unit this runner never started."""
        ...

    def names(self) -> tuple[str, ...]:
        """Units this runner knows (running or stopped with a last state)."""
        ...

    async def journal(self, name: str, n: int, cursor: str | None = None) -> JournalPage:
        """The last ``n`` lines, or with ``cursor`` at most ``n`` lines after it."""
        ...

    async def wait_lines(self, name: str, cursor: str, timeout: float) -> None:
        """Return once lines after ``cursor`` exist or ``timeout`` passes (journal follow)."""
        ...

    async def close(self) -> None:
        """Stop every unit (agent shutdown)."""
        ...


def should_restart(policy: str, exit_status: int | None, *, stopping: bool) -> bool:
    """systemd's Restart= table: clean = exit 0 (or SIGHUP/SIGINT/SIGTERM/SIGPIPE);
    unclean signal = abnormal; a stop the agent asked for never restarts."""
    if stopping or policy == "no":
        return False
    if policy == "always":
        return True
    clean = exit_status in (0, -1, -2, -13, -15)
    signalled = exit_status is not None and exit_status < 0 and not clean
    if policy == "on-success":
        return clean
    if policy == "on-failure":
        return not clean
    if policy in ("on-abnormal", "on-watchdog"):
        return signalled
    if policy == "on-abort":
        return signalled and exit_status not in (-9,)
    return False


def restart_delay(restart_sec: float, crashes: int) -> float:
    """Seconds before restart number ``crashes`` (1 = the first) of a quick-crashing unit."""
    if crashes <= 1:
        return restart_sec
    return float(min(max(restart_sec, 0.1) * 2 ** (crashes - 1),
                     max(MAX_RESTART_DELAY, restart_sec)))


def run_spec(unit: UnitFile, *, netns: str | None = None,
             stop_timeout: float = DEFAULT_STOP_TIMEOUT,
             extra_env: tuple[tuple[str, str], ...] = ()) -> RunSpec:
    """The ``RunSpec`` for a parsed unit; ``RunnerError`` for what runners cannot run."""
    if unit.service_type not in ("simple", "exec"):
        raise RunnerError(unit.name, f"Type={unit.service_type} is not supported (simple, exec)")
    if len(unit.exec_start) != 1:
        raise RunnerError(unit.name, f"want exactly one ExecStart= for Type={unit.service_type}, "
                          f"got {len(unit.exec_start)}")
    return RunSpec(unit.name, unit.exec_start[0], unit.exec_start_pre, unit.exec_stop,
                   tuple(unit.environment.items()) + extra_env, unit.restart, unit.restart_sec,
                   netns, stop_timeout)


def with_netns(spec: RunSpec, netns: str, env: tuple[tuple[str, str], ...] = ()) -> RunSpec:
    """``spec`` run inside ``netns`` with ``env`` added."""
    return replace(spec, netns=netns, environment=spec.environment + env)

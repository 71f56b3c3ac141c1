"""The supervisor runner with real child processes: start, journal, crash restart with
back-off, ExecStartPre failure, ExecStop, and a stop that reaches every process of the
unit's group."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

from overlay.sched.runner import RunSpec
from overlay.sched.supervisor import Supervisor
from overlay.sched.unitfile import ExecCommand as Command

PY = sys.executable


def py(code: str) -> Command:
    return Command((PY, "-c", code))


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_runs_logs_and_stops_the_whole_group(tmp_path) -> None:  # type: ignore[no-untyped-def]
    changes: list[str] = []
    sup = Supervisor(changes.append)
    pidfile = tmp_path / "child.pid"
    # the unit forks a grandchild that ignores nothing: stop must reach it through the group
    code = (f"import os,time,subprocess,sys; print('hello', os.environ['GREETING'], flush=True);"
            f"p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
            f"open({str(pidfile)!r},'w').write(str(p.pid)); time.sleep(60)")
    spec = RunSpec("hello.service", py(code), environment=(("GREETING", "world"),),
                   exec_stop=(Command(("sh", "-c", f"echo stopping $MAINPID >> {tmp_path}/stop")),))
    try:
        await sup.start(spec)
        await until(lambda: pidfile.exists() and pidfile.read_text() != "")
        st = sup.status("hello.service")
        assert st is not None and (st.active, st.sub) == ("active", "running")
        await until(lambda: any(line == "hello world"
                                for _, line in sup._units["hello.service"].lines), 5)
        page = await sup.journal("hello.service", 10)
        assert page.lines == ("hello world",)
        grandchild = int(pidfile.read_text())
        await sup.stop("hello.service")
        st = sup.status("hello.service")
        assert st is not None and (st.active, st.sub) == ("inactive", "dead")
        assert (tmp_path / "stop").read_text().startswith("stopping ")
        await until(lambda: not alive(grandchild), 3)
        assert "hello.service" in changes
    finally:
        await sup.close()


async def test_crash_restarts_with_back_off_and_prestart_failure_fails() -> None:
    sup = Supervisor()
    crash = RunSpec("crash.service", py("import sys; print('up', flush=True); sys.exit(3)"),
                    restart="on-failure", restart_sec=0.2)
    bad_pre = RunSpec("pre.service", py("import time; time.sleep(60)"),
                      exec_start_pre=(py("import sys; sys.exit(1)"),))
    ok_pre = RunSpec("okpre.service", py("import time; time.sleep(60)"),
                     exec_start_pre=(Command((PY, "-c", "import sys; sys.exit(1)"), True),))
    try:
        await sup.start(crash)
        await sup.start(bad_pre)
        await sup.start(ok_pre)
        await until(lambda: sum(1 for _, line in sup._units["crash.service"].lines
                                if line == "up") >= 3, 10)
        st = sup.status("crash.service")
        assert st is not None and st.exit == 3
        page = await sup.journal("crash.service", 100)
        delays = [line for line in page.lines if "restarting" in line]
        assert delays[:2] == ["weft-agent: restarting crash.service in 0.2 s",
                              "weft-agent: restarting crash.service in 0.4 s"]
        await until(lambda: (s := sup.status("pre.service")) is not None and s.active == "failed")
        await until(lambda: (s := sup.status("okpre.service")) is not None and s.sub == "running")
        await sup.stop("crash.service")
        assert sup.status("crash.service").active == "inactive"  # type: ignore[union-attr]
    finally:
        await sup.close()

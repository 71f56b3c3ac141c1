"""The systemd runner's shell against stand-in ``systemctl``/``journalctl`` executables
(systemd is not PID 1 where the tests run): the calls it makes, in order, the runtime
unit file it writes and removes, the state it reads back and the journal cursor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from overlay.sched.runner import RunSpec
from overlay.sched.systemd import SystemdRunner
from overlay.sched.unitfile import ExecCommand

SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
case "$1" in
  show) if [ -f "$STATE" ]; then cat "$STATE"; else
          printf 'ActiveState=inactive\\nSubState=dead\\nMainPID=0\\nExecMainCode=0\\n'; fi ;;
  restart) printf 'ActiveState=active\\nSubState=running\\nMainPID=4242\\nExecMainCode=0\\n' \
             > "$STATE" ;;
  stop) printf 'ActiveState=inactive\\nSubState=dead\\nMainPID=0\\n' > "$STATE"
        printf 'ExecMainCode=1\\nExecMainStatus=0\\n' >> "$STATE" ;;
esac
"""
JOURNALCTL = """#!/bin/sh
echo "journalctl $*" >> "$CALLS"
case "$*" in
  *after-cursor=c2*) echo "third"; echo "-- cursor: c3" ;;
  *) echo "first"; echo "second"; echo "-- cursor: c2" ;;
esac
"""


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("STATE", str(tmp_path / "state"))
    return tmp_path


async def test_start_status_journal_stop(fake_systemd: Path) -> None:
    units = fake_systemd / "run"
    changes: list[str] = []
    runner = SystemdRunner(changes.append, unit_dir=units)
    spec = RunSpec("web.service", ExecCommand(("/usr/bin/python3", "-m", "http.server")),
                   netns="weft-x-web.service", restart="always")
    try:
        await runner.start(spec)
        text = (units / "web.service").read_text()
        assert "ExecStart=/usr/bin/python3 -m http.server\n" in text
        assert "NetworkNamespacePath=/run/netns/weft-x-web.service\n" in text
        st = runner.status("web.service")
        assert st is not None and (st.active, st.sub, st.pid) == ("active", "running", 4242)
        assert changes == ["web.service"]
        page = await runner.journal("web.service", 10)
        assert page.lines == ("first", "second") and page.cursor == "c2"
        page = await runner.journal("web.service", 10, page.cursor)
        assert page.lines == ("third",) and page.cursor == "c3"
        await runner.stop("web.service")
        assert not (units / "web.service").exists()
        st = runner.status("web.service")
        assert st is not None and (st.active, st.exit) == ("inactive", 0)
    finally:
        await runner.close()
        await asyncio.sleep(0)
    calls = (fake_systemd / "calls").read_text().splitlines()
    verbs = [c.split()[1] for c in calls if c.startswith("systemctl")]
    assert verbs[:3] == ["daemon-reload", "restart", "show"]
    after_stop = verbs[verbs.index("stop"):]
    assert after_stop == ["stop", "show", "daemon-reload"], verbs

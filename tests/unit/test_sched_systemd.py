"""The systemd runner's pure parts: the runtime unit file it writes and how it reads
``systemctl show`` (systemd is not PID 1 where the tests run, so the I/O is not here)."""

from __future__ import annotations

from overlay.sched.runner import RunSpec
from overlay.sched.systemd import parse_show, render_unit
from overlay.sched.unitfile import ExecCommand


def test_render_unit_carries_everything_the_agent_decided() -> None:
    spec = RunSpec("web.service", ExecCommand(("python3", "-m", "http.server", "8000")),
                   (ExecCommand(("/bin/true",), True),), (ExecCommand(("/bin/kill", "$MAINPID")),),
                   (("GREETING", "hello world"), ("WEFT_ADDRESS", "10.244.1.5")),
                   "on-failure", 2.0, "weft-abc-web.service", 2.0)
    text = render_unit(spec)
    assert "ExecStart=python3 -m http.server 8000\n" in text
    assert "ExecStartPre=-/bin/true\n" in text
    assert 'Environment="GREETING=hello world"\n' in text
    assert "Environment=WEFT_ADDRESS=10.244.1.5\n" in text
    assert "Restart=on-failure\nRestartSec=2s\nTimeoutStopSec=2s\n" in text
    assert "NetworkNamespacePath=/run/netns/weft-abc-web.service\n" in text


def test_parse_show_running_and_killed() -> None:
    running = parse_show("ActiveState=active\nSubState=running\nMainPID=42\nExecMainStatus=0\n"
                         "ExecMainCode=0\nStateChangeTimestampMonotonic=5000000\n", 1000.0)
    assert (running.active, running.sub, running.pid, running.exit, running.since) == (
        "active", "running", 42, None, 1005.0)
    killed = parse_show("ActiveState=failed\nSubState=failed\nMainPID=0\nExecMainStatus=9\n"
                        "ExecMainCode=2\nStateChangeTimestampMonotonic=0\n", 0.0)
    assert (killed.active, killed.pid, killed.exit) == ("failed", None, -9)
    exited = parse_show("ActiveState=failed\nSubState=failed\nExecMainStatus=3\nExecMainCode=1\n",
                        0.0)
    assert exited.exit == 3

"""weftctl's blocking verbs, status and journal against one real `weftctl agent`
(supervisor runner, loopback only, embedded store): what a fleetctl user types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

UNIT = ('[Unit]\nDescription=hi\n[Service]\nExecStart=/bin/sh -c '
        '"while true; do echo hello from %n; sleep 0.2; done"\n')


def test_verbs_with_a_real_agent(embedded_endpoint: str, tmp_path: Path) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}/sched/"
    machine = f"m-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "ETCDCTL_ENDPOINTS": embedded_endpoint, "WEFT_SCHED_PREFIX": prefix}
    with open(tmp_path / "agent.log", "w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "overlay.cli.weftctl", "agent", "-machine-id", machine,
             "-public-ip", "127.0.0.1", "-port", "0", "-state-dir", str(tmp_path / "agent"),
             "-runner", "supervisor", "-sched-prefix", prefix,
             "-cni-conf", str(tmp_path / "none")],
            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    (tmp_path / "hi.service").write_text(UNIT)

    def weftctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", *argv], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=90)

    try:
        done = weftctl("start", "--block-attempts", "60", "hi.service")
        assert done.returncode == 0, done.stderr + (tmp_path / "agent.log").read_text()
        assert f"Unit hi.service launched on {machine}/127.0.0.1" in done.stdout
        status = weftctl("status", "hi.service")
        assert status.returncode == 0
        assert "Active: active (running)" in status.stdout
        assert "hello from hi.service" in status.stdout
        journal = weftctl("journal", "-n", "2", "hi.service")
        assert journal.stdout.splitlines() == ["hello from hi.service"] * 2, journal.stderr
        follow = subprocess.Popen(
            [sys.executable, "-m", "overlay.cli.weftctl", "journal", "-f", "-n", "1",
             "hi.service"], env=env, stdout=subprocess.PIPE, text=True)
        try:  # new lines keep coming through the agent's long poll
            assert follow.stdout is not None
            lines = [follow.stdout.readline() for _ in range(4)]
            assert lines == ["hello from hi.service\n"] * 4
        finally:
            follow.kill()
            follow.wait()
        assert weftctl("stop", "--block-attempts", "30", "hi.service").returncode == 0
        rows = json.loads(weftctl("list-units", "--json").stdout)
        assert [r["active"] for r in rows] in (["inactive"], ["failed"])
        assert weftctl("unload", "--block-attempts", "30", "hi.service").returncode == 0
        assert json.loads(weftctl("list-units", "--json").stdout) == []
        files = json.loads(weftctl("list-unit-files", "--json").stdout)
        assert [(f["unit"], f["desired"], f["state"]) for f in files] == [
            ("hi.service", "inactive", "inactive")]
        assert "Destroyed hi.service" in weftctl("destroy", "hi.service").stdout
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()


"""Placement rules end to end: three real agents (loopback, embedded store) and the
fleetctl verbs. Global units on every matching machine; MachineMetadata, MachineOf,
Conflicts and Replaces honoured; a unit with no eligible machine stays unscheduled with
its reason in list-unit-files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from overlay.cli.weftctl import main as weftctl

pytestmark = pytest.mark.slow

RUN = "[Service]\nExecStart=/bin/sleep 100000\n"
UNITS = {
    "g.service": RUN + "[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n",
    "db.service": RUN + "[X-Fleet]\nMachineMetadata=role=db\n",
    "app.service": RUN + "[X-Fleet]\nMachineOf=db.service\n",
    "w@.service": RUN + "[X-Fleet]\nMachineMetadata=role=web\nConflicts=w@*.service\n",
    "old.service": RUN + "[X-Fleet]\nMachineMetadata=role=web\n",
    "new.service": RUN + "[X-Fleet]\nMachineMetadata=host=h1\nReplaces=old.service\n",
}


def test_constraints_with_three_agents(embedded_endpoint: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:8]}/sched/"
    env = {**os.environ, "ETCDCTL_ENDPOINTS": embedded_endpoint}
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", embedded_endpoint)
    monkeypatch.setenv("WEFT_SCHED_PREFIX", prefix)
    monkeypatch.chdir(tmp_path)
    for name, text in UNITS.items():
        (tmp_path / name).write_text(text)
    agents = []
    for i, meta in enumerate(("host=h1,role=web", "host=h2,role=web", "host=h3,role=db")):
        with open(tmp_path / f"agent{i}.log", "w") as log:
            agents.append(subprocess.Popen(
                [sys.executable, "-m", "overlay.cli.weftctl", "agent", "-machine-id", f"a{i + 1}",
                 "-public-ip", "127.0.0.1", "-port", "0", "-state-dir", str(tmp_path / f"a{i}"),
                 "-runner", "supervisor", "-sched-prefix", prefix, "-metadata", meta,
                 "-cni-conf", str(tmp_path / "none")],
                env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))

    def run(*argv: str) -> tuple[int, str]:
        rc = weftctl(list(argv))
        return rc, capsys.readouterr().out

    def machines() -> int:
        return len(json.loads(run("list-machines", "--json")[1]))

    try:
        deadline = time.monotonic() + 60
        while machines() < 3:
            assert time.monotonic() < deadline, "agents did not register"
            time.sleep(0.3)
        # old first, alone: a1 and a2 tie, a1 wins by id; new then pushes it off a1
        rc, out = run("start", "--block-attempts", "60", "old.service")
        assert rc == 0 and "launched on a1/" in out
        rc, out = run("start", "--block-attempts", "60", "db.service", "app.service",
                      "w@1.service", "w@2.service", "new.service")
        assert rc == 0, out
        assert "Triggered global unit g.service start" in run(
            "start", "g.service")[1]
        run("start", "--no-block", "w@3.service")
        deadline = time.monotonic() + 60
        while True:
            rows = json.loads(run("list-units", "--json")[1])
            where: dict[str, set[str]] = {}
            for r in rows:
                if r["active"] == "active":
                    where.setdefault(r["unit"], set()).add(r["machine"])
            if len(where.get("g.service", ())) == 2 and where.get("old.service") == {"a2"}:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.3)
        assert where["g.service"] == {"a1", "a2"}  # Global: every role=web machine
        assert where["db.service"] == {"a3"}  # MachineMetadata
        assert where["app.service"] == {"a3"}  # MachineOf
        assert {m for u in ("w@1.service", "w@2.service") for m in where[u]} == {"a1", "a2"}
        assert where["new.service"] == {"a1"}  # Replaces: new takes a1 ...
        assert where["old.service"] == {"a2"}  # ... and old moves to the other web host
        files = {f["unit"]: f for f in json.loads(run("list-unit-files", "--json")[1])}
        w3 = files["w@3.service"]
        assert (w3["target"], w3["state"]) == (None, "inactive")
        assert "conflicts with w@" in w3["reason"] and "metadata lacks role=web" in w3["reason"]
        assert files["g.service"]["target"] == "global"
    finally:
        for proc in agents:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

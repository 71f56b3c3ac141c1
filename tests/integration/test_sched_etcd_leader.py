"""A store leader change must not move, stop or restart units (fleet #1289, #925): three
real agents on loopback against a 3-member Debian etcd with default timings; the etcd
leader is killed while a unit runs, and for longer than TTL + grace afterwards the unit
keeps its process and its machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.sched.fence import DEFAULT_GRACE, DEFAULT_TTL
from overlay.store.embedded.launch import free_port, wait_tcp

pytestmark = [pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(180)]


def etcd_cluster(tmp: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    names = ("e0", "e1", "e2")
    clients = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    initial = ",".join(f"{n}={peers[n]}" for n in names)
    token = uuid.uuid4().hex
    procs = []
    for n in names:
        log = open(tmp / f"{n}.log", "wb")  # noqa: SIM115
        procs.append((subprocess.Popen(
            [binary, "--name", n, "--data-dir", str(tmp / n),
             "--listen-client-urls", clients[n], "--advertise-client-urls", clients[n],
             "--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n],
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", token, "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT), clients[n]))
        log.close()
    try:
        for _, url in procs:
            assert wait_tcp("127.0.0.1", int(url.rsplit(":", 1)[1]), 20), f"etcd {url}"
        endpoints = ",".join(url for _, url in procs)
        deadline = time.monotonic() + 30
        while subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "health"],
                             capture_output=True, timeout=20).returncode != 0:
            assert time.monotonic() < deadline, "the etcd cluster elected no leader"
            time.sleep(0.5)
        yield procs
    finally:
        for p, _ in procs:
            p.kill()
            p.wait()


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server")
    yield from etcd_cluster(tmp_path)


def test_etcd_leader_kill_moves_stops_and_restarts_nothing(
        etcd3: list[tuple[subprocess.Popen[bytes], str]], tmp_path: Path) -> None:
    endpoints = ",".join(url for _, url in etcd3)
    prefix = f"/test-{uuid.uuid4().hex[:8]}/sched/"
    env = {**os.environ, "ETCDCTL_ENDPOINTS": endpoints, "WEFT_SCHED_PREFIX": prefix}
    marker = tmp_path / f"m-{uuid.uuid4().hex[:8]}"
    marker.mkdir()
    (tmp_path / "s.service").write_text(
        f"[Service]\nExecStart=/bin/sh -c 'cd {marker} && exec sleep 600'\n")
    agents = []
    try:
        for i in range(3):
            with open(tmp_path / f"agent{i}.log", "w") as log:
                agents.append(subprocess.Popen(
                    [sys.executable, "-m", "overlay.cli.weftctl", "agent", "-machine-id",
                     f"a{i + 1}", "-public-ip", "127.0.0.1", "-port", str(free_port()),
                     "-state-dir", str(tmp_path / f"a{i}"), "-runner", "supervisor",
                     "-sched-prefix", prefix, "-cni-conf", str(tmp_path / "none"),
                     "-etcd-endpoints", endpoints],
                    env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))

        def weftctl(*argv: str) -> str:
            proc = subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", *argv],
                                  env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc.stdout

        deadline = time.monotonic() + 60
        while len(json.loads(weftctl("list-machines", "--json"))) < 3:
            assert time.monotonic() < deadline, "agents did not register"
            time.sleep(0.3)
        weftctl("start", "--block-attempts", "60", str(tmp_path / "s.service"))

        def pids() -> list[int]:
            out = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True,
                                 text=True).stdout.split()
            return sorted(int(p) for p in out if _cwd(int(p)) == marker)

        def placed() -> list[str]:
            return [r["machine"] for r in json.loads(weftctl("list-units", "--json"))
                    if r["unit"] == "s.service"]

        before, where = pids(), placed()
        assert len(before) == 1 and len(where) == 1
        status = subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "status",
                                 "-w", "json"], capture_output=True, text=True, timeout=20)
        rows = json.loads(status.stdout)
        leader = next(r["Endpoint"] for r in rows
                      if r["Status"]["leader"] == r["Status"]["header"]["member_id"])
        victim = next(p for p, url in etcd3 if url == leader)
        victim.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < DEFAULT_TTL + DEFAULT_GRACE + 5:
            assert pids() == before, "the unit was stopped or restarted"
            time.sleep(0.5)
        alive = ",".join(url for _, url in etcd3 if url != leader)
        env["ETCDCTL_ENDPOINTS"] = alive
        assert placed() == where, "the unit moved"
        assert pids() == before
    finally:
        for a in agents:
            os.killpg(a.pid, signal.SIGTERM)
        for a in agents:
            try:
                a.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None

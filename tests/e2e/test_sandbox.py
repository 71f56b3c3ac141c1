"""End to end: `weftctl sandbox` (and `make demo`) build a working cluster and leave nothing behind.

Each test drives the real CLI as a user would, in its own state dir (so it never
meets a user's sandbox or a parallel run), and a finalizer runs `sandbox down`
whatever happens. The root namespace's links, addresses, routes and nftables
ruleset are compared byte for byte before `up` and after `down`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.sandbox.cluster import alive, load_state
from overlay.sandbox.model import State
from overlay.subnetfile import parse_vars as parse_subnet_env
from overlay.testbed import list_netns

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
WEFTCTL = str(Path(sys.executable).absolute().parent / "weftctl")
SHORT_TTL = 5  # seconds: peers must drop a killed host within TTL + slack
# s; the goal is < 20 s, this is the failure line on a loaded 2-core box. `up` now also
# starts an agent per host and ends with the scheduler demo (a unit placed, CNI-attached,
# resolved and fetched): ~4 s idle, ~15 s at load average 20.
UP_BUDGET = 55.0
NEEDED = {
    "flanneld": "overlay.cli.flanneld",
    "the weft CNI plugin": "cni.main",
    "dnsd": "dnsd.cli",
}


def _missing(store: str) -> list[str]:
    needed = dict(NEEDED)
    if store == "embedded":
        needed["the embedded store"] = "overlay.cli.store_cmd"
    out = []
    for what, module in needed.items():
        try:
            if importlib.util.find_spec(module) is None:
                out.append(what)
        except ModuleNotFoundError:
            out.append(what)
    if store == "etcd" and shutil.which("etcd") is None:
        out.append("Debian's etcd")
    return out


def root_snapshot() -> dict[str, str]:
    """The root namespace as `ip` and `nft` print it; compared byte for byte."""
    cmds = {
        "links": ["ip", "-d", "link", "show"],
        "addrs": ["ip", "addr", "show"],
        "routes4": ["ip", "route", "show", "table", "all"],
        "routes6": ["ip", "-6", "route", "show", "table", "all"],
        "nft": ["nft", "list", "ruleset"],
    }
    return {k: subprocess.run(v, capture_output=True, text=True, timeout=10).stdout
            for k, v in cmds.items()}


def weftctl(state_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WEFT_SANDBOX_DIR=str(state_dir))
    return subprocess.run([WEFTCTL, "sandbox", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def exec_in(state_dir: Path, target: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return weftctl(state_dir, "exec", target, "--", *cmd, timeout=30)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "sandbox"
    try:
        yield d
    finally:
        if (d / "state.json").exists():
            weftctl(d, "down", timeout=60)


def assert_nothing_left(state: State, state_dir: Path) -> None:
    left_ns = [ns for ns in list_netns() if ns.startswith(state.tag + "-")]
    assert left_ns == [], f"namespaces left behind: {left_ns}"
    left_procs = [d.ident for d in state.daemons if alive(d)]
    assert left_procs == [], f"processes left behind: {left_procs}"
    tagged = subprocess.run(["pgrep", "-af", str(state_dir)], capture_output=True,
                            text=True).stdout.strip()
    assert tagged == "", f"processes still using the state dir:\n{tagged}"
    assert not state_dir.exists(), f"state dir left behind: {list(state_dir.rglob('*'))}"


def healthy_status(state_dir: Path, within: float = 20) -> str:
    """`sandbox status` until it exits 0 (health is re-probed each time); its output.

    A daemon may report itself unhealthy for a moment on a loaded machine (dnsd does
    when its store probe times out); a sandbox that stays unhealthy fails.
    """
    deadline = time.monotonic() + within
    while True:
        status = weftctl(state_dir, "status")
        if status.returncode == 0:
            return status.stdout
        if time.monotonic() > deadline:
            logs = "".join(weftctl(state_dir, "logs", d, "-n", "20").stdout
                           for d in ("dnsd", "store"))
            raise AssertionError(f"sandbox not healthy within {within:.0f} s:\n"
                                 f"{status.stdout}{status.stderr}\n{logs}")
        time.sleep(0.5)


def routes(state_dir: Path, host: str) -> str:
    return exec_in(state_dir, host, "ip", "route").stdout


def ip_of(state: State, ident: str) -> str:
    c = next(c for c in state.containers if c.ident == ident)
    return c.ip.split("/")[0]


def wait_for(predicate: object, within: float, what: str) -> float:
    assert callable(predicate)
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {within:.0f} s")


@pytest.mark.parametrize(
    ("backend", "store"),
    [
        pytest.param("vxlan", "embedded", id="vxlan-embedded-store"),
        pytest.param("host-gw", "etcd", id="hostgw-etcd"),
    ],
)
def test_sandbox_lifecycle(state_dir: Path, backend: str, store: str) -> None:
    missing = _missing(store)
    if missing:
        pytest.skip("not in this build yet: " + ", ".join(missing))
    before = root_snapshot()

    t0 = time.monotonic()
    up = weftctl(state_dir, "up", "--hosts", "3", "--backend", backend, "--store", store,
                 "--lease-ttl", str(SHORT_TTL))
    took = time.monotonic() - t0
    assert up.returncode == 0, up.stdout + up.stderr
    assert took < UP_BUDGET, f"up took {took:.1f} s\n{up.stdout}"
    state = load_state(state_dir)
    assert state is not None and state.complete and not state.skipped, up.stdout
    assert len(state.containers) == 3 and all(c.ip for c in state.containers), up.stdout
    # the proof printed by `up`: a cross-host ping without loss and a dig answer
    assert " 0% packet loss" in up.stdout, up.stdout
    assert re.search(r"c1\.h1\.skydns\.local\.\s+\d+\s+IN\s+A\s+" + re.escape(
        ip_of(state, "c1.h1")), up.stdout), up.stdout

    status = healthy_status(state_dir)
    assert status.count("healthy") >= 1 + 3 + 1, status

    # every container reaches every other one, and names resolve from any container
    for src in ("c1.h1", "c1.h2", "c1.h3"):
        for dst in ("c1.h1", "c1.h2", "c1.h3"):
            if src != dst:
                ping = exec_in(state_dir, src, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                               ip_of(state, dst))
                assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout}{ping.stderr}"
    dig = exec_in(state_dir, "c1.h3", "dig", f"@{state.dns_ip}", "c1.h2.skydns.local",
                  "+short", "+time=2", "+tries=2")
    assert dig.stdout.split() == [ip_of(state, "c1.h2")], dig.stdout + dig.stderr

    # failure: h2's daemons die, its lease expires, the peers drop its routes
    h2_env = parse_subnet_env((state_dir / "h2" / "subnet.env").read_text())
    h2_subnet = str(ipaddress.ip_interface(h2_env["FLANNEL_SUBNET"]).network)
    assert h2_subnet in routes(state_dir, "h1"), routes(state_dir, "h1")
    killed = weftctl(state_dir, "kill", "h2")
    assert killed.returncode == 0, killed.stderr
    for peer in ("h1", "h3"):
        wait_for(lambda p=peer: h2_subnet not in routes(state_dir, p),  # type: ignore[misc]
                 SHORT_TTL + 10, f"{peer} dropping h2's route {h2_subnet}")
    status = healthy_status(state_dir)  # the killed ones are excused, not the others
    assert re.search(r"flanneld\s+h2\s+\d+\s+killed", status), status
    for alive_host in ("h1", "h3"):
        assert re.search(rf"flanneld\s+{alive_host}\s+\d+\s+running\s+healthy",
                         status), status
    survivors = exec_in(state_dir, "c1.h1", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                        ip_of(state, "c1.h3"))
    assert survivors.returncode == 0, survivors.stdout

    logs = weftctl(state_dir, "logs", "flanneld@h1")
    assert logs.returncode == 0 and "removed" in logs.stdout, logs.stdout[-2000:]

    down = weftctl(state_dir, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(state, state_dir)
    after = root_snapshot()
    for key in before:
        assert after[key] == before[key], f"root namespace {key} changed"


def make_demo(state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WEFT_SANDBOX_DIR=str(state_dir))
    return subprocess.run(["make", "-s", "demo"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=180)


def test_make_demo_twice_and_while_up(state_dir: Path) -> None:
    missing = _missing("embedded")
    if missing:
        pytest.skip("not in this build yet: " + ", ".join(missing))
    if shutil.which("make") is None or shutil.which("uv") is None:
        pytest.skip("needs make and uv (the README's quick start)")
    before = root_snapshot()
    for cycle in (1, 2):
        demo = make_demo(state_dir)
        assert demo.returncode == 0, f"cycle {cycle}:\n{demo.stdout}{demo.stderr}"
        assert " 0% packet loss" in demo.stdout, demo.stdout
        state = load_state(state_dir)
        assert state is not None
        if cycle == 1:
            recorded = (state_dir / "state.json").read_text()
            ours = {ns for ns in list_netns() if ns.startswith(state.tag + "-")}
            again = make_demo(state_dir)  # the README: safe to run again
            assert again.returncode == 0, again.stdout + again.stderr
            assert "already up" in again.stderr and "already up" in again.stdout, (
                again.stdout + again.stderr)
            assert (state_dir / "state.json").read_text() == recorded
            assert {ns for ns in list_netns() if ns.startswith(state.tag + "-")} == ours
            # underlay, hosts, containers (plus the scheduler demo unit's own namespace)
            assert {state.underlay_ns, *(h.netns for h in state.hosts),
                    *(c.netns for c in state.containers)} <= ours
            assert len(state.hosts) == len(state.containers) == 3
            healthy_status(state_dir)
        down = weftctl(state_dir, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert_nothing_left(state, state_dir)
    after = root_snapshot()
    for key in before:
        assert after[key] == before[key], f"root namespace {key} changed"


def test_state_file_is_json_with_every_pid(state_dir: Path) -> None:
    """A one-host sandbox on etcd records every pid as JSON; bad targets get clear errors."""
    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd")
    up = weftctl(state_dir, "up", "--hosts", "1", "--store", "etcd")
    assert up.returncode == 0, up.stdout + up.stderr
    raw = json.loads((state_dir / "state.json").read_text())
    assert {d["name"] for d in raw["daemons"]} >= {"store"}
    assert all(isinstance(d["pid"], int) and d["pid"] > 1 for d in raw["daemons"])
    over = weftctl(state_dir.parent / "other", "up", "--hosts", "17")
    assert over.returncode == 1 and "--hosts: must be 1..16" in over.stderr, over.stderr
    assert not (state_dir.parent / "other").exists()
    bad = weftctl(state_dir, "logs", "nosuch@h9")
    assert bad.returncode == 1 and "no such daemon" in bad.stderr
    bad = weftctl(state_dir, "exec", "h9", "--", "true")
    assert bad.returncode == 1 and "no such host or container" in bad.stderr
    state = load_state(state_dir)
    assert state is not None
    assert weftctl(state_dir, "down").returncode == 0
    assert_nothing_left(state, state_dir)


def test_failed_up_removes_everything_it_made(state_dir: Path, tmp_path: Path) -> None:
    """A store dying at start-up (an `etcd` exiting 1, first on PATH): clear error, no trace."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "etcd").write_text("#!/bin/sh\necho 'etcd: simulated start-up failure' >&2\nexit 1\n")
    (fake / "etcd").chmod(0o755)
    env = dict(os.environ, WEFT_SANDBOX_DIR=str(state_dir),
               PATH=f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    before = root_snapshot()
    proc = subprocess.run([WEFTCTL, "sandbox", "up", "--hosts", "2", "--store", "etcd"],
                          capture_output=True, text=True, env=env, timeout=90)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "store@underlay: exited during start-up" in proc.stderr, proc.stderr
    assert "simulated start-up failure" in proc.stderr, proc.stderr  # the log tail is shown
    tag = re.search(r"weft sandbox (w[0-9a-f]+):", proc.stdout)
    assert tag, proc.stdout
    assert [ns for ns in list_netns() if ns.startswith(tag.group(1) + "-")] == []
    assert not state_dir.exists()
    assert root_snapshot() == before

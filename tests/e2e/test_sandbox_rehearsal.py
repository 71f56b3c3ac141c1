"""The sandbox as a rehearsal tool: names from containers, exec's exit codes, status --json,
a host killed and started again, a store outage and its end.

One 2-host sandbox serves the whole module (tests run in file order and each leaves
it as it found it); the finalizer runs `sandbox down` whatever happens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.sandbox.cluster import load_state
from overlay.sandbox.model import State
from tests.e2e.test_sandbox import _missing, assert_nothing_left, exec_in, ip_of, weftctl

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]

TTL = 4  # seconds: a killed host's lease is gone soon after


sandbox = weftctl  # `weftctl sandbox ARGS` with the state dir in the environment
in_container = exec_in


def status_json(state_dir: Path) -> dict[str, object]:
    proc = sandbox(state_dir, "status", "--json")
    doc: dict[str, object] = json.loads(proc.stdout)
    assert doc["healthy"] is (proc.returncode == 0), proc.stdout
    return doc


def host_entry(doc: dict[str, object], host: str) -> dict[str, object]:
    hosts = doc["hosts"]
    assert isinstance(hosts, list)
    entry: dict[str, object] = next(h for h in hosts if h["host"] == host)
    return entry


def until(predicate: object, within: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, State]]:
    missing = _missing("embedded")
    if missing:
        pytest.skip("not in this build yet: " + ", ".join(missing))
    state_dir = tmp_path_factory.mktemp("rehearsal") / "sandbox"
    try:
        proc = sandbox(state_dir, "up", "--hosts", "2", "--lease-ttl", str(TTL))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        state = load_state(state_dir)
        assert state is not None
        yield state_dir, state
    finally:
        state = load_state(state_dir)
        if state is not None:
            sandbox(state_dir, "down", timeout=60)
            assert_nothing_left(state, state_dir)
            assert not list(Path("/etc/netns").glob(f"{state.tag}-*"))


def test_container_names_resolve_without_a_server(up: tuple[Path, State]) -> None:
    state_dir, state = up
    c1h2 = ip_of(state, "c1.h2")
    ping = in_container(state_dir, "c1.h1", "ping", "-n", "-c", "1", "-W", "2", "c1.h2")
    assert ping.returncode == 0 and f"PING c1.h2.skydns.local ({c1h2})" in ping.stdout, (
        ping.stdout + ping.stderr)
    ptr = in_container(state_dir, "c1.h1", "dig", "+short", "+time=2", "-x", c1h2)
    assert ptr.stdout.split() == ["c1.h2.skydns.local."], ptr.stdout + ptr.stderr


def test_exec_of_a_missing_command_is_127(up: tuple[Path, State]) -> None:
    state_dir, _ = up
    proc = in_container(state_dir, "h1", "nosuchcmd-weft")
    assert proc.returncode == 127 and "command not found" in proc.stderr, proc.stderr
    assert in_container(state_dir, "h1", "sh", "-c", "exit 7").returncode == 7


def test_status_json(up: tuple[Path, State]) -> None:
    state_dir, state = up
    doc = status_json(state_dir)
    assert doc["tag"] == state.tag and doc["up"] is True and doc["store_reachable"] is True
    h1 = host_entry(doc, "h1")
    assert h1["lease"] == "live" and isinstance(h1["lease_ttl"], int)
    assert h1["containers"] == [{"name": "c1", "ip": ip_of(state, "c1.h1"),
                                 "dns": "c1.h1.skydns.local", "netns": f"{state.tag}-h1c1"}]
    daemons = doc["daemons"]
    assert isinstance(daemons, list)
    assert {(d["name"], d["host"], d["state"]) for d in daemons} >= {
        ("store", "underlay", "running"), ("flanneld", "h1", "running"),
        ("flanneld", "h2", "running"), ("dnsd", "h1", "running")}


def test_a_killed_host_expires_then_comes_back_as_after_a_reboot(
        up: tuple[Path, State]) -> None:
    state_dir, state = up
    subnet = host_entry(status_json(state_dir), "h2")["subnet"]
    assert sandbox(state_dir, "kill", "h2").returncode == 0
    until(lambda: host_entry(status_json(state_dir), "h2")["lease"] == "expired",
          TTL + 15, "h2's lease expiring")
    table = sandbox(state_dir, "status").stdout
    assert any(line.startswith("h2 ") and "expired" in line for line in table.splitlines()), table
    started = sandbox(state_dir, "start", "h2")
    assert started.returncode == 0 and "started flanneld@h2" in started.stdout, (
        started.stdout + started.stderr)
    h2 = host_entry(status_json(state_dir), "h2")  # started = ready: the lease is held
    assert h2["lease"] == "live" and h2["subnet"] == subnet, h2  # the same subnet again
    ping = in_container(state_dir, "c1.h1", "ping", "-n", "-c", "1", "-W", "2",
                        ip_of(state, "c1.h2"))
    until(lambda: in_container(state_dir, "c1.h1", "ping", "-n", "-c", "1", "-W", "1",
                               ip_of(state, "c1.h2")).returncode == 0, 15,
          "c1.h1 reaching c1.h2 again")
    again = sandbox(state_dir, "start", "h2")
    assert again.returncode == 0 and "already running" in again.stdout, ping.stdout


def test_store_outage_rehearsal(up: tuple[Path, State]) -> None:
    state_dir, state = up
    killed = sandbox(state_dir, "kill", "store")
    assert killed.returncode == 0 and "the store is down" in killed.stdout, killed.stderr
    doc = status_json(state_dir)
    assert doc["store_reachable"] is False
    assert host_entry(doc, "h1")["lease"] == "unknown"
    # dnsd keeps answering from its index while the store is down
    dig = in_container(state_dir, "c1.h2", "dig", "+short", "+time=2", "+search", "c1.h1")
    assert dig.stdout.split() == [ip_of(state, "c1.h1")], dig.stdout + dig.stderr
    started = sandbox(state_dir, "start", "store")
    assert started.returncode == 0 and "started store@underlay" in started.stdout, (
        started.stdout + started.stderr)
    until(lambda: status_json(state_dir)["healthy"] is True, 30, "the sandbox healthy again")

"""Outgrowing the embedded store: a live 3-host sandbox moved to Debian's etcd with
`weftctl store migrate`, its daemons restarted on the new endpoint and the embedded store
stopped, keeps every subnet lease and DNS record, and cross-host pings and names keep working."""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.sandbox.cluster import load_state
from overlay.sandbox.model import State, reverse_name
from overlay.store.embedded.launch import start_etcd
from tests.e2e.test_sandbox import exec_in as in_ns
from tests.e2e.test_sandbox import weftctl as sandbox

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.etcd, pytest.mark.timeout(300)]

WEFTCTL = str(Path(sys.executable).absolute().parent / "weftctl")
ETCD_PORT = 23790  # inside the sandbox's own underlay namespace: nothing else is there


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "sandbox"
    yield d
    if (d / "state.json").exists():
        sandbox(d, "down", timeout=60)


def etcdctl(endpoint: str) -> tuple[str, ...]:
    """etcdctl on ``endpoint`` (``sandbox exec`` sets ETCDCTL_ENDPOINTS, which etcdctl will not
    have beside --endpoints)."""
    return ("env", f"ETCDCTL_ENDPOINTS={endpoint}", "etcdctl")


def dump(d: Path, endpoint: str) -> dict[str, object]:
    """Every key under / in the store at ``endpoint`` (JSON values decoded)."""
    out = in_ns(d, "underlay", *etcdctl(endpoint), "get", "/", "--prefix", "-w", "json")
    assert out.returncode == 0, out.stderr
    kvs = json.loads(out.stdout).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode():
            json.loads(base64.b64decode(kv["value"])) for kv in kvs}


def skydns_key(name: str) -> str:
    return "/skydns/" + "/".join(reversed(name.rstrip(".").split(".")))


def ips(state: State) -> dict[str, str]:
    return {c.ident: c.ip.split("/")[0] for c in state.containers}


def test_move_a_live_sandbox_to_etcd(sandbox_dir: Path, tmp_path: Path) -> None:
    state_dir = sandbox_dir
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs Debian's etcd-server and etcd-client")
    up = sandbox(state_dir, "up", "--hosts", "3", "--store", "embedded", "--lease-ttl", "60")
    assert up.returncode == 0, up.stdout + up.stderr
    state = load_state(state_dir)
    assert state is not None
    old, new = f"http://{state.store_ip}:2379", f"http://{state.store_ip}:{ETCD_PORT}"
    before = dump(state_dir, old)
    subnets = {k for k in before if k.startswith("/coreos.com/network/subnets/")}
    # the containers' names and PTRs (a scheduled unit's record may change when its agent
    # restarts it on the new store: that is the agent's business, not the migration's)
    records = {skydns_key(c.dns) for c in state.containers} | {
        skydns_key(reverse_name(ipaddress.ip_interface(c.ip).ip)) for c in state.containers}
    assert len(subnets) == 3 and len(records) == 6 and records <= set(before), before

    etcd = start_etcd(tmp_path / "etcd", host=state.store_ip, port=ETCD_PORT,
                      netns=state.underlay_ns, log=tmp_path / "etcd.log")
    try:
        deadline = time.monotonic() + 20
        while in_ns(state_dir, "underlay", *etcdctl(new), "endpoint", "health").returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "etcd.log").read_text()[-2000:]
            time.sleep(0.3)

        moved = in_ns(state_dir, "underlay", WEFTCTL, "store", "migrate", "--from", old,
                      "--to", new)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert dump(state_dir, new) == before  # every key and value, before any restart
        for host in ("h1", "h2", "h3"):
            started = sandbox(state_dir, "start", host, "--store-endpoint", new)
            assert started.returncode == 0, started.stdout + started.stderr
        assert sandbox(state_dir, "kill", "store").returncode == 0  # the embedded one is gone

        after = dump(state_dir, new)
        assert {k for k in after if k.startswith("/coreos.com/network/subnets/")} == subnets
        for key in subnets | records | {"/coreos.com/network/config"}:
            assert after[key] == before[key], key  # same subnet, PublicIP, VTEP MAC, record
        leases = sandbox(state_dir, "exec", "h1", "--", WEFTCTL, "leases", "--json",
                         "-etcd-endpoints", new)
        rows = [json.loads(line) for line in leases.stdout.splitlines()]
        assert len(rows) == 3 and all(r["ttl_seconds"] > 0 for r in rows), leases.stdout

        addr = ips(state)
        for src, dst in (("c1.h1", "c1.h2"), ("c1.h2", "c1.h3"), ("c1.h3", "c1.h1")):
            ping = in_ns(state_dir, src, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                         addr[dst])
            assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout}{ping.stderr}"
        dig = in_ns(state_dir, "c1.h3", "dig", f"@{state.dns_ip}", "c1.h2.skydns.local",
                    "+short", "+time=2", "+tries=3")
        assert dig.stdout.split() == [addr["c1.h2"]], dig.stdout + dig.stderr
        state = load_state(state_dir)
        assert state is not None and state.store_endpoint == new
        assert all(new in " ".join(d.argv) for d in state.daemons if d.name != "store")
    finally:
        etcd.stop(kill=True)

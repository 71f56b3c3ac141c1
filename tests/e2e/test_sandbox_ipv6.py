"""End to end: `weftctl sandbox up --ipv6` builds a dual-stack cluster whose proof pings and
digs over both families (dnsd asked over IPv4 and over IPv6), and `down` leaves the root
namespace as it was."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from overlay.sandbox.cluster import load_state
from overlay.testbed import list_netns
from tests.e2e.test_sandbox import _missing, root_snapshot, weftctl

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.parametrize("backend", ["vxlan"])
def test_sandbox_up_ipv6_proves_both_families(backend: str) -> None:
    if missing := _missing("embedded"):
        pytest.skip(f"not in this build: {', '.join(missing)}")
    before = root_snapshot()
    state_dir = Path(tempfile.mkdtemp(prefix="weft-sb6-")) / "sb"
    try:
        up = weftctl(state_dir, "up", "--ipv6", "--hosts", "2", "--backend", backend,
                     timeout=180)
        out = up.stdout + up.stderr
        assert up.returncode == 0, out[-4000:]
        state = load_state(state_dir)
        assert state is not None and state.options["ipv6"] is True
        assert all(h.ip6.startswith("fd00:198:18::") for h in state.hosts)
        c1, c2 = state.containers
        assert c1.ip6 and c2.ip6, state.containers
        assert f"ping -c 3 {c2.ip6.split('/')[0]}" in out
        assert out.count("3 received, 0% packet loss") >= 2, out  # IPv4 and IPv6
        assert f"AAAA\t{c1.ip6.split('/')[0]}" in out, out
        # dnsd answers over IPv6 too ([::]:53), from the address queried
        assert state.dns_ip6 == state.hosts[0].ip6.split("/")[0], state
        assert f"dig @{state.dns_ip6} {c1.dns} AAAA" in out, out
        assert f"SERVER: {state.dns_ip6}#53" in out, out
        resolv = weftctl(state_dir, "exec", c2.ident, "--", "cat", "/etc/resolv.conf")
        assert f"nameserver {state.dns_ip}\nnameserver {state.dns_ip6}\n" in resolv.stdout
        # the lease holds both halves, as flannel's dual-stack key
        leases = weftctl(state_dir, "exec", "underlay", "--", "etcdctl", "get", "--prefix",
                         "--keys-only", "/coreos.com/network/subnets/")
        assert leases.stdout.count("&fd00:10:244:") == 2, leases.stdout
    finally:
        down = weftctl(state_dir, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        tag_left = [ns for ns in list_netns() if state_dir.name in ns]
        assert not tag_left
    assert root_snapshot() == before

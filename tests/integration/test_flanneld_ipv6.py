"""flanneld on dual-stack and IPv6-only networks (issue 17): real flanneld processes in
netns hosts on a dual-stack underlay (fd00:198:18::/64, only inside the namespaces), the
store in the underlay namespace, containers pinging over both families."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.flanneld_cluster import Cluster, running_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd]

NET6 = "fd00:10:244::/56"


@pytest.fixture
def cluster2(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(2, getattr(request, "param", "etcd"), tmp_path, ipv6=True) as c:
        yield c


def _set(c: Cluster, backend: str, mode: str) -> None:
    c.network_set(backend, ipv6_network=NET6, ipv4=mode == "dual")


def _v6(addr: object) -> str:
    return str(getattr(addr, "ip", ""))


@pytest.mark.parametrize(("cluster2", "backend", "mode"), [
    ("etcd", "vxlan", "dual"), ("embedded", "host-gw", "dual"),
    ("etcd", "host-gw", "v6only"), ("embedded", "vxlan", "v6only"),
], indirect=["cluster2"], ids=["etcd-vxlan-dual", "embedded-host-gw-dual",
                               "etcd-host-gw-v6only", "embedded-vxlan-v6only"])
def test_containers_ping_over_both_families(cluster2: Cluster, backend: str, mode: str) -> None:
    c = cluster2
    _set(c, backend, mode)
    hosts = ["h1", "h2"]
    c.start("h1", extra=["-ip-masq"])
    c.start("h2")
    for h in hosts:
        c.wait_ready(h)
    envs = {h: c.env(h) for h in hosts}
    assert all(e.ipv6_subnet is not None for e in envs.values())
    assert envs["h1"].ipv6_subnet != envs["h2"].ipv6_subnet
    assert all(e.ipv4 == (mode == "dual") for e in envs.values())
    containers = {h: c.container(h) for h in hosts}
    for a, b in itertools.permutations(hosts, 2):
        target6 = _v6(containers[b].ip6)
        assert c.tb.wait_ping(containers[a].netns, target6, within=15), \
            f"{a} container cannot reach {b} container {target6} over IPv6"
        if mode == "dual":
            target = _v6(containers[b].ip)
            assert c.tb.wait_ping(containers[a].netns, target, within=10), \
                f"{a} container cannot reach {b} container {target} over IPv4"
    for h, o in itertools.permutations(hosts, 2):
        assert str(envs[o].ipv6_subnet) in c.routes(h, 6)
    keys = c.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/")
    for h in hosts:
        sub6 = envs[h].ipv6_subnet
        assert sub6 is not None
        leaf6 = f"{sub6.network_address}-{sub6.prefixlen}"
        leaf4 = str(envs[h].subnet).replace("/", "-") if mode == "dual" else "0.0.0.0-0"
        assert f"{leaf4}&{leaf6}" in keys, keys
    value = c.etcdctl("get", "--print-value-only",
                      f"/coreos.com/network/subnets/{keys.split('/subnets/')[1].split()[0]}")
    assert '"PublicIPv6":"fd00:198:18::1' in value, value
    tables = set(c.tb.exec(c.tb.hosts["h1"].netns, ["nft", "list", "tables"]).stdout
                 .splitlines())
    assert "table ip6 weft" in tables  # -ip-masq: the flannel-ipv6 rules
    assert ("table ip weft" in tables) == (mode == "dual")


def test_restart_under_a_ping6_flood_loses_nothing(cluster2: Cluster) -> None:
    c = cluster2
    _set(c, "vxlan", "dual")
    for h in ("h1", "h2"):
        c.start(h)
    for h in ("h1", "h2"):
        c.wait_ready(h)
    c1, c2 = c.container("h1"), c.container("h2")
    target = _v6(c2.ip6)
    assert c.tb.wait_ping(c1.netns, target, within=15)
    before = c.env("h2")
    ping = c.tb.spawn(c1.netns, ["ping", "-6", "-n", "-q", "-i", "0.005", "-W", "1", target],
                      log=c.tmp / "ping6.log")
    started = time.monotonic()
    time.sleep(0.5)
    c.stop("h2", signal.SIGTERM)
    c.start("h2")
    c.wait_ready("h2", count=2)
    time.sleep(max(0.5, 2.0 - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    ping.send_signal(signal.SIGINT)
    ping.wait(10)
    out = (c.tmp / "ping6.log").read_text()
    line = next(ln for ln in out.splitlines() if "packets transmitted" in ln)
    sent, received = int(line.split()[0]), int(line.split()[3])
    assert sent >= 100 * elapsed * 0.9, f"ping6 ran below 100 packets/s: {out}"
    assert received == sent, f"lost {sent - received} of {sent} packets across the restart"
    after = c.env("h2")
    assert (after.subnet, after.ipv6_subnet) == (before.subnet, before.ipv6_subnet)
    assert "reusing the lease with our PublicIP" in c.log("h2").read_text()


def test_stale_ipv6_peer_is_removed_at_start(cluster2: Cluster) -> None:
    c = cluster2
    _set(c, "host-gw", "v6only")
    # h2 finds its interface as the one routing to an IPv6 address (-iface-can-reach)
    c.start("h1")
    c.start("h2", iface=None, extra=["-iface-can-reach", str(c.tb.underlay_ip6)])
    for h in ("h1", "h2"):
        c.wait_ready(h)
    assert "using interface eth0" in c.log("h2").read_text()
    s2 = c.env("h2").ipv6_subnet
    assert s2 is not None
    deadline = time.monotonic() + 10
    while str(s2) not in c.routes("h1", 6):
        assert time.monotonic() < deadline, "h1 never routed h2's IPv6 subnet"
        time.sleep(0.05)
    c.stop("h1", signal.SIGTERM)
    c.stop("h2", signal.SIGKILL)
    c.etcdctl("del", "--prefix", "/coreos.com/network/subnets/0.0.0.0-0&"
              f"{s2.network_address}-{s2.prefixlen}")
    assert str(s2) in c.routes("h1", 6)  # restart never flushes: still there while down
    c.start("h1")
    c.wait_ready("h1", count=2)
    assert str(s2) not in c.routes("h1", 6)

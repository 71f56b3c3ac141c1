"""flanneld -ip-blackhole-route as a real process on a netns host, for every backend.

The host gets a default route into the underlay, so a packet for an unused
address of its subnet would leak there without the blackhole. Checked with the
kernel's own answers (``ip route get``, ``ping``): strays fail at once with
EINVAL, the container on cni0 stays reachable (the bridge's metric-0 route
wins over the blackhole's metric 1024), a restart keeps exactly one route, and
a lease that moves takes its blackhole along.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.backend.plan import BLACKHOLE_METRIC
from tests.integration.flanneld_cluster import Cluster, running_cluster

pytestmark = [pytest.mark.root]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(1, "embedded", tmp_path) as c:
        yield c


def blackholes(c: Cluster) -> list[dict[str, object]]:
    out = c.tb.exec(c.tb.hosts["h1"].netns,
                    ["ip", "-j", "route", "show", "type", "blackhole"]).stdout
    return list(json.loads(out or "[]"))


def route_get(c: Cluster, addr: str) -> tuple[int, str]:
    p = c.tb.exec(c.tb.hosts["h1"].netns, ["ip", "route", "get", addr], check=False)
    return p.returncode, p.stdout + p.stderr


def ping_stray(c: Cluster, addr: str) -> tuple[int, str, float]:
    started = time.monotonic()
    p = c.tb.exec(c.tb.hosts["h1"].netns, ["ping", "-n", "-c", "1", "-W", "2", addr],
                  check=False)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - started


def wait_blackholes(c: Cluster, want: set[str], within: float = 10) -> list[dict[str, object]]:
    deadline = time.monotonic() + within
    while True:
        got = blackholes(c)
        if {str(r["dst"]) for r in got} == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_blackhole_drops_strays_keeps_containers_and_survives_restart(
        cluster: Cluster, backend: str) -> None:
    c = cluster
    h1 = c.tb.hosts["h1"].netns
    c.tb.exec(h1, ["ip", "route", "add", "default", "via", str(c.tb.underlay_ip),
                   "dev", "eth0"])
    c.network_set(backend)
    c.start("h1", extra=["-ip-blackhole-route"])
    c.wait_ready("h1")
    subnet = c.subnet("h1")
    stray = str(subnet.network_address + 200)
    got = blackholes(c)  # checked after the start-up reconcile: the backend left it alone
    assert [str(r["dst"]) for r in got] == [str(subnet)], got
    assert got[0].get("metric") == BLACKHOLE_METRIC and str(got[0].get("protocol")) == "87", got

    # no bridge yet: a stray is dropped here at once, not sent along the default route
    rc, out = route_get(c, stray)
    assert rc != 0 and "Invalid argument" in out, out
    rc, out, took = ping_stray(c, stray)
    assert rc != 0 and "Invalid argument" in out and took < 1.5, (out, took)

    # a container on cni0 (which takes the subnet's gateway): the bridge route wins
    box = c.container("h1")
    assert box.ip is not None
    assert c.tb.wait_ping(h1, str(box.ip.ip), within=5), "container behind the blackhole"
    rc, out = route_get(c, stray)
    assert rc == 0 and "dev cni0" in out, out  # on the bridge's link, not out eth0

    # a plain restart, this time with cni0 present: the route stays, exactly once
    c.stop("h1", signal.SIGTERM)
    assert [str(r["dst"]) for r in blackholes(c)] == [str(subnet)]  # stop removes nothing
    c.start("h1", extra=["-ip-blackhole-route"])
    c.wait_ready("h1", count=2)
    assert c.subnet("h1") == subnet
    assert [str(r["dst"]) for r in blackholes(c)] == [str(subnet)]
    assert c.tb.ping(h1, str(box.ip.ip), timeout=2)
    log = c.log("h1").read_text()
    assert "blackhole route (" not in log, log[-2000:]  # no add/delete errors

    # the bridge goes away (no containers): strays are dropped again
    c.tb.exec(h1, ["ip", "link", "set", "cni0", "down"])
    rc, out = route_get(c, stray)
    assert rc != 0 and "Invalid argument" in out, out


def test_moved_lease_moves_the_blackhole_and_flag_off_removes_it(cluster: Cluster) -> None:
    c = cluster
    c.network_set("vxlan")
    c.start("h1", ttl=6, extra=["-ip-blackhole-route"])
    c.wait_ready("h1")
    old = c.subnet("h1")
    assert [str(r["dst"]) for r in blackholes(c)] == [str(old)]
    # another host takes over our key: flanneld re-acquires elsewhere
    key = f"/coreos.com/network/subnets/{str(old).replace('/', '-')}"
    c.etcdctl("put", key, json.dumps({"PublicIP": "198.18.0.99", "BackendType": "vxlan",
                                      "BackendData": {"VNI": 1,
                                                      "VtepMAC": "0e:00:00:00:00:99"}}))
    deadline = time.monotonic() + 15
    while c.subnet("h1") == old:
        assert time.monotonic() < deadline, c.log("h1").read_text()[-3000:]
        time.sleep(0.05)
    new = c.subnet("h1")
    assert ipaddress.IPv4Network(new) != old
    got = wait_blackholes(c, {str(new)})
    assert [str(r["dst"]) for r in got] == [str(new)], got
    # restarted without the flag: the leftover goes, as -ip-masq rules do
    c.stop("h1", signal.SIGTERM)
    c.start("h1", ttl=6)
    c.wait_ready("h1", count=2)
    assert blackholes(c) == []

"""flanneld as real processes on netns hosts: cross-host pings, both stores, vxlan and host-gw."""

from __future__ import annotations

import itertools
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.flanneld_cluster import Cluster, running_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture
def cluster3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(3, getattr(request, "param", "embedded"), tmp_path) as c:
        yield c


@pytest.mark.parametrize(("cluster3", "backend"), [
    ("etcd", "vxlan"), ("embedded", "vxlan"), ("etcd", "host-gw"), ("embedded", "host-gw"),
    ("embedded", "udp"),
], indirect=["cluster3"], ids=["etcd-vxlan", "embedded-vxlan", "etcd-host-gw",
                               "embedded-host-gw", "embedded-udp"])
def test_three_hosts_containers_ping_each_other(cluster3: Cluster, backend: str) -> None:
    c = cluster3
    c.network_set(backend)
    hosts = ["h1", "h2", "h3"]
    # h1 also masquerades and serves health/metrics (inside its namespace's loopback)
    c.start("h1", extra=["-ip-masq", "-healthz-ip", "127.0.0.1", "-healthz-port", "9101"])
    for h in hosts[1:]:
        c.start(h)
    for h in hosts:
        c.wait_ready(h)
    subnets = {h: c.subnet(h) for h in hosts}
    assert len(set(subnets.values())) == 3
    for h in hosts:
        assert c.env(h).mtu == {"vxlan": 1450, "host-gw": 1500, "udp": 1472}[backend]
    containers = {h: c.container(h) for h in hosts}
    for a, b in itertools.permutations(hosts, 2):
        target = str(containers[b].ip.ip) if containers[b].ip else ""
        assert c.tb.wait_ping(containers[a].netns, target, within=10), \
            f"{a} container cannot reach {b} container {target}"
    for h in hosts:  # each host routes its peers' subnets (udp: the network, into flannel0)
        peers = {str(subnets[o]) for o in hosts if o != h}
        assert (peers if backend != "udp" else {"10.244.0.0/16"}) <= c.routes(h)
    h1 = c.tb.hosts["h1"].netns
    assert c.env("h1").ip_masq and not c.env("h2").ip_masq
    table = c.tb.exec(h1, ["nft", "list", "table", "ip", "weft"]).stdout
    assert "masquerade" in table and "10.244.0.0/16" in table
    assert c.tb.exec(c.tb.hosts["h2"].netns, ["nft", "list", "table", "ip", "weft"],
                     check=False).returncode != 0
    for path, want in (("/healthz", "200"), ("/readyz", "200"), ("/metrics", "200")):
        out = c.tb.exec(h1, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9101; printf "
                             f"'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"]).stdout
        assert out.split()[1] == want, out
    assert "weft_peers_programmed 2" in out and "weft_leases_known 3" in out
    leases = c.weftctl("leases")
    assert leases.returncode == 0
    for h in hosts:
        assert str(subnets[h]) in leases.stdout
        assert str(c.tb.hosts[h].ip) in leases.stdout


@pytest.mark.parametrize("stall", [0.0, 6.0], ids=["store-up", "store-stalled"])
def test_restart_loses_no_packets_and_keeps_subnet(cluster3: Cluster, stall: float) -> None:
    """A restart under a ping flood loses nothing, also with the store (on another host,
    as in the VMs) frozen from before the old flanneld's exit until ``stall`` s into the
    new one's start: longer than the client's 5 s timeout, so the start-up's store calls
    time out and are retried while every host's renewals and watches wait too."""
    c = cluster3
    c.network_set("vxlan")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's side of Type=notify
    notify.bind(str(c.tmp / "notify.sock"))
    notify.settimeout(10)
    c.start("h1")
    c.start("h2", env={"NOTIFY_SOCKET": str(c.tmp / "notify.sock")})
    for h in ("h1", "h2"):
        c.wait_ready(h)
    assert notify.recv(64) == b"READY=1"
    c1, c2 = c.container("h1"), c.container("h2")
    assert c2.ip is not None
    assert c.tb.wait_ping(c1.netns, str(c2.ip.ip), within=10)
    before = c.subnet("h2")
    # >= 100 packets/s for the whole restart (asking for 200/s: a loaded machine slows ping)
    ping = c.tb.spawn(c1.netns, ["ping", "-n", "-q", "-i", "0.005", "-W", "1", str(c2.ip.ip)],
                      log=c.tmp / "ping.log")
    started = time.monotonic()
    time.sleep(0.5)
    with c.store_frozen(stall):
        c.stop("h2", signal.SIGTERM)
        c.start("h2", env={"NOTIFY_SOCKET": str(c.tmp / "notify.sock")})
        time.sleep(stall)
    c.wait_ready("h2", count=2, within=60)  # the log is appended to: the second "ready"
    time.sleep(max(0.5, 2.0 - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    ping.send_signal(signal.SIGINT)
    ping.wait(10)
    out = (c.tmp / "ping.log").read_text()
    line = next(ln for ln in out.splitlines() if "packets transmitted" in ln)
    sent, received = int(line.split()[0]), int(line.split()[3])
    assert sent >= 100 * elapsed * 0.9, f"ping ran below 100 packets/s: {out}"
    assert received == sent, f"lost {sent - received} of {sent} packets across the restart"
    assert c.subnet("h2") == before
    assert "reusing the lease with our PublicIP" in c.log("h2").read_text()
    assert notify.recv(64) == b"READY=1"  # the restarted flanneld told systemd too
    notify.close()


@pytest.mark.parametrize("cluster3", ["etcd"], indirect=True)
def test_dead_peer_expires_and_stale_peer_cleaned_on_start(cluster3: Cluster) -> None:
    c = cluster3
    ttl = 3
    c.network_set("vxlan")
    for h in ("h1", "h2", "h3"):
        c.start(h, ttl=ttl)
    for h in ("h1", "h2", "h3"):
        c.wait_ready(h)
    s3 = str(c.subnet("h3"))
    c.wait_routes("h1", {s3})
    c.wait_routes("h2", {s3})
    c.stop("h3", signal.SIGKILL)
    killed = time.monotonic()
    while s3 in c.routes("h1") or s3 in c.routes("h2"):
        assert time.monotonic() - killed < ttl + 2, "dead peer's route outlived TTL + 2 s"
        time.sleep(0.05)
    # the live hosts kept renewing their 3 s leases all along
    time.sleep(ttl)
    keys = c.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/")
    s1, s2 = str(c.subnet("h1")), str(c.subnet("h2"))
    assert s1.replace("/", "-") in keys and s2.replace("/", "-") in keys, keys
    assert s3.replace("/", "-") not in keys
    # a peer removed while h1's flanneld is down is cleaned when h1 starts again
    c.stop("h1", signal.SIGTERM)
    c.stop("h2", signal.SIGKILL)
    c.etcdctl("del", f"/coreos.com/network/subnets/{s2.replace('/', '-')}")
    assert s2 in c.routes("h1")  # restart never flushes: still there while down
    c.start("h1", ttl=ttl)
    c.wait_ready("h1", count=2)
    assert s2 not in c.routes("h1")


def test_bad_input_is_logged_never_routed(cluster3: Cluster) -> None:
    c = cluster3
    c.put_raw("/coreos.com/network/config", "{this is not json")
    c.start("h1", iface=None, extra=["-iface-can-reach", c.host_ip])  # the store's route
    # h2 finds its interface the flannel way: the default route's
    c.tb.exec(c.tb.hosts["h2"].netns, ["ip", "route", "add", "default", "via", c.host_ip])
    c.start("h2", iface=None)
    deadline = time.monotonic() + 20
    while "invalid network config" not in c.log("h1").read_text(errors="replace"):
        assert time.monotonic() < deadline, c.log("h1").read_text()
        time.sleep(0.05)
    c.network_set("vxlan")
    c.wait_ready("h1")
    c.wait_ready("h2")
    c.put_raw("/coreos.com/network/subnets/10.244.200.0-24", "not json at all")
    c.put_raw("/coreos.com/network/subnets/10.244.201.0-24",
              '{"PublicIP":"198.18.0.99","BackendType":"quantum","BackendData":{}}')
    c.put_raw("/coreos.com/network/subnets/203.0.113.0-24",  # outside the network
              '{"PublicIP":"198.18.0.97","BackendType":"vxlan","BackendData":{"VNI":1,'
              '"VtepMAC":"0e:00:00:00:02:03"}}')
    c.put_raw("/coreos.com/network/subnets/10.244.202.0-24",
              '{"PublicIP":"198.18.0.98","BackendType":"vxlan","BackendData":{"VNI":1,'
              '"VtepMAC":"0e:00:00:00:02:02"}}')
    deadline = time.monotonic() + 10
    while "10.244.202.0/24" not in c.routes("h1"):  # a good lease after the bad ones
        assert time.monotonic() < deadline, "valid lease after bad ones not programmed"
        time.sleep(0.05)
    routes = c.routes("h1")
    assert not {"10.244.200.0/24", "10.244.201.0/24", "203.0.113.0/24"} & routes
    text = c.log("h1").read_text(errors="replace")
    assert "10.244.200.0-24: value is not JSON" in text
    assert "backend type 'quantum'" in text and "outside the network" in text
    assert c.procs["h1"].poll() is None and c.procs["h2"].poll() is None
    assert "using interface eth0 (198.18.0.12)" in c.log("h2").read_text()
    assert "using interface eth0 (198.18.0.11)" in c.log("h1").read_text()
    assert "Traceback" not in text
    # a nonexistent interface: a clear error and exit status 1, no traceback
    proc = c.start("h3", iface="nosuch0")
    assert proc.wait(20) == 1
    text3 = c.log("h3").read_text(errors="replace")
    assert "-iface nosuch0: no such interface" in text3 and "Traceback" not in text3


@pytest.mark.parametrize("store", ["etcd", "embedded"])
def test_twenty_flanneld_at_once_get_distinct_subnets(store: str, tmp_path: Path) -> None:
    n = 20
    with running_cluster(n, store, tmp_path) as c:
        c.network_set("host-gw")
        hosts = list(c.tb.hosts)
        for h in hosts:
            c.start(h)
        for h in hosts:
            c.wait_ready(h, within=90)
        subnets = [c.subnet(h) for h in hosts]
        assert len(set(subnets)) == n, subnets
        listing = c.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/")
        assert len([k for k in listing.split() if k]) == n


@pytest.mark.parametrize("cluster3", ["embedded", "etcd"], indirect=True)
def test_store_restart_is_survived(cluster3: Cluster) -> None:
    c = cluster3
    c.network_set("vxlan")
    for h in ("h1", "h2"):
        c.start(h, ttl=30)
    for h in ("h1", "h2"):
        c.wait_ready(h)
    s1 = c.subnet("h1")
    c.restart_store(down_for=2.0)
    c.start("h3", ttl=30)  # a host joining after the outage is seen by the survivors
    c.wait_ready("h3", within=40)
    s3 = str(c.subnet("h3"))
    c.wait_routes("h1", {s3}, within=20)
    c.wait_routes("h2", {s3}, within=20)
    assert c.procs["h1"].poll() is None and c.procs["h2"].poll() is None
    assert c.subnet("h1") == s1
    # (the store client's abandoned gRPC request streams may make asyncio log noise here)
    assert "flanneld failed" not in c.log("h1").read_text(errors="replace")

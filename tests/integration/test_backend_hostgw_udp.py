"""host-gw and udp backends on the netns testbed: pings across three hosts, cleanup, refusal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from overlay.backend.base import BackendError
from overlay.testbed import open_testbed
from tests.backend_driver import DriverProcess
from tests.integration.test_backend_harness import (
    cluster,
    collect,
    ip_show,
    metric_value,
    ping_matrix,
    start_sniffer,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HOSTS = ["h1", "h2", "h3"]


def test_hostgw_three_hosts(tmp_path: Path) -> None:
    with open_testbed(3) as tb, cluster(tb, "host-gw", log_dir=tmp_path) as c:
        for name in HOSTS:
            c.start(name)
        for name, r in c.reconcile_all().items():
            assert (r["added"], r["errors"]) == (2, []), (name, r)
        assert c.hosts["h1"].mtu == 1500
        routes = ip_show(tb, "h1", "ip", "route")
        assert "10.244.2.0/24 via 198.18.0.12 dev eth0 proto 87" in routes
        assert "10.244.3.0/24 via 198.18.0.13 dev eth0 proto 87" in routes
        assert ping_matrix(tb, HOSTS) == []
        # a route someone else made is never touched; a gone peer's route is removed
        tb.exec(tb.hosts["h1"].netns, ["ip", "route", "add", "10.99.0.0/24", "via", "198.18.0.1"])
        c.stop("h3")
        r = c.reconcile("h1")
        assert r["removed"] == 1 and r["errors"] == []
        routes = ip_show(tb, "h1", "ip", "route")
        assert "10.244.3.0/24" not in routes and "10.99.0.0/24 via 198.18.0.1" in routes


def test_hostgw_refuses_public_ip_not_on_interface() -> None:
    with open_testbed(1) as tb:
        d = DriverProcess(tb.hosts["h1"].netns, "host-gw", "eth0", public_ip="203.0.113.7",
                          python=sys.executable)
        try:
            with pytest.raises(BackendError, match=r"203\.0\.113\.7 is not an address of eth0"):
                d.call({"op": "prepare"})
        finally:
            d.stop()


def test_udp_three_hosts(tmp_path: Path) -> None:
    with open_testbed(3) as tb, cluster(tb, "udp", log_dir=tmp_path) as c:
        for name in HOSTS:
            c.start(name)
        assert c.hosts["h1"].lease.backend_type == ""  # as flannel publishes udp leases
        for name, r in c.reconcile_all().items():
            assert (r["peers"], r["errors"]) == (2, []), (name, r)
        assert c.hosts["h1"].mtu == 1472
        assert "10.244.0.0/16 dev flannel0 proto 87" in ip_show(tb, "h1", "ip", "route")
        assert "inet 10.244.1.0/32" in ip_show(tb, "h1", "ip", "-4", "addr", "show", "flannel0")
        sniffer = start_sniffer(tb, timeout=10, count=8)
        try:
            assert ping_matrix(tb, HOSTS) == []
        finally:
            pkts = collect(sniffer)
        # flannel's wire format: the container's IP packet is the whole UDP payload
        enc = [p for p in pkts if p["dport"] == 8285]
        assert enc, f"no UDP 8285 on the underlay: {pkts}"
        assert all(p["vni"] is None for p in enc)
        assert {(p["inner_src"] or "")[:7] for p in enc} == {"10.244."}, enc
        # a large packet (MTU-sized) goes through whole
        h1c = tb.containers["h1/c"].netns
        assert tb.exec(h1c, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1444",
                             "10.244.2.2"], check=False).returncode == 0


def test_udp_edges_icmp_ttl_mtu_counters_and_restart(tmp_path: Path) -> None:
    with open_testbed(2) as tb, cluster(tb, "udp", log_dir=tmp_path) as c:
        for name in HOSTS[:2]:
            c.start(name)
        c.reconcile_all()
        h1c = tb.containers["h1/c"].netns
        assert ping_matrix(tb, HOSTS[:2]) == []
        # no lease owns 10.244.9.0/24: net unreachable from h1's flannel0 address
        out = tb.exec(h1c, ["ping", "-c", "1", "-W", "2", "10.244.9.2"], check=False).stdout
        assert "From 10.244.1.0" in out and "Destination Net Unreachable" in out, out
        # TTL 2: the host's forward takes one, the tunnel the other -> time exceeded from us;
        # 4 arrives (h1 forward, tunnel, h2 forward)
        out = tb.exec(h1c, ["ping", "-c", "1", "-W", "2", "-t", "2", "10.244.2.2"],
                      check=False).stdout
        assert "From 10.244.1.0" in out and "Time to live exceeded" in out, out
        assert tb.exec(h1c, ["ping", "-c", "1", "-W", "2", "-t", "4", "10.244.2.2"],
                       check=False).returncode == 0
        # a TUN MTU above the path MTU (1472): DF packets get fragmentation-needed
        # (sent from the host: the container's own MTU is 1472 already)
        h1 = tb.hosts["h1"].netns
        tb.exec(h1, ["ip", "link", "set", "flannel0", "mtu", "1500"])
        r = tb.exec(h1, ["ping", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s", "1460",
                         "10.244.2.2"], check=False)
        assert "mtu = 1472" in r.stdout + r.stderr, r
        text = c.hosts["h1"].driver.call({"op": "metrics"})["text"]
        assert metric_value(text, 'weft_udp_dropped_total{reason="no_route"}') >= 1
        assert metric_value(text, 'weft_udp_dropped_total{reason="ttl_expired"}') >= 1
        assert metric_value(text, 'weft_udp_dropped_total{reason="too_big"}') >= 1
        assert metric_value(text, 'weft_udp_packets_total{direction="tx"}') >= 2
        assert metric_value(text, 'weft_udp_bytes_total{direction="rx"}') >= 2 * 84
        assert metric_value(text, "weft_udp_icmp_sent_total") >= 3
        # restart: a new forwarder on the same lease carries traffic again within 2 s
        c.stop("h1")
        c.start("h1")
        c.reconcile("h1")
        t0 = time.monotonic()
        assert tb.wait_ping(h1c, "10.244.2.2", within=2), "no traffic 2 s after restart"
        assert time.monotonic() - t0 < 2.5
        assert "inet 10.244.1.0/32" in ip_show(tb, "h1", "ip", "-4", "addr", "show", "flannel0")

"""The udp forwarder with TUN offloads on real TUNs: TCP bulk data arrives intact in
both wire formats (weft chunks between weft hosts, flannel's datagrams to a host
without offloads or without chunks, and to a naive flannel-format loop that is not
weft's code at all), encrypted or not, and each path says in /metrics that it was
taken."""

from __future__ import annotations

import contextlib
import hashlib
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from overlay.lease.model import Lease
from overlay.testbed import Testbed, open_testbed
from tests.integration.test_backend_harness import (
    cluster,
    container_ip,
    metric_value,
    ping_matrix,
    subnet_of,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SIZE = 6 << 20
SERVER = """
import contextlib
import hashlib, socket, sys
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
while chunk := c.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data)
c.close()
"""


@contextlib.contextmanager
def naive_host(tb: Testbed, name: str, peers: list[str]) -> Iterator[None]:
    """bench/naive_tunudp.py on host ``name``: flannel's udp wire format from code that
    is not weft's forwarder (one packet per system call, no offloads)."""
    i = int(name[1:])
    argv = ["ip", "netns", "exec", tb.hosts[name].netns, sys.executable,
            str(Path(__file__).resolve().parents[2] / "bench" / "naive_tunudp.py"),
            "--local", str(tb.hosts[name].ip), "--address", str(subnet_of(i).network_address),
            "--network", "10.244.0.0/16", "--mtu", "1472",
            *(f"--peer={subnet_of(int(p[1:]))}={tb.hosts[p].ip}" for p in peers)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


def transfer(tb: Testbed, src: str, dst: str) -> None:
    """SIZE random bytes over TCP from ``src``'s container to ``dst``'s: same digest."""
    seed = secrets.randbits(32)
    srv = subprocess.Popen(["ip", "netns", "exec", tb.containers[f"{dst}/c"].netns,
                            sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        port = srv.stdout.readline().strip()
        target = str(tb.containers[f"{dst}/c"].ip.ip)  # type: ignore[union-attr]
        subprocess.run(["ip", "netns", "exec", tb.containers[f"{src}/c"].netns, sys.executable,
                        "-c", CLIENT, target, port, str(seed), str(SIZE)], check=True,
                       timeout=90)
        got = srv.communicate(timeout=60)[0].split()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    want = hashlib.sha256(random.Random(seed).randbytes(SIZE)).hexdigest()
    assert got == [str(SIZE), want], f"{src}->{dst}: {got}"


def test_bulk_tcp_intact_in_chunks_and_in_flannel_format(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with open_testbed(5) as tb, cluster(tb, "udp", log_dir=tmp_path) as c, \
            naive_host(tb, "h5", peers=["h1"]):
        h5 = tb.hosts["h5"]
        c.foreign["h5"] = Lease(subnet_of(5), h5.ip, "")  # flannel's udp lease: no data
        tb.add_container("h5", "c", container_ip(5), mtu=1472)
        c.start("h1")
        c.start("h2")
        monkeypatch.setenv("WEFT_UDP_OFFLOAD", "0")  # h3: plain TUN, one packet per call
        c.start("h3")
        monkeypatch.delenv("WEFT_UDP_OFFLOAD")
        h4 = c.start("h4")  # offloads, but its lease says nothing of chunks (older weft)
        h4.lease = replace(h4.lease, backend_data={})
        assert c.hosts["h1"].lease.backend_data == {"Chunks": "v1"}
        assert c.hosts["h3"].lease.backend_data == {}
        c.reconcile_all()
        assert ping_matrix(tb, ["h1", "h2", "h3", "h4"]) == []
        assert ping_matrix(tb, ["h1", "h5"]) == []
        for src, dst in (("h1", "h2"), ("h2", "h1"), ("h1", "h3"), ("h3", "h1"), ("h1", "h4"),
                         ("h1", "h5"), ("h5", "h1")):
            transfer(tb, src, dst)
        text = c.hosts["h1"].driver.call({"op": "metrics"})["text"]
        for kind in ('"tx",kind="chunked"', '"tx",kind="segmented"', '"rx",kind="reassembled"'):
            assert metric_value(text, f"weft_udp_offload_packets_total{{direction={kind}}}") > 0
        assert metric_value(text, 'weft_udp_dropped_total{reason="tun_write_error"}') == 0
        # h1's segments to h4 left in UDP GSO sends: h4 joined them again before its TUN
        text = c.hosts["h4"].driver.call({"op": "metrics"})["text"]
        assert metric_value(text, 'weft_udp_offload_packets_total{direction="rx",'
                                  'kind="coalesced"}') > 0


def test_bulk_tcp_intact_encrypted_super_packets_sealed_whole(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text(secrets.token_hex(32))
    config = {"Type": "udp", "Encryption": {"KeyFile": str(key)}}
    with open_testbed(2) as tb, cluster(tb, "udp", config, log_dir=tmp_path) as c:
        c.start("h1")
        c.start("h2")
        c.reconcile_all()
        assert ping_matrix(tb, ["h1", "h2"]) == []
        transfer(tb, "h1", "h2")
        text = c.hosts["h2"].driver.call({"op": "metrics"})["text"]
        # one seal per super-packet, carried in chunks, opened whole
        assert metric_value(text, 'weft_udp_offload_packets_total{direction="rx",'
                                  'kind="reassembled"}') > 0
        assert metric_value(text, 'weft_udp_dropped_total{reason="auth_failed"}') == 0

"""The udp forwarder with TUN offloads on real TUNs: TCP bulk data arrives intact in
both wire formats (weft chunks between weft hosts, flannel's datagrams to a host
without offloads or without chunks), encrypted or not, and each path says in /metrics
that it was taken."""

from __future__ import annotations

import hashlib
import random
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from overlay.testbed import Testbed, open_testbed
from tests.integration.test_backend_harness import cluster, metric_value, ping_matrix

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SIZE = 6 << 20
SERVER = """
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
    with open_testbed(4) as tb, cluster(tb, "udp", log_dir=tmp_path) as c:
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
        for src, dst in (("h1", "h2"), ("h2", "h1"), ("h1", "h3"), ("h3", "h1"), ("h1", "h4")):
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

"""udp encryption on the netns testbed: ciphertext on the wire, pings through, a plaintext
peer and a peer with another key refused (never a plaintext fallback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overlay.testbed import open_testbed
from tests.integration.test_backend_harness import (
    cluster,
    collect,
    metric_value,
    ping_matrix,
    start_sniffer,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(150)]


def test_encrypted_udp(tmp_path: Path) -> None:
    key, other = tmp_path / "cluster.key", tmp_path / "other.key"
    key.write_text(os.urandom(32).hex())
    other.write_text(os.urandom(32).hex())
    enc = {"Type": "udp", "Encryption": {"KeyFile": str(key)}}
    with open_testbed(3) as tb, cluster(tb, "udp", enc, log_dir=tmp_path) as c:
        for name in ("h1", "h2"):
            c.start(name)
        assert c.hosts["h1"].mtu == 1500 - 28 - 34
        assert c.hosts["h1"].lease.backend_data == {"Encryption": "chacha20poly1305-v1"}
        c.config = {"Type": "udp"}  # h3 does not encrypt
        c.start("h3")
        reports = c.reconcile_all()
        assert any("never falling back to plaintext" in e for e in reports["h1"]["errors"])
        assert any("encrypts" in e and "refused" in e for e in reports["h3"]["errors"])
        sniffer = start_sniffer(tb, timeout=10, count=4)
        try:
            assert ping_matrix(tb, ["h1", "h2"]) == []
        finally:
            pkts = collect(sniffer)
        wire = [p for p in pkts if p["dport"] == 8285]
        assert wire and all(p["inner_src"] is None for p in wire), wire  # no inner IP seen
        assert ping_matrix(tb, ["h1", "h3"], within=2) == ["h1->h3", "h3->h1"]
        # a host with another key: its datagrams fail authentication and are counted
        c.stop("h3")
        c.config = {"Type": "udp", "Encryption": {"KeyFile": str(other)}}
        c.start("h3")
        c.reconcile_all()
        assert not tb.wait_ping(tb.containers["h3/c"].netns, "10.244.1.2", within=2)
        text = c.hosts["h1"].driver.call({"op": "metrics"})["text"]
        assert metric_value(text, 'weft_udp_dropped_total{reason="auth_failed"}') >= 1
        assert ping_matrix(tb, ["h1", "h2"]) == []

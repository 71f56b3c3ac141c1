"""udp encryption on the netns testbed: ciphertext on the wire, pings through, a plaintext
peer and a peer with another key refused (never a plaintext fallback), a key roll
without restart under a ping flood."""

from __future__ import annotations

import os
import subprocess
import time
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
        assert c.hosts["h1"].lease.backend_data == {"Encryption": "chacha20poly1305-v1",
                                                    "Chunks": "v1"}
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


def _put(path: Path, key: bytes) -> None:
    """Replace a key file as an operator's tooling would (write aside, rename over)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key.hex())
    tmp.replace(path)


def test_key_roll_without_restart_under_ping_flood_loses_nothing(tmp_path: Path) -> None:
    first, second = tmp_path / "first.key", tmp_path / "second.key"
    old, new = os.urandom(32), os.urandom(32)
    _put(first, old)
    _put(second, old)
    enc = {"Type": "udp", "Encryption": {"KeyFile": [str(first), str(second)]}}
    with open_testbed(2) as tb, cluster(tb, "udp", enc, log_dir=tmp_path) as c:
        for name in ("h1", "h2"):
            c.start(name)
        c.reconcile_all()
        assert ping_matrix(tb, ["h1", "h2"]) == []
        h1c = tb.containers["h1/c"].netns
        flood = subprocess.Popen(["ip", "netns", "exec", h1c, "ping", "-q", "-i", "0.005",
                                  "-c", "3000", "-W", "2", "10.244.2.2"],
                                 stdout=subprocess.PIPE, text=True)

        def reloads() -> list[float]:
            return [metric_value(h.driver.call({"op": "metrics"})["text"],
                                 "weft_udp_key_reloads_total") for h in c.hosts.values()]

        def roll(first_key: bytes, second_key: bytes) -> None:
            """Both files rewritten, one after the other (no host sees them change at
            once: a key dropped in between keeps opening for the grace period)."""
            before = reloads()
            _put(first, first_key)
            _put(second, second_key)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                now = reloads()
                if all(n > b for n, b in zip(now, before, strict=True)):
                    time.sleep(1.2)  # a host may have read the first file alone: once more
                    return
                time.sleep(0.1)
            raise AssertionError(f"key files not re-read: {before} -> {reloads()}")

        try:
            time.sleep(1)
            roll(old, new)  # 1: every host opens both, still seals with the old key
            roll(new, old)  # 2: every host seals with the new key
            roll(new, new)  # 3: the old key is gone (opens for the grace period only)
            out = flood.communicate(timeout=60)[0]
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert " 0% packet loss" in out, out
        for h in c.hosts.values():
            text = h.driver.call({"op": "metrics"})["text"]
            for reason in ("auth_failed", "replay"):
                assert metric_value(text, f'weft_udp_dropped_total{{reason="{reason}"}}') == 0
        # the old key no longer opens anything: a host still holding only it is refused
        _put(tmp_path / "stale.key", old)
        c.config = {"Type": "udp", "Encryption": {"KeyFile": str(tmp_path / "stale.key")}}
        c.stop("h2")
        c.start("h2")
        c.reconcile_all()
        assert not tb.wait_ping(h1c, "10.244.2.2", within=2)

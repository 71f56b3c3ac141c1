"""End to end: `weftctl sandbox up --backend udp --encrypt` runs the udp backend with a
fresh cluster key: the proof's cross-host pings cross the encrypted forwarder, every
lease publishes the cipher suite, the key stays out of the store, and `down` removes
it with the rest."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from overlay.sandbox.cluster import CLUSTER_KEY_FILE, load_state
from overlay.testbed import list_netns
from tests.e2e.test_sandbox import _missing, root_snapshot, weftctl

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]


def test_sandbox_up_udp_encrypted_proves_the_data_path() -> None:
    if missing := _missing("embedded"):
        pytest.skip(f"not in this build: {', '.join(missing)}")
    before = root_snapshot()
    state_dir = Path(tempfile.mkdtemp(prefix="weft-sbu-")) / "sb"
    try:
        up = weftctl(state_dir, "up", "--hosts", "2", "--backend", "udp", "--encrypt",
                     timeout=180)
        out = up.stdout + up.stderr
        assert up.returncode == 0, out[-4000:]
        assert "udp backend (encrypted)" in out, out[:2000]
        assert "3 received, 0% packet loss" in out, out[-4000:]
        state = load_state(state_dir)
        assert state is not None and state.options.get("encrypt") is True
        key = state_dir / CLUSTER_KEY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        secret = key.read_text().strip()
        assert len(secret) == 64
        dump = weftctl(state_dir, "exec", "underlay", "--", "etcdctl", "get", "--prefix", "/")
        assert dump.returncode == 0, dump.stderr
        assert secret not in dump.stdout  # only the key file's path is in the config
        assert str(key.resolve()) in dump.stdout
        assert dump.stdout.count('"Encryption":"chacha20poly1305-v1"') == 2, dump.stdout
    finally:
        down = weftctl(state_dir, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not state_dir.exists()
        assert not [ns for ns in list_netns() if state_dir.name in ns]
        shutil.rmtree(state_dir.parent, ignore_errors=True)
    assert root_snapshot() == before


def test_encrypt_needs_the_udp_backend() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="weft-sbu-")) / "sb"
    try:
        up = weftctl(state_dir, "up", "--backend", "vxlan", "--encrypt", timeout=30)
        assert up.returncode != 0
        assert "--encrypt" in up.stderr and "udp" in up.stderr, up.stderr
        assert not state_dir.exists() or not any(state_dir.iterdir())
    finally:
        shutil.rmtree(state_dir.parent, ignore_errors=True)

"""The embedded store locks its data dir: a second server on it is refused with the dir and the
holder's pid, and a server killed with SIGKILL leaves no lock that blocks its restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from overlay.store.embedded.launch import free_port, start_embedded

ROOT = Path(__file__).resolve().parents[2]


def _serve(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlay.cli.weftctl", "store", "serve", "--listen",
         f"127.0.0.1:{free_port()}", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_second_server_refused_and_sigkill_does_not_block_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_embedded(data, log=tmp_path / "store.log")
    try:
        second = _serve(data)
        assert second.returncode == 1
        assert str(data) in second.stderr and f"pid {first.proc.pid}" in second.stderr, \
            second.stderr
        first.stop(kill=True)  # SIGKILL: no chance to unlock; the kernel frees the flock
        again = start_embedded(data, log=tmp_path / "store.log")
        again.stop()
    finally:
        first.stop(kill=True)

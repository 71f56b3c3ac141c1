"""weftctl store status: sizes as etcdctl prints them, and the store named by the same
environment variables the other commands read (FLANNELD_ETCD_ENDPOINTS, WEFT_ETCD_ENDPOINTS,
then etcdctl's ETCDCTL_ENDPOINTS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.store.embedded.launch import start_embedded

ROOT = Path(__file__).resolve().parents[2]


VARS = ("FLANNELD_ETCD_ENDPOINTS", "WEFT_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS")


@pytest.mark.parametrize("var", VARS)
def test_status_env_and_human_sizes(tmp_path: Path, var: str) -> None:
    proc = start_embedded(tmp_path / "data", log=tmp_path / "store.log")
    try:
        env = {k: v for k, v in os.environ.items() if k not in VARS}
        env[var] = proc.endpoint.split("://", 1)[1] if var.startswith("ETCDCTL") \
            else proc.endpoint
        out = subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", "store", "status"],
                             capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    finally:
        proc.stop(kill=True)
    assert out.returncode == 0, out.stderr
    assert f"endpoint:   {env[var]}" in out.stdout
    assert re.search(r"^db size:    \d+(\.\d)? (B|kB|MB)$", out.stdout, re.M), out.stdout

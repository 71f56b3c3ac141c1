"""dnsd ``-addr :PORT`` (and ``0.0.0.0:PORT``) listens on every address of both families,
as SkyDNS does (Go's ``net.ListenUDP("udp", ":53")`` is one dual-stack socket): a client
over IPv6 gets answers too, UDP and TCP (issue 17). In a network namespace of its own, so
the wildcard listener is never in the root namespace; no store (dnsd serves on its flags)."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")]

DNSD = str(Path(__file__).resolve().parents[2] / ".venv/bin/dnsd")
PORT = random.randint(20000, 60000)  # free: nothing else listens in our fresh namespace


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wdw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _dig(ns: str, server: str, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "dig", "-p", str(PORT), f"@{server}",
                        "+time=1", "+tries=1", *args, "x.skydns.local", "A"],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


@pytest.mark.parametrize("addr", [f":{PORT}", f"0.0.0.0:{PORT}"])
def test_wildcard_addr_answers_over_both_families(netns: str, addr: str,
                                                  tmp_path: Path) -> None:
    log = tmp_path / "dnsd.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, DNSD, "-addr", addr,
                                 "-etcd-endpoints", "http://127.0.0.1:9"],
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "status:" not in _dig(netns, "127.0.0.1"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for server in ("127.0.0.1", "::1"):
            for proto in ("+notcp", "+tcp"):
                out = _dig(netns, server, proto)
                assert "status:" in out, (server, proto, out, log.read_text()[-1500:])
        assert f"listening on [::]:{PORT} (IPv4 and IPv6)" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)

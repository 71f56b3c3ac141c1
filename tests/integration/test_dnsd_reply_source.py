"""dnsd on a wildcard ``-addr`` replies from the address each query was sent to (as SkyDNS's
miekg/dns does with IP_PKTINFO/IPV6_PKTINFO): a server with two addresses per family on one
interface answers a client querying either one, over IPv4 and IPv6 (and a link-local
address), on the batched and on the plain UDP loop, on the slow path and from the answer
cache. Without it the kernel's
preferred source answers for both and dig drops one ("reply from unexpected source").

A server and a client namespace joined by a veth pair, created and removed by the test; the
store (embedded) and dnsd run in the server namespace, dig in the client's. Junk datagrams
and a query to the subnet's broadcast address (whose address cannot be a reply's source)
must not stop the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlay.store.embedded.launch import start_embedded
from tests.dnsfuzz import run_dnsd

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SERVER_V4 = ("198.18.77.1", "198.18.77.2")
SERVER_V6 = ("fd00:198:77::1", "fd00:198:77::2")
CLIENT_V4, CLIENT_V6 = "198.18.77.3", "fd00:198:77::3"
SERVER_LL, CLIENT_LL = "fe80::77:1", "fe80::77:3"  # link-local: replies need the zone
BROADCAST = "198.18.77.255"
STORE_PORT = 2379  # any port: nothing else listens in the test's own namespaces
ADDRESS = "10.244.7.9"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pair:
    server: str
    client: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:8]
    p = Pair(f"wrs-{tag}-s", f"wrs-{tag}-c")
    try:
        for ns in (p.server, p.client):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # both ends created inside the namespaces: the root namespace never holds them
        _ip("link", "add", "eth0", "netns", p.server, "type", "veth",
            "peer", "name", "eth0", "netns", p.client)
        for addr in SERVER_V4:
            _ip("-n", p.server, "addr", "add", f"{addr}/24", "dev", "eth0")
        for addr in (*SERVER_V6, SERVER_LL):
            _ip("-n", p.server, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
        _ip("-n", p.client, "addr", "add", f"{CLIENT_V4}/24", "dev", "eth0")
        for addr in (CLIENT_V6, CLIENT_LL):
            _ip("-n", p.client, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
        for ns in (p.server, p.client):
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield p
    finally:
        for ns in (p.server, p.client):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _dig(ns: str, server: str, port: str, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "dig", "-p", port, f"@{server}",
                        "+time=1", "+tries=1", *args], capture_output=True, text=True,
                       timeout=10)
    return r.stdout + r.stderr


# A client in the client namespace: malformed datagrams to each family, then one query to
# the broadcast address; prints the source of that query's reply.
_CLIENT = """
import socket, struct, sys
from tests.dnsfuzz import malformed
port = int(sys.argv[1])
for family, host in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    s = socket.socket(family, socket.SOCK_DGRAM)
    for junk in malformed(seed=family, count=300):
        s.sendto(junk, (host, port))
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\\x03web\\x06skydns\\x05local\\x00" \\
    + struct.pack("!HH", 1, 1)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
b.settimeout(3)
b.sendto(q, (sys.argv[4], port))
data, src = b.recvfrom(4096)
print("broadcast reply from", src[0], "id", data[:2].hex())
"""


@pytest.mark.parametrize("extra", [[], ["-udp-batch=false"]], ids=["batched", "plain"])
def test_wildcard_replies_come_from_the_queried_address(pair: Pair, extra: list[str],
                                                        tmp_path: Path) -> None:
    store = start_embedded(tmp_path / "store", port=STORE_PORT, netns=pair.server,
                           log=tmp_path / "store.log")
    endpoint = f"http://127.0.0.1:{STORE_PORT}"
    try:
        with run_dnsd(endpoint, tmp_path, *extra, host="", netns=pair.server,
                      wait_ready=False) as d:
            port = str(d.port)
            name = d.name("web")
            deadline = time.monotonic() + 30
            while subprocess.run(["ip", "netns", "exec", pair.server, "env", "ETCDCTL_API=3",
                                  "etcdctl", "--endpoints", endpoint, "put", d.key("web"),
                                  f'{{"host":"{ADDRESS}"}}'],
                                 capture_output=True, timeout=10).returncode != 0:
                assert time.monotonic() < deadline, (tmp_path / "store.log").read_text()
                time.sleep(0.2)
            while ADDRESS not in _dig(pair.server, "127.0.0.1", port, "+short", name):
                assert d.proc.poll() is None and time.monotonic() < deadline, \
                    d.log.read_text()
                time.sleep(0.1)

            for server in (*SERVER_V4, *SERVER_V6, f"{SERVER_LL}%eth0"):
                for _ in range(3):  # the first from the slow path, then from the cache
                    out = _dig(pair.client, server, port, name, "A")
                    assert "unexpected source" not in out and ADDRESS in out, \
                        (server, out, d.log.read_text()[-1500:])
                    assert f"SERVER: {server.split('%')[0]}" in out, out
                # a name dnsd does not have: NXDOMAIN from the slow path each time
                gone = d.name(f"gone{uuid.uuid4().hex[:6]}")
                out = _dig(pair.client, server, port, "+short", gone)
                assert "unexpected source" not in out and "timed out" not in out, \
                    (server, out, d.log.read_text()[-1500:])
                assert _dig(pair.client, server, port, "+short", "+tcp", name).strip() == ADDRESS

            script = tmp_path / "client.py"
            script.write_text(_CLIENT)
            r = subprocess.run(["ip", "netns", "exec", pair.client, sys.executable,
                                str(script), port, SERVER_V4[1], SERVER_V6[0], BROADCAST],
                               capture_output=True, text=True, timeout=30, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            # the broadcast address cannot be a source: the reply comes from the route's pick
            assert r.returncode == 0 and any(f"broadcast reply from {a} " in r.stdout
                                             for a in SERVER_V4), \
                (r.stdout, r.stderr, d.log.read_text()[-1500:])
            for server in (SERVER_V4[1], SERVER_V6[0]):  # still answering, from the right place
                assert _dig(pair.client, server, port, "+short", name).strip() == ADDRESS
            # run_dnsd checks on the way out that dnsd neither died nor logged a traceback
    finally:
        store.stop(kill=True)

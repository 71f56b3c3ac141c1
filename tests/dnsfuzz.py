"""Test harness for dnsd: run the real daemon, ask it questions, and make malformed packets.

``run_dnsd`` starts the ``dnsd`` console script on a free loopback port and stops
it (and checks it did not crash) on exit. ``ask`` is a small dnslib client over
UDP or TCP. ``malformed`` yields reproducible garbage of the kinds that break DNS
parsers: random bytes, truncated headers, bogus counts, compression loops,
oversized labels, EDNS garbage and bit-flipped valid queries.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dnslib

from overlay.store.embedded.launch import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Dnsd:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    prefix: str
    domain: str
    log: Path
    host: str = "127.0.0.1"  # the -addr host (the metrics port listens there too)

    def http(self, path: str) -> tuple[int, str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            with urllib.request.urlopen(f"http://{host}:{self.metrics_port}{path}",
                                        timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def name(self, rel: str) -> str:
        return f"{rel}.{self.domain}"

    def key(self, rel: str) -> bytes:
        labels = self.name(rel).rstrip(".").split(".")
        return (self.prefix + "/" + "/".join(reversed(labels))).encode()


@contextlib.contextmanager
def run_dnsd(endpoint: str, tmp: Path, *extra: str, domain: str = "skydns.local.",
             wait_ready: bool = True, env: dict[str, str] | None = None,
             log_path: Path | None = None, host: str = "127.0.0.1",
             netns: str | None = None) -> Iterator[Dnsd]:
    """The real daemon on free loopback ports with its own key prefix (``host`` "::1":
    listening on IPv6 loopback; "": the wildcard). ``netns``: run it in that network
    namespace (then the caller waits for it: pass ``wait_ready=False``)."""
    port = free_port()
    mport = free_port()
    prefix = f"/skydns-test-{uuid.uuid4().hex[:8]}"
    log = log_path or tmp / f"dnsd-{port}.log"
    bracketed = f"[{host}]" if ":" in host else host
    argv = [str(ROOT / ".venv/bin/dnsd"), f"-addr={bracketed}:{port}", "-etcd-endpoints",
            endpoint, "-path-prefix", prefix, "-domain", domain, "-metrics-port", str(mport),
            *extra]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else {**os.environ, **env})
    d = Dnsd(proc, port, mport, prefix, domain, log, host)
    try:
        if wait_ready:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, f"dnsd exited: {log.read_text()[-2000:]}"
                with contextlib.suppress(OSError):
                    if d.http("/readyz")[0] == 200:
                        break
                assert time.monotonic() < deadline, f"dnsd not healthy: {log.read_text()[-2000:]}"
                time.sleep(0.05)
        yield d
    finally:
        crashed = proc.poll()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert crashed is None, f"dnsd died during the test: {log.read_text()[-3000:]}"
        text = log.read_text()
        assert "Traceback" not in text, f"dnsd logged a traceback:\n{text[-3000:]}"


def ask(port: int, name: str, qtype: str = "A", tcp: bool = False, edns: int | None = None,
        source: str = "127.0.0.1", timeout: float = 2.0, ident: int | None = None
        ) -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, qtype)
    if ident is not None:
        q.header.id = ident
    if edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=edns))
    data = bytes(q.pack())
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            head = read_exact(s, 2)
            return dnslib.DNSRecord.parse(read_exact(s, struct.unpack("!H", head)[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        while True:
            reply, _ = s.recvfrom(65535)
            if reply[:2] == data[:2]:
                return dnslib.DNSRecord.parse(reply)


def read_exact(s: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a stream socket (ConnectionError if it closes first)."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def addresses(reply: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype in (1, 28))


# -- malformed packets ---------------------------------------------------------------


def _valid(rng: random.Random) -> bytes:
    name = ".".join(rng.choice(["a", "web", "x1", "SKY", "dns", "*"])
                    for _ in range(rng.randrange(1, 4))) + ".skydns.local"
    q = dnslib.DNSRecord.question(name, rng.choice(["A", "AAAA", "SRV", "TXT", "ANY", "MX"]))
    if rng.random() < 0.5:
        q.add_ar(dnslib.EDNS0(udp_len=rng.choice([0, 512, 4096, 65535])))
    return bytes(q.pack())


def malformed(seed: int, count: int) -> Iterator[bytes]:
    """``count`` reproducible malformed (or odd) packets."""
    rng = random.Random(seed)
    templates = [_valid(rng) for _ in range(64)]
    for _ in range(count):
        kind = rng.randrange(9)
        base = rng.choice(templates)
        if kind == 0:  # random bytes
            yield rng.randbytes(rng.randrange(0, 80))
        elif kind == 1:  # truncated anywhere
            yield base[:rng.randrange(len(base))]
        elif kind == 2:  # bogus counts
            yield base[:4] + struct.pack("!HHHH", *(rng.choice([0, 1, 2, 255, 65535])
                                                    for _ in range(4))) + base[12:]
        elif kind == 3:  # compression loops and pointers everywhere
            loop = b"\x01a\xc0" + bytes([12 + rng.randrange(0, 4)])
            yield base[:4] + struct.pack("!HHHH", 1, rng.randrange(3), 0, 0) + loop \
                + b"\x00\x01\x00\x01" + loop + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"
        elif kind == 4:  # oversized labels and names
            label = bytes([rng.choice([63, 64, 127, 200])]) + b"x" * rng.randrange(0, 220)
            yield base[:12] + label * rng.randrange(1, 6) + b"\x00\x00\x01\x00\x01"
        elif kind == 5:  # EDNS garbage: odd versions, option lengths, several OPTs
            opt = b"\x00\x00\x29" + struct.pack("!HBBHH", rng.randrange(65536),
                                                rng.randrange(256), rng.randrange(4),
                                                rng.randrange(65536), rng.randrange(40))
            opt += rng.randbytes(rng.randrange(0, 40))
            n = rng.randrange(1, 3)
            yield base[:10] + struct.pack("!H", n) + base[12:].split(b"\x00\x00\x29")[0] \
                + opt * n
        elif kind == 6:  # bit flips in a valid query
            buf = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            yield bytes(buf)
        elif kind == 7:  # flags: responses, odd opcodes, Z bits
            yield base[:2] + struct.pack("!H", rng.randrange(65536)) + base[4:]
        else:  # valid but weird: trailing junk
            yield base + rng.randbytes(rng.randrange(1, 20))

"""Fuzzing the real dnsd: 100,000 malformed packets over UDP and 100,000 in TCP frames.

The daemon must never crash or log a traceback, must answer garbage with FORMERR
(or NOTIMP/BADVERS) or not at all, must count no handler errors, and must still
answer a valid query correctly afterwards. Packets go in bursts; a valid probe
after each burst shows the burst was fully processed (the UDP loop is sequential).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import dnslib
import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from tests.dnsfuzz import addresses, ask, malformed, run_dnsd

pytestmark = pytest.mark.timeout(180)

COUNT = 100_000
BURST = 1000
# NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED (BADVERS is 0 in the header plus the OPT's
# extended rcode); never SERVFAIL, which would mean a handler failed
OK_RCODES = {0, 1, 3, 4, 5}


def _check_reply(data: bytes) -> None:
    assert len(data) >= 12, f"short reply {data!r}"
    assert data[2] & 0x80, "reply without QR"
    assert data[3] & 0xF in OK_RCODES, f"unexpected rcode {data[3] & 0xF}"


def _probe(ident: int, name: str) -> bytes:
    q = dnslib.DNSRecord.question(name, "A")
    q.header.id = ident
    return bytes(q.pack())


async def _register(endpoint: str, key: bytes) -> None:
    store = await connect(StoreConfig.from_flag(endpoint))
    try:
        await store.put(key, b'{"host":"10.9.0.1"}')
    finally:
        await store.close()


def _udp(port: int, name: str) -> int:
    answered = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    packets = malformed(1, COUNT)
    try:
        for burst in range(COUNT // BURST):
            for _ in range(BURST):
                sock.sendto(next(packets), ("127.0.0.1", port))
            probe = _probe(burst, name)
            for attempt in range(5):
                sock.sendto(probe, ("127.0.0.1", port))
                try:
                    while True:
                        data = sock.recv(65535)
                        _check_reply(data)
                        answered += 1
                        if data[:2] == probe[:2] and dnslib.DNSRecord.parse(data).q.qname \
                                == dnslib.DNSLabel(name):
                            break
                    break
                except TimeoutError:
                    assert attempt < 4, f"no answer to the probe after burst {burst}"
    finally:
        sock.close()
    return answered


def _tcp(port: int, name: str, conns: int = 4) -> int:
    answered = 0
    per_conn = COUNT // conns
    packets = malformed(2, COUNT)
    for c in range(conns):
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            buf = b""
            for burst in range(per_conn // BURST):
                frames = [next(packets) for _ in range(BURST)]
                probe = _probe(c * 1000 + burst, name)
                s.sendall(b"".join(struct.pack("!H", len(f)) + f for f in (*frames, probe)))
                found = False
                while not found:
                    chunk = s.recv(1 << 16)
                    assert chunk, "dnsd closed the TCP connection"
                    buf += chunk
                    while len(buf) >= 2:
                        (n,) = struct.unpack_from("!H", buf)
                        if len(buf) < 2 + n:
                            break
                        msg, buf = buf[2:2 + n], buf[2 + n:]
                        _check_reply(msg)
                        answered += 1
                        if msg[:2] == probe[:2] and dnslib.DNSRecord.parse(msg).q.qname \
                                == dnslib.DNSLabel(name):
                            found = True
    return answered


@pytest.mark.parametrize("udp_batch", ["true", "false"], ids=["recvmmsg", "recvfrom"])
def test_fuzz_udp_and_tcp(etcd_endpoint: str, tmp_path: Path, udp_batch: str) -> None:
    with run_dnsd(etcd_endpoint, tmp_path, f"-udp-batch={udp_batch}") as d:
        asyncio.run(_register(etcd_endpoint, d.key("probe")))
        name = d.name("probe")
        deadline = time.monotonic() + 3
        while addresses(ask(d.port, name)) != ["10.9.0.1"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        udp_answers = _udp(d.port, name)
        t1 = time.monotonic()
        tcp_answers = _tcp(d.port, name)
        t2 = time.monotonic()
        print(f"fuzz: UDP {COUNT} packets in {t1 - t0:.1f}s ({udp_answers} replies), "
              f"TCP {COUNT} frames in {t2 - t1:.1f}s ({tcp_answers} replies)")
        assert d.proc.poll() is None
        for tcp in (False, True):
            reply = ask(d.port, name.upper(), tcp=tcp)
            assert addresses(reply) == ["10.9.0.1"]
            assert str(reply.rr[0].rname) == name.upper()
        _, metrics = d.http("/metrics")
        assert "dnsd_handler_errors_total 0" in metrics, metrics
        assert 'rcode="FORMERR"' in metrics

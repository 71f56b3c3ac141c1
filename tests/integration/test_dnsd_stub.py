"""dnsd -stubzones: the real daemon on loopback, the embedded store, a real upstream.

A stub record under dns/stub sends www.example.com to a loopback upstream for any
client (no -nameservers given); in-zone names still come from the store; the relayed
query carries SkyDNS's loop option; a query that already carries it is dropped; once
the stub record is deleted the name is refused again, as without stub zones.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dnslib
import pytest

from dnsd.stub import STUB_OPTION
from overlay.store.api import StoreConfig
from overlay.store.client import connect
from tests.dnsfuzz import addresses, ask, read_exact, run_dnsd

pytestmark = pytest.mark.timeout(120)


@dataclass
class Upstream:
    port: int
    seen: list[dnslib.DNSRecord] = field(default_factory=list)


def _udp_and_tcp_on_one_port() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP listener on the same free loopback port. The TCP side is bound
    first: a free UDP port is often some TCP connection's local port (the ephemeral
    ranges are shared), which made this fixture fail now and then with EADDRINUSE."""
    for _ in range(50):
        lsock = socket.create_server(("127.0.0.1", 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", lsock.getsockname()[1]))
        except OSError:
            sock.close()
            lsock.close()
            continue
        return sock, lsock
    raise AssertionError("no loopback port free for both UDP and TCP")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Loopback upstream: UDP answers www.example.com. A 192.0.2.7 (else NXDOMAIN), TCP
    answers any name A 192.0.2.8, so a test can tell which transport was relayed."""
    sock, lsock = _udp_and_tcp_on_one_port()
    sock.settimeout(0.2)
    up = Upstream(sock.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
                q = dnslib.DNSRecord.parse(data)
            except (OSError, dnslib.DNSError):
                continue
            up.seen.append(q)
            r = q.reply()
            if str(q.q.qname).lower() == "www.example.com." and q.q.qtype == dnslib.QTYPE.A:
                r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A,
                                       rdata=dnslib.A("192.0.2.7"), ttl=30))
            else:
                r.header.rcode = dnslib.RCODE.NXDOMAIN
            sock.sendto(r.pack(), addr)

    lsock.settimeout(0.2)

    def serve_tcp() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    (n,) = struct.unpack("!H", read_exact(conn, 2))
                    q = dnslib.DNSRecord.parse(read_exact(conn, n))
                except (OSError, dnslib.DNSError, struct.error):
                    continue
                up.seen.append(q)
                r = q.reply()
                r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A,
                                       rdata=dnslib.A("192.0.2.8"), ttl=30))
                data = r.pack()
                conn.sendall(struct.pack("!H", len(data)) + data)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve, serve_tcp)]
    for t in threads:
        t.start()
    try:
        yield up
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        sock.close()
        lsock.close()


async def _put(endpoint: str, key: str, value: bytes | None) -> None:
    store = await connect(StoreConfig.from_flag(endpoint))
    try:
        if value is None:
            await store.delete(key.encode())
        else:
            await store.put(key.encode(), value)
    finally:
        await store.close()


def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _marked(q: dnslib.DNSRecord) -> bool:
    return any(rr.rtype == dnslib.QTYPE.OPT and
               any(o.code == STUB_OPTION and o.data == b"\x01" for o in rr.rdata)
               for rr in q.ar)


def _ask_marked(port: int, name: str) -> bytes | None:
    """Send ``name`` carrying the stub option; the raw reply, or None on silence."""
    q = dnslib.DNSRecord.question(name, "A")
    q.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(STUB_OPTION, b"\x01")]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(q.pack(), ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


async def test_stub_zone_forwarding(embedded_endpoint: str, tmp_path: Path,
                                    upstream: Upstream) -> None:
    with run_dnsd(embedded_endpoint, tmp_path, "-stubzones") as d:
        stub_key = f"{d.prefix}/local/skydns/dns/stub/com/example/ns1"
        await _put(embedded_endpoint, f"{d.prefix}/local/skydns/web", b'{"host":"10.9.0.4"}')
        await _put(embedded_endpoint, f"{d.prefix}/local/skydns/dns/stub/org/bad/ns1",
                   b'{"host":"ns.bad.org"}')
        # no stub record yet: out of zone, no forwarder -> REFUSED as always
        assert ask(d.port, "www.example.com").header.rcode == dnslib.RCODE.REFUSED
        await _put(embedded_endpoint, stub_key,
                   f'{{"host":"127.0.0.1","port":{upstream.port}}}'.encode())
        _until(lambda: addresses(ask(d.port, "www.example.com")) == ["192.0.2.7"])
        reply = ask(d.port, "www.example.com")
        assert reply.header.rcode == dnslib.RCODE.NOERROR
        assert addresses(reply) == ["192.0.2.7"]
        assert addresses(ask(d.port, "www.example.com", tcp=True)) == ["192.0.2.8"]  # TCP
        assert ask(d.port, "nothing.example.com").header.rcode == dnslib.RCODE.NXDOMAIN
        assert all(_marked(q) for q in upstream.seen), upstream.seen
        # outside the stub zones: the store answers
        assert addresses(ask(d.port, "web.skydns.local")) == ["10.9.0.4"]
        # a stub query that already went through a stub server is not relayed again
        before = len(upstream.seen)
        assert _ask_marked(d.port, "www.example.com") is None
        assert len(upstream.seen) == before
        # ... while an in-zone name with the option is answered as usual
        marked = _ask_marked(d.port, "web.skydns.local")
        assert marked is not None and addresses(dnslib.DNSRecord.parse(marked)) == ["10.9.0.4"]
        # the stub record goes: the name is out of zone again
        await _put(embedded_endpoint, stub_key, None)
        _until(lambda: ask(d.port, "www.example.com").header.rcode == dnslib.RCODE.REFUSED)
        count = len(upstream.seen)
        assert ask(d.port, "www.example.com").header.rcode == dnslib.RCODE.REFUSED
        assert len(upstream.seen) == count
        log = d.log.read_text()
    assert log.count(f"stub zone record {d.prefix}/local/skydns/dns/stub/org/bad/ns1 "
                     "skipped: host 'ns.bad.org' is not an IP address") == 1, log
    assert f"stub zones: example.com. -> 127.0.0.1:{upstream.port}" in log, log


async def test_without_stubzones_stub_keys_are_plain_records(
        embedded_endpoint: str, tmp_path: Path, upstream: Upstream) -> None:
    with run_dnsd(embedded_endpoint, tmp_path) as d:
        await _put(embedded_endpoint, f"{d.prefix}/local/skydns/dns/stub/com/example/ns1",
                   f'{{"host":"127.0.0.1","port":{upstream.port}}}'.encode())
        _until(lambda: addresses(ask(d.port, "ns1.example.com.stub.dns.skydns.local"))
               == ["127.0.0.1"])
        assert ask(d.port, "www.example.com").header.rcode == dnslib.RCODE.REFUSED
        assert not upstream.seen

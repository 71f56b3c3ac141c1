"""dnsd's answers on the wire, over real UDP and TCP sockets against a real etcd.

CNAME chains as CoreDNS's tests lay them out fit one 512-byte UDP reply (every
name compressed); TXT follows a chain and UDP (slow path, question cache, exact
cache; with and without EDNS) agrees with TCP, also across an update; A at the
zone apex comes from ``dns/apex``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import dnslib
import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from tests.dnsfuzz import Dnsd, ask, run_dnsd

pytestmark = pytest.mark.timeout(120)

ZONE = "skydns.test."
# CoreDNS's cname test layout: seven CNAMEs, then an A record
CHAIN7 = {
    "a.server1.dev.region1": "cname1.region2.skydns.test",
    **{f"cname{i}.region2": f"cname{i + 1}.region2.skydns.test" for i in range(1, 6)},
    "cname6.region2": "endpoint.region2.skydns.test",
    "endpoint.region2": "10.240.0.1",
}


def _udp_raw(port: int, name: str, qtype: str) -> bytes:
    """One UDP exchange without EDNS (so the limit is 512 bytes): the raw reply."""
    q = bytes(dnslib.DNSRecord.question(name, qtype).pack())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, ("127.0.0.1", port))
        while True:
            reply = s.recv(65535)
            if reply[:2] == q[:2]:
                return reply


def _records(reply: dnslib.DNSRecord) -> list[tuple[str, ...]]:
    return [(str(r.rname).lower(), dnslib.QTYPE[r.rtype], str(r.rdata))
            for sec in (reply.rr, reply.auth, reply.ar) for r in sec
            if r.rtype != dnslib.QTYPE.OPT]


def _both(d: Dnsd, name: str, qtype: str) -> list[list[tuple[str, ...]]]:
    """The records of the same question asked every way: UDP three times each without
    and with EDNS (slow path, question cache, exact-packet cache), then TCP."""
    out = []
    for edns in (None, 1232):
        for _ in range(3):
            reply = ask(d.port, name, qtype, edns=edns)
            assert not reply.header.tc
            out.append(_records(reply))
    out.append(_records(ask(d.port, name, qtype, tcp=True)))
    return out


async def test_chains_fit_udp_and_udp_agrees_with_tcp(etcd_endpoint: str,
                                                       tmp_path: Path) -> None:
    store = await connect(StoreConfig.from_flag(etcd_endpoint))
    try:
        with run_dnsd(etcd_endpoint, tmp_path, domain=ZONE) as d:
            for rel, host in CHAIN7.items():
                await store.put(d.key(rel), json.dumps({"host": host}).encode())
            await store.put(d.key("txt"), b'{"host":"link.skydns.test"}')
            await store.put(d.key("link"), b'{"host":"end.skydns.test"}')
            await store.put(d.key("x.apex.dns"), b'{"host":"10.240.0.53"}')
            first = d.name("a.server1.dev.region1")
            for _ in range(200):
                if ask(d.port, first).rr:
                    break
                await asyncio.sleep(0.02)

            # 1. the A and the SRV answer of a 7-CNAME chain fit one 512-byte UDP reply
            for qtype, lead in (("A", "CNAME"), ("SRV", "SRV")):
                raw = _udp_raw(d.port, first, qtype)
                reply = dnslib.DNSRecord.parse(raw)
                assert len(raw) <= 512 and not reply.header.tc, (qtype, len(raw))
                recs = _records(reply)
                assert recs[0][:2] == (first.lower(), lead)
                assert recs[-1] == ("endpoint.region2.skydns.test.", "A", "10.240.0.1")
                assert len(recs) == 8
                assert recs == _records(ask(d.port, first, qtype, tcp=True))

            # 2. TXT through a chain: NODATA while its end has no text, then the chain
            txt = d.name("txt")
            assert all(r == [] or r[0][1] == "SOA" for r in _both(d, txt, "TXT"))
            await store.put(d.key("end"), b'{"text":"hello"}')
            want = [(txt, "CNAME", "link.skydns.test."),
                    ("link.skydns.test.", "CNAME", "end.skydns.test."),
                    ("end.skydns.test.", "TXT", '"hello"')]
            for _ in range(200):
                if _records(ask(d.port, txt, "TXT")) == want:
                    break
                await asyncio.sleep(0.02)
            answers = _both(d, txt, "TXT")
            assert answers == [want] * len(answers)

            # 3. A at the apex comes from dns/apex, not from the whole zone
            assert _records(ask(d.port, ZONE, "A")) == [(ZONE, "A", "10.240.0.53")]
    finally:
        await store.close()

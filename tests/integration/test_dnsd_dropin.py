"""dnsd as a drop-in for SkyDNS and CoreDNS, as a user with existing units and dashboards
meets it: a SkyDNS unit's flags start it (one warning for the ones it ignores, -no-rec
and -rtimeout honoured), and /metrics serves CoreDNS's names and labels, counting every
answer of the fast path, the slow path and TCP.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import dnslib
import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from overlay.store.embedded.launch import free_port
from tests.dnsfuzz import Dnsd, ask, run_dnsd

pytestmark = pytest.mark.timeout(120)

SKYDNS_UNIT_FLAGS = ("-etcd3", "-systemd", "-rtimeout=2s", "-local", "dns1.skydns.local.",
                     "-ndots", "2", "-rcache", "100", "-rcache-ttl", "60", "-scache", "1000",
                     "-ns-rotate=false", "-dnssec", "Kskydns.local.+005+38250",
                     "-hostmaster", "ops@skydns.local.")
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def _scrape(d: Dnsd) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = d.http("/metrics")
    assert status == 200
    out = {}
    for line in body.splitlines():
        m = SAMPLE.match(line)
        if m is None:
            continue
        labels = frozenset(tuple(kv.split("=", 1)) for kv in
                           re.findall(r'\w+="[^"]*"', m.group(2) or ""))
        out[(m.group(1), frozenset((k, v.strip('"')) for k, v in labels))] = float(m.group(3))
    return out


def _get(sample: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
         **labels: str) -> float:
    return sample.get((name, frozenset(labels.items())), 0.0)


async def test_skydns_flags_and_coredns_metrics(etcd_endpoint: str, tmp_path: Path) -> None:
    store = await connect(StoreConfig.from_flag(etcd_endpoint))
    try:
        with run_dnsd(etcd_endpoint, tmp_path, *SKYDNS_UNIT_FLAGS, "-no-rec",
                      "-nameservers", f"127.0.0.1:{free_port()}") as d:
            await store.put(d.key("api"), b'{"host":"10.0.0.1"}')
            await store.put(d.key("web"), b'{"host":"10.0.0.2"}')
            for _ in range(200):
                if ask(d.port, d.name("web")).rr:
                    break
                await asyncio.sleep(0.02)
            before = _scrape(d)

            for _ in range(5):  # one slow-path answer, then the fast path
                assert ask(d.port, d.name("api")).rr
            assert ask(d.port, d.name("api"), tcp=True).rr
            for _ in range(3):
                assert ask(d.port, d.name("nope"), "SRV").header.rcode == dnslib.RCODE.NXDOMAIN
            # -no-rec: out-of-zone names are refused, with RA clear, although
            # -nameservers is given
            out = ask(d.port, "www.example.com")
            assert out.header.rcode == dnslib.RCODE.REFUSED and not out.header.ra

            after = _scrape(d)
            srv = f"dns://127.0.0.1:{d.port}"
            zone = d.domain

            def delta(name: str, **labels: str) -> float:
                return _get(after, name, **labels) - _get(before, name, **labels)

            req = "coredns_dns_requests_total"
            assert delta(req, server=srv, zone=zone, proto="udp", family="1", type="A") == 5
            assert delta(req, server=srv, zone=zone, proto="tcp", family="1", type="A") == 1
            assert delta(req, server=srv, zone=zone, proto="udp", family="1", type="SRV") == 3
            assert delta(req, server=srv, zone=".", proto="udp", family="1", type="A") == 1
            resp = "coredns_dns_responses_total"
            assert delta(resp, server=srv, zone=zone, rcode="NOERROR") == 6
            assert delta(resp, server=srv, zone=zone, rcode="NXDOMAIN") == 3
            assert delta(resp, server=srv, zone=".", rcode="REFUSED") == 1
            # every answer is in the histogram, fast path included
            assert delta("coredns_dns_request_duration_seconds_count",
                         server=srv, zone=zone, type="A") == 6
            assert delta("coredns_dns_request_duration_seconds_bucket",
                         server=srv, zone=zone, type="A", le="+Inf") == 6
            hits = "coredns_cache_hits_total"
            assert delta(hits, server=srv, type="success", zones=zone) == 5  # 4 UDP + 1 TCP
            assert delta(hits, server=srv, type="denial", zones=zone) == 2
            assert delta("coredns_cache_misses_total", server=srv, zones=zone) == 3
            assert delta("dnsd_requests_total", type="A", rcode="NOERROR") == 6

        log = d.log.read_text()
        warnings = [line for line in log.splitlines() if " WARNING " in line]
        assert len(warnings) == 1, warnings
        for name in ("local", "ndots", "rcache", "rcache-ttl", "scache", "ns-rotate", "dnssec",
                     "hostmaster"):
            assert f"-{name} (" in warnings[0]
    finally:
        await store.close()


def test_forward_requests_counted_per_upstream(etcd_endpoint: str, tmp_path: Path) -> None:
    dead = free_port()  # nothing listens: each try fails at once (ICMP port unreachable)
    with run_dnsd(etcd_endpoint, tmp_path, "-nameservers", f"127.0.0.1:{dead}",
                  "-rtimeout=300ms") as d:
        out = ask(d.port, "www.example.com", timeout=5)
        assert out.header.rcode == dnslib.RCODE.SERVFAIL and out.header.ra
        sample = _scrape(d)
        assert _get(sample, "coredns_forward_requests_total", to=f"127.0.0.1:{dead}") == 1
        assert _get(sample, "coredns_dns_responses_total", server=f"dns://127.0.0.1:{d.port}",
                    zone=".", rcode="SERVFAIL") == 1

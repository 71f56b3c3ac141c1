"""dnsd's metrics under weft's names and CoreDNS's names and labels (pure: no sockets)."""

from __future__ import annotations

import itertools

import pytest

from dnsd.message import Rcode, RType
from dnsd.metrics import COREDNS_BUCKETS, DROPPED, OUTSIDE, Metrics, server_label


def _lines(m: Metrics) -> set[str]:
    return set(m.render({}).splitlines())


@pytest.mark.parametrize(("host", "port", "want"), [
    ("127.0.0.1", 53, "dns://127.0.0.1:53"), ("0.0.0.0", 5353, "dns://:5353"),
    ("", 53, "dns://:53"), ("::1", 53, "dns://[::1]:53"), ("::", 53, "dns://:53"),
])
def test_server_label(host: str, port: int, want: str) -> None:
    assert server_label(host, port) == want


def test_coredns_names_and_labels() -> None:
    m = Metrics(server="dns://127.0.0.1:53", zones="skydns.local.")
    m.count(RType.A, Rcode.NOERROR, 3, "skydns.local.", "udp")
    m.count(RType.A, Rcode.NOERROR, 1, "skydns.local.", "tcp")
    m.count(RType.SRV, Rcode.NXDOMAIN, 2, "skydns.local.", "udp")
    m.count(99, Rcode.REFUSED, 1, OUTSIDE, "udp")
    m.count(0, Rcode.FORMERR, 1, DROPPED, "udp")
    m.hit(4)
    m.hit(1, denial=True)
    m.cache_misses = 3
    m.tried("192.0.2.53:53")
    m.tried("192.0.2.53:53")
    m.duration("skydns.local.", RType.A).observe(0.0003)
    m.duration("skydns.local.", RType.A).observe(20.0)
    lines = _lines(m)
    s = 'server="dns://127.0.0.1:53"'
    for want in (
        f'coredns_dns_requests_total{{{s},zone="skydns.local.",proto="udp",family="1",'
        'type="A"} 3',
        f'coredns_dns_requests_total{{{s},zone="skydns.local.",proto="tcp",family="1",'
        'type="A"} 1',
        f'coredns_dns_requests_total{{{s},zone=".",proto="udp",family="1",type="other"}} 1',
        f'coredns_dns_requests_total{{{s},zone="dropped",proto="udp",family="1",'
        'type="other"} 1',
        f'coredns_dns_responses_total{{{s},zone="skydns.local.",rcode="NOERROR"}} 4',
        f'coredns_dns_responses_total{{{s},zone="skydns.local.",rcode="NXDOMAIN"}} 2',
        f'coredns_dns_responses_total{{{s},zone=".",rcode="REFUSED"}} 1',
        f'coredns_cache_hits_total{{{s},type="success",zones="skydns.local."}} 4',
        f'coredns_cache_hits_total{{{s},type="denial",zones="skydns.local."}} 1',
        f'coredns_cache_misses_total{{{s},zones="skydns.local."}} 3',
        f'coredns_cache_requests_total{{{s},zones="skydns.local."}} 8',
        'coredns_forward_requests_total{to="192.0.2.53:53"} 2',
        f'coredns_dns_request_duration_seconds_bucket{{{s},zone="skydns.local.",type="A",'
        'le="0.00025"} 0',
        f'coredns_dns_request_duration_seconds_bucket{{{s},zone="skydns.local.",type="A",'
        'le="0.0005"} 1',
        f'coredns_dns_request_duration_seconds_bucket{{{s},zone="skydns.local.",type="A",'
        'le="8.192"} 1',
        f'coredns_dns_request_duration_seconds_bucket{{{s},zone="skydns.local.",type="A",'
        'le="+Inf"} 2',
        f'coredns_dns_request_duration_seconds_count{{{s},zone="skydns.local.",type="A"}} 2',
        "# TYPE coredns_dns_request_duration_seconds histogram",
        # weft's own names stay
        'dnsd_requests_total{type="A",rcode="NOERROR"} 4',
        "dnsd_cache_hits_total 5",
    ):
        assert want in lines, want


def test_coredns_buckets_are_coredns_time_buckets() -> None:
    assert len(COREDNS_BUCKETS) == 16
    assert COREDNS_BUCKETS[0] == 0.00025 and COREDNS_BUCKETS[-1] == 8.192
    assert all(b == 2 * a for a, b in itertools.pairwise(COREDNS_BUCKETS))

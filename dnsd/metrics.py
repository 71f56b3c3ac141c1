"""dnsd's counters, as Prometheus families (rendered by ``overlay.metrics``): weft's own
``dnsd_*`` names and, for dashboards built for CoreDNS, CoreDNS's ``coredns_*`` names
and labels.

Counters are plain dicts bumped from the answer threads (single increments under
the GIL; a lost increment under a race is acceptable for monitoring). Answers from
the fast path are not counted one by one: each precomputed answer counts its own
hits, and the server folds them in here (``count`` with ``n``) when the answer is
dropped or /metrics is scraped. Durations: ``dnsd_request_duration_seconds`` is
sampled (every slow-path answer, one in 16 fast-path answers or one per UDP batch);
CoreDNS's ``coredns_dns_request_duration_seconds`` counts every answer, so its
``_count`` matches the requests: a precomputed answer holds the ``Histogram`` of its
(zone, type), and the UDP loop adds each batch's mean time per datagram to the
histograms of the answers in it, finding the bucket once per batch.

CoreDNS's labels: ``server`` is ``dns://<addr>:<port>`` (``dns://:53`` when
listening on every address), ``zone`` the dnsd zone the name is in (``.`` for
names outside them, ``dropped`` for packets without a readable question),
``proto`` udp/tcp, ``family`` 1 (IPv4) or 2 (IPv6), ``type`` the query type among
CoreDNS's list or ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from overlay.metrics import Family, Histogram, counter, gauge, histogram, render

from .message import type_name

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
# CoreDNS's plugin.TimeBuckets: 0.25 ms doubling up to 8.192 s
COREDNS_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
          5: "REFUSED", 16: "BADVERS"}
# the query types CoreDNS's metrics name; any other is "other"
COREDNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
                 28: "AAAA", 33: "SRV", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
                 50: "NSEC3", 65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY"}
OUTSIDE = "."  # the zone label of names in none of dnsd's zones
DROPPED = "dropped"  # ... and of packets whose question could not be read


def server_label(host: str, port: int) -> str:
    """CoreDNS's ``server`` label for a listener on ``host:port``."""
    if host in ("", "0.0.0.0", "::"):
        return f"dns://:{port}"
    return f"dns://[{host}]:{port}" if ":" in host else f"dns://{host}:{port}"


@dataclass(slots=True)
class Metrics:
    requests: dict[tuple[int, int], int] = field(default_factory=dict)  # (qtype, rcode)
    dropped: int = 0
    errors: int = 0
    truncated: int = 0
    forwarded: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(BUCKETS))
    # CoreDNS's view of the same answers
    server: str = "dns://:53"
    family: str = "1"
    zones: str = OUTSIDE  # the cache's zones label: dnsd's zones, comma separated
    queries: dict[tuple[str, str, int], int] = field(default_factory=dict)  # zone,proto,qtype
    responses: dict[tuple[str, int], int] = field(default_factory=dict)  # zone, rcode
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # zone, type
    denials: int = 0  # cache hits that were NXDOMAIN/NODATA (CoreDNS type="denial")
    upstream_tries: dict[str, int] = field(default_factory=dict)  # "ip:port" -> queries sent

    def count(self, qtype: int, rcode: int, n: int = 1, zone: str = DROPPED,
              proto: str = "udp") -> None:
        """``n`` answers to ``qtype`` queries in ``zone`` over ``proto`` with ``rcode``."""
        key = (qtype, rcode)
        self.requests[key] = self.requests.get(key, 0) + n
        qkey = (zone, proto, qtype)
        self.queries[qkey] = self.queries.get(qkey, 0) + n
        rkey = (zone, rcode)
        self.responses[rkey] = self.responses.get(rkey, 0) + n

    def hit(self, n: int = 1, denial: bool = False) -> None:
        """``n`` answers served precomputed (``denial``: negative ones)."""
        self.cache_hits += n
        if denial:
            self.denials += n

    def observe(self, seconds: float) -> None:
        """A (sampled) time to answer, for weft's own histogram."""
        self.latency.observe(seconds)

    def duration(self, zone: str, qtype: int) -> Histogram:
        """The CoreDNS duration histogram of answers to ``qtype`` in ``zone``."""
        key = (zone, COREDNS_TYPES.get(qtype, "other"))
        h = self.durations.get(key)
        if h is None:
            h = self.durations[key] = Histogram(COREDNS_BUCKETS)
        return h

    def tried(self, upstream: str) -> None:
        self.upstream_tries[upstream] = self.upstream_tries.get(upstream, 0) + 1

    def families(self, gauges: Mapping[str, float]) -> list[Family]:
        """What /metrics exports, for ``overlay.metrics.render``."""
        return self._weft(gauges) + self._coredns()

    def _weft(self, gauges: Mapping[str, float]) -> list[Family]:
        by_name: dict[tuple[str, ...], int] = {}
        for (qtype, rcode), n in self.requests.items():
            key = (type_name(qtype), RCODES.get(rcode, str(rcode)))
            by_name[key] = by_name.get(key, 0) + n
        out = [counter("dnsd_requests_total",
                       "DNS requests answered, by query type and rcode.", by_name,
                       labels=("type", "rcode"))]
        out += [counter(name, f"{what}.", value) for name, value, what in (
            ("dnsd_dropped_total", self.dropped, "packets dropped unanswered"),
            ("dnsd_handler_errors_total", self.errors, "answers that failed (SERVFAIL)"),
            ("dnsd_truncated_total", self.truncated, "answers trimmed with TC set"),
            ("dnsd_forwarded_total", self.forwarded, "queries relayed upstream"),
            ("dnsd_cache_hits_total", self.cache_hits, "answers served precomputed"),
            ("dnsd_cache_misses_total", self.cache_misses, "answers computed by the engine"),
        )]
        out.append(histogram("dnsd_request_duration_seconds",
                             "Time to answer (sampled on the fast path).", self.latency))
        out += [gauge(name, "", value) for name, value in sorted(gauges.items())]
        return out

    def _coredns(self) -> list[Family]:
        srv, fam = self.server, self.family
        queries: dict[tuple[str, ...], int] = {}
        for (zone, proto, qtype), n in self.queries.items():
            qkey = (srv, zone, proto, fam, COREDNS_TYPES.get(qtype, "other"))
            queries[qkey] = queries.get(qkey, 0) + n
        responses: dict[tuple[str, ...], int] = {}
        for (zone, rcode), n in self.responses.items():
            rkey = (srv, zone, RCODES.get(rcode, str(rcode)))
            responses[rkey] = responses.get(rkey, 0) + n
        hits: dict[tuple[str, ...], int] = {
            (srv, "success", self.zones): self.cache_hits - self.denials,
            (srv, "denial", self.zones): self.denials}
        return [
            counter("coredns_dns_requests_total", "Counter of DNS requests made per zone, "
                    "protocol and family.", queries,
                    labels=("server", "zone", "proto", "family", "type")),
            counter("coredns_dns_responses_total", "Counter of response status codes.",
                    responses, labels=("server", "zone", "rcode")),
            histogram("coredns_dns_request_duration_seconds", "Histogram of the time (in "
                      "seconds) each request took.",
                      {(srv, zone, qtype): h for (zone, qtype), h in self.durations.items()},
                      labels=("server", "zone", "type")),
            counter("coredns_cache_hits_total", "The count of cache hits.", hits,
                    labels=("server", "type", "zones")),
            counter("coredns_cache_misses_total", "The count of cache misses.",
                    {(srv, self.zones): self.cache_misses}, labels=("server", "zones")),
            counter("coredns_cache_requests_total", "The count of cache requests.",
                    {(srv, self.zones): self.cache_hits + self.cache_misses},
                    labels=("server", "zones")),
            counter("coredns_forward_requests_total", "Counter of requests made per upstream.",
                    {(to,): n for to, n in self.upstream_tries.items()}, labels=("to",)),
        ]

    def render(self, gauges: Mapping[str, float]) -> str:
        return render(self.families(gauges))

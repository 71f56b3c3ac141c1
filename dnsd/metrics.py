"""dnsd's counters, as Prometheus families (rendered by ``overlay.metrics``).

Counters are plain dicts bumped from the answer threads (single increments under
the GIL; a lost increment under a race is acceptable for monitoring). The
latency histogram is fed from every slow-path answer and a 1-in-16 sample of
fast-path answers so measuring does not cost the fast path its speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from overlay.metrics import Family, Histogram, counter, gauge, histogram, render

from .message import type_name

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
          5: "REFUSED", 16: "BADVERS"}


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

    def count(self, qtype: int, rcode: int, n: int = 1) -> None:
        key = (qtype, rcode)
        self.requests[key] = self.requests.get(key, 0) + n

    def observe(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def families(self, gauges: Mapping[str, float]) -> list[Family]:
        """What /metrics exports, for ``overlay.metrics.render``."""
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

    def render(self, gauges: Mapping[str, float]) -> str:
        return render(self.families(gauges))

"""dnsd's counters and their Prometheus text rendering, plus the /healthz verdict.

Counters are plain dicts bumped from the answer threads (single increments under
the GIL; a lost increment under a race is acceptable for monitoring). The
latency histogram is fed from every slow-path answer and a 1-in-16 sample of
fast-path answers so measuring does not cost the fast path its speed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

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
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_n: int = 0

    def count(self, qtype: int, rcode: int, n: int = 1) -> None:
        key = (qtype, rcode)
        self.requests[key] = self.requests.get(key, 0) + n

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_n += 1

    def render(self, gauges: dict[str, float]) -> str:
        lines = [
            "# HELP dnsd_requests_total DNS requests answered, by query type and rcode.",
            "# TYPE dnsd_requests_total counter",
        ]
        for (qtype, rcode), n in sorted(self.requests.items()):
            lines.append(f'dnsd_requests_total{{type="{type_name(qtype)}",'
                         f'rcode="{RCODES.get(rcode, str(rcode))}"}} {n}')
        counters: tuple[tuple[str, int, str], ...] = (
            ("dnsd_dropped_total", self.dropped, "packets dropped unanswered"),
            ("dnsd_handler_errors_total", self.errors, "answers that failed (SERVFAIL)"),
            ("dnsd_truncated_total", self.truncated, "answers trimmed with TC set"),
            ("dnsd_forwarded_total", self.forwarded, "queries relayed upstream"),
            ("dnsd_cache_hits_total", self.cache_hits, "answers served precomputed"),
            ("dnsd_cache_misses_total", self.cache_misses, "answers computed by the engine"),
        )
        for name, value, what in counters:
            lines += [f"# HELP {name} {what}.", f"# TYPE {name} counter", f"{name} {value}"]
        lines += ["# HELP dnsd_request_duration_seconds Time to answer (sampled on the "
                  "fast path).", "# TYPE dnsd_request_duration_seconds histogram"]
        running = 0
        for bound, n in zip(BUCKETS, self.latency_counts, strict=False):
            running += n
            lines.append(f'dnsd_request_duration_seconds_bucket{{le="{bound}"}} {running}')
        lines.append(f'dnsd_request_duration_seconds_bucket{{le="+Inf"}} {self.latency_n}')
        lines.append(f"dnsd_request_duration_seconds_sum {self.latency_sum:.6f}")
        lines.append(f"dnsd_request_duration_seconds_count {self.latency_n}")
        for gname, gvalue in sorted(gauges.items()):
            lines += [f"# TYPE {gname} gauge", f"{gname} {gvalue:g}"]
        return "\n".join(lines) + "\n"

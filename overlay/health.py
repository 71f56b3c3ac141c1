"""flanneld's health surface: /healthz, /readyz and Prometheus /metrics over asyncio.

``HealthState`` is the daemon's mutable scoreboard (readiness conditions and
counters); ``render_metrics`` turns it into the Prometheus text format (pure);
``start_server`` answers GETs on it (via ``overlay.statushttp``); ``overlay.service.sd_notify``
tells systemd the same readiness.

Liveness and readiness are split as CoreDNS's health and ready plugins split
them: ``/healthz`` (and ``/health``) is 200 while the process runs, whatever the
store does (a liveness probe must not restart flanneld for a store outage: the
data path keeps working); ``/readyz`` (and ``/ready``) is 503 until the lease is
held, the data path attached and subnet.env written, then 200.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from overlay import metrics
from overlay.statushttp import start_status_server

log = logging.getLogger(__name__)


@dataclass
class HealthState:
    lease_held: bool = False
    datapath_ready: bool = False
    subnet_file_written: bool = False
    leases_known: int = 0
    peers_programmed: int = 0
    reconcile_errors_total: int = 0
    reconciles_total: int = 0
    lease_renewals_total: int = 0
    lease_acquisitions_total: int = 0
    malformed_leases_total: int = 0
    watch_resyncs_total: int = 0
    # more families scraped from the data path (e.g. the udp forwarder's counters)
    datapath_families: Callable[[], Sequence[metrics.Family]] | None = None

    @property
    def ready(self) -> bool:
        return self.lease_held and self.datapath_ready and self.subnet_file_written


_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("weft_leases_known", "gauge", "Valid subnet leases in the store, our own included.",
     "leases_known"),
    ("weft_peers_programmed", "gauge", "Peer leases the data path has programmed.",
     "peers_programmed"),
    ("weft_reconcile_errors_total", "counter", "Data-path entries that failed to program.",
     "reconcile_errors_total"),
    ("weft_reconciles_total", "counter", "Data-path reconcile passes.", "reconciles_total"),
    ("weft_lease_renewals_total", "counter", "Successful renewals of our lease.",
     "lease_renewals_total"),
    ("weft_lease_acquisitions_total", "counter", "Times our lease was acquired or re-acquired.",
     "lease_acquisitions_total"),
    ("weft_malformed_leases_total", "counter", "Lease keys or values ignored as malformed.",
     "malformed_leases_total"),
    ("weft_watch_resyncs_total", "counter", "Full re-lists after a compaction or watch error.",
     "watch_resyncs_total"),
)


def render_metrics(state: HealthState) -> str:
    """The Prometheus text exposition of ``state`` (rendered by overlay.metrics)."""
    families = [(metrics.counter if kind == "counter" else metrics.gauge)(
        name, help_text, getattr(state, attr)) for name, kind, help_text, attr in _METRICS]
    families.append(metrics.gauge(
        "weft_ready", "1 when lease, data path and subnet.env are in place.", int(state.ready)))
    if state.datapath_families is not None:
        families.extend(state.datapath_families())
    return metrics.render(families)


def respond(state: HealthState, path: str) -> tuple[int, str, str]:
    """(status, content type, body) for a GET of ``path``."""
    path = path.split("?", 1)[0]
    if path in ("/healthz", "/health"):
        return 200, "text/plain", "ok\n"
    if path in ("/readyz", "/ready"):
        if state.ready:
            return 200, "text/plain", "ready\n"
        missing = [name for name, ok in (("lease", state.lease_held),
                                         ("datapath", state.datapath_ready),
                                         ("subnet.env", state.subnet_file_written)) if not ok]
        return 503, "text/plain", f"not ready: waiting for {', '.join(missing)}\n"
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4", render_metrics(state)
    return 404, "text/plain", "not found\n"


async def start_server(state: HealthState, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any) and answer health requests until closed."""
    return await start_status_server(lambda path: respond(state, path), host, port)

"""flanneld's health surface: /healthz, /readyz and Prometheus /metrics over asyncio, and sd_notify.

``HealthState`` is the daemon's mutable scoreboard (readiness conditions and
counters); ``render_metrics`` turns it into the Prometheus text format (pure);
``start_server`` answers GETs on it (via ``overlay.statushttp``); ``sd_notify`` sends ``READY=1``
to systemd's ``$NOTIFY_SOCKET`` (path or ``@abstract``), a no-op without one.

``/healthz`` is 200 while the process runs; ``/readyz`` is 503 until the lease
is held, the data path attached and subnet.env written, then 200.
"""

from __future__ import annotations

import asyncio
import logging
import socket
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
    return metrics.render(families)


def respond(state: HealthState, path: str) -> tuple[int, str, str]:
    """(status, content type, body) for a GET of ``path``."""
    path = path.split("?", 1)[0]
    if path == "/healthz":
        return 200, "text/plain", "ok\n"
    if path == "/readyz":
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


def sd_notify(message: str, notify_socket: str | None) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when there is no socket."""
    if not notify_socket:
        return False
    address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", notify_socket, exc)
        return False
    return True

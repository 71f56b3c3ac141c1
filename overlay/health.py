"""flanneld's health surface: /healthz, /readyz and Prometheus /metrics over asyncio, and sd_notify.

``HealthState`` is the daemon's mutable scoreboard (readiness conditions and
counters); ``render_metrics`` turns it into the Prometheus text format (pure);
``serve`` answers HTTP/1.0-style GETs on it; ``sd_notify`` sends ``READY=1``
to systemd's ``$NOTIFY_SOCKET`` (path or ``@abstract``), a no-op without one.

``/healthz`` is 200 while the process runs; ``/readyz`` is 503 until the lease
is held, the data path attached and subnet.env written, then 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

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


_METRICS = (
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
    """The Prometheus text exposition of ``state``."""
    lines: list[str] = []
    for name, kind, help_text, attr in _METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                  f"{name} {getattr(state, attr)}"]
    lines += ["# HELP weft_ready 1 when lease, data path and subnet.env are in place.",
              "# TYPE weft_ready gauge", f"weft_ready {int(state.ready)}"]
    return "\n".join(lines) + "\n"


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


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
            400: "Bad Request"}


async def _handle(state: HealthState, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(5):
            request = await reader.readline()
            while await reader.readline() not in (b"\r\n", b"\n", b""):
                pass
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            status, ctype, body = 400, "text/plain", "bad request\n"
        elif parts[0] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", "method not allowed\n"
        else:
            status, ctype, body = respond(state, parts[1])
        data = body.encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head + (b"" if parts and parts[0] == "HEAD" else data))
        await writer.drain()
    except (TimeoutError, OSError, UnicodeDecodeError) as exc:
        log.debug("health request failed: %s", exc)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_server(state: HealthState, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any) and answer health requests until closed."""
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w), host or "0.0.0.0", port)
    addr = server.sockets[0].getsockname()
    log.info("health/metrics listening on http://%s:%s", addr[0], addr[1])
    return server


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

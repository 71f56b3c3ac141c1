"""A minimal HTTP/1.1 responder for the daemons' health and metrics endpoints.

flanneld (/healthz, /readyz, /metrics) and dnsd (/healthz, /metrics) each pass a
pure ``Route``: path -> (status, content type, body); the scheduler agent passes an
``AsyncRoute`` that gets the whole request target (path and query) and may wait
(journal follow is a long poll). This module owns the
socket side only: one request per connection, GET and HEAD, a 5 s deadline for
the request head, ``Connection: close``. A malformed request gets 400, another
method 405; a client that stalls, vanishes or sends a line over asyncio's 64 KiB
limit is dropped without a trace beyond a DEBUG line, so a scraper can never
disturb the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Route = Callable[[str], tuple[int, str, str]]
AsyncRoute = Callable[[str], Awaitable[tuple[int, str, str]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


async def _respond(route: AsyncRoute, request_line: bytes) -> tuple[int, str, str, bool]:
    """(status, content type, body, head_only) for one request line."""
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2:
        return 400, "text/plain", "bad request\n", False
    if parts[0] not in ("GET", "HEAD"):
        return 405, "text/plain", "method not allowed\n", False
    status, ctype, body = await route(parts[1])
    return status, ctype, body, parts[0] == "HEAD"


async def _handle(route: AsyncRoute, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(5):
            request = await reader.readline()
            while await reader.readline() not in (b"\r\n", b"\n", b""):
                pass
        status, ctype, body, head_only = await _respond(route, request)
        data = body.encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head if head_only else head + data)
        await writer.drain()
    except (TimeoutError, OSError, ValueError) as exc:  # ValueError: a line over the limit
        log.debug("status request failed: %s", exc)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def start_status_server(route: Route, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any) and answer with ``route`` until closed."""

    async def by_path(target: str) -> tuple[int, str, str]:
        return route(target.split("?", 1)[0])

    return await start_http_server(by_path, host, port)


async def start_http_server(route: AsyncRoute, host: str, port: int) -> asyncio.Server:
    """Like ``start_status_server`` for a route that sees the query and may wait.

    ``::`` (IPv6's wildcard, e.g. dnsd's ``-addr [::]:53``) listens on every address of
    both families, as the DNS socket beside it does (asyncio would make it IPv6-only)."""
    bind: str | None = None if host.strip("[]") == "::" else (host or "0.0.0.0")
    server = await asyncio.start_server(lambda r, w: _handle(route, r, w), bind, port)
    addr = server.sockets[0].getsockname()
    log.info("health/metrics listening on http://%s:%s", addr[0], addr[1])
    return server

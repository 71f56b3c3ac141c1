"""flanneld's health surface over real loopback sockets: /healthz, /readyz, /metrics, sd_notify."""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

import pytest

from overlay.health import HealthState, render_metrics, respond, start_server
from overlay.service import sd_notify


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_http_endpoints() -> None:
    state = HealthState()
    server = await start_server(state, "127.0.0.1", 0)  # port 0: the kernel picks a free one
    port = server.sockets[0].getsockname()[1]
    try:
        assert await http_get(port, "/healthz") == (200, "ok\n")
        status, body = await http_get(port, "/readyz")
        assert status == 503 and "lease, datapath, subnet.env" in body
        state.lease_held = state.datapath_ready = True
        status, body = await http_get(port, "/readyz")
        assert status == 503 and body.strip().endswith("subnet.env")
        state.subnet_file_written = True
        assert (await http_get(port, "/readyz"))[0] == 200
        state.lease_renewals_total = 3
        status, body = await http_get(port, "/metrics")
        assert status == 200 and "weft_lease_renewals_total 3" in body
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/healthz", "POST"))[0] == 405
    finally:
        server.close()
        await server.wait_closed()


async def test_overlong_request_line_is_dropped_quietly() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(str(ctx.get("message"))))
    server = await start_server(HealthState(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")  # > 64 KiB limit
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert await http_get(port, "/healthz") == (200, "ok\n")  # still serving
        await asyncio.sleep(0.05)  # let the dropped handler's task finish
        gc.collect()
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)
        server.close()
        await server.wait_closed()


def test_metrics_format_is_prometheus_text() -> None:
    text = render_metrics(HealthState(leases_known=4, peers_programmed=3))
    lines = text.splitlines()
    for name in ("weft_leases_known", "weft_peers_programmed", "weft_reconcile_errors_total",
                 "weft_lease_renewals_total"):
        assert f"# TYPE {name} " in text
        assert any(ln.startswith(f"{name} ") for ln in lines)
    assert "weft_leases_known 4" in lines and "weft_ready 0" in lines
    assert respond(HealthState(), "/metrics?x=1")[0] == 200


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify(tmp_path: Path, abstract: bool) -> None:
    name = f"@weft-test-{id(tmp_path)}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        sock.settimeout(2)
        assert sd_notify("READY=1", name)
        assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", None)
    assert not sd_notify("READY=1", str(tmp_path / "absent.sock"))


@pytest.mark.parametrize(("path", "before", "after"),
                         [("/healthz", 200, 200), ("/health", 200, 200),
                          ("/readyz", 503, 200), ("/ready", 503, 200)],
                         ids=["healthz", "health-alias", "readyz", "ready-alias"])
def test_liveness_never_waits_for_readiness(path: str, before: int, after: int) -> None:
    # CoreDNS's split: liveness says "the process serves", readiness "it can do its job"
    state = HealthState()
    assert respond(state, path)[0] == before
    state.lease_held = state.datapath_ready = state.subnet_file_written = True
    assert respond(state, path)[0] == after

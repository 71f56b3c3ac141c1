"""EtcdStore's edges (endpoint failover, unavailability, TLS option errors) and the
``weftctl store`` commands as a user runs them."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlay.store.api import StoreConfig, StoreUnavailableError
from overlay.store.client import connect, endpoint_target, prefix_end
from overlay.store.embedded.launch import free_port, start_embedded

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "target", "tls"), [
    ("http://127.0.0.1:2379", "127.0.0.1:2379", False),
    ("https://10.0.0.1:4001/", "10.0.0.1:4001", True),
    ("127.0.0.1:1234", "127.0.0.1:1234", False),
    ("http://[::1]:2379", "[::1]:2379", False),
    ("http://etcd.local", "etcd.local:2379", False),
], ids=["http", "https", "bare", "ipv6", "default-port"])
def test_endpoint_target(url: str, target: str, tls: bool) -> None:
    assert endpoint_target(url) == (target, tls)


@pytest.mark.parametrize(("prefix", "end"), [
    (b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")],
    ids=["plain", "carry", "all-ff", "empty"])
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


async def test_failover_to_the_next_endpoint(embedded_endpoint: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = await connect(StoreConfig((dead, embedded_endpoint), timeout=3))
    try:
        assert store.endpoint == embedded_endpoint
        rev = await store.put(b"/client/failover", b"v")
        kv = await store.get(b"/client/failover")
        assert kv is not None and kv.mod_revision == rev
    finally:
        await store.close()


async def test_no_endpoint_answers() -> None:
    cfg = StoreConfig((f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"),
                      timeout=2)
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="no store endpoint answered"):
        await connect(cfg)
    assert time.monotonic() - t < 10


async def test_unreadable_tls_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"store TLS file .*missing\.pem"):
        await connect(StoreConfig(("https://127.0.0.1:2379",), str(tmp_path / "missing.pem")))


def weftctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_weftctl_store_status(store_endpoint: str) -> None:
    r = weftctl("store", "status", "-etcd-endpoints", store_endpoint)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert lines["endpoint"].strip() == store_endpoint
    assert lines["version"].strip().startswith("3.4.")
    assert int(lines["revision"]) >= 1


def test_weftctl_store_status_unreachable() -> None:
    r = weftctl("store", "status", "--etcd-endpoints", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "no store endpoint answered" in r.stderr


@pytest.mark.parametrize("args", [
    ["--listen", "nonsense"],
    ["--listen", "127.0.0.1:2379", "--cert-file", "x.pem"],
    ["--listen", "127.0.0.1:2379", "--trusted-ca-file", "ca.pem"],
], ids=["bad-listen", "cert-without-key", "ca-without-cert"])
def test_weftctl_store_serve_rejects_bad_flags(tmp_path: Path, args: list[str]) -> None:
    r = weftctl("store", "serve", "--data-dir", str(tmp_path), *args)
    assert r.returncode == 2 and "weftctl store serve:" in r.stderr


def test_serve_logs_start_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "store.log"
    proc = start_embedded(tmp_path / "data", log=log, extra=())
    try:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0
    finally:
        proc.stop(kill=True)
    lines = log.read_text().splitlines()
    assert f"data dir {tmp_path / 'data'}, revision 1" in lines[0]
    assert "stopping" in lines[-1]


def test_serve_on_a_busy_port_fails_cleanly(embedded_endpoint: str, tmp_path: Path) -> None:
    r = weftctl("store", "serve", "--listen", embedded_endpoint, "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "cannot listen on" in r.stderr and "Traceback" not in r.stderr


def test_serve_with_missing_tls_files_fails_cleanly(tmp_path: Path) -> None:
    r = weftctl("store", "serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
                str(tmp_path), "--cert-file", "nope.crt", "--key-file", "nope.key")
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_watch_resumes_across_a_server_restart(tmp_path: Path, how: str) -> None:
    import asyncio

    port = free_port()
    server = start_embedded(tmp_path / "data", port=port, log=tmp_path / "store.log")
    store = await connect(StoreConfig((server.endpoint,), timeout=10))
    try:
        first = await store.put(b"/resume/a", b"1")
        got: list[tuple[bytes, int]] = []

        async def follow() -> None:
            async for batch in store.watch(b"/resume/", first):
                got.extend((e.kv.key, e.kv.mod_revision) for e in batch)
                if len(got) == 3:
                    return

        watcher = asyncio.create_task(follow())
        second = await store.put(b"/resume/b", b"2")
        await asyncio.sleep(0.2)
        server.stop(kill=how == "sigkill")
        server = start_embedded(tmp_path / "data", port=port, log=tmp_path / "store.log")
        third = await store.put(b"/resume/c", b"3")
        await asyncio.wait_for(watcher, 15)
        assert got == [(b"/resume/a", first), (b"/resume/b", second), (b"/resume/c", third)]
    finally:
        await store.close()
        server.stop(kill=True)


async def test_restart_under_a_watch_and_keepalive_leaves_no_asyncio_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store restart under a live watch and lease keepalives: the watch resumes, and
    no request stream or task is abandoned (asyncio would log "Task was destroyed but it
    is pending" / "aclose(): asynchronous generator is already running" once collected)."""
    import asyncio
    import gc

    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda u: unraisable.append(f"{u.exc_value!r} in {u.object!r}"))
    caplog.set_level(logging.WARNING)
    port = free_port()
    server = start_embedded(tmp_path / "data", port=port, log=tmp_path / "store.log")
    store = await connect(StoreConfig((server.endpoint,), timeout=10))
    try:
        lease = await store.grant(30)
        first = await store.put(b"/noise/a", b"1", lease)
        got: list[bytes] = []
        resumed = asyncio.Event()

        async def follow() -> None:
            async for batch in store.watch(b"/noise/", first):
                got.extend(e.kv.key for e in batch)
                if b"/noise/after" in got:
                    resumed.set()

        kept: list[int] = []
        lost: list[str] = []

        async def keep() -> None:
            while True:
                try:
                    kept.append(await store.keepalive(lease))
                except StoreUnavailableError as e:
                    lost.append(str(e))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(follow()), asyncio.create_task(keep())]
        await asyncio.sleep(0.3)
        server.stop()
        await asyncio.sleep(0.5)  # watch and keepalives see the store gone
        server = start_embedded(tmp_path / "data", port=port, log=tmp_path / "store.log")
        before = len(kept)
        for _ in range(50):  # the client's channel reconnects within ~1 s
            try:
                await store.put(b"/noise/after", b"2")
                break
            except StoreUnavailableError:
                await asyncio.sleep(0.1)
        await asyncio.wait_for(resumed.wait(), 15)
        for _ in range(100):  # keepalives answered again after the restart
            if len(kept) > before:
                break
            await asyncio.sleep(0.05)
        assert len(kept) > before, f"no keepalive answered after the restart ({lost[-1:]})"
        assert got[0] == b"/noise/a" and got[-1] == b"/noise/after"
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await store.close()
        server.stop(kill=True)
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.01)
    noise = [f"{r.name}: {r.getMessage()}" for r in caplog.records
             if r.levelno >= logging.ERROR or "destroyed" in r.getMessage()]
    assert not noise, noise
    assert not unraisable, unraisable

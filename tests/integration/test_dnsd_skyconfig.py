"""dnsd honours SkyDNS's <path-prefix>/config key: the real daemon on loopback against the
embedded store and a real etcd (``store_endpoint`` runs both).

A good key overrides the flags (domain, TTL) and says so; a malformed key or bad fields
leave dnsd serving on its flags with a WARNING naming the key and the field; an
unreachable store at startup leaves dnsd starting on its flags without waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import dnslib
import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from overlay.store.embedded.launch import free_port
from tests.dnsfuzz import addresses, ask, run_dnsd

pytestmark = pytest.mark.timeout(120)


async def _put(endpoint: str, kvs: dict[str, bytes]) -> None:
    store = await connect(StoreConfig.from_flag(endpoint))
    try:
        for key, value in kvs.items():
            await store.put(key.encode(), value)
    finally:
        await store.close()


def _wait_answer(port: int, name: str, timeout: float = 5.0) -> dnslib.DNSRecord:
    deadline = time.monotonic() + timeout
    while True:
        reply = ask(port, name)
        if reply.rr or time.monotonic() > deadline:
            return reply
        time.sleep(0.02)


async def test_key_sets_domain_and_ttl(store_endpoint: str, tmp_path: Path) -> None:
    prefix = f"/skydns-cfg-{uuid.uuid4().hex[:8]}"
    await _put(store_endpoint, {
        f"{prefix}/config": b'{"domain": "example.org.", "ttl": 42, "dnssec": "Kexample"}',
        f"{prefix}/org/example/web": b'{"host": "10.9.0.1"}',
    })
    # run_dnsd passes -domain skydns.local. explicitly; the key wins, as in SkyDNS
    with run_dnsd(store_endpoint, tmp_path, "-path-prefix", prefix) as d:
        reply = _wait_answer(d.port, "web.example.org.")
        assert addresses(reply) == ["10.9.0.1"]
        assert [rr.ttl for rr in reply.rr] == [42]
        # the flag's zone is no longer served (no forwarder: refused)
        assert ask(d.port, "web.skydns.local.").header.rcode == dnslib.RCODE.REFUSED
        soa = ask(d.port, "nothing.example.org.")
        assert soa.header.rcode == dnslib.RCODE.NXDOMAIN
        assert str(soa.auth[0].rname) == "example.org."
        log = d.log.read_text()
    key = f"{prefix}/config"
    assert f'INFO dnsd: {key}: domain="example.org." overrides the explicit -domain' in log
    assert f"INFO dnsd: {key}: accepted but not supported by dnsd, ignored: dnssec" in log
    assert f"INFO dnsd: {key}: applied domain, ttl" in log
    assert "WARNING dnsd" not in log, log


@pytest.mark.parametrize(("raw", "warning"), [
    (b'{"domain": "example.org.", "ttl": 4', "ignored: not JSON"),
    (b'["example.org."]', "ignored: not a JSON object but list"),
    (b'{"ttl": -1, "domain": "", "dns_addr": "x", "round_robin": "yes"}',
     "field ttl ignored: -1 out of range"),
], ids=["truncated-json", "not-object", "bad-fields"])
async def test_malformed_key_keeps_the_flags(store_endpoint: str, tmp_path: Path,
                                             raw: bytes, warning: str) -> None:
    prefix = f"/skydns-cfg-{uuid.uuid4().hex[:8]}"
    await _put(store_endpoint, {f"{prefix}/config": raw,
                                f"{prefix}/local/skydns/web": b'{"host": "10.9.0.2"}'})
    with run_dnsd(store_endpoint, tmp_path, "-path-prefix", prefix) as d:
        reply = _wait_answer(d.port, "web.skydns.local.")
        assert addresses(reply) == ["10.9.0.2"]
        assert [rr.ttl for rr in reply.rr] == [3600]  # the -ttl default
        log = d.log.read_text()
    assert f"WARNING dnsd: {prefix}/config: {warning}" in log, log
    if b"dns_addr" in raw:
        for field in ("domain", "dns_addr", "round_robin"):
            assert f"WARNING dnsd: {prefix}/config: field {field} ignored: " in log, log


async def test_absent_key_is_quiet(embedded_endpoint: str, tmp_path: Path) -> None:
    prefix = f"/skydns-cfg-{uuid.uuid4().hex[:8]}"
    await _put(embedded_endpoint, {f"{prefix}/local/skydns/web": b'{"host": "10.9.0.3"}'})
    with run_dnsd(embedded_endpoint, tmp_path, "-path-prefix", prefix) as d:
        assert addresses(_wait_answer(d.port, "web.skydns.local.")) == ["10.9.0.3"]
        log = d.log.read_text()
    assert "/config" not in log, log  # DEBUG only, and dnsd runs at INFO


def test_unreachable_store_does_not_hold_startup(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with run_dnsd(dead, tmp_path, wait_ready=False) as d:
        deadline = t0 + 10
        while "store unreachable" not in d.log.read_text():
            assert time.monotonic() < deadline, d.log.read_text()
            time.sleep(0.05)
        status, _ = d.http("/healthz")  # the metrics port is up: dnsd got past startup
        assert status == 200  # alive and serving...
        assert d.http("/readyz")[0] == 503  # ...but without an index yet
        log = d.log.read_text()
    assert f"WARNING dnsd: {d.prefix}/config not read within 2s" in log, log
    assert "Traceback" not in log, log
    assert time.monotonic() - t0 < 10


class GatedProxy:
    """A TCP proxy to ``upstream`` that holds every connection until ``open()``: a slow store."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.gate = threading.Event()
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        for s in [self.listener, *self.socks]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        while not self.gate.wait(0.2):
            if self.stopping.is_set():
                return
        try:
            up = socket.create_connection(self.upstream, 5)
        except OSError:
            conn.close()
            return
        self.socks.append(up)
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


async def test_slow_store_at_start_then_the_key_applies_late(embedded_endpoint: str,
                                                             tmp_path: Path) -> None:
    prefix = f"/skydns-cfg-{uuid.uuid4().hex[:8]}"
    await _put(embedded_endpoint, {
        f"{prefix}/config": b'{"domain": "example.org.", "ttl": 42, "dns_addr": "127.0.0.1:1"}',
        f"{prefix}/org/example/web": b'{"host": "10.9.0.7"}',
    })
    host, _, port = embedded_endpoint.rpartition("/")[2].partition(":")
    proxy = GatedProxy((host, int(port)))
    try:
        with run_dnsd(f"http://127.0.0.1:{proxy.port}", tmp_path, "-path-prefix", prefix,
                      wait_ready=False) as d:
            deadline = time.monotonic() + 15
            while "not read within" not in d.log.read_text():
                assert time.monotonic() < deadline, d.log.read_text()
                time.sleep(0.05)
            time.sleep(0.5)  # the old code logged its traceback right after serving
            assert d.http("/healthz")[0] == 200 and d.http("/readyz")[0] == 503
            assert ask(d.port, "web.skydns.local.").header.rcode == dnslib.RCODE.SERVFAIL
            proxy.open()  # the store answers at last
            reply = _wait_answer(d.port, "web.example.org.", timeout=40)
            assert addresses(reply) == ["10.9.0.7"] and [rr.ttl for rr in reply.rr] == [42]
            body = d.http("/metrics")[1]  # CoreDNS's zone labels follow the new domain
            assert 'zones="example.org."' in body and 'zone="example.org."' in body, body
            log = d.log.read_text()
    finally:
        proxy.close()
    key = f"{prefix}/config"
    assert "Traceback" not in log and "Event loop is closed" not in log, log
    assert (f"INFO dnsd: {key} arrived after start-up and is now applied: domain "
            "skydns.local. -> example.org.; ttl 3600 -> 42") in log, log
    assert f"WARNING dnsd: {key}: dns_addr 127.0.0.1:1 arrived after start-up" in log, log


def test_dnsd_tells_systemd_ready_once_the_index_is_loaded(embedded_endpoint: str,
                                                           tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(sock_path))
        notify.settimeout(20)
        with run_dnsd(embedded_endpoint, tmp_path, wait_ready=False,
                      env={"NOTIFY_SOCKET": str(sock_path)}) as d:
            assert notify.recv(64) == b"READY=1"
            assert d.http("/readyz")[0] == 200


@pytest.mark.parametrize("fmt", ["journal", "json"])
def test_log_format_under_systemd_and_json(embedded_endpoint: str, tmp_path: Path,
                                           fmt: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a warning to log, quickly
    log = tmp_path / f"dnsd-{fmt}.log"
    log.touch()
    st = os.stat(log)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if fmt == "journal" else {
        "WEFT_LOG_FORMAT": "json"}
    with run_dnsd(dead, tmp_path, wait_ready=False, env=env, log_path=log) as d:
        deadline = time.monotonic() + 10
        while "not read within" not in d.log.read_text():
            assert time.monotonic() < deadline, d.log.read_text()
            time.sleep(0.05)
        lines = d.log.read_text().splitlines()
    assert lines
    if fmt == "journal":
        assert all(re.match(r"<[2-7]>[\w.]+: ", line) for line in lines), lines
        assert any(line.startswith("<4>dnsd: ") and "not read within" in line
                   for line in lines), lines
        assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), lines
    else:
        docs = [json.loads(line) for line in lines]
        assert {"time", "level", "logger", "msg"} <= set(docs[0])
        assert any(doc["level"] == "warning" and "not read within" in doc["msg"]
                   for doc in docs), docs

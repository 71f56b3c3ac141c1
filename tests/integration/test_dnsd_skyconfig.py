"""dnsd honours SkyDNS's <path-prefix>/config key: the real daemon on loopback against the
embedded store and a real etcd (``store_endpoint`` runs both).

A good key overrides the flags (domain, TTL) and says so; a malformed key or bad fields
leave dnsd serving on its flags with a WARNING naming the key and the field; an
unreachable store at startup leaves dnsd starting on its flags without waiting.
"""

from __future__ import annotations

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
        assert status == 503
        log = d.log.read_text()
    assert f"WARNING dnsd: {d.prefix}/config not read (" in log, log
    assert time.monotonic() - t0 < 10

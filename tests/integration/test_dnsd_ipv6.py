"""dnsd over IPv6 (issue 17): ``-addr [::1]:port`` serves UDP and TCP, AAAA for records
whose host is an IPv6 address (SkyDNS: ``{"host":"fd00::1"}`` answers AAAA, not A), and
PTR under ip6.arpa from ``<prefix>/arpa/ip6/<nibbles>`` (SkyDNS's reverse layout, as
in-addr.arpa's). Real daemon, real sockets, ``dig -6 @::1``; loopback only."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import connect
from tests.dnsfuzz import run_dnsd

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")]


def _dig6(port: int, *args: str) -> str:
    r = subprocess.run(["dig", "-6", "-p", str(port), "@::1", "+time=2", "+tries=1", "+short",
                        *args], capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def _has_ipv6_loopback() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")
async def test_aaaa_and_ip6_arpa_ptr_over_ipv6_udp_and_tcp(store_endpoint: str,
                                                          tmp_path: Path) -> None:
    store = await connect(StoreConfig.from_flag(store_endpoint))
    try:
        with run_dnsd(store_endpoint, tmp_path, host="::1") as d:
            web = d.name("web6")
            await store.put(d.key("x1.web6"), b'{"host":"fd00:10:244:3::7","port":80}')
            await store.put(d.key("x2.web6"), b'{"host":"10.244.3.7","port":80}')
            rev = ipaddress.IPv6Address("fd00:10:244:3::7").reverse_pointer  # ...ip6.arpa
            await store.put((d.prefix + "/" + "/".join(reversed(rev.split(".")))).encode(),
                            f'{{"host":"{web.rstrip(".")}"}}'.encode())
            deadline = time.monotonic() + 5
            while _dig6(d.port, web, "AAAA") != "fd00:10:244:3::7":
                assert time.monotonic() < deadline, d.log.read_text()[-2000:]
                await asyncio.sleep(0.05)
            assert _dig6(d.port, "+tcp", web, "AAAA") == "fd00:10:244:3::7"
            assert _dig6(d.port, web, "A") == "10.244.3.7"  # each family its own record
            assert _dig6(d.port, "-x", "fd00:10:244:3::7") == web
            assert _dig6(d.port, "+tcp", "-x", "fd00:10:244:3::7") == web
            assert d.http("/readyz")[0] == 200  # metrics/health on the [::1] host too
    finally:
        await store.close()

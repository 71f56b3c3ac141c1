"""weftctl store migrate: embedded -> etcd and etcd -> embedded, every key under the default
prefixes with its value and lease (same id, the TTL left), nothing else; a non-empty
destination is refused unless --force."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.store.api import StoreConfig
from overlay.store.client import EtcdStore, connect
from overlay.store.embedded.launch import StoreProcess, start_embedded, start_etcd

pytestmark = pytest.mark.etcd
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, StoreProcess]]:
    procs = {"embedded": start_embedded(tmp_path / "emb", log=tmp_path / "emb.log")}
    try:
        procs["etcd"] = start_etcd(tmp_path / "etcd", log=tmp_path / "etcd.log")
        yield procs
    finally:
        for p in procs.values():
            p.stop(kill=True)


def migrate(src: str, dst: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", "store", "migrate",
                           "--from", src, "--to", dst, *extra],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


async def _fill(store: EtcdStore) -> tuple[int, int]:
    lease = await store.grant(120)
    short = await store.grant(60)
    await store.put(b"/coreos.com/network/config", b'{"Network":"10.244.0.0/16"}')
    for i in range(5):
        await store.put(b"/coreos.com/network/subnets/10.244.%d.0-24" % i, b'{"PublicIP":"x"}',
                        lease)
    await store.put(b"/skydns/local/skydns/c1", b'{"host":"10.244.1.2"}', short)
    await store.put(b"/skydns/local/skydns/c2", b'{"host":"10.244.2.2"}')
    await store.put(b"/weft/sched/units/a", b"unit")
    await store.put(b"/elsewhere/not-copied", b"x")
    return lease, short


async def _dump(store: EtcdStore) -> dict[bytes, tuple[bytes, int]]:
    return {kv.key: (kv.value, kv.lease) for kv in (await store.list(b"/")).items}


@pytest.mark.parametrize("direction", ["embedded->etcd", "etcd->embedded"])
async def test_migrate(stores: dict[str, StoreProcess], direction: str) -> None:
    a, b = direction.split("->")
    src_url, dst_url = stores[a].endpoint, stores[b].endpoint
    src = await connect(StoreConfig((src_url,)))
    dst = await connect(StoreConfig((dst_url,)))
    try:
        lease, short = await _fill(src)
        out = migrate(src_url, dst_url)
        assert out.returncode == 0, out.stderr
        assert "9 keys, 2 leases" in out.stdout
        want = {k: v for k, v in (await _dump(src)).items() if not k.startswith(b"/elsewhere")}
        assert await _dump(dst) == want  # values and lease ids
        for lid, granted in ((lease, 120), (short, 60)):
            info = await dst.time_to_live(lid)
            assert granted - 10 <= info.ttl <= granted
            assert info.keys == (await src.time_to_live(lid)).keys
        # a second run finds the destination busy: refused, then replaced with --force
        again = migrate(src_url, dst_url)
        assert again.returncode == 1 and "--force" in again.stderr
        await dst.put(b"/skydns/local/skydns/stray", b"{}")
        forced = migrate(src_url, dst_url, "--force", "--prefix", "/skydns")
        assert forced.returncode == 0, forced.stderr
        assert b"/skydns/local/skydns/stray" not in await _dump(dst)
        assert "/skydns: 2 keys copied and verified" in forced.stdout
    finally:
        await src.close()
        await dst.close()

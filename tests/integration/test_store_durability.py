"""Durability of the embedded store: SIGKILL mid-write loses no acknowledged put, revisions keep
rising across the restart, and an old watch replays what was missed (or reports compaction)."""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlay.store.api import CompactedError, StoreConfig
from overlay.store.client import connect
from overlay.store.embedded.launch import StoreProcess, free_port, start_embedded

N = 2000

WRITER = r"""
import asyncio, sys
from overlay.store.api import StoreConfig, StoreError
from overlay.store.client import EtcdStore

async def main(url: str, n: int) -> None:
    store = EtcdStore(StoreConfig((url,), timeout=2.0))
    i = 0
    while i < n:
        try:
            rev = await store.put(b"/dur/%06d" % i, b"value-%d" % i)
        except StoreError:
            await asyncio.sleep(0.05)  # server down: retry the same put (not acked yet)
            continue
        print(i, rev, flush=True)
        i += 1
    await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _start(data: Path, port: int, log: Path, *extra: str) -> StoreProcess:
    return start_embedded(data, port=port, log=log, extra=extra)


async def test_sigkill_loses_no_acknowledged_put(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "store.log"
    port = free_port()
    server = _start(data, port, log)
    url = server.endpoint
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(N)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        acked: list[tuple[int, int]] = []
        kill_after = random.Random().randrange(100, 1500)
        assert writer.stdout is not None
        while len(acked) < kill_after:
            line = writer.stdout.readline()
            assert line, f"writer ended early after {len(acked)} acks"
            i, rev = map(int, line.split())
            acked.append((i, rev))
        server.stop(kill=True)  # SIGKILL at a random point of the stream
        killed_at = acked[-1][1]
        server = _start(data, port, log)
        deadline = time.monotonic() + 60
        for line in writer.stdout:
            i, rev = map(int, line.split())
            acked.append((i, rev))
            assert time.monotonic() < deadline, "writer too slow after restart"
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    assert [i for i, _ in acked] == list(range(N))
    revs = [r for _, r in acked]
    assert all(b > a for a, b in itertools.pairwise(revs)), \
        "revisions must keep rising across the restart"
    assert revs[-1] > killed_at

    store = await connect(StoreConfig((url,)))
    try:
        listing = await store.list(b"/dur/")
        got = {kv.key: kv.value for kv in listing.items}
        missing = [i for i in range(N) if got.get(b"/dur/%06d" % i) != b"value-%d" % i]
        assert not missing, f"acknowledged puts lost after SIGKILL: {missing[:10]}"
        # a watch from before the kill replays everything written since
        seen: set[bytes] = set()
        agen = store.watch(b"/dur/", revs[0])
        async with asyncio.timeout(20):
            async for batch in agen:
                seen.update(e.kv.key for e in batch)
                if len(seen) == N:
                    break
        await agen.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
    server.stop()

    # restarted with a short history, the same old watch reports compaction
    server = _start(data, port, log, "--retain-revisions", "100")
    store = await connect(StoreConfig((url,)))
    try:
        last = await store.put(b"/dur/trigger", b"compact")
        for _ in range(50):
            await store.put(b"/dur/trigger", b"compact")
        with pytest.raises(CompactedError) as e:
            async for _ in store.watch(b"/dur/", revs[0]):
                pass
        assert e.value.compact_revision >= last - 100
    finally:
        await store.close()
        server.stop()
    assert "revision" in log.read_text().splitlines()[0]

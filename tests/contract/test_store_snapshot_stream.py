"""Maintenance Snapshot has the same stream on the embedded store and on etcd: the database in
chunks with remaining_bytes counting the database bytes still to come down to 0, then the
SHA-256 of the database alone (etcd's bbolt file, the embedded store's SQLite one)."""

from __future__ import annotations

import hashlib

import pytest
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

from overlay.store.api import StoreConfig
from overlay.store.client import connect, endpoint_target

pytestmark = pytest.mark.etcd


async def test_snapshot_stream_shape(store_endpoint: str) -> None:
    store = await connect(StoreConfig((store_endpoint,)))
    try:
        await store.put(b"/snapshot-contract/k", b"v")
        chunks: list[bytes] = []
        assert await store.snapshot(chunks.append) == sum(map(len, chunks))
    finally:
        await store.close()
    blob = b"".join(chunks)
    db, digest = blob[:-32], blob[-32:]
    assert hashlib.sha256(db).digest() == digest
    assert chunks[-1] == digest  # the digest comes alone, last


async def test_remaining_bytes_count_down(store_endpoint: str) -> None:
    import grpc

    target, _ = endpoint_target(store_endpoint)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = rpc_pb2_grpc.MaintenanceStub(ch)
        got = [(len(r.blob), r.remaining_bytes) async for r in stub.Snapshot(
            rpc_pb2.SnapshotRequest())]
    assert got[-1] == (32, 0)  # the digest: not counted in remaining_bytes
    total = sum(n for n, _ in got[:-1])
    sent = 0
    for n, remaining in got[:-1]:
        sent += n
        assert remaining == total - sent

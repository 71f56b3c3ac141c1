"""Garbage clients: raw bytes, HTTP/1.1, a broken HTTP/2 stream, undecodable protobuf, unknown
methods. Each gets what etcd gives it, and the store keeps serving."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from overlay.store.client import endpoint_target
from tests.storecheck import round_trip

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

RAW = [
    ("random-bytes", bytes(range(256)) * 4),
    ("http1-get", b"GET /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("h2-preface-then-junk", H2_PREFACE + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00junkjunk" * 8),
    ("half-preface", H2_PREFACE[:10]),
]


@pytest.mark.parametrize("payload", [r[1] for r in RAW], ids=[r[0] for r in RAW])
async def test_raw_garbage_then_still_serving(store_endpoint: str, payload: bytes) -> None:
    host, port = endpoint_target(store_endpoint)[0].rsplit(":", 1)

    def poke() -> None:
        with socket.create_connection((host, int(port)), 5) as s:
            s.sendall(payload)
            s.settimeout(0.5)
            try:
                while s.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    await asyncio.gather(*(asyncio.to_thread(poke) for _ in range(3)))
    await round_trip(store_endpoint)


@pytest.mark.parametrize(("method", "body", "code"), [
    ("/etcdserverpb.KV/Put", b"\xff\xff\xff\xff", grpc.StatusCode.INTERNAL),
    ("/etcdserverpb.KV/Frobnicate", b"", grpc.StatusCode.UNIMPLEMENTED),
    ("/no.such.Service/Method", b"\x0a\x01x", grpc.StatusCode.UNIMPLEMENTED),
], ids=["undecodable-protobuf", "unknown-method", "unknown-service"])
async def test_bad_grpc_calls_get_etcds_status(store_endpoint: str, method: str, body: bytes,
                                               code: grpc.StatusCode) -> None:
    target, _ = endpoint_target(store_endpoint)
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary(method)(body, timeout=5)
        assert e.value.code() == code
    await round_trip(store_endpoint)

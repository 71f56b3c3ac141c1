"""recvmmsg/sendmmsg batching on loopback: slots, senders (v4 and v6), replies, shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dnsd.batchio import BatchSocket, available, decode_sockaddr

pytestmark = pytest.mark.skipif(not available(), reason="needs Linux recvmmsg/sendmmsg")


@pytest.fixture(params=[("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
                ids=["v4", "v6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    host, family = request.param
    srv = socket.socket(family, socket.SOCK_DGRAM)
    cli = socket.socket(family, socket.SOCK_DGRAM)
    try:
        srv.bind((host, 0))
        cli.bind((host, 0))
    except OSError:
        srv.close()
        cli.close()
        pytest.skip(f"no {host} on this machine")
    cli.settimeout(2)
    try:
        yield srv, cli
    finally:
        srv.close()
        cli.close()


def test_batch_receive_and_reply(pair: tuple[socket.socket, socket.socket]) -> None:
    srv, cli = pair
    batch = BatchSocket(srv, slots=8, bufsize=64)
    for round_ in range(3):  # slots are reused across batches
        for i in range(5):
            cli.sendto(b"q%d-%d" % (round_, i), srv.getsockname())
        got: list[tuple[int, bytes]] = []
        while len(got) < 5:
            got.extend(batch.receive())
        assert [d for _, d in got] == [b"q%d-%d" % (round_, i) for i in range(5)]
        for slot, data in got:
            assert batch.sender(slot)[:2] == cli.getsockname()[:2]
            assert batch.queue(slot, data.upper())
        assert not batch.queue(0, b"x" * 65)  # bigger than a buffer: caller sends it itself
        assert batch.flush() == 5
        assert sorted(cli.recv(100) for _ in range(5)) == [
            b"Q%d-%d" % (round_, i) for i in range(5)]


def test_oversized_datagram_is_cut_to_the_buffer(pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    srv, cli = pair
    batch = BatchSocket(srv, slots=2, bufsize=16)
    cli.sendto(b"y" * 100, srv.getsockname())
    assert [d for _, d in batch.receive()] == [b"y" * 16]


def test_decode_sockaddr_rejects_short_names() -> None:
    with pytest.raises(OSError):
        decode_sockaddr(b"")

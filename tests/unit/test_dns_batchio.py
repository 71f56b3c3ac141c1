"""recvmmsg/sendmmsg batching on loopback: slots, senders (v4 and v6), replies, shutdown."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

import pytest

from dnsd.batchio import (
    CMSG_HEADER,
    CONTROL_SIZE,
    IP_PKTINFO,
    BatchSocket,
    Control,
    available,
    decode_sockaddr,
    enable_pktinfo,
    reply_control,
    send_from,
)

pytestmark = pytest.mark.skipif(not available(), reason="needs Linux recvmmsg/sendmmsg")


@contextlib.contextmanager
def _bound(family: int, host: str, cfamily: int, target: str
           ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A server socket on ``host`` (IPv6: dual-stack) and a client on ``target``."""
    srv = socket.socket(family, socket.SOCK_DGRAM)
    cli = socket.socket(cfamily, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind((host, 0))
        cli.bind((target, 0))
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


@pytest.fixture(params=[("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
                ids=["v4", "v6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    host, family = request.param
    with _bound(family, host, family, host) as sockets:
        yield sockets


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


def _sockaddr_in6(host: str, port: int, scope: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", scope))


@pytest.mark.parametrize(("raw", "want"), [
    (_sockaddr_in6("fe80::2", 5353, 3), ("fe80::2%3", 5353)),
    (_sockaddr_in6("fd00::2", 53, 0), ("fd00::2", 53)),
    (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) + socket.inet_aton("10.0.0.1")
     + bytes(8), ("10.0.0.1", 53)),
], ids=["link-local-keeps-its-zone", "global", "v4"])
def test_decode_sockaddr(raw: bytes, want: tuple[str, int]) -> None:
    assert decode_sockaddr(raw) == want


# -- replies from the queried address (IP_PKTINFO / IPV6_PKTINFO) ---------------------------

V6_INFO = socket.inet_pton(socket.AF_INET6, "fd00::1") + (7).to_bytes(4, "little")
LL_INFO = socket.inet_pton(socket.AF_INET6, "fe80::1") + (7).to_bytes(4, "little")
V4_INFO = (7).to_bytes(4, "little") + socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2")


@pytest.mark.parametrize(("ancdata", "want"), [
    ([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, V6_INFO)],
     [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, V6_INFO[:16] + bytes(4))]),
    ([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, LL_INFO)],
     [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, LL_INFO)]),
    ([(socket.IPPROTO_IP, IP_PKTINFO, V4_INFO)],
     [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + V4_INFO[4:])]),
    ([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, V6_INFO[:12])], []),
    ([(socket.IPPROTO_IP, IP_PKTINFO, V4_INFO[:8])], []),
    ([(socket.SOL_SOCKET, 29, b"\x00" * 16)], []),
    ([], []),
], ids=["v6-ifindex-cleared", "v6-link-local-keeps-its-ifindex",
        "v4-ifindex-cleared-spec-dst-kept", "short-v6", "short-v4",
        "other-cmsg-dropped", "none"])
def test_reply_control(ancdata: Control, want: Control) -> None:
    assert reply_control(ancdata) == want


# (bind family, bind host, client family, client sends to): the three cmsg layouts the
# kernel hands over: IP_PKTINFO; IPV6_PKTINFO; IPV6_PKTINFO with an IPv4-mapped address
# for an IPv4 client of a dual-stack IPv6 socket
PKTINFO_CASES = [
    (socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, "::1", socket.AF_INET6, "::1"),
    (socket.AF_INET6, "::ffff:127.0.0.1", socket.AF_INET, "127.0.0.1"),
]


@pytest.fixture(params=PKTINFO_CASES, ids=["v4", "v6", "v4-mapped"])
def info_pair(request: pytest.FixtureRequest
              ) -> Iterator[tuple[socket.socket, socket.socket, str]]:
    family, host, cfamily, target = request.param
    with _bound(family, host, cfamily, target) as (srv, cli):
        enable_pktinfo(srv)
        yield srv, cli, target


def test_batch_replies_carry_the_queried_address(
        info_pair: tuple[socket.socket, socket.socket, str]) -> None:
    srv, cli, target = info_pair
    port = srv.getsockname()[1]
    batch = BatchSocket(srv, slots=4, bufsize=64, pktinfo=True)
    for round_ in range(2):  # control buffers are reused across batches
        for i in range(3):
            cli.sendto(b"q%d" % i, (target, port))
        got: list[tuple[int, bytes]] = []
        while len(got) < 3:
            got.extend(batch.receive())
        for slot, data in got:
            (level, kind, info), = batch.control(slot)
            if srv.family == socket.AF_INET:
                assert (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
                assert info[:4] == bytes(4)  # interface cleared
                assert socket.inet_ntoa(info[4:8]) == target  # the source of the reply
            else:
                assert (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
                assert info[16:] == bytes(4)
                addr = socket.inet_ntop(socket.AF_INET6, info[:16])
                assert addr in (target, f"::ffff:{target}")
            assert batch.queue(slot, data.upper())
        assert batch.flush() == 3
        for _ in range(3):
            reply, src = cli.recvfrom(100)
            assert src[:2] == (target, port) and reply.startswith(b"Q")
        # the slow path's way: sendmsg with the same cmsg
        cli.sendto(b"slow%d" % round_, (target, port))
        (slot, data), = list(batch.receive())
        send_from(srv, data.upper(), batch.sender(slot), batch.control(slot))
        reply, src = cli.recvfrom(100)
        assert reply == b"SLOW%d" % round_ and src[:2] == (target, port)


def test_a_refused_source_is_sent_again_from_the_routes_choice(
        info_pair: tuple[socket.socket, socket.socket, str]) -> None:
    srv, cli, target = info_pair
    if srv.family == socket.AF_INET6 and cli.family == socket.AF_INET6:
        bogus = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                 socket.inet_pton(socket.AF_INET6, "2001:db8::9") + bytes(4))
    elif srv.family == socket.AF_INET6:
        bogus = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                 socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.9") + bytes(4))
    else:
        bogus = (socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + socket.inet_aton("192.0.2.9") * 2)
    port = srv.getsockname()[1]
    batch = BatchSocket(srv, slots=4, bufsize=64, pktinfo=True)
    cli.sendto(b"x", (target, port))
    (slot, _), = list(batch.receive())
    # an address this host does not have, where the kernel wrote the query's
    batch.controls[slot * CONTROL_SIZE + CMSG_HEADER:
                   slot * CONTROL_SIZE + CMSG_HEADER + len(bogus[2])] = bogus[2]
    with pytest.raises(OSError):  # the premise: the kernel will not send from it
        srv.sendmsg([b"refused"], [bogus], 0, batch.sender(slot))
    assert batch.queue(slot, b"batched")
    assert batch.flush() == 1
    reply, src = cli.recvfrom(100)
    assert reply == b"batched" and src[:2] == (target, port)
    send_from(srv, b"single", batch.sender(slot), [bogus])
    reply, src = cli.recvfrom(100)
    assert reply == b"single" and src[:2] == (target, port)

"""The udp forwarder's batched paths (UDP GSO out, UDP GRO in) on loopback, with a
datagram socketpair standing in for the TUN: one datagram per inner packet on the wire."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from overlay.backend.udp import Forwarder, build_table
from overlay.backend.udpcrypt import Crypto
from overlay.backend.udpedge import Drop
from overlay.lease.model import Lease
from tests.udprig import Rig, loopback_rig

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
OWN = Lease(N("10.244.1.0/24"), A("127.0.0.1"), "")


def ipv4(dst: str, size: int, tag: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, tag, 0, 64, 17, 0,
                      socket.inet_aton("10.244.1.2"), socket.inet_aton(dst))
    return hdr + bytes([tag]) * (size - 20)


@pytest.mark.parametrize("sealed", [False, True])
def test_gso_out_and_gro_in_keep_one_packet_per_datagram(sealed: bool) -> None:
    with loopback_rig(gro=True) as rig:
        run_gso_gro(rig, sealed)


def run_gso_gro(rig: Rig, sealed: bool) -> None:
    tun_app, tun_fwd, sock, peer = rig.tun_app, rig.tun_fwd, rig.sock, rig.peer
    me = Crypto((bytes(32),), A("127.0.0.1")) if sealed else None
    them = Crypto((bytes(32),), A("127.0.0.1"))
    fwd = Forwarder(tun_fwd.fileno(), sock, offload=True, crypto=me)
    port = peer.getsockname()[1]
    fwd.table = build_table([Lease(N("10.244.2.0/24"), A("127.0.0.1"), "")], OWN, port)
    # queued before the pump starts, so they are read in one batch: 5 full-size + 1 short
    out = [ipv4("10.244.2.7", 1400, i) for i in range(5)] + [ipv4("10.244.2.7", 300, 5)]
    for p in out:
        tun_app.send(p)
    fwd.start()
    try:
        got = [peer.recv(65536) for _ in out]
        if sealed:
            assert all(g[0] == 0x81 for g in got)
            got = [bytes(them.open(g, "127.0.0.1")) for g in got]  # type: ignore[arg-type]
        assert [len(g) for g in got] == [1400] * 5 + [300]  # segmented by the kernel
        assert [g[4:6] for g in got] == [p[4:6] for p in out]  # in order
        assert all(g[8] == 63 for g in got)
        # a coalesced super-datagram in: the TUN gets one write per segment
        segs = [ipv4("10.244.1.2", 1000, 10 + i) for i in range(4)]
        wire = [them.seal(p, "127.0.0.1") for p in segs] if sealed else segs
        peer.sendmsg([b"".join(wire)], [(17, 103, struct.pack("=H", len(wire[0])))], 0,
                     sock.getsockname())
        back = [tun_app.recv(65536) for _ in segs]
        assert back == segs
        deadline = time.monotonic() + 5
        while (fwd.tx_packets, fwd.rx_packets) != (6, 4) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (fwd.tx_packets, fwd.rx_packets, fwd.dropped) == (6, 4, 0)
    finally:
        fwd.stop()


def test_routes_by_subnet_ignores_other_types_and_drops_unknown() -> None:
    with loopback_rig() as rig:
        fwd = Forwarder(rig.tun_fwd.fileno(), rig.sock)
        port = rig.peer_port
        leases = [Lease(N("10.244.2.0/24"), A("127.0.0.1"), ""),
                  Lease(N("10.244.3.0/24"), A("127.0.0.1"), "vxlan")]  # other type: ignored
        fwd.table = build_table(leases, OWN, port)
        assert fwd.table == {24: {int(A("10.244.2.0")): ("127.0.0.1", port)}}
        fwd.start()
        try:
            rig.tun_app.send(ipv4("10.244.3.9", 28, 1))  # no udp peer: dropped
            rig.tun_app.send(ipv4("10.244.2.7", 28, 2))
            got, want = rig.peer.recv(2048), ipv4("10.244.2.7", 28, 2)
            # the raw IP packet is the whole UDP payload, its TTL one less (a hop)
            assert got[8] == want[8] - 1 and got[:8] + got[9:10] + got[12:] == \
                want[:8] + want[9:10] + want[12:]
            rig.peer.sendto(ipv4("10.244.1.2", 28, 3), rig.sock.getsockname())
            assert rig.tun_app.recv(2048) == ipv4("10.244.1.2", 28, 3)
            deadline = time.monotonic() + 5  # counters are published after each batch
            while (fwd.dropped, fwd.tx_packets, fwd.rx_packets) != (1, 1, 1) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (fwd.drops[Drop.NO_ROUTE], fwd.tx_packets, fwd.rx_packets) == (1, 1, 1)
        finally:
            fwd.stop()

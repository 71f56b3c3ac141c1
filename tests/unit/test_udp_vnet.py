"""The udp forwarder's offload path (one thread, ``vnet=True``) on loopback, with a
datagram socketpair standing in for a TUN with ``IFF_VNET_HDR``: a TCP super-packet
leaves as weft chunks to a weft peer and as valid MSS segments to a flannel peer, and
chunks coming in are written back as the super-packet they carry."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable

import numpy as np
import pytest

from overlay.backend import udpgso
from overlay.backend.udp import Forwarder, build_table
from overlay.backend.udpedge import Drop
from overlay.lease.model import Lease
from tests.udprig import loopback_rig
from tests.unit.test_udpgso import arr, tcp_packet, valid

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
OWN = Lease(N("10.244.1.0/24"), A("127.0.0.1"), "")
MSS = 1420


def super_packet(size: int) -> tuple[bytes, bytes]:
    """(vnet header + TCP super-packet to 10.244.2.2, its payload)."""
    payload = os.urandom(size)
    pkt = bytearray(tcp_packet(payload, check=False))
    pkt[16:20] = bytes([10, 244, 2, 2])
    hdr = udpgso.vnet_header(udpgso.F_NEEDS_CSUM, udpgso.GSO_TCPV4, 52, MSS, 20, 16)
    return hdr + bytes(pkt), payload


def wait_for(cond: Callable[[], bool], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_super_packet_out_as_chunks_or_segments_and_chunks_in() -> None:
    with loopback_rig(gro=True) as rig:
        fwd = Forwarder(rig.tun_fwd.fileno(), rig.sock, path_mtu=1472, offload=True, vnet=True)
        peer = Lease(N("10.244.2.0/24"), A("127.0.0.1"), "", {"Chunks": "v1"})
        fwd.table = build_table([peer], OWN, rig.peer_port)
        fwd.source = int(A("10.244.1.0"))
        fwd.start()
        try:
            # to a weft peer: chunks, reassembled they are the super-packet (TTL - 1)
            fwd.chunk_peers = frozenset({"127.0.0.1"})
            sent, payload = super_packet(20_000)
            rig.tun_app.send(sent)
            got = b""
            r = udpgso.Reassembly()
            while not got:
                d = rig.peer.recv(65536)
                assert d[0] == udpgso.CHUNK_MAGIC
                done = r.feed("p", arr(d), len(d), len(d))
                got = done[0].tobytes() if done else b""
            assert got[:8] == sent[:8] and got[10 + 8] == sent[10 + 8] - 1  # TTL
            assert got[10 + 52:] == payload
            # to a flannel peer: valid segments of MSS bytes, one per datagram
            fwd.chunk_peers = frozenset()
            rig.tun_app.send(sent)
            segs = [rig.peer.recv(65536) for _ in range(-(-20_000 // MSS))]
            assert all(valid(s) for s in segs) and b"".join(s[52:] for s in segs) == payload
            # chunks in: one write of the super-packet (vnet header first) to the TUN
            out = np.zeros(65536, dtype=np.uint8)
            wire = out[:udpgso.chunk(arr(sent), len(sent), 1472, 9, out)].tobytes()
            rig.peer.sendmsg([wire], [(17, 103, (1472).to_bytes(2, "little"))], 0,
                             rig.sock.getsockname())
            assert rig.tun_app.recv(65536) == sent
            wait_for(lambda: fwd.offload["rx", "reassembled"] == 1)
            assert fwd.offload == {("tx", "chunked"): 1, ("tx", "segmented"): 1,
                                   ("rx", "reassembled"): 1, ("rx", "coalesced"): 0}
            assert fwd.dropped == 0
        finally:
            fwd.stop()


def test_a_forwarder_bug_is_counted_and_forwarding_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while handling a datagram (a bug some input hits, injected here)
    drops what was being handled, counts ``internal_error`` and restarts the loop:
    the next super-packet is forwarded, not a dead data path."""
    real = udpgso.Reassembly.run
    calls = [0]

    def buggy(self: udpgso.Reassembly, *a: object) -> tuple[bool, object]:
        calls[0] += 1
        if calls[0] == 1:
            raise IndexError("injected")
        return real(self, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(udpgso.Reassembly, "run", buggy)
    with loopback_rig(gro=True) as rig:
        fwd = Forwarder(rig.tun_fwd.fileno(), rig.sock, path_mtu=1472, offload=True, vnet=True)
        fwd.table = build_table([], OWN, rig.peer_port)
        fwd.start()
        try:
            sent, _ = super_packet(3000)
            out = np.zeros(65536, dtype=np.uint8)
            for ident in (1, 2):
                wire = out[:udpgso.chunk(arr(sent), len(sent), 1472, ident, out)].tobytes()
                rig.peer.sendmsg([wire], [(17, 103, (1472).to_bytes(2, "little"))], 0,
                                 rig.sock.getsockname())
                if ident == 1:
                    wait_for(lambda: fwd.drops[Drop.INTERNAL] == 1)
            assert rig.tun_app.recv(65536) == sent
            assert fwd.drops[Drop.INTERNAL] == 1 and calls[0] == 2
        finally:
            fwd.stop()

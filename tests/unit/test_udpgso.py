"""udpgso: TSO-style segmentation of TUN super-packets and GRO-style coalescing back,
checked against the definitions (every segment's IP and TCP checksums verify)."""

from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest

from overlay.backend import udpgso
from overlay.backend.udpedge import checksum

SRC, DST = socket.inet_aton("10.244.1.2"), socket.inet_aton("10.244.2.2")
OPTS = b"\x01\x01\x08\x0a" + struct.pack("!II", 7, 9)  # NOP NOP timestamps


def tcp_packet(payload: bytes, seq: int = 1000, flags: int = 0x18, ident: int = 500,
               opts: bytes = OPTS, check: bool = True) -> bytes:
    """A TCP/IPv4 packet with correct checksums (``check``) or a zero TCP checksum."""
    thl = 20 + len(opts)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (thl // 4) << 4, flags, 502, 0, 0)
    tcp += opts + payload
    if check:
        pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    total = 20 + len(tcp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 63, 6, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def valid(seg: bytes) -> bool:
    ihl = (seg[0] & 15) * 4
    tcp = seg[ihl:]
    pseudo = seg[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return checksum(seg[:ihl]) == 0 and checksum(pseudo + tcp) == 0


def arr(data: bytes | bytearray) -> udpgso.Bytes:
    return np.frombuffer(bytearray(data), dtype=np.uint8)


@pytest.mark.parametrize("mss,size", [(1388, 65_000), (1388, 1388 * 5), (1001, 9_000),
                                      (1388, 100)], ids=["64k", "exact", "odd-mss", "one"])
def test_segment_makes_valid_consecutive_segments(mss: int, size: int) -> None:
    payload = os.urandom(size)
    sup = tcp_packet(payload, seq=0xFFFFF000, flags=0x19, check=False)  # FIN|PSH|ACK
    out = np.zeros(2 * 65536, dtype=np.uint8)
    k = udpgso.segment(arr(sup), len(sup), mss, out)
    h = 52
    assert k == -(-size // mss)
    total = len(sup) + (k - 1) * h
    raw = out[:total].tobytes()
    segs = [raw[o:o + h + mss] for o in range(0, total, h + mss)]
    assert len(segs) == k and all(valid(s) for s in segs)
    assert b"".join(s[h:] for s in segs) == payload
    seqs = [struct.unpack("!I", s[24:28])[0] for s in segs]
    assert seqs == [(0xFFFFF000 + i * mss) & 0xFFFFFFFF for i in range(k)]
    assert [struct.unpack("!H", s[4:6])[0] for s in segs] == [500 + i for i in range(k)]
    flags = [s[33] for s in segs]
    assert flags[-1] == 0x19 and all(f == 0x10 for f in flags[:-1])
    assert all(s[8] == 63 and s[6] == 0x40 for s in segs)


def test_complete_csum_finishes_a_partial_checksum() -> None:
    good = tcp_packet(b"hello world!")
    pseudo = sum(struct.unpack("!4H", SRC + DST)) + 6 + len(good) - 20
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    partial = bytearray(good)
    partial[36:38] = struct.pack("!H", pseudo)
    a = arr(partial)
    assert udpgso.complete_csum(a, len(a), 20, 16)
    assert a.tobytes() == good
    assert not udpgso.complete_csum(a, len(a), 20, len(a))


def wire(payload: bytes, mss: int, seq: int = 5000, last_flags: int = 0x18) -> bytes:
    chunks = [payload[o:o + mss] for o in range(0, len(payload), mss)]
    return b"".join(tcp_packet(c, seq + i * mss, last_flags if i == len(chunks) - 1 else 0x10,
                               ident=i) for i, c in enumerate(chunks))


@pytest.mark.parametrize("size", [1388 * 10, 1388 * 10 + 500], ids=["full", "short-last"])
def test_coalesce_joins_one_flow_into_one_super_packet(size: int) -> None:
    payload = os.urandom(size)
    data = wire(payload, 1388)
    seg = 52 + 1388
    count = udpgso.coalescible(arr(data), len(data), seg)
    assert count == -(-size // 1388)
    out = np.zeros(udpgso.VNET_HDR_LEN + 2 * 65536, dtype=np.uint8)
    n = udpgso.coalesce(arr(data), len(data), seg, count, out)
    raw = out[:n].tobytes()
    flags, gso_type, hdr_len, gso_size, start, offset = udpgso.parse_vnet(raw)
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (
        udpgso.F_NEEDS_CSUM, udpgso.GSO_TCPV4, 52, 1388, 20, 16)
    pkt = raw[udpgso.VNET_HDR_LEN:]
    assert struct.unpack("!H", pkt[2:4])[0] == len(pkt) == 52 + size
    assert checksum(pkt[:20]) == 0 and pkt[33] == 0x18 and pkt[52:] == payload
    # the partial checksum completes to a valid one, as the kernel would finish it
    a = arr(pkt)
    assert udpgso.complete_csum(a, len(a), 20, 16) and valid(a.tobytes())


def test_coalescible_stops_at_a_gap_a_push_or_another_flow() -> None:
    seg = 52 + 1000
    gap = wire(os.urandom(3000), 1000) + tcp_packet(os.urandom(1000), 5000 + 4000, 0x10)
    assert udpgso.coalescible(arr(gap), len(gap), seg) == 3
    push = wire(os.urandom(2000), 1000) + wire(os.urandom(2000), 1000, seq=7000)
    assert udpgso.coalescible(arr(push), len(push), seg) == 2
    other = bytearray(wire(os.urandom(4000), 1000, last_flags=0x10))
    other[2 * seg + 20:2 * seg + 22] = b"\x00\x01"  # third segment: another source port
    assert udpgso.coalescible(arr(other), len(other), seg) == 2
    syn = bytearray(wire(os.urandom(2000), 1000))
    syn[33] = 0x12
    assert udpgso.coalescible(arr(syn), len(syn), seg) == 0


@pytest.mark.parametrize("size", [65_545, 1464 * 3, 100], ids=["64k", "exact", "one"])
def test_chunks_round_trip_whole_and_datagram_by_datagram(size: int) -> None:
    data = os.urandom(size)
    dgram = 1472
    assert udpgso.chunk_count(size, dgram) == -(-size // 1464)
    out = np.zeros(2 * 65536, dtype=np.uint8)
    n = udpgso.chunk(arr(data), size, dgram, 0xABCDEF01, out)
    wire = out[:n].tobytes()
    assert wire[0] == udpgso.CHUNK_MAGIC and wire[4:8] == bytes.fromhex("abcdef01")
    r = udpgso.Reassembly()
    got = r.feed("198.18.0.1", arr(wire), n, dgram)
    assert [g.tobytes() for g in got] == [data]
    got = r.feed("198.18.0.1", arr(wire), n, dgram)  # the source's buffer exists: fast path
    assert [g.tobytes() for g in got] == [data]
    bad = bytearray(wire)
    bad[(n - 1) // dgram * dgram + 7] ^= 1  # the last chunk's id: not one whole packet
    assert r.feed("198.18.0.1", arr(bad), n, dgram) == [] or n <= dgram
    r.lost = 0
    # split across receives (two GSO sends, then one datagram at a time)
    cut = (n // dgram // 2) * dgram
    assert r.feed("a", arr(wire[:cut]), cut, dgram) == [] or cut == 0
    got = r.feed("a", arr(wire[cut:]), n - cut, dgram)
    assert [g.tobytes() for g in got] == [data]
    one_by_one = [g.tobytes() for o in range(0, n, dgram)
                  for g in r.feed("b", arr(wire[o:o + dgram]), len(wire[o:o + dgram]), dgram)]
    assert one_by_one == [data] and r.lost == 0


def test_reassembly_drops_a_broken_sequence_and_keeps_the_next_packet() -> None:
    r = udpgso.Reassembly()
    packets = [os.urandom(5000), os.urandom(3000)]
    wires = []
    for ident, p in enumerate(packets):
        out = np.zeros(65536, dtype=np.uint8)
        n = udpgso.chunk(arr(p), len(p), 1472, ident, out)
        wires.append(out[:n].tobytes())
    first = wires[0][:1472] + wires[0][2 * 1472:]  # index 1 lost
    assert r.feed("a", arr(first), len(first), 1472) == [] and r.lost == 1
    both = wires[0][:1472] + wires[1]  # a packet cut short, then a whole one
    got = r.feed("a", arr(both), len(both), 1472)
    assert [g.tobytes() for g in got] == [packets[1]] and r.lost == 2
    assert udpgso.chunk_count(65_535, 576) == 0  # more than 64 chunks: flannel format


def test_run_takes_each_gso_half_and_leaves_the_rest_to_feed() -> None:
    """The fast path: a 64 KiB super-packet arrives as two receives (two UDP GSO
    sends); each is taken in a few operations. A receive that does not continue the
    partial packet (another id, a gap, a foreign datagram) is not taken."""
    dgram, size = 1472, 65_546
    data = os.urandom(size)
    out = np.zeros(2 * 65536, dtype=np.uint8)
    n = udpgso.chunk(arr(data), size, dgram, 41, out)
    wire = out[:n].tobytes()
    cut = 44 * dgram
    r = udpgso.Reassembly()
    assert r.run("a", arr(wire[:cut]), cut, dgram) == (True, None)
    handled, got = r.run("a", arr(wire[cut:]), n - cut, dgram)
    assert handled and got is not None and got.tobytes() == data and r.lost == 0
    # the second half of another packet (id 42) does not continue id 41's first half
    other = np.zeros(2 * 65536, dtype=np.uint8)
    m = udpgso.chunk(arr(data), size, dgram, 42, other)
    assert r.run("a", arr(wire[:cut]), cut, dgram) == (True, None)
    assert r.run("a", other[cut:m], m - cut, dgram)[0] is False
    # a gap: the first half again, then the tail without its first datagram
    assert r.run("b", arr(wire[:cut]), cut, dgram) == (True, None)
    assert r.run("b", arr(wire[cut + dgram:]), n - cut - dgram, dgram)[0] is False
    # a header in the middle of the run changed: not taken, feed drops the packet
    bad = bytearray(wire[:cut])
    bad[3 * dgram + 1] ^= 1
    assert r.run("c", arr(bytes(bad)), cut, dgram)[0] is False
    assert r.feed("c", arr(bytes(bad)), cut, dgram) == []
    # a first half replacing an unfinished one (id 41's, still pending) counts it lost
    r.lost = 0
    assert r.run("a", arr(wire[:cut]), cut, dgram) == (True, None) and r.lost == 1


def test_forged_chunk_headers_are_refused_not_raised() -> None:
    """Counts and indexes beyond 64 chunks, zero counts, runts: never an exception."""
    r = udpgso.Reassembly()
    for idx, count in ((60, 200), (0, 0), (250, 255), (63, 64), (0, 65)):
        wire = bytearray(os.urandom(3 * 1472))
        for i in range(3):
            wire[i * 1472:i * 1472 + 8] = bytes((udpgso.CHUNK_MAGIC, (idx + i) & 0xFF, count, 0,
                                                 0, 0, 0, 9))
        assert r.run("a", arr(bytes(wire)), len(wire), 1472)[0] is False or count == 64
        r.feed("a", arr(bytes(wire)), len(wire), 1472)
    assert r.run("a", arr(bytes((udpgso.CHUNK_MAGIC,) * 8)), 8, 1472)[0] is False

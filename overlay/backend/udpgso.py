"""TUN offloads for the udp forwarder (pure: buffers in, buffers out; numpy does the per-byte work).

Theory of operation. With ``IFF_VNET_HDR`` every TUN read and write starts with a
10-byte ``virtio_net_hdr`` (flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset; host byte order). With ``TUNSETOFFLOAD`` (CSUM + TSO4) the kernel hands
the forwarder TCP super-packets of up to 64 KiB (``gso_type`` TCPV4, ``gso_size`` =
MSS) and packets whose L4 checksum is left partial (``NEEDS_CSUM``): one read where
there were ~45. The wire keeps flannel's format, one complete inner IPv4 packet per
datagram, so:

- out (``segment``): a super-packet is cut into MSS-sized TCP/IPv4 segments as a
  NIC's TSO would (IP id + i, total length and header checksum per segment, TCP
  sequence + i*MSS, FIN/PSH only on the last segment, CWR only on the first, full TCP
  checksum), written back to back, all the same size but the last: exactly what one
  ``UDP_SEGMENT`` send wants. ``complete_csum`` finishes a partial checksum.
- in (``coalesce``): the datagrams one ``UDP_GRO`` receive returned, when they are
  consecutive segments of one TCP flow (headers equal but for IP id/checksum and TCP
  sequence/checksum/PSH, sequence numbers contiguous), become one super-packet
  written with ``gso_type`` TCPV4 and ``NEEDS_CSUM``: the kernel carries it as one
  buffer through routing, the bridge and the veth, as its own GRO would. The inner
  checksums are not re-verified: the outer UDP checksum, verified by the kernel
  before the datagrams reached the socket, covers every inner byte.

Every function takes ``np.uint8`` arrays (views of the forwarder's buffers) and
returns sizes; none allocates more than a few small temporaries per call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_ECN = 0x80
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
MAX_IP = 65_535

_VNET = struct.Struct("=BBHHHH")
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_TCP = 6

Bytes = npt.NDArray[np.uint8]


def vnet_header(flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
                csum_start: int = 0, csum_offset: int = 0) -> bytes:
    """A ``virtio_net_hdr`` (what precedes every packet on a ``IFF_VNET_HDR`` TUN)."""
    return _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def parse_vnet(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, int]:
    """(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) of ``buf[:10]``."""
    flags, gso_type, hdr_len, gso_size, start, offset = _VNET.unpack_from(buf)
    return flags, gso_type, hdr_len, gso_size, start, offset


def _fold1(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def word_sum(data: Bytes) -> int:
    """The ones'-complement sum (unfolded) of ``data`` as big-endian 16-bit words, an
    odd last byte padded with zero (RFC 1071)."""
    n = len(data)
    if n <= 256:  # ACKs and other small packets: cheaper without numpy
        b = data.tobytes() + (b"\0" if n & 1 else b"")
        return sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = int(data[:n & ~1].view(">u2").sum(dtype=np.uint64))
    return s + (int(data[n - 1]) << 8 if n & 1 else 0)


def complete_csum(pkt: Bytes, n: int, start: int, offset: int) -> bool:
    """Finish the partial checksum of ``pkt[:n]`` (``NEEDS_CSUM``: the field at
    ``start + offset`` holds the pseudo-header sum; the sum runs from ``start`` to the
    end) as a NIC would; False if the offsets fall outside the packet."""
    at = start + offset
    if start >= n or at + 2 > n:
        return False
    c = ~_fold1(word_sum(pkt[start:n])) & 0xFFFF
    if c == 0 and pkt[9] == 17:  # UDP: a computed 0 is sent as 0xffff
        c = 0xFFFF
    pkt[at] = c >> 8
    pkt[at + 1] = c & 0xFF
    return True


def tcp_header_len(pkt: Bytes, n: int) -> int:
    """IP + TCP header length of the TCP/IPv4 packet ``pkt[:n]``, 0 if it is not one
    (or is a fragment)."""
    if n < 40 or pkt[0] >> 4 != 4 or pkt[9] != _TCP or (int(pkt[6]) << 8 | int(pkt[7])) & 0x3FFF:
        return 0
    ihl = (int(pkt[0]) & 0x0F) * 4
    if ihl < 20 or ihl + 20 > n:
        return 0
    h = ihl + (int(pkt[ihl + 12]) >> 4) * 4
    return h if ihl + 20 <= h <= n else 0


_AR = np.arange(64 * 1024, dtype=np.uint64)  # row indexes (a 64 KiB packet, MSS >= 1)
_MASKS: dict[tuple[int, int], Bytes] = {}


def _fin(s: int) -> int:
    """The checksum of a ones'-complement sum ``s`` (0xffff and 0 are the same value)."""
    return 0xFFFF - s % 0xFFFF


def _words(b: bytes) -> int:
    """Sum of the big-endian 16-bit words of a short even-length ``b``."""
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def _tcp_sum(hb: bytes, ihl: int) -> tuple[int, int]:
    """For the IP + TCP header ``hb``: (sum of the IP header without length, id and
    checksum; sum of the pseudo-header addresses and protocol and of the TCP header
    without sequence, flags and checksum)."""
    ip = _words(hb[:2] + hb[6:10] + hb[12:ihl])
    tcp = _words(hb[12:20] + hb[ihl:ihl + 4] + hb[ihl + 8:ihl + 13] + b"\0"
                 + hb[ihl + 14:ihl + 16] + hb[ihl + 18:])
    return ip, tcp + _TCP


def segment(pkt: Bytes, n: int, mss: int, out: Bytes) -> int:
    """Cut the TCP/IPv4 super-packet ``pkt[:n]`` into segments of ``mss`` payload bytes
    written back to back into ``out`` (each ``h + mss`` bytes, the last shorter);
    returns how many (0: not a TCP/IPv4 packet, or nothing to cut). ``out`` needs
    ``count * (h + mss)`` bytes."""
    h = tcp_header_len(pkt, n)
    length = n - h
    if h == 0 or mss <= 0 or length <= 0:
        return 0
    k = -(-length // mss)
    ihl = (int(pkt[0]) & 0x0F) * 4
    width = h + mss
    if len(out) < k * width:
        raise ValueError(f"segment: {k} segments of {width} bytes do not fit {len(out)}")
    rows = out[:k * width].reshape(k, width)
    last = length - (k - 1) * mss
    rows[:, :h] = pkt[:h]
    rows[:k - 1, h:] = pkt[h:h + (k - 1) * mss].reshape(k - 1, mss)
    rows[k - 1, h:h + last] = pkt[n - last:n]
    rows[k - 1, h + last:] = 0  # the pad of the last segment (summed, never sent)
    hb = pkt[:h].tobytes()
    ip_base, tcp_base = _tcp_sum(hb, ihl)
    flags0, id0 = hb[ihl + 13], int.from_bytes(hb[4:6], "big")
    seq0 = int.from_bytes(hb[ihl + 4:ihl + 8], "big")
    mid = flags0 & ~(_FIN | _PSH | _CWR)
    # every row as a middle one (full length, flags without FIN/PSH/CWR); then the
    # first and the last are patched
    ident = (_AR[:k] + np.uint64(id0)) & np.uint64(0xFFFF)
    seq = (_AR[:k] * np.uint64(mss) + np.uint64(seq0)) & np.uint64(0xFFFFFFFF)
    seq_hi, seq_lo = seq >> np.uint64(16), seq & np.uint64(0xFFFF)
    if mss & 1 == 0:
        pay = rows[:, h:].view(">u2").sum(axis=1, dtype=np.uint64)
    else:  # odd MSS: sum over a zero-padded copy so every row starts word-aligned
        tmp = np.zeros((k, mss + 1), dtype=np.uint8)
        tmp[:, :mss] = rows[:, h:]
        pay = tmp.view(">u2").sum(axis=1, dtype=np.uint64)
    ip_ck = np.uint64(0xFFFF) - (ident + np.uint64(ip_base + width)) % np.uint64(0xFFFF)
    tcp_ck = np.uint64(0xFFFF) - (seq_hi + seq_lo + pay + np.uint64(
        tcp_base + width - ihl + mid)) % np.uint64(0xFFFF)
    if width & 1 == 0:
        r16 = rows.view(">u2")
        r16[:, 1] = width
        r16[:, 2] = ident
        r16[:, 5] = ip_ck
        r16[:, (ihl + 4) // 2] = seq_hi
        r16[:, (ihl + 6) // 2] = seq_lo
        r16[:, (ihl + 16) // 2] = tcp_ck
    else:
        for col, val in ((2, np.uint64(width)), (4, ident), (10, ip_ck), (ihl + 4, seq_hi),
                         (ihl + 6, seq_lo), (ihl + 16, tcp_ck)):
            rows[:, col] = val >> np.uint64(8)
            rows[:, col + 1] = val & np.uint64(0xFF)
    rows[:, ihl + 13] = mid
    for i in {0, k - 1}:  # first: CWR kept; last: FIN/PSH kept and its own length
        f = mid | (flags0 & _CWR if i == 0 else 0) | (flags0 & (_FIN | _PSH) if i == k - 1 else 0)
        size = h + (last if i == k - 1 else mss)
        row = rows[i]
        row[2], row[3] = size >> 8, size & 0xFF
        ick = _fin(ip_base + size + int(ident[i]))
        row[10], row[11] = ick >> 8, ick & 0xFF
        row[ihl + 13] = f
        tck = _fin(tcp_base + size - ihl + f + int(seq_hi[i]) + int(seq_lo[i]) + int(pay[i]))
        row[ihl + 16], row[ihl + 17] = tck >> 8, tck & 0xFF
    return k


def _mask(ihl: int, h: int) -> Bytes:
    """Which header bytes must be equal in segments that join: all but IP id and
    checksum, TCP sequence and checksum; of the flags, all but PSH."""
    m = _MASKS.get((ihl, h))
    if m is None:
        m = np.full(h, 0xFF, dtype=np.uint8)
        for a, b in ((4, 6), (10, 12), (ihl + 4, ihl + 8), (ihl + 16, ihl + 18)):
            m[a:b] = 0
        m[ihl + 13] = 0xFF & ~_PSH
        m.flags.writeable = False
        m = _MASKS.setdefault((ihl, h), m)
    return m


def coalescible(buf: Bytes, n: int, seg: int, limit: int = MAX_IP) -> int:
    """How many datagrams at the start of ``buf[:n]`` (back to back, ``seg`` bytes each,
    the last maybe shorter) are consecutive segments of one TCP/IPv4 flow that
    ``coalesce`` may join into one packet of at most ``limit`` bytes; 0 or 1 = none."""
    h = tcp_header_len(buf[:seg], min(seg, n))
    plen = seg - h
    if h == 0 or plen <= 0 or n <= seg:
        return 0
    ihl = (int(buf[0]) & 0x0F) * 4
    if (int(buf[ihl + 13]) & ~_PSH) != 0x10 or (int(buf[2]) << 8 | int(buf[3])) != seg:
        return 0  # only plain ACK segments join (PSH allowed on the last one taken)
    full = n // seg
    cap = max(1, (limit - h) // plen)
    m = min(full, cap, 64)
    rows = buf[:m * seg].reshape(m, seg)
    bad = ((rows[:, :h] ^ rows[0, :h]) & _mask(ihl, h)).any(axis=1)
    if seg & 1 == 0 and ihl & 1 == 0:
        r16 = rows.view(">u2")
        seq = (r16[:, (ihl + 4) // 2].astype(np.uint64) << np.uint64(16)) | r16[:, (ihl + 6) // 2]
    else:
        seq = rows[:, ihl + 4:ihl + 8].copy().view(">u4").reshape(m).astype(np.uint64)
    bad |= seq != (_AR[:m] * np.uint64(plen) + seq[0]) & np.uint64(0xFFFFFFFF)
    bad[1:] |= (rows[:-1, ihl + 13] & _PSH) != 0
    j = int(np.argmax(bad)) if bad.any() else m
    if j < m or m < full or n == full * seg or m == cap:
        return j
    # every full datagram joins: the short last one too if it continues the flow
    rest = n - full * seg
    tail = buf[full * seg:n]
    if rest <= h or h + m * plen + rest - h > limit or (rows[-1, ihl + 13] & _PSH):
        return j
    tail_seq = int.from_bytes(tail[ihl + 4:ihl + 8].tobytes(), "big")
    tail_len = int(tail[2]) << 8 | int(tail[3])
    m2 = _mask(ihl, h).copy()
    m2[2:4] = 0
    if (not ((tail[:h] ^ rows[0, :h]) & m2).any() and tail_len == rest
            and tail_seq == (int(seq[0]) + m * plen) & 0xFFFFFFFF):
        return m + 1
    return j


def coalesce(buf: Bytes, n: int, seg: int, count: int, out: Bytes) -> int:
    """Join the first ``count`` datagrams of ``buf[:n]`` (``coalescible`` said they
    may) into ``out``: a ``virtio_net_hdr`` (TCPV4, ``NEEDS_CSUM``) and one TCP/IPv4
    packet carrying their payloads; returns the bytes written to ``out``."""
    h = tcp_header_len(buf[:seg], seg)
    ihl = (int(buf[0]) & 0x0F) * 4
    plen = seg - h
    end = min(n, count * seg)
    full = min(count, n // seg)
    payload = end - full * seg - h if end > full * seg else 0
    length = full * plen + max(payload, 0)
    total = h + length
    o = VNET_HDR_LEN
    out[:o] = np.frombuffer(vnet_header(F_NEEDS_CSUM, GSO_TCPV4, h, plen, ihl, 16), np.uint8)
    out[o:o + h] = buf[:h]
    body = out[o + h:o + total]
    body[:full * plen] = buf[:full * seg].reshape(full, seg)[:, h:].reshape(-1)
    if payload > 0:
        body[full * plen:] = buf[full * seg + h:end]
    last = full * seg if end > full * seg else (full - 1) * seg
    pkt = out[o:o + total]
    pkt[ihl + 13] = buf[last + ihl + 13]  # the last segment's flags (PSH)
    pkt[2], pkt[3] = total >> 8, total & 0xFF
    pkt[10:12] = 0
    ip_ck = ~_fold1(word_sum(pkt[:ihl])) & 0xFFFF
    pkt[10], pkt[11] = ip_ck >> 8, ip_ck & 0xFF
    # partial checksum: the pseudo-header sum, as a local TCP stack leaves it for TSO
    pseudo = _fold1(word_sum(pkt[12:20]) + _TCP + total - ihl)
    pkt[ihl + 16], pkt[ihl + 17] = pseudo >> 8, pseudo & 0xFF
    return o + total


# --- weft-to-weft chunks (negotiated: BackendData {"Chunks": CHUNKS}) ----------------
#
# A super-packet as the TUN gave it (virtio_net_hdr + IP packet) is cut into chunks,
# each sent as one datagram behind an 8-byte header; every datagram but the last is
# exactly the path datagram size, so one UDP_SEGMENT send carries them all and one
# UDP_GRO receive usually returns them all. No per-segment header rewriting or
# checksum on either side: the receiver writes the super-packet to its TUN as it
# came (the TCP checksum stays partial; the outer UDP checksums cover every byte).
#
#     0      1      2      3     4           8
#     | 0x82 | index| count| 0   | id (BE32) | data ...
#
# 0x82 cannot start a flannel datagram (IPv4: 0x45..0x4f) or a sealed one (0x81).
# With encryption the chunks carry the super-packet sealed whole (udpcrypt's format,
# one AEAD operation and one replay-window counter per super-packet); the receiver
# opens what it reassembled, so a forged or lost chunk loses that super-packet only.

CHUNKS = "v1"
CHUNK_MAGIC = 0x82
CHUNK_HDR = 8
MAX_CHUNKS = 64
_CHUNK_TEMPLATE = np.zeros((MAX_CHUNKS, CHUNK_HDR), dtype=np.uint8)
_CHUNK_TEMPLATE[:, 0] = CHUNK_MAGIC
_CHUNK_TEMPLATE[:, 1] = np.arange(MAX_CHUNKS, dtype=np.uint8)
_CHUNK_TEMPLATE.flags.writeable = False
_INDEXES = bytes(range(MAX_CHUNKS))
_MAX_SOURCES = 64  # reassembly buffers kept (128 KiB each: 8 MiB at most)


def chunk_count(size: int, dgram: int) -> int:
    """How many chunks ``size`` bytes take in datagrams of ``dgram`` bytes (0: too many)."""
    k = -(-size // (dgram - CHUNK_HDR)) if dgram > CHUNK_HDR else 0
    return k if 0 < k <= MAX_CHUNKS else 0


def chunk(data: Bytes, size: int, dgram: int, ident: int, out: Bytes) -> int:
    """Cut ``data[:size]`` into chunk datagrams of ``dgram`` bytes back to back in
    ``out``; returns the bytes written (``chunk_count`` must be non-zero)."""
    k = chunk_count(size, dgram)
    cs = dgram - CHUNK_HDR
    rows = out[:k * dgram].reshape(k, dgram)
    rows[:, :CHUNK_HDR] = _CHUNK_TEMPLATE[:k]
    rows[:, 2] = k
    rows[:, 4:8] = np.frombuffer(ident.to_bytes(4, "big"), dtype=np.uint8)
    full = (k - 1) * cs
    rows[:k - 1, CHUNK_HDR:] = data[:full].reshape(k - 1, cs)
    last = size - full
    rows[k - 1, CHUNK_HDR:CHUNK_HDR + last] = data[full:size]
    return (k - 1) * dgram + CHUNK_HDR + last


@dataclass(slots=True)
class _Partial:
    ident: int
    count: int
    next: int = 0
    filled: int = 0


class Reassembly:
    """Chunked super-packets from the datagrams of UDP_GRO receives, per source. A
    receive is cut into runs (one id, consecutive indexes) copied whole into the
    source's buffer; a run that does not continue the partial packet (a lost or
    reordered datagram) drops that packet (counted in ``lost``)."""

    def __init__(self) -> None:
        self._partial: dict[str, _Partial] = {}
        self._bufs: dict[str, Bytes] = {}
        self.lost = 0

    def feed(self, src: str, buf: Bytes, n: int, seg: int) -> list[Bytes]:
        """The super-packets (views, valid until the next ``feed``) completed by the
        chunk datagrams ``buf[:n]`` (``seg`` bytes each, the last maybe shorter)."""
        handled, done1 = self.run(src, buf, n, seg)
        if handled:
            return [] if done1 is None else [done1]
        m = -(-n // seg)
        full = n // seg
        hdrs = np.empty((m, CHUNK_HDR), dtype=np.uint8)
        hdrs[:full] = buf[:full * seg].reshape(full, seg)[:, :CHUNK_HDR]
        if m > full:
            if n - full * seg <= CHUNK_HDR:
                m -= 1  # a runt: ignored
                hdrs = hdrs[:m]
            else:
                hdrs[full] = buf[full * seg:full * seg + CHUNK_HDR]
        done: list[Bytes] = []
        i = 0
        while i < m:
            first = hdrs[i]
            if first[0] != CHUNK_MAGIC:
                self._drop(src)
                i += 1
                continue
            rest = hdrs[i:]
            same = ((rest[:, 0] == CHUNK_MAGIC) & (rest[:, 2] == first[2])
                    & (rest[:, 4:8] == first[4:8]).all(axis=1)
                    & (rest[:, 1] == (np.arange(len(rest)) + int(first[1])) & 0xFF))
            j = i + (int(np.argmin(same)) if not same.all() else len(rest))
            got = self._run(src, buf, n, seg, i, j, int(first[1]), int(first[2]),
                            int.from_bytes(first[4:8].tobytes(), "big"))
            if got is not None:
                done.append(got)
            i = j
        return done

    def run(self, src: str, buf: Bytes, n: int, seg: int) -> tuple[bool, Bytes | None]:
        """The common case in a few operations: ``buf[:n]`` is one run of consecutive
        chunks of one super-packet, starting it or continuing ``src``'s partial one
        (each ``UDP_SEGMENT`` send arrives as one ``UDP_GRO`` receive; a 64 KiB
        super-packet takes two). Returns (handled, the super-packet if this completed
        it); not handled: ``feed``'s general path decides."""
        if n <= CHUNK_HDR or buf[0] != CHUNK_MAGIC:
            return False, None
        idx, k = int(buf[1]), int(buf[2])
        m = -(-n // seg)  # datagrams in this receive
        tail = (m - 1) * seg
        last = n - tail
        if not 0 < k <= MAX_CHUNKS or idx + m > k or last <= CHUNK_HDR or (
                idx + m < k and last != seg):
            return False, None
        if last == seg:
            heads = buf[:n].reshape(m, seg)[:, :CHUNK_HDR].tobytes()
        else:
            heads = buf[:tail].reshape(m - 1, seg)[:, :CHUNK_HDR].tobytes() + buf[
                tail:tail + CHUNK_HDR].tobytes()
        ident = int.from_bytes(heads[4:8], "big")
        st = self._partial.get(src)
        if idx and (st is None or st.next != idx or st.count != k or st.ident != ident):
            return False, None
        want = bytearray(heads[:CHUNK_HDR] * m)  # every header the first's but its index
        want[1::CHUNK_HDR] = _INDEXES[idx:idx + m]
        if want != heads:
            return False, None
        rows = buf[:tail].reshape(m - 1, seg)
        data = self._buffer(src)
        if idx == 0:
            if st is not None:
                self.lost += 1  # a partial one never finished
            filled = 0
        else:
            assert st is not None
            filled = st.filled
        cs = seg - CHUNK_HDR
        if filled + (m - 1) * cs + last - CHUNK_HDR > len(data):
            return False, None
        data[filled:filled + (m - 1) * cs].reshape(m - 1, cs)[:] = rows[:, CHUNK_HDR:]
        filled += (m - 1) * cs
        data[filled:filled + last - CHUNK_HDR] = buf[tail + CHUNK_HDR:n]
        filled += last - CHUNK_HDR
        if idx + m == k:
            self._partial.pop(src, None)
            return True, data[:filled]
        if st is None or idx == 0:
            st = self._partial[src] = _Partial(ident, k)
        st.next, st.filled = idx + m, filled
        return True, None

    def _buffer(self, src: str) -> Bytes:
        """``src``'s reassembly buffer (kept for at most ``_MAX_SOURCES`` sources)."""
        data = self._bufs.get(src)
        if data is None:
            if len(self._bufs) >= _MAX_SOURCES:  # forget the oldest source's buffer
                old = next(iter(self._bufs))
                del self._bufs[old]
                self._partial.pop(old, None)
            data = self._bufs[src] = np.empty(2 * 65536, dtype=np.uint8)
        return data

    def _drop(self, src: str) -> None:
        if self._partial.pop(src, None) is not None:
            self.lost += 1

    def _run(self, src: str, buf: Bytes, n: int, seg: int, i: int, j: int, idx: int,
             count: int, ident: int) -> Bytes | None:
        """Datagrams ``i..j-1`` of one id with consecutive indexes from ``idx``."""
        st = self._partial.get(src)
        if idx == 0:
            if st is not None:
                self.lost += 1
            st = self._partial[src] = _Partial(ident, count)
        elif st is None or (st.ident, st.count, st.next) != (ident, count, idx):
            self._drop(src)
            return None
        data = self._buffer(src)
        cs = seg - CHUNK_HDR
        rows = min(j, n // seg) - i  # full datagrams in the run
        if st.filled + (j - i) * cs > len(data) or idx + (j - i) > count:
            self._drop(src)
            return None
        filled = st.filled
        if rows > 0:
            data[filled:filled + rows * cs] = buf[i * seg:(i + rows) * seg].reshape(
                rows, seg)[:, CHUNK_HDR:].reshape(-1)
            filled += rows * cs
        if i + rows < j:  # the short last datagram
            tail = buf[(i + rows) * seg + CHUNK_HDR:min(n, j * seg)]
            data[filled:filled + len(tail)] = tail
            filled += len(tail)
        st.next, st.filled = idx + (j - i), filled
        if st.next < count:
            return None
        del self._partial[src]
        return data[:filled]

"""The udp forwarder's packet decisions at the edges (pure: bytes in, verdicts and bytes out).

What the forwarder does with an IPv4 packet read from the TUN (``egress``):

- not IPv4 or shorter than its header: dropped (``malformed``);
- TTL 1 or 0: dropped, ICMP time-exceeded (type 11 code 0) written back to the TUN
  (``ttl_expired``); otherwise the TTL is decremented in place (RFC 1624 checksum
  update), the tunnel being one hop as in flannel's proxy;
- destination in no peer's subnet: dropped, ICMP net-unreachable (type 3 code 0) back,
  as flannel's proxy does (``no_route``);
- longer than the path MTU with DF set: dropped, ICMP fragmentation-needed (type 3
  code 4, next-hop MTU = path MTU) so PMTU discovery works (``too_big``); without DF
  the datagram goes out and the underlay fragments it.

ICMP errors follow RFC 1812 4.3.2.7: none about an ICMP error, a non-first fragment,
or a packet from/to a multicast, broadcast or unspecified address. Their source is
the TUN's address (``<subnet>.0``), their payload the offending IP header plus 8 bytes.
"""

from __future__ import annotations

import enum
import struct

ICMP_UNREACH = 3
ICMP_TIME_EXCEEDED = 11
CODE_NET_UNREACH = 0
CODE_FRAG_NEEDED = 4

_ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})


class Drop(enum.Enum):
    """Why a packet was not forwarded (the ``reason`` label of the drop counter)."""

    MALFORMED = "malformed"
    TTL_EXPIRED = "ttl_expired"
    NO_ROUTE = "no_route"
    TOO_BIG = "too_big"
    SEND_ERROR = "send_error"
    TUN_WRITE_ERROR = "tun_write_error"
    AUTH_FAILED = "auth_failed"  # encryption: tag mismatch or unknown key
    REPLAY = "replay"  # encryption: counter seen or older than the window
    PLAINTEXT = "plaintext_refused"  # encryption on here, a plaintext datagram came
    ENCRYPTED = "encrypted_refused"  # encryption off here, a sealed datagram came
    CHUNK_LOST = "chunk_lost"  # weft chunks: a super-packet missing a piece (or out of order)
    INTERNAL = "internal_error"  # a forwarder bug some input hit: logged, forwarding goes on


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl(buf: bytearray | memoryview) -> None:
    """TTL - 1 in the IPv4 header at ``buf[0:]``, header checksum updated incrementally
    (RFC 1624: HC' = ~(~HC + ~m + m'), m the TTL/protocol word)."""
    old = (buf[8] << 8) | buf[9]
    buf[8] -= 1
    new = old - 0x100
    hc = (buf[10] << 8) | buf[11]
    s = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    buf[10], buf[11] = s >> 8, s & 0xFF


def _special(addr: int) -> bool:
    return addr == 0 or addr == 0xFFFFFFFF or addr >> 28 == 0xE


def may_answer(packet: bytes | bytearray | memoryview) -> bool:
    """Whether RFC 1812 allows an ICMP error about ``packet`` (an IPv4 header at least)."""
    ihl = (packet[0] & 0x0F) * 4
    if int.from_bytes(packet[6:8], "big") & 0x1FFF:  # a non-first fragment
        return False
    src = int.from_bytes(packet[12:16], "big")
    dst = int.from_bytes(packet[16:20], "big")
    if _special(src) or _special(dst):
        return False
    return not (packet[9] == 1 and len(packet) > ihl and packet[ihl] in _ICMP_ERROR_TYPES)


def icmp_error(packet: bytes | bytearray | memoryview, icmp_type: int, code: int,
               source: int, mtu: int = 0) -> bytes:
    """An IPv4 ICMP error from ``source`` (an int address) to ``packet``'s sender,
    quoting its header and the first 8 bytes of its payload (``mtu`` is the next-hop
    MTU of a fragmentation-needed message)."""
    ihl = (packet[0] & 0x0F) * 4
    quote = bytes(packet[:ihl + 8])
    rest = mtu & 0xFFFF if (icmp_type, code) == (ICMP_UNREACH, CODE_FRAG_NEEDED) else 0
    body = struct.pack("!BBHHH", icmp_type, code, 0, 0, rest) + quote
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    total = 20 + len(body)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, total, 0, 0, 64, 1, 0,
                         source.to_bytes(4, "big"), bytes(packet[12:16]))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def egress(packet: bytearray | memoryview, n: int, routable: bool, path_mtu: int,
           source: int) -> tuple[Drop | None, bytes | None]:
    """The verdict on ``packet[:n]`` read from the TUN, whose destination has a peer
    iff ``routable``: ``(None, None)`` = send it (its TTL now decremented in place);
    ``(reason, icmp or None)`` = drop it, writing ``icmp`` (if any) back to the TUN."""
    if n < 20 or packet[0] >> 4 != 4 or (packet[0] & 0x0F) < 5 or (packet[0] & 0x0F) * 4 > n:
        return Drop.MALFORMED, None
    view = packet[:n]
    if packet[8] <= 1:
        return Drop.TTL_EXPIRED, _answer(view, ICMP_TIME_EXCEEDED, 0, source)
    if not routable:
        return Drop.NO_ROUTE, _answer(view, ICMP_UNREACH, CODE_NET_UNREACH, source)
    if n > path_mtu and packet[6] & 0x40:
        return Drop.TOO_BIG, _answer(view, ICMP_UNREACH, CODE_FRAG_NEEDED, source, path_mtu)
    decrement_ttl(packet)
    return None, None


def _answer(packet: bytearray | memoryview, icmp_type: int, code: int, source: int,
            mtu: int = 0) -> bytes | None:
    if source == 0 or not may_answer(packet):
        return None
    return icmp_error(packet, icmp_type, code, source, mtu)

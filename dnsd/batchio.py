"""Batched UDP I/O for the answer loop: Linux recvmmsg/sendmmsg through ctypes.

Theory of operation. Under load most of a Python DNS server's time goes to two
system calls per query. ``BatchSocket`` receives up to ``slots`` datagrams with
one ``recvmmsg`` (blocking for the first, MSG_WAITFORONE) into fixed buffers and
sends the fast-path replies with one ``sendmmsg``, each reply addressed with the
sender's raw sockaddr straight from the receive slot, so no address is decoded
on the fast path. All headers, iovecs and buffers are allocated once; per packet
the loop only reads a length, slices the buffer and copies the reply in, through
memoryviews over the ctypes arrays (much cheaper than ctypes attribute access).

Replies from the queried address. A socket bound to a wildcard address answers
for every address of the host, but a plain reply leaves from the address the
kernel's route prefers, and a client that queried another one (dig: "reply from
unexpected source") drops it. So a wildcard socket asks for each datagram's
destination (``enable_pktinfo``: IPV6_RECVPKTINFO, or IP_PKTINFO on an IPv4 socket)
and every reply carries it back as its source, in the same cmsg on ``sendmsg``, as
SkyDNS's miekg/dns does. A dual-stack IPv6 socket gets an IPV6_PKTINFO with the
IPv4-mapped address for IPv4 clients, and the kernel takes that back for them too,
so one cmsg layout serves both families. The interface index is cleared
(``reply_control``): the source is pinned, the route still picks the way out;
except for an IPv6 link-local source, which the kernel takes only with its link. In
the batch each slot has its own control buffer, and a queued reply points its
header at its query's, so the fast path copies no address either. A reply whose
source the kernel refuses (a query sent to a broadcast address) goes again
without it.

``available()`` says whether the platform has the calls; the server falls back
to a plain recvfrom/sendto loop otherwise (or when told to).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from collections.abc import Iterator

MSG_WAITFORONE = 0x10000
NAME_SIZE = 128  # sizeof(struct sockaddr_storage)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python has the name from 3.12
CMSG_HEADER = 16  # sizeof(struct cmsghdr) on 64-bit Linux: the data starts here
CONTROL_SIZE = 64  # a slot's control buffer: one pktinfo cmsg (40 bytes for in6_pktinfo)
# where each pktinfo's interface index sits in its cmsg data
_IFINDEX_AT = {socket.AF_INET6: 16, socket.AF_INET: 0}  # in6_pktinfo: addr, ifindex


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32))


_libc: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _ = lib.recvmmsg, lib.sendmmsg
        except (OSError, AttributeError):
            return None
        lib.recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_void_p)
        lib.recvmmsg.restype = ctypes.c_int
        lib.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        lib.sendmmsg.restype = ctypes.c_int
        _libc = lib
    return _libc


def available() -> bool:
    return _load() is not None and ctypes.sizeof(_MMsgHdr) % 8 == 0


def decode_sockaddr(raw: bytes) -> tuple[str, int]:
    """(host, port) of a raw sockaddr_in/sockaddr_in6.

    A scoped IPv6 address (link-local) keeps its zone as ``%<index>``, which
    ``sendto`` takes back, so a reply to a link-local client finds its link.
    """
    if len(raw) < 8:
        raise OSError(errno.EINVAL, f"sockaddr of {len(raw)} bytes")
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = struct.unpack_from("=I", raw, 24)[0] if len(raw) >= 28 else 0
        return (f"{host}%{scope}" if scope else host), port
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


Control = list[tuple[int, int, bytes]]  # ancillary data, as socket.sendmsg takes it


def enable_pktinfo(sock: socket.socket) -> None:
    """Have the kernel tell each datagram's destination address (a cmsg per datagram).

    Raises ``OSError`` when the socket does not take the option.
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def _link_local(in6: bytes | memoryview, at: int = 0) -> bool:
    """Whether the IPv6 address at ``at`` is link-local (fe80::/10)."""
    return in6[at] == 0xFE and in6[at + 1] & 0xC0 == 0x80


def reply_control(ancdata: Control) -> Control:
    """The cmsg that sends a reply from the address the query in ``ancdata`` went to.

    The received pktinfo with its interface index cleared (kept for an IPv6
    link-local address, valid on its link only); anything else is left out.
    """
    out: Control = []
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            out.append((level, kind, data[:20] if _link_local(data) else data[:16] + bytes(4)))
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            out.append((level, kind, bytes(4) + data[4:12]))
    return out


def send_from(sock: socket.socket, data: bytes, addr: tuple[str, int],
              control: Control) -> None:
    """Send ``data`` to ``addr`` with the source ``control`` names (none: the route's).

    When the kernel refuses that source, sends again without it.
    """
    if control:
        try:
            sock.sendmsg([data], control, 0, addr)
            return
        except OSError:
            pass
    sock.sendto(data, addr)


class BatchSocket:
    """recvmmsg/sendmmsg over one bound UDP socket, with preallocated slots.

    ``pktinfo``: the socket has ``enable_pktinfo`` on; each reply leaves from the
    address its query was sent to.
    """

    def __init__(self, sock: socket.socket, slots: int = 64, bufsize: int = 4096,
                 pktinfo: bool = False) -> None:
        lib = _load()
        if lib is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg not available")
        self._lib = lib
        self.fd = sock.fileno()
        self.slots = slots
        self.bufsize = bufsize
        self.pktinfo = pktinfo
        self.rbuf = bytearray(slots * bufsize)
        self.sbuf = bytearray(slots * bufsize)
        self.names = bytearray(slots * NAME_SIZE)
        self.controls = bytearray(slots * CONTROL_SIZE if pktinfo else 0)
        self._rmsgs = (_MMsgHdr * slots)()
        self._smsgs = (_MMsgHdr * slots)()
        self._riov = (_IOVec * slots)()
        self._siov = (_IOVec * slots)()
        rbase = ctypes.addressof((ctypes.c_char * len(self.rbuf)).from_buffer(self.rbuf))
        sbase = ctypes.addressof((ctypes.c_char * len(self.sbuf)).from_buffer(self.sbuf))
        nbase = ctypes.addressof((ctypes.c_char * len(self.names)).from_buffer(self.names))
        self._name_addr = [nbase + i * NAME_SIZE for i in range(slots)]
        self._control_addr = [0] * slots
        if pktinfo:
            cbase = ctypes.addressof(
                (ctypes.c_char * len(self.controls)).from_buffer(self.controls))
            self._control_addr = [cbase + i * CONTROL_SIZE for i in range(slots)]
        iov_size = ctypes.sizeof(_IOVec)
        for i in range(slots):
            self._riov[i].iov_base = rbase + i * bufsize
            self._riov[i].iov_len = bufsize
            self._siov[i].iov_base = sbase + i * bufsize
            r = self._rmsgs[i].msg_hdr
            r.msg_name = self._name_addr[i]
            r.msg_namelen = NAME_SIZE
            r.msg_iov = ctypes.addressof(self._riov) + i * iov_size
            r.msg_iovlen = 1
            if pktinfo:
                r.msg_control = self._control_addr[i]
                r.msg_controllen = CONTROL_SIZE
            s = self._smsgs[i].msg_hdr
            s.msg_iov = ctypes.addressof(self._siov) + i * iov_size
            s.msg_iovlen = 1
        # memoryviews over the header arrays: index arithmetic instead of ctypes proxies
        stride = ctypes.sizeof(_MMsgHdr)
        self._s32 = stride // 4
        self._s64 = stride // 8
        self._off_namelen = _MsgHdr.msg_namelen.offset // 4
        self._off_len = _MMsgHdr.msg_len.offset // 4
        self._off_name = _MsgHdr.msg_name.offset // 8
        self._off_control = _MsgHdr.msg_control.offset // 8
        self._off_controllen = _MsgHdr.msg_controllen.offset // 8
        self._r32 = memoryview(self._rmsgs).cast("B").cast("I")
        self._r64 = memoryview(self._rmsgs).cast("B").cast("Q")
        # the interface index of slot i's pktinfo, as a 32-bit index into the buffers
        self._cview = memoryview(self.controls)
        self._c32 = self._cview.cast("I")
        self._ifindex = (CMSG_HEADER + _IFINDEX_AT.get(sock.family, 0)) // 4
        self._v6 = sock.family == socket.AF_INET6
        self._s32v = memoryview(self._smsgs).cast("B").cast("I")
        self._s64v = memoryview(self._smsgs).cast("B").cast("Q")
        self._siov64 = memoryview(self._siov).cast("B").cast("Q")
        self._rview = memoryview(self.rbuf)
        self._sview = memoryview(self.sbuf)
        self._received = 0
        self._queued = 0

    def receive(self) -> Iterator[tuple[int, bytes]]:
        """Block for at least one datagram; yields (slot, data) for each received.

        Raises ``OSError`` when the socket is closed or shut down.
        """
        r32 = self._r32
        s32 = self._s32
        for i in range(self._received):  # the kernel wrote back the last batch's lengths
            r32[i * s32 + self._off_namelen] = NAME_SIZE
        if self.pktinfo:
            r64 = self._r64
            s64 = self._s64
            for i in range(self._received):
                r64[i * s64 + self._off_controllen] = CONTROL_SIZE
        n = self._lib.recvmmsg(self.fd, ctypes.addressof(self._rmsgs), self.slots,
                                MSG_WAITFORONE, None)
        if n < 0:
            err = ctypes.get_errno()
            self._received = 0
            if err in (errno.EINTR, errno.EAGAIN):
                return
            raise OSError(err, "recvmmsg failed")
        self._received = n
        rview = self._rview
        bufsize = self.bufsize
        off_len = self._off_len
        for i in range(n):
            length = r32[i * s32 + off_len]
            off = i * bufsize
            yield i, bytes(rview[off:off + length])

    def sender(self, slot: int) -> tuple[str, int]:
        """The sender of received ``slot`` as (host, port)."""
        namelen = self._r32[slot * self._s32 + self._off_namelen]
        off = slot * NAME_SIZE
        return decode_sockaddr(bytes(self.names[off:off + namelen]))

    def control(self, slot: int) -> Control:
        """The cmsg for a reply to received ``slot`` from the address it was sent to
        (``reply_control``); empty without ``pktinfo``."""
        if not self.pktinfo:
            return []
        length = self._r64[slot * self._s64 + self._off_controllen]
        off = slot * CONTROL_SIZE
        if length < CMSG_HEADER:
            return []
        cmsg_len, level, kind = struct.unpack_from("@Nii", self.controls, off)
        cmsg_len = min(cmsg_len, length)
        return reply_control([(level, kind,
                               bytes(self.controls[off + CMSG_HEADER:off + cmsg_len]))])

    def queue(self, slot: int, reply: bytes) -> bool:
        """Queue ``reply`` to the sender of ``slot``; False if it does not fit a buffer."""
        size = len(reply)
        if size > self.bufsize:
            return False
        j = self._queued
        off = j * self.bufsize
        self._sview[off:off + size] = reply
        self._siov64[j * 2 + 1] = size
        self._s64v[j * self._s64 + self._off_name] = self._name_addr[slot]
        self._s32v[j * self._s32 + self._off_namelen] = \
            self._r32[slot * self._s32 + self._off_namelen]
        if self.pktinfo:  # the query's own pktinfo, interface cleared: see the top
            s64 = self._s64
            self._s64v[j * s64 + self._off_control] = self._control_addr[slot]
            self._s64v[j * s64 + self._off_controllen] = \
                self._r64[slot * s64 + self._off_controllen]
            at = slot * CONTROL_SIZE + CMSG_HEADER  # _link_local, inlined
            cview = self._cview
            if not self._v6 or cview[at] != 0xFE or cview[at + 1] & 0xC0 != 0x80:
                self._c32[slot * (CONTROL_SIZE // 4) + self._ifindex] = 0
        self._queued = j + 1
        return True

    def flush(self) -> int:
        """Send everything queued (one sendmmsg, retried for a partial send)."""
        done = 0
        total = self._queued
        self._queued = 0
        stride = ctypes.sizeof(_MMsgHdr)
        base = ctypes.addressof(self._smsgs)
        controllen = self._off_controllen
        while done < total:
            n = self._lib.sendmmsg(self.fd, base + done * stride, total - done, 0)
            if n <= 0:
                err = ctypes.get_errno()
                if n < 0 and err == errno.EINTR:
                    continue
                at = done * self._s64 + controllen
                if self._s64v[at]:  # the source refused: again from the route's choice
                    self._s64v[at] = 0
                    continue
                done += 1  # skip the datagram the kernel refused (e.g. unreachable)
                continue
            done += n
        return total

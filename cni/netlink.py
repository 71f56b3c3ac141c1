"""Raw rtnetlink for the plugin: links, addresses and routes over one AF_NETLINK socket.

Theory of operation
-------------------
pyroute2 costs ~300 ms to import, thirty times the whole ADD budget, so the
plugin speaks rtnetlink itself with ``struct``: each request is one
``nlmsghdr`` + family header + attributes, sent with ``NLM_F_ACK``; the reply
is read until the ACK (or ``NLMSG_DONE`` for dumps). Errors come back as
negative errno in ``NLMSG_ERROR`` and are raised as ``KernelError``.

A netlink socket is bound to the network namespace that was current when it
was created, so ``Netlink.open_in(netns_fd)`` switches the calling thread
into the container's namespace with ``setns(2)`` (via _ctypes: ``os.setns`` only
exists from Python 3.12), creates the socket and switches straight back. The
plugin itself never runs in the container namespace.

The veth pair is created in one request from the host side with the peer
placed directly into the container namespace (``IFLA_NET_NS_FD``), already
named ``CNI_IFNAME``, with both MACs, the MTU, the bridge master and the host
end up, so a half-made pair is never visible under the wrong name.
"""

from __future__ import annotations

import _socket
import os
import struct

from cni.errors import KernelError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 1, 2, 4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x300, 0x200, 0x400, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 12, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BRPORT_MODE = 4  # hairpin
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NLA_F_NESTED = 0x8000
IFF_UP = 1
AF_UNSPEC, AF_BRIDGE, AF_INET, AF_INET6 = 0, 7, 2, 10
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
CLONE_NEWNET = 0x40000000
ENODEV, EEXIST, ESRCH, EADDRNOTAVAIL = 19, 17, 3, 99

# the kernel caps one dump datagram at ~32 KiB; a bigger buffer only costs an
# mmap/mremap per recv
_RECV_SIZE = 65536
_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ATTR = struct.Struct("=HH")


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = 4 + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes from ``offset`` to the end (the last of a repeated type wins)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


class Link:
    """What the plugin needs to know about a network interface."""

    __slots__ = ("alias", "flags", "index", "kind", "mac", "master", "mtu", "name")

    def __init__(self, index: int, name: str, flags: int, mac: bytes, mtu: int,
                 master: int, kind: str, alias: str = "") -> None:
        self.alias = alias
        self.index = index
        self.name = name
        self.flags = flags
        self.mac = mac
        self.mtu = mtu
        self.master = master
        self.kind = kind


def _parse_link(body: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    attrs = parse_attrs(body, _IFINFO.size)
    kind = ""
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    return Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(), flags,
                attrs.get(IFLA_ADDRESS, b""),
                struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
                struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0,
                kind, attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"))


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def random_mac() -> bytes:
    """A random locally administered unicast MAC."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


_libc_setns: Callable[[int, int], int] | None = None


def _load_setns() -> Callable[[int, int], int]:
    """libc's setns(2) through ``_ctypes`` directly.

    ``import ctypes`` builds its whole type zoo (~3 ms of CPU per exec); one
    function pointer needs only a C int class and a CFuncPtr subclass.
    """
    import _ctypes

    class CInt(_ctypes._SimpleCData if not TYPE_CHECKING  # type: ignore[misc]
               else _ctypes._SimpleCData[int]):
        _type_ = "i"

    class SetnsFn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = CInt
        _argtypes_ = (CInt, CInt)

    handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # NULL: the program
    fn: Callable[[int, int], int] = SetnsFn(_ctypes.dlsym(handle, "setns"))
    return fn


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open on ``fd``."""
    global _libc_setns
    if _libc_setns is None:
        _libc_setns = _load_setns()
    if _libc_setns(fd, CLONE_NEWNET) != 0:
        import _ctypes

        err = _ctypes.get_errno()
        raise KernelError(f"setns into a network namespace failed: {os.strerror(err)}", err)


def write_sysctls(settings: Sequence[tuple[str, str]], netns_fd: int = -1,
                  ) -> list[tuple[str, str]]:
    """Write ``/proc/sys/<key>`` (``net/ipv6/conf/eth0/accept_dad``) = value for each
    setting, in the namespace open on ``netns_fd`` (else the current one): the calling
    thread switches there and back, as ``open_in`` does. A value already in place is
    not rewritten. Returns the (key, reason) of the writes that failed."""
    failed: list[tuple[str, str]] = []
    home = -1
    if netns_fd >= 0:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        setns(netns_fd)
    try:
        for key, value in settings:
            path = "/proc/sys/" + key
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    if os.read(fd, 64).strip() != value.encode():
                        os.lseek(fd, 0, os.SEEK_SET)
                        os.write(fd, value.encode())
                finally:
                    os.close(fd)
            except OSError as e:
                failed.append((key, e.strerror or str(e)))
    finally:
        if home >= 0:
            try:
                setns(home)
            finally:
                os.close(home)
    return failed


class Netlink:
    """A NETLINK_ROUTE socket in one network namespace, with the requests the plugin uses."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    @classmethod
    def open(cls) -> Netlink:
        """A socket in the calling thread's current network namespace."""
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                              NETLINK_ROUTE)
        sock.bind((0, 0))
        return cls(sock)

    @classmethod
    def open_in(cls, netns_fd: int) -> Netlink:
        """A socket in the namespace open on ``netns_fd``; the thread is switched back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(netns_fd)
            try:
                return cls.open()
            finally:
                setns(home)
        finally:
            os.close(home)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(_HDR.pack(_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST,
                                 self.seq, 0) + body)
        return self.seq

    def request(self, msg_type: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send one request with ACK; return reply bodies (for GET/ECHO), raise on error."""
        seq = self._send(msg_type, flags | NLM_F_ACK, body)
        return list(self._replies(seq, what))

    def dump(self, msg_type: int, body: bytes, what: str) -> list[bytes]:
        seq = self._send(msg_type, NLM_F_DUMP, body)
        return list(self._replies(seq, what))

    def _replies(self, seq: int, what: str) -> Iterator[bytes]:
        while True:
            data = self.sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, msg_type, _, mseq, _ = _HDR.unpack_from(data, offset)
                body = data[offset + _HDR.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if msg_type == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise KernelError(f"{what}: {os.strerror(err)}", err)
                    return
                if msg_type == NLMSG_DONE:
                    return
                yield body
            if not data:
                return

    # -- links -------------------------------------------------------------

    def get_link(self, name: str) -> Link | None:
        body = _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
        try:
            replies = self.request(RTM_GETLINK, 0, body, f"look up link {name}")
        except KernelError as e:
            if e.errno == ENODEV:
                return None
            raise
        return _parse_link(replies[0]) if replies else None

    def links(self) -> list[Link]:
        body = _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0)
        return [_parse_link(b) for b in self.dump(RTM_GETLINK, body, "list links")]

    def create_bridge(self, name: str, mtu: int, mac: bytes) -> None:
        """Create bridge ``name`` up (EEXIST from a concurrent ADD is not an error)."""
        body = (_IFINFO.pack(AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, name)
                + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, mac)
                + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
        try:
            self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")
        except KernelError as e:
            if e.errno != EEXIST:
                raise

    def set_up(self, index: int) -> None:
        body = _IFINFO.pack(AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
        self.request(RTM_NEWLINK, 0, body, f"set link {index} up")

    def create_veth(self, host_name: str, host_mac: bytes, peer_name: str, peer_mac: bytes,
                    peer_netns_fd: int, mtu: int, master: int) -> None:
        """Veth pair: ``host_name`` here on bridge ``master``, ``peer_name`` in the netns."""
        # the peer cannot be created up (the kernel answers ENOTCONN): set_up it later
        peer = (_IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer_name)
                + attr(IFLA_ADDRESS, peer_mac) + attr_u32(IFLA_MTU, mtu)
                + attr_u32(IFLA_NET_NS_FD, peer_netns_fd))
        info = attr_str(IFLA_INFO_KIND, "veth") + attr(
            IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER | NLA_F_NESTED, peer))
        body = (_IFINFO.pack(AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, host_name)
                + attr(IFLA_ADDRESS, host_mac) + attr_u32(IFLA_MTU, mtu)
                + attr_u32(IFLA_MASTER, master) + attr(IFLA_LINKINFO | NLA_F_NESTED, info))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body,
                     f"create veth {host_name} / {peer_name}")

    def set_alias(self, index: int, alias: str) -> None:
        """The interface alias (``ip link show`` prints it); the kernel ignores it on create."""
        body = _IFINFO.pack(AF_UNSPEC, 0, index, 0, 0) + attr_str(IFLA_IFALIAS, alias[:255])
        self.request(RTM_NEWLINK, 0, body, f"set alias on link {index}")

    def set_hairpin(self, index: int, on: bool) -> None:
        protinfo = attr(IFLA_BRPORT_MODE, bytes([1 if on else 0]))
        body = (_IFINFO.pack(AF_BRIDGE, 0, index, 0, 0)
                + attr(IFLA_PROTINFO | NLA_F_NESTED, protinfo))
        self.request(RTM_SETLINK, 0, body, f"set hairpin on link {index}")

    def delete_link(self, name: str) -> bool:
        """Delete link ``name``; False if it did not exist."""
        body = _IFINFO.pack(AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
        try:
            self.request(RTM_DELLINK, 0, body, f"delete link {name}")
        except KernelError as e:
            if e.errno == ENODEV:
                return False
            raise
        return True

    # -- addresses and routes ---------------------------------------------

    def addresses(self, index: int, family: int = AF_INET) -> list[tuple[bytes, int, int]]:
        """Addresses of ``family`` on link ``index`` as (packed, prefix length, IFA_F_* flags)."""
        out = []
        for body in self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0), "list addresses"):
            fam, plen, flags, _, idx = _IFADDR.unpack_from(body)
            if idx != index or fam != family:
                continue
            attrs = parse_attrs(body, _IFADDR.size)
            local = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if IFA_FLAGS in attrs:
                flags = struct.unpack("=I", attrs[IFA_FLAGS])[0]
            if local:
                out.append((local, plen, flags))
        return out

    def add_address(self, index: int, addr: bytes, prefixlen: int, broadcast: bytes | None,
                    nodad: bool = False) -> None:
        """Add an address (the family from its length); ``nodad``: usable at once (IPv6)."""
        family = AF_INET6 if len(addr) == 16 else AF_INET
        body = (_IFADDR.pack(family, prefixlen, IFA_F_NODAD if nodad else 0, 0, index)
                + attr(IFA_LOCAL if family == AF_INET else IFA_ADDRESS, addr)
                + (attr(IFA_ADDRESS, addr) if family == AF_INET else b"")
                + (attr(IFA_BROADCAST, broadcast) if broadcast else b""))
        try:
            self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, "add address")
        except KernelError as e:
            if e.errno != EEXIST:
                raise

    def delete_address(self, index: int, addr: bytes, prefixlen: int) -> None:
        family = AF_INET6 if len(addr) == 16 else AF_INET
        body = (_IFADDR.pack(family, prefixlen, 0, 0, index) + attr(IFA_ADDRESS, addr)
                + (attr(IFA_LOCAL, addr) if family == AF_INET else b""))
        try:
            self.request(RTM_DELADDR, 0, body, "delete address")
        except KernelError as e:
            if e.errno != EADDRNOTAVAIL:
                raise

    def add_route(self, dst: bytes, dst_len: int, gateway: bytes, oif: int) -> None:
        """Add a route via ``oif`` next to any the destination already has through other
        interfaces (``ip route append``, as the bridge plugin does), so a second interface
        of a container on the same network gets its own; the very same route already
        there is not an error."""
        family = AF_INET6 if len(gateway) == 16 else AF_INET
        body = (_RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                            RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                + (attr(RTA_DST, dst) if dst_len else b"") + attr(RTA_GATEWAY, gateway)
                + attr_u32(RTA_OIF, oif))
        try:
            self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_APPEND, body, "add route")
        except KernelError as e:
            if e.errno != EEXIST:
                raise

    def routes(self, family: int = AF_INET) -> list[tuple[bytes, int, bytes, int]]:
        """Main-table routes of ``family`` as (dst, dst_len, gateway, oif)."""
        out = []
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        zero = b"\0" * (16 if family == AF_INET6 else 4)
        for reply in self.dump(RTM_GETROUTE, body, "list routes"):
            fam, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(reply)
            if table != RT_TABLE_MAIN or fam != family:
                continue
            attrs = parse_attrs(reply, _RTMSG.size)
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append((attrs.get(RTA_DST, zero), dst_len,
                        attrs.get(RTA_GATEWAY, b""), oif))
        return out

"""The udp backend: TUN ``flannel0`` plus a userspace forwarder, flannel-compatible on the wire.

Kernel state: TUN device ``flannel0`` (no packet-info header) with address
``<subnet>.0/32``, MTU = underlay MTU - 28, and one route for the whole cluster
network via ``flannel0`` (one route per peer when the network is not known).

Wire format (flannel's): each IPv4 packet read from the TUN is sent as the whole
payload of one UDP datagram to ``<peer PublicIP>:<Port>`` (8285); datagrams
received on that port are written to the TUN as they are.

Forwarder: two threads, one per direction, each blocking in ``poll`` on one
descriptor and then draining it; the GIL is released in every system call, so
the directions overlap on two cores. Out: packets read from the TUN back to back
into one buffer; consecutive ones of one size to one peer leave in one
``sendmsg`` with ``UDP_SEGMENT`` (UDP GSO: the kernel cuts them into one datagram
per packet, so the wire format is unchanged). In: the socket has ``UDP_GRO``, so
one ``recvmsg`` may return many same-sized datagrams back to back, cut apart and
written to the TUN one by one. ``WEFT_UDP_OFFLOAD=0`` in flanneld's environment
turns both off (one system call per datagram). The peer table is a dict
``{(subnet int) -> (PublicIP, port)}`` per prefix length, swapped atomically by
``reconcile``. What happens at the edges (TTL decrement, ICMP net-unreachable /
time-exceeded / fragmentation-needed back to the sender, drop reasons) is decided
by the pure ``overlay.backend.udpedge``;
counters are exported through flanneld's ``/metrics`` (``metric_families``).
Still one TUN system call per packet each way (no TUN offloads yet).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from overlay import metrics
from overlay.backend.base import (
    BackendConfigError,
    BackendError,
    ExternalInterface,
    ReconcileReport,
    int_field,
)
from overlay.backend.netlink import Kernel, KernelThread, NetlinkKernel, converge
from overlay.backend.plan import KernelState, Plan, Route, desired_udp
from overlay.backend.udpcrypt import OVERHEAD, SUITE, Crypto, KeyFileError, load_keys
from overlay.backend.udpedge import Drop, egress
from overlay.lease.model import Lease

log = logging.getLogger(__name__)

UDP_OVERHEAD = 28
DEFAULT_UDP_PORT = 8285
TUN_DEVICE = "flannel0"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_BATCH = 64
_SEALED = 0x81  # udpcrypt.MAGIC: the first byte of an encrypted datagram
_SOL_UDP = 17  # IPPROTO_UDP
_UDP_SEGMENT = 103  # linux/udp.h: GSO segment size on send
_UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams
_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS
_GSO_BYTES = 65_000  # one GSO send stays below the 64 KiB IP limit
_POLL_MS = 200

PeerTable = dict[int, dict[int, tuple[str, int]]]  # prefixlen -> {net int -> addr}


@dataclass(frozen=True, slots=True)
class UdpConfig:
    port: int = DEFAULT_UDP_PORT
    key_files: tuple[str, ...] = ()  # Encryption.KeyFile: encrypt when set (first seals)


def parse_config(cfg: Mapping[str, Any]) -> UdpConfig:
    """flannel's udp Backend field: Port (0 = 8285); weft's ``Encryption``:
    ``{"KeyFile": PATH}`` or ``{"KeyFile": [NEW, OLD]}`` during a key roll."""
    port = int_field(cfg, "Port", 0, 0, 65_535) or DEFAULT_UDP_PORT
    enc = cfg.get("Encryption")
    if enc is None:
        return UdpConfig(port=port)
    if not isinstance(enc, Mapping):
        raise BackendConfigError("Encryption", f"must be an object, got {enc!r}")
    files = enc.get("KeyFile")
    paths = [files] if isinstance(files, str) else files
    if not isinstance(paths, list) or not 1 <= len(paths) <= 2 or not all(
            isinstance(p, str) and p.startswith("/") for p in paths):
        raise BackendConfigError("Encryption.KeyFile", "must be an absolute path, or a list "
                                 f"of two during a key roll, got {files!r}")
    return UdpConfig(port=port, key_files=tuple(paths))


def encryption_mismatch(peer: Lease, suite: str) -> str | None:
    """Why ``peer`` cannot talk to us (we seal with ``suite``, "" = plaintext), or None."""
    theirs = peer.backend_data.get("Encryption", "") if peer.backend_data else ""
    if theirs == suite:
        return None
    if not suite:
        return (f"peer {peer.public_ip} ({peer.subnet}) encrypts ({theirs}) and this host does "
                "not: refused (set the same Backend.Encryption on every host)")
    if not theirs:
        return (f"peer {peer.public_ip} ({peer.subnet}) does not encrypt and this host does: "
                "refused, never falling back to plaintext")
    return (f"peer {peer.public_ip} ({peer.subnet}) encrypts with {theirs}, this host with "
            f"{suite}: refused")


def open_tun(name: str) -> int:
    """Open (creating) TUN device ``name`` without packet info; returns the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def _accept_local(dev: str) -> None:
    """Let the kernel take the ICMP errors the forwarder writes to the TUN: they come
    from the TUN's own address, which the kernel drops as martian unless
    ``accept_local`` is set on the device."""
    path = f"/proc/sys/net/ipv4/conf/{dev}/accept_local"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        log.warning("udp: cannot set %s (%s): ICMP errors to local senders will be lost",
                    path, exc)


def build_table(peers: Sequence[Lease], own: Lease | None, port: int,
                suite: str | None = None) -> PeerTable:
    """The forwarder's peer table; with ``suite`` (ours, "" = plaintext) peers that
    disagree on encryption are left out (``encryption_mismatch`` says why)."""
    table: PeerTable = {}
    for p in peers:
        if p.backend_type not in ("", "udp") or (own is not None and p.subnet == own.subnet):
            continue
        if suite is not None and encryption_mismatch(p, suite) is not None:
            continue
        table.setdefault(p.subnet.prefixlen, {})[int(p.subnet.network_address)] = (
            str(p.public_ip), port)
    return table


class Forwarder:
    """TUN <-> UDP packet pump (see module doc); ``table`` may be replaced at any time.

    ``source`` is the TUN's address as an int (ICMP errors come from it; 0 = none yet),
    ``path_mtu`` the largest inner packet the underlay carries unfragmented."""

    def __init__(self, tun: int, sock: socket.socket, path_mtu: int = 65_535,
                 offload: bool = False, crypto: Crypto | None = None) -> None:
        self.tun = tun
        self.sock = sock
        self.table: PeerTable = {}
        self.source = 0
        self.path_mtu = path_mtu
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.icmp_sent = 0
        self.crypto = crypto  # seal/open every datagram
        self.gso = offload  # UDP_SEGMENT sends (off again if the kernel refuses)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._tun_to_udp, name="udp-tx", daemon=True),
                         threading.Thread(target=self._udp_to_tun, name="udp-rx", daemon=True)]

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def _count(self, local: dict[Drop, int]) -> None:
        for reason, n in local.items():
            if n:
                self.drops[reason] += n
                local[reason] = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2)

    def _tun_to_udp(self) -> None:
        """Read packets from the TUN; consecutive ones of one size to one peer leave in
        one ``sendmsg`` with ``UDP_SEGMENT`` (the kernel cuts them into one datagram per
        packet: flannel's wire format), up to ``_GSO_SEGMENTS`` or 64 KiB at a time."""
        poller = select.poll()
        poller.register(self.tun, select.POLLIN)
        readv, write, tun = os.readv, os.write, self.tun
        crypto = self.crypto
        buf = bytearray(_GSO_BYTES + 65536)  # a batch of packets, back to back
        view = memoryview(buf)
        scratch = memoryview(bytearray(65536))  # with encryption: the plaintext read
        sent = nbytes = icmp = 0
        drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        batch_addr: tuple[str, int] | None = None
        off = seg = count = inner = 0  # inner: plaintext bytes in the batch

        def flush() -> None:
            nonlocal sent, nbytes, off, count, inner, batch_addr
            if count == 0 or batch_addr is None:
                return
            try:
                if count == 1:
                    self.sock.sendto(view[:off], batch_addr)
                else:
                    self.sock.sendmsg([view[:off]], [(_SOL_UDP, _UDP_SEGMENT,
                                                      struct.pack("=H", seg))], 0, batch_addr)
                sent += count
                nbytes += inner
            except OSError as exc:
                if count > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    log.warning("udp: no UDP GSO here (%s); sending one datagram per call",
                                exc)
                    self.gso = False
                    for o in range(0, off, seg):  # resend this batch one by one
                        try:
                            self.sock.sendto(view[o:min(o + seg, off)], batch_addr)
                            sent += 1
                        except OSError:
                            drops[Drop.SEND_ERROR] += 1
                    nbytes += inner
                else:
                    drops[Drop.SEND_ERROR] += count
                    log.debug("udp: send to %s: %s", batch_addr, exc)
            off = count = inner = 0
            batch_addr = None

        while not self._stop.is_set():
            self.tx_packets += sent
            self.tx_bytes += nbytes
            self.icmp_sent += icmp
            self._count(drops)
            sent = nbytes = icmp = 0
            if not poller.poll(_POLL_MS):
                continue
            table, source, path_mtu = self.table, self.source, self.path_mtu
            masks = [((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, nets)
                     for plen, nets in table.items()]
            gso = self.gso
            for _ in range(_BATCH):
                pkt = scratch if crypto is not None else view[off:off + 65536]
                try:
                    n = readv(tun, [pkt])
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    log.debug("udp: tun read: %s", exc)
                    break
                addr = None
                if n >= 20:
                    dst = int.from_bytes(pkt[16:20], "big")
                    for mask, nets in masks:
                        addr = nets.get(dst & mask)
                        if addr is not None:
                            break
                reason, answer = egress(pkt, n, addr is not None, path_mtu, source)
                if reason is not None or addr is None:
                    drops[reason or Drop.NO_ROUTE] += 1
                    if answer is not None:
                        try:
                            write(tun, answer)
                            icmp += 1
                        except OSError as exc:
                            log.debug("udp: tun write (icmp): %s", exc)
                    continue
                plain_n = n
                if crypto is not None:  # sealed datagrams batch like plain ones
                    sealed = crypto.seal(pkt[:n], addr[0])
                    n = len(sealed)
                    if count and (addr != batch_addr or n > seg):
                        flush()
                    view[off:off + n] = sealed
                elif count and (addr != batch_addr or n > seg):  # does not join the batch
                    tmp = bytes(pkt[:n])
                    flush()
                    view[:n] = tmp
                if count == 0:
                    batch_addr, seg = addr, n
                off += n
                count += 1
                inner += plain_n
                # a shorter packet ends a GSO batch (only the last segment may be short)
                if not gso or n < seg or count >= _GSO_SEGMENTS or off + seg > _GSO_BYTES:
                    flush()
            flush()

    def _udp_to_tun(self) -> None:
        """Datagrams to the TUN; with ``UDP_GRO`` one ``recvmsg`` may carry many
        same-sized datagrams back to back (the kernel says their size), cut apart here."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        recvmsg_into, write, tun = self.sock.recvmsg_into, os.write, self.tun
        crypto = self.crypto
        buf = bytearray(65536)
        view = memoryview(buf)
        bufs = [buf]
        cmsg_space = socket.CMSG_SPACE(4)
        received = nbytes = 0
        drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        while not self._stop.is_set():
            self.rx_packets += received
            self.rx_bytes += nbytes
            self._count(drops)
            received = nbytes = 0
            if not poller.poll(_POLL_MS):
                continue
            for _ in range(_BATCH):
                try:
                    n, anc, _flags, src = recvmsg_into(bufs, cmsg_space)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    log.debug("udp: recv: %s", exc)
                    break
                seg = n
                for level, kind, data in anc:
                    if level == _SOL_UDP and kind == _UDP_GRO and len(data) >= 2:
                        seg = int.from_bytes(data[:4] if len(data) >= 4 else data[:2],
                                             sys.byteorder) or n
                for o in range(0, n, seg):
                    m = min(seg, n - o)
                    packet: bytes | memoryview = view[o:o + m]
                    if crypto is not None:
                        opened = crypto.open(packet, src[0])
                        if isinstance(opened, Drop):
                            drops[opened] += 1
                            continue
                        packet, m = opened, len(opened)
                    elif m and buf[o] == _SEALED:
                        drops[Drop.ENCRYPTED] += 1
                        continue
                    if m < 20 or packet[0] >> 4 != 4:
                        drops[Drop.MALFORMED] += 1
                        continue
                    try:
                        write(tun, packet)
                        received += 1
                        nbytes += m
                    except OSError as exc:
                        drops[Drop.TUN_WRITE_ERROR] += 1
                        log.debug("udp: tun write: %s", exc)

    def families(self) -> list[metrics.Family]:
        """The forwarder's counters as Prometheus families (rendered by flanneld's /metrics)."""
        return [
            metrics.counter("weft_udp_packets_total",
                            "Inner packets moved by the udp forwarder, by direction "
                            "(tx: TUN to the underlay, rx: underlay to TUN).",
                            {("tx",): self.tx_packets, ("rx",): self.rx_packets},
                            labels=("direction",)),
            metrics.counter("weft_udp_bytes_total",
                            "Inner packet bytes moved by the udp forwarder, by direction.",
                            {("tx",): self.tx_bytes, ("rx",): self.rx_bytes},
                            labels=("direction",)),
            metrics.counter("weft_udp_dropped_total",
                            "Packets the udp forwarder dropped, by reason.",
                            {(r.value,): n for r, n in self.drops.items()},
                            labels=("reason",)),
            metrics.counter("weft_udp_icmp_sent_total",
                            "ICMP errors (unreachable, time exceeded, fragmentation "
                            "needed) the udp forwarder sent back.", self.icmp_sent),
        ]


class UdpBackend:
    """flannel's udp data path (TUN + userspace encapsulation)."""

    name = "udp"

    def __init__(self, config: UdpConfig, ext: ExternalInterface, *,
                 network: ipaddress.IPv4Network | None = None,
                 network6: ipaddress.IPv6Network | None = None,  # unused: IPv4-only
                 kernel: KernelThread | None = None) -> None:
        self.config = config
        self.ext = ext
        self.network = network
        self.device = TUN_DEVICE
        self._k = kernel or KernelThread(NetlinkKernel)
        self._own: Lease | None = None
        self._fwd: Forwarder | None = None
        self._tun = -1
        self._sock: socket.socket | None = None

    @property
    def mtu(self) -> int:
        return self.ext.mtu - UDP_OVERHEAD - (OVERHEAD if self.config.key_files else 0)

    @property
    def suite(self) -> str:
        """The encryption this host publishes and expects ("" = plaintext, flannel's)."""
        return SUITE if self.config.key_files else ""

    async def prepare_v6(self) -> Mapping[str, Any]:
        raise BackendError("the udp backend is IPv4-only, as flannel's: use vxlan or host-gw "
                           "with EnableIPv6")

    async def prepare(self) -> Mapping[str, Any]:
        if self._fwd is None:
            crypto = None
            if self.config.key_files:
                try:
                    keys = load_keys(self.config.key_files)
                except KeyFileError as exc:
                    raise BackendError(f"udp: {exc}") from None
                crypto = Crypto(keys, self.ext.public_ip)
                log.info("udp: encrypting (%s, %d key file(s))", SUITE, len(keys))
            try:
                self._tun = open_tun(self.device)
            except OSError as exc:
                raise BackendError(f"udp: cannot open TUN {self.device}: {exc}") from None
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                sock.bind((str(self.ext.ip), self.config.port))
            except OSError as exc:
                sock.close()
                os.close(self._tun)
                raise BackendError(
                    f"udp: cannot bind {self.ext.ip}:{self.config.port}: {exc}") from None
            sock.setblocking(False)
            offload = os.environ.get("WEFT_UDP_OFFLOAD", "1") != "0"
            if offload:
                try:
                    sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                except OSError as exc:  # kernels before 5.0
                    log.info("udp: no UDP GRO (%s); one datagram per receive", exc)
            self._sock = sock
            self._fwd = Forwarder(self._tun, sock, self.mtu, offload=offload, crypto=crypto)
            self._fwd.start()
            log.info("udp: %s open, forwarding on %s:%s", self.device, self.ext.ip,
                     self.config.port)
        mtu, dev = self.mtu, self.device
        _accept_local(dev)

        def setup(k: Kernel) -> None:
            link = k.link(dev)
            if link is None:
                raise BackendError(f"udp: {dev} vanished")
            k.set_link(link.index, mtu=mtu, up=True)

        await self._k.run(setup)
        return {"Encryption": SUITE} if self.config.key_files else {}

    async def attach(self, own: Lease) -> None:
        self._own = own
        if self._fwd is not None:
            self._fwd.source = int(own.subnet.network_address)
        want = [ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")]
        dev = self.device

        def address(k: Kernel) -> None:
            link = k.link(dev)
            if link is None:
                raise BackendError(f"udp: {dev} vanished")
            if k.set_addresses(link.index, want):
                log.info("%s addressed %s", dev, want[0])

        await self._k.run(address)

    def _reconcile(self, k: Kernel, peers: Sequence[Lease]) -> ReconcileReport:
        table = build_table(peers, self._own, self.config.port, self.suite)
        if self._fwd is not None:
            self._fwd.table = table
        refused = tuple(why for p in peers if p.backend_type in ("", "udp")
                        and (self._own is None or p.subnet != self._own.subnet)
                        and (why := encryption_mismatch(p, self.suite)) is not None)
        count = sum(len(v) for v in table.values())
        if self.network is not None:
            plan = replace(desired_udp(self.network, self.device), peers=count)
        else:
            plan = Plan(KernelState(routes=frozenset(
                Route(ipaddress.IPv4Network((n, pl)), self.device)
                for pl, nets in table.items() for n in nets)), peers=count)
        report = converge(k, plan, None, self.network, "udp")
        # refusals are reported as errors: flanneld logs each one (once) loudly
        return replace(report, errors=report.errors + refused) if refused else report

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

    def metric_families(self) -> list[metrics.Family]:
        """The forwarder's counters (none before ``prepare``)."""
        return self._fwd.families() if self._fwd is not None else []

    async def close(self) -> None:
        """Stops the forwarder; the TUN device (and its routes) go with its descriptor."""
        if self._fwd is not None:
            self._fwd.stop()
            self._fwd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun >= 0:
            os.close(self._tun)
            self._tun = -1
        self._k.close()


BACKEND_CLASS = UdpBackend

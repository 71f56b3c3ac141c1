"""The udp backend: TUN ``flannel0`` plus a userspace forwarder, flannel-compatible on the wire.

Kernel state: TUN device ``flannel0`` (no packet-info header) with address
``<subnet>.0/32``, MTU = underlay MTU - 28, and one route for the whole cluster
network via ``flannel0`` (one route per peer when the network is not known).

Wire format (flannel's): each IPv4 packet read from the TUN is sent as the whole
payload of one UDP datagram to ``<peer PublicIP>:<Port>`` (8285); datagrams
received on that port are written to the TUN as they are.

Forwarder: two threads, one per direction, each blocking in ``poll`` on one
descriptor and then draining it (``os.read``/``sendto``, ``recv``/``os.write``;
the GIL is released in every system call, so the directions overlap on two
cores). The peer table is a dict ``{(subnet int) -> (PublicIP, port)}`` per
prefix length, swapped atomically by ``reconcile``; packets to unknown
subnets are dropped and counted. Slow by nature (two user copies per packet):
flannel calls it debugging-only.
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
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from overlay.backend.base import BackendError, ExternalInterface, ReconcileReport, int_field
from overlay.backend.netlink import Kernel, KernelThread, NetlinkKernel, converge
from overlay.backend.plan import KernelState, Plan, Route, desired_udp
from overlay.lease.model import Lease

log = logging.getLogger(__name__)

UDP_OVERHEAD = 28
DEFAULT_UDP_PORT = 8285
TUN_DEVICE = "flannel0"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_BATCH = 64
_POLL_MS = 200

PeerTable = dict[int, dict[int, tuple[str, int]]]  # prefixlen -> {net int -> addr}


@dataclass(frozen=True, slots=True)
class UdpConfig:
    port: int = DEFAULT_UDP_PORT


def parse_config(cfg: Mapping[str, Any]) -> UdpConfig:
    """flannel's udp Backend field: Port (0 = 8285)."""
    return UdpConfig(port=int_field(cfg, "Port", 0, 0, 65_535) or DEFAULT_UDP_PORT)


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


def build_table(peers: Sequence[Lease], own: Lease | None, port: int) -> PeerTable:
    table: PeerTable = {}
    for p in peers:
        if p.backend_type not in ("", "udp") or (own is not None and p.subnet == own.subnet):
            continue
        table.setdefault(p.subnet.prefixlen, {})[int(p.subnet.network_address)] = (
            str(p.public_ip), port)
    return table


class Forwarder:
    """TUN <-> UDP packet pump (see module doc); ``table`` may be replaced at any time."""

    def __init__(self, tun: int, sock: socket.socket) -> None:
        self.tun = tun
        self.sock = sock
        self.table: PeerTable = {}
        self.sent = 0
        self.received = 0
        self.tx_dropped = 0  # no peer for the destination, bad packet, send failed
        self.rx_dropped = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._tun_to_udp, name="udp-tx", daemon=True),
                         threading.Thread(target=self._udp_to_tun, name="udp-rx", daemon=True)]

    @property
    def dropped(self) -> int:
        return self.tx_dropped + self.rx_dropped

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2)

    def _tun_to_udp(self) -> None:
        poller = select.poll()
        poller.register(self.tun, select.POLLIN)
        readv, sendto, tun = os.readv, self.sock.sendto, self.tun
        buf = bytearray(65536)  # reused: no allocation per packet
        view = memoryview(buf)
        bufs = [buf]
        sent = dropped = 0
        while not self._stop.is_set():
            self.sent, self.tx_dropped = self.sent + sent, self.tx_dropped + dropped
            sent = dropped = 0
            if not poller.poll(_POLL_MS):
                continue
            table = self.table
            masks = [((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, nets)
                     for plen, nets in table.items()]
            for _ in range(_BATCH):
                try:
                    n = readv(tun, bufs)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    log.debug("udp: tun read: %s", exc)
                    break
                if n < 20 or buf[0] >> 4 != 4:
                    dropped += 1
                    continue
                dst = int.from_bytes(buf[16:20], "big")
                addr = None
                for mask, nets in masks:
                    addr = nets.get(dst & mask)
                    if addr is not None:
                        break
                if addr is None:
                    dropped += 1
                    continue
                try:
                    sendto(view[:n], addr)
                    sent += 1
                except OSError as exc:
                    dropped += 1
                    log.debug("udp: send to %s: %s", addr, exc)

    def _udp_to_tun(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        recv_into, write, tun = self.sock.recv_into, os.write, self.tun
        buf = bytearray(65536)
        view = memoryview(buf)
        received = dropped = 0
        while not self._stop.is_set():
            self.received, self.rx_dropped = self.received + received, self.rx_dropped + dropped
            received = dropped = 0
            if not poller.poll(_POLL_MS):
                continue
            for _ in range(_BATCH):
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    log.debug("udp: recv: %s", exc)
                    break
                if n < 20 or buf[0] >> 4 != 4:
                    dropped += 1
                    continue
                try:
                    write(tun, view[:n])
                    received += 1
                except OSError as exc:
                    dropped += 1
                    log.debug("udp: tun write: %s", exc)


class UdpBackend:
    """flannel's udp data path (TUN + userspace encapsulation)."""

    name = "udp"

    def __init__(self, config: UdpConfig, ext: ExternalInterface, *,
                 network: ipaddress.IPv4Network | None = None,
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
        return self.ext.mtu - UDP_OVERHEAD

    async def prepare(self) -> Mapping[str, Any]:
        if self._fwd is None:
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
            self._sock = sock
            self._fwd = Forwarder(self._tun, sock)
            self._fwd.start()
            log.info("udp: %s open, forwarding on %s:%s", self.device, self.ext.ip,
                     self.config.port)
        mtu, dev = self.mtu, self.device

        def setup(k: Kernel) -> None:
            link = k.link(dev)
            if link is None:
                raise BackendError(f"udp: {dev} vanished")
            k.set_link(link.index, mtu=mtu, up=True)

        await self._k.run(setup)
        return {}

    async def attach(self, own: Lease) -> None:
        self._own = own
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
        table = build_table(peers, self._own, self.config.port)
        if self._fwd is not None:
            self._fwd.table = table
        count = sum(len(v) for v in table.values())
        if self.network is not None:
            plan = replace(desired_udp(self.network, self.device), peers=count)
        else:
            plan = Plan(KernelState(routes=frozenset(
                Route(ipaddress.IPv4Network((n, pl)), self.device)
                for pl, nets in table.items() for n in nets)), peers=count)
        return converge(k, plan, None, self.network, "udp")

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        snapshot = list(peers)
        return await self._k.run(lambda k: self._reconcile(k, snapshot))

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

"""The udp backend: TUN ``flannel0`` plus a userspace forwarder, flannel-compatible on the wire.

Kernel state: TUN device ``flannel0`` (no packet-info header) with address
``<subnet>.0/32``, MTU = underlay MTU - 28, and one route for the whole cluster
network via ``flannel0`` (one route per peer when the network is not known).

Wire format (flannel's): each IPv4 packet read from the TUN is sent as the whole
payload of one UDP datagram to ``<peer PublicIP>:<Port>`` (8285); datagrams
received on that port are written to the TUN as they are. Between weft hosts that
both publish ``"Chunks": "v1"`` in their lease's BackendData, TCP super-packets
travel as weft chunks instead (``udpgso``: no segmenting, no checksums in Python);
everything else, and every datagram to a flannel host, stays in flannel's format.

Forwarder: with offloads, one thread waiting on the TUN and the socket at once
(``_vnet_loop``: after a write to the TUN it reads the TUN again at once, for the
ACK that write usually caused); without, two threads, one per direction, each
blocking in ``poll`` on one descriptor and then draining it. With offloads (the default;
``WEFT_UDP_OFFLOAD=0`` in flanneld's environment turns them all off) the TUN has
``IFF_VNET_HDR`` + TSO4/CSUM: one read returns a TCP super-packet of up to 64 KiB,
which leaves as chunks or as MSS-sized segments (``udpgso.segment``) in one or two
``sendmsg`` calls with ``UDP_SEGMENT`` (UDP GSO); other packets read back to back
to one peer batch the same way. In: the socket has ``UDP_GRO``, so one ``recvmsg``
returns many same-sized datagrams; chunks are reassembled, and consecutive flannel
segments of one TCP flow joined (``udpgso.coalesce``), into one super-packet per
TUN write. The peer table is a dict ``{(subnet int) -> (PublicIP, port)}`` per
prefix length, swapped atomically by ``reconcile``. What happens at the edges (TTL
decrement, ICMP net-unreachable / time-exceeded / fragmentation-needed back to the
sender, drop reasons) is decided by the pure ``overlay.backend.udpedge``; counters
are exported through flanneld's ``/metrics`` (``metric_families``).
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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from overlay.backend.base import BackendError, ExternalInterface, ReconcileReport
from overlay.backend.udpconfig import DEFAULT_UDP_PORT as DEFAULT_UDP_PORT
from overlay.backend.udpconfig import UdpConfig, cpu_problem
from overlay.backend.udpconfig import parse_config as parse_config  # BACKENDS' contract

if (_cpu := cpu_problem()) is not None:  # numpy would die with SIGILL on import
    raise BackendError(_cpu)

import numpy as np

from overlay import metrics
from overlay.backend import udpgso
from overlay.backend.netlink import Kernel, KernelThread, NetlinkKernel, converge
from overlay.backend.plan import KernelState, Plan, Route, desired_udp
from overlay.backend.udpcrypt import OVERHEAD, SUITE, Crypto, KeyFileError, load_keys
from overlay.backend.udpedge import Drop, egress
from overlay.lease.model import Lease

log = logging.getLogger(__name__)

UDP_OVERHEAD = 28
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
_UDP_MAX = 65_507  # the largest UDP payload (one GSO send)
_POLL_MS = 200
_KEY_CHECK_S = 1.0  # how often the key files are looked at
_CRASH_LOG_S = 10.0  # at most one traceback this often when a forwarder bug repeats
_PLAIN_VNET = udpgso.vnet_header()  # no offload asked for this packet

PeerTable = dict[int, dict[int, tuple[str, int]]]  # prefixlen -> {net int -> addr}


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


def open_tun(name: str, vnet: bool = False) -> int:
    """Open (creating) TUN device ``name`` without packet info; returns the fd. With
    ``vnet``: ``IFF_VNET_HDR`` and the CSUM + TSO4 offloads (``udpgso``)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = _IFF_TUN | _IFF_NO_PI | (udpgso.IFF_VNET_HDR if vnet else 0)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if vnet:
            fcntl.ioctl(fd, udpgso.TUNSETOFFLOAD, udpgso.TUN_F_CSUM | udpgso.TUN_F_TSO4)
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


def chunk_peers(peers: Sequence[Lease]) -> frozenset[str]:
    """The PublicIPs of peers that take weft's chunked super-packets (their lease's
    BackendData says ``"Chunks": "v1"``); the others get flannel's format."""
    return frozenset(str(p.public_ip) for p in peers
                     if p.backend_data and p.backend_data.get("Chunks") == udpgso.CHUNKS)


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


class _Batch:
    """Datagrams to one peer, back to back, leaving in one ``sendmsg`` with
    ``UDP_SEGMENT`` (the kernel cuts them into one datagram each: flannel's wire
    format), up to ``_GSO_SEGMENTS`` or ~64 KiB at a time; only the last may be short."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self.buf = bytearray(_GSO_BYTES + 65536)
        self.view = memoryview(self.buf)
        self.addr: tuple[str, int] | None = None
        self.off = self.seg = self.count = self.inner = 0  # inner: plaintext bytes
        self.sent = self.nbytes = 0  # datagrams and inner bytes out, since last taken
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)

    def drops_pending(self) -> bool:
        return any(self.drops.values())

    def add(self, data: bytes | memoryview, plain: int, addr: tuple[str, int]) -> None:
        n = len(data)
        if self.count and (addr != self.addr or n > self.seg):  # does not join the batch
            self.flush()
        off = self.off
        self.view[off:off + n] = data
        if self.count == 0:
            self.addr, self.seg = addr, n
        self.off = off + n
        self.count += 1
        self.inner += plain
        if (not self.fwd.gso or n < self.seg or self.count >= _GSO_SEGMENTS
                or self.off + self.seg > _GSO_BYTES):
            self.flush()

    def flush(self) -> None:
        if self.count and self.addr is not None:
            self.send(self.view[:self.off], self.seg, self.count, self.inner, self.addr)
        self.off = self.count = self.inner = 0
        self.addr = None

    def send(self, data: memoryview, seg: int, count: int, inner: int,
             addr: tuple[str, int]) -> None:
        """``count`` datagrams of ``seg`` bytes (the last maybe shorter) in one call."""
        sock = self.fwd.sock
        try:
            if count == 1:
                sock.sendto(data, addr)
            else:
                sock.sendmsg([data], [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", seg))], 0, addr)
            self.sent += count
            self.nbytes += inner
        except OSError as exc:
            if count > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                log.warning("udp: no UDP GSO here (%s); sending one datagram per call", exc)
                self.fwd.gso = False
                for o in range(0, len(data), seg):  # resend this batch one by one
                    try:
                        sock.sendto(data[o:o + seg], addr)
                        self.sent += 1
                    except OSError:
                        self.drops[Drop.SEND_ERROR] += 1
                self.nbytes += inner
            else:
                self.drops[Drop.SEND_ERROR] += count
                log.debug("udp: send to %s: %s", addr, exc)

    def send_run(self, data: memoryview, seg: int, count: int, inner: int,
                 addr: tuple[str, int]) -> None:
        """Segments already back to back (``udpgso.segment``'s output): sent in as few
        calls as UDP GSO allows, after what is pending."""
        self.flush()
        if not self.fwd.gso:
            for o in range(0, len(data), seg):
                self.send(data[o:o + seg], seg, 1, min(seg, len(data) - o), addr)
            return
        step = max(1, min(_GSO_SEGMENTS, _UDP_MAX // seg))
        total = len(data)
        for first in range(0, count, step):
            o, e = first * seg, min((first + step) * seg, total)
            c = min(step, count - first)
            self.send(data[o:e], seg, c, inner * (e - o) // total if c < count else inner, addr)


def _stamp(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _lookup(masks: list[tuple[int, dict[int, tuple[str, int]]]],
            dst: int) -> tuple[str, int] | None:
    for mask, nets in masks:
        addr = nets.get(dst & mask)
        if addr is not None:
            return addr
    return None


class Forwarder:
    """TUN <-> UDP packet pump (see module doc); ``table`` may be replaced at any time.

    ``source`` is the TUN's address as an int (ICMP errors come from it; 0 = none yet),
    ``path_mtu`` the largest inner packet the underlay carries unfragmented; ``vnet``:
    the TUN was opened with ``IFF_VNET_HDR`` (and offloads: ``udpgso``)."""

    def __init__(self, tun: int, sock: socket.socket, path_mtu: int = 65_535,
                 offload: bool = False, crypto: Crypto | None = None,
                 vnet: bool = False, key_files: Sequence[str] = ()) -> None:
        self.tun = tun
        self.sock = sock
        self.table: PeerTable = {}
        self.source = 0
        self.path_mtu = path_mtu
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.icmp_sent = 0
        # super-packets moved whole: (direction, kind) -> count (see ``families``)
        self.offload: dict[tuple[str, ...], int] = dict.fromkeys(
            (("tx", "chunked"), ("tx", "segmented"), ("rx", "reassembled"), ("rx", "coalesced")),
            0)
        self.crypto = crypto  # seal/open every datagram
        self.key_files = tuple(key_files)  # re-read when they change (a roll, no restart)
        self.key_reloads = 0
        self._key_stamp = _stamp(self.key_files)
        self._key_checked = time.monotonic()
        self.gso = offload  # UDP_SEGMENT sends (off again if the kernel refuses)
        self.vnet = vnet
        self.chunk_peers: frozenset[str] = frozenset()  # PublicIPs taking weft chunks
        self._stop = threading.Event()
        self._crash_logged = -_CRASH_LOG_S
        loops = [("udp", self._vnet_loop)] if vnet else [("udp-tx", self._tun_to_udp),
                                                         ("udp-rx", self._udp_to_tun)]
        self._threads = [threading.Thread(target=self._guarded, args=(loop,), name=name,
                                          daemon=True) for name, loop in loops]

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def _count(self, local: dict[Drop, int]) -> None:
        for reason, n in local.items():
            if n:
                self.drops[reason] += n
                local[reason] = 0

    def _take_tx(self, batch: _Batch, icmp: int) -> None:
        if self.key_files and time.monotonic() - self._key_checked >= _KEY_CHECK_S:
            self._check_keys()
        if not (batch.sent or icmp or batch.drops_pending()):
            return
        self.tx_packets += batch.sent
        self.tx_bytes += batch.nbytes
        self.icmp_sent += icmp
        batch.sent = batch.nbytes = 0
        self._count(batch.drops)

    def _check_keys(self) -> None:
        """Re-read the key files if they changed (mtime, size or inode); keeps the
        current keys when they cannot be read (e.g. half written)."""
        self._key_checked = time.monotonic()
        stamp = _stamp(self.key_files)
        if stamp == self._key_stamp or self.crypto is None:
            return
        try:
            keys = load_keys(self.key_files)
        except KeyFileError as exc:
            log.warning("udp: key files changed but cannot be used (%s); keeping the "
                        "current keys", exc)
            return
        self._key_stamp = stamp
        resealed = self.crypto.rekey(keys)
        self.key_reloads += 1
        log.info("udp: key files re-read: %d key(s)%s", len(keys),
                 ", sealing with the first one (new session)" if resealed else "")

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run ``loop`` until it returns (stopped, or its descriptor closed). An
        exception is a forwarder bug some input hit: it is counted (``internal_error``)
        and logged (at most every ``_CRASH_LOG_S``), and the loop starts over, so one
        bad packet never leaves the data path dead until flanneld restarts."""
        while not self._stop.is_set():
            try:
                loop()
                return
            except Exception:
                self.drops[Drop.INTERNAL] += 1
                now = time.monotonic()
                if now - self._crash_logged >= _CRASH_LOG_S:
                    self._crash_logged = now
                    log.exception("udp: forwarder error (what it was handling is dropped; "
                                  "forwarding goes on; please report this)")

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2)

    def _masks(self) -> list[tuple[int, dict[int, tuple[str, int]]]]:
        return [((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, nets)
                for plen, nets in self.table.items()]

    def _tun_to_udp(self) -> None:
        """Plain TUN: one packet per read; consecutive ones of one size to one peer
        leave in one ``UDP_SEGMENT`` send (``_Batch``)."""
        poller = select.poll()
        poller.register(self.tun, select.POLLIN)
        readv, write, tun = os.readv, os.write, self.tun
        crypto = self.crypto
        batch = _Batch(self)
        drops = batch.drops
        scratch = memoryview(bytearray(65536))
        icmp = 0
        while not self._stop.is_set():
            self._take_tx(batch, icmp)
            icmp = 0
            if not poller.poll(_POLL_MS):
                continue
            masks, source, path_mtu = self._masks(), self.source, self.path_mtu
            for _ in range(_BATCH):
                pkt = scratch
                try:
                    n = readv(tun, [pkt])
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    log.debug("udp: tun read: %s", exc)
                    break
                addr = _lookup(masks, int.from_bytes(pkt[16:20], "big")) if n >= 20 else None
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
                batch.add(crypto.seal(pkt[:n], addr[0]) if crypto is not None else pkt[:n],
                          n, addr)
            batch.flush()

    def _vnet_loop(self) -> None:
        """With TUN offloads, one thread serves both directions: it waits on the TUN and
        the socket at once, and after writing to the TUN reads it again at once (the ACK
        a container sends for what it just got is usually there already), so a round
        trip costs fewer wake-ups and no GIL hand-over between threads."""
        tx, rx = _VnetTx(self), _VnetRx(self)
        poller = select.poll()
        poller.register(self.tun, select.POLLIN)
        sfd = self.sock.fileno()
        poller.register(sfd, select.POLLIN)
        while not self._stop.is_set():
            tx.sync()
            rx.sync()
            for fd, _ in poller.poll(_POLL_MS):
                if fd == sfd and not rx.drain():
                    return
                if not tx.drain():
                    return

    def _receive_batch(self, bufs: list[bytearray],
                       cmsg_space: int) -> Iterator[tuple[int, int, str]]:
        """(bytes, datagram size, source address) of up to ``_BATCH`` receives, until the
        socket is drained; with ``UDP_GRO`` one receive may carry many same-sized
        datagrams back to back (the kernel says their size). Raises EOFError once the
        socket is closed."""
        recvmsg_into = self.sock.recvmsg_into
        for _ in range(_BATCH):
            try:
                n, anc, _flags, src = recvmsg_into(bufs, cmsg_space)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise EOFError from None
                log.debug("udp: recv: %s", exc)
                return
            seg = n
            for level, kind, data in anc:
                if level == _SOL_UDP and kind == _UDP_GRO and len(data) >= 2:
                    seg = int.from_bytes(data[:4] if len(data) >= 4 else data[:2],
                                         sys.byteorder) or n
            yield n, seg, src[0]

    def _udp_to_tun(self) -> None:
        """Datagrams to a plain TUN, one packet per write."""
        write, tun = os.write, self.tun
        buf = bytearray(65536)
        view = memoryview(buf)
        counts = [0, 0]  # packets, bytes since last synced
        drops: dict[Drop, int] = dict.fromkeys(Drop, 0)

        def sync() -> None:
            self.rx_packets += counts[0]
            self.rx_bytes += counts[1]
            counts[0] = counts[1] = 0
            self._count(drops)

        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        bufs, cmsg_space = [buf], socket.CMSG_SPACE(4)
        while not self._stop.is_set():
            sync()
            if not poller.poll(_POLL_MS):
                continue
            try:
                for n, seg, src in self._receive_batch(bufs, cmsg_space):
                    for o in range(0, n, seg):
                        packet = self._inner(view[o:o + min(seg, n - o)], src, drops)
                        if packet is None:
                            continue
                        try:
                            write(tun, packet)
                            counts[0] += 1
                            counts[1] += len(packet)
                        except OSError as exc:
                            drops[Drop.TUN_WRITE_ERROR] += 1
                            log.debug("udp: tun write: %s", exc)
            except EOFError:
                return

    def _inner(self, datagram: memoryview, src: str,
               drops: dict[Drop, int]) -> bytes | memoryview | None:
        """The inner packet of one datagram (opened when encrypting), or None (counted)."""
        packet: bytes | memoryview = datagram
        if self.crypto is not None:
            opened = self.crypto.open(datagram, src)
            if isinstance(opened, Drop):
                drops[opened] += 1
                return None
            packet = opened
        elif len(datagram) and datagram[0] == _SEALED:
            drops[Drop.ENCRYPTED] += 1
            return None
        if len(packet) < 20 or packet[0] >> 4 != 4:
            drops[Drop.MALFORMED] += 1
            return None
        return packet

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
            metrics.counter("weft_udp_offload_packets_total",
                            "TCP super-packets (up to 64 KiB) the udp forwarder moved whole "
                            "with TUN offloads: tx chunked (to weft peers) or segmented "
                            "(flannel's format), rx reassembled (chunks) or coalesced "
                            "(flannel datagrams joined).",
                            self.offload,
                            labels=("direction", "kind")),
            metrics.counter("weft_udp_key_reloads_total",
                            "Times the udp forwarder re-read changed key files "
                            "(Encryption.KeyFile) without a restart.", self.key_reloads),
            metrics.counter("weft_udp_icmp_sent_total",
                            "ICMP errors (unreachable, time exceeded, fragmentation "
                            "needed) the udp forwarder sent back.", self.icmp_sent),
        ]


class _VnetRx:
    """What the forwarder writes to a TUN with offloads (see ``_vnet_loop``): weft
    chunks reassembled (``udpgso.Reassembly``) and written as the super-packet they
    carry; flannel datagrams that are consecutive segments of one TCP flow joined
    (``udpgso.coalesce``) and written as one; anything else one packet per call.
    Counts packets, bytes and drops until ``sync``."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self.reasm = udpgso.Reassembly()
        self.packets = self.nbytes = self.reassembled = self.coalesced = 0
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.plain_hdr = udpgso.vnet_header()
        self.obuf = bytearray(udpgso.VNET_HDR_LEN + 2 * 65536)
        self.oview = memoryview(self.obuf)
        self.oarr = np.frombuffer(self.obuf, dtype=np.uint8)
        self.buf = bytearray(65536)
        self.view = memoryview(self.buf)
        self.arr = np.frombuffer(self.buf, dtype=np.uint8)
        self.bufs = [self.buf]
        self.cmsg_space = socket.CMSG_SPACE(4)

    def drain(self) -> bool:
        """Up to ``_BATCH`` receives written to the TUN; False once the socket is closed."""
        view, arr = self.view, self.arr
        try:
            for n, seg, src in self.fwd._receive_batch(self.bufs, self.cmsg_space):
                if self.buf[0] == udpgso.CHUNK_MAGIC:
                    handled, whole = self.reasm.run(src, arr, n, seg)  # the common case
                    if handled:
                        if whole is not None:
                            self._deliver(whole.data, src)
                        continue
                elif n == seg:  # one datagram, not a chunk (an ACK): no numpy scan
                    self.datagrams(view, arr, n, seg, src)
                    continue
                chunked = arr[0:n:seg] == udpgso.CHUNK_MAGIC
                if not chunked.any():
                    self.datagrams(view, arr, n, seg, src)
                    continue
                if chunked.all():
                    self.chunks(arr, n, seg, src)
                    continue
                i = 0  # runs of one kind (GRO may join a chunk run and a datagram)
                while i < len(chunked):
                    kind = bool(chunked[i])
                    j = i + 1
                    while j < len(chunked) and bool(chunked[j]) == kind:
                        j += 1
                    o, e = i * seg, min(j * seg, n)
                    if kind:
                        self.chunks(arr[o:e], e - o, seg, src)
                    else:
                        self.datagrams(view[o:e], arr[o:e], e - o, seg, src)
                    i = j
        except EOFError:
            return False
        return True

    def sync(self) -> None:
        """Hand the counters to the forwarder (before each wait)."""
        fwd = self.fwd
        fwd.rx_packets += self.packets
        fwd.rx_bytes += self.nbytes
        self.drops[Drop.CHUNK_LOST] += self.reasm.lost
        fwd.offload["rx", "reassembled"] += self.reassembled
        fwd.offload["rx", "coalesced"] += self.coalesced
        self.packets = self.nbytes = self.reasm.lost = self.reassembled = self.coalesced = 0
        fwd._count(self.drops)

    def _write(self, data: Sequence[bytes | memoryview], packets: int,
               nbytes: int) -> None:
        try:
            os.writev(self.fwd.tun, data)
            self.packets += packets
            self.nbytes += nbytes
        except OSError as exc:
            self.drops[Drop.TUN_WRITE_ERROR] += 1
            log.debug("udp: tun write: %s", exc)

    def chunks(self, arr: udpgso.Bytes, n: int, seg: int, src: str) -> None:
        """Chunk datagrams: each super-packet they complete (opened first when
        encrypting) is written whole."""
        for packet in self.reasm.feed(src, arr, n, seg):
            self._deliver(packet.data, src)

    def _deliver(self, data: bytes | memoryview, src: str) -> None:
        """A reassembled super-packet (sealed when encrypting) to the TUN."""
        crypto = self.fwd.crypto
        if crypto is not None:
            opened = crypto.open(data, src)
            if isinstance(opened, Drop):
                self.drops[opened] += 1
                return
            data = opened
        elif len(data) and data[0] == _SEALED:
            self.drops[Drop.ENCRYPTED] += 1
            return
        if len(data) < udpgso.VNET_HDR_LEN + 20 or data[udpgso.VNET_HDR_LEN] >> 4 != 4:
            self.drops[Drop.MALFORMED] += 1
            return
        self._write([data], 1, len(data) - udpgso.VNET_HDR_LEN)
        self.reassembled += 1

    def datagrams(self, view: memoryview, arr: udpgso.Bytes, n: int, seg: int,
                  src: str) -> None:
        """Datagrams of flannel's format, sealed or not."""
        if self.fwd.crypto is not None:
            self.sealed(view, n, seg, src)
        else:
            self.flannel(view, arr, n, seg, src)

    def sealed(self, view: memoryview, n: int, seg: int, src: str) -> None:
        """Encrypted datagrams: each opened, then the plaintexts handled as flannel's."""
        inner = [p for o in range(0, n, seg)
                 if (p := self.fwd._inner(view[o:o + min(seg, n - o)], src, self.drops))
                 is not None]
        if not inner:
            return
        size = len(inner[0])
        if len(inner) < 2 or any(len(p) != size for p in inner[:-1]) or len(inner[-1]) > size:
            for p in inner:
                self._write([self.plain_hdr, p], 1, len(p))
            return
        joined = bytearray(b"".join(inner))
        self.flannel(memoryview(joined), np.frombuffer(joined, dtype=np.uint8), len(joined),
                     size, src, opened=True)

    def flannel(self, data: memoryview, darr: udpgso.Bytes, n: int, seg: int, src: str,
                opened: bool = False) -> None:
        """Datagrams of flannel's format (``opened``: plaintexts already checked)."""
        o = 0
        while o < n:
            count = 0
            if (n - o > seg and data[o] == 0x45 and data[o + 9] == 6
                    and seg > 20 + (data[o + 32] >> 4) * 4):
                count = udpgso.coalescible(darr[o:n], n - o, seg)
            if count >= 2:
                size = udpgso.coalesce(darr[o:n], n - o, seg, count, self.oarr)
                end = min(n, o + count * seg)
                self._write([self.oview[:size]], count, end - o)
                self.coalesced += 1
                o = end
                continue
            m = min(seg, n - o)
            o += m
            packet = data[o - m:o] if opened else self.fwd._inner(data[o - m:o], src,
                                                                   self.drops)
            if packet is not None:
                self._write([self.plain_hdr, packet], 1, m)


class _VnetTx:
    """What the forwarder reads from a TUN with offloads (see ``_vnet_loop``): a TCP
    super-packet (up to 64 KiB) per read leaves as weft chunks or as MSS-sized
    segments (``udpgso``) in one or two ``UDP_SEGMENT`` calls; partial checksums are
    completed; other packets batch as on a plain TUN."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self.batch = _Batch(fwd)
        self.rbuf = bytearray(udpgso.VNET_HDR_LEN + 65536)
        self.rview = memoryview(self.rbuf)
        self.rarr = np.frombuffer(self.rbuf, dtype=np.uint8)
        self.sbuf = bytearray(2 * 65536)  # segments or chunks of one super-packet
        self.sview = memoryview(self.sbuf)
        self.sarr = np.frombuffer(self.sbuf, dtype=np.uint8)
        self.icmp = self.ident = self.chunked = self.segmented = 0

    def sync(self) -> None:
        """Hand the counters to the forwarder (before each wait)."""
        fwd = self.fwd
        fwd._take_tx(self.batch, self.icmp)
        fwd.offload["tx", "chunked"] += self.chunked
        fwd.offload["tx", "segmented"] += self.segmented
        self.icmp = self.chunked = self.segmented = 0

    def drain(self) -> bool:
        """Up to ``_BATCH`` reads sent; False once the TUN is closed."""
        fwd, batch = self.fwd, self.batch
        readv, writev, tun, crypto = os.readv, os.writev, fwd.tun, fwd.crypto
        drops = batch.drops
        rbuf, rview, rarr = self.rbuf, self.rview, self.rarr
        pkt, parr = rview[udpgso.VNET_HDR_LEN:], rarr[udpgso.VNET_HDR_LEN:]
        sview, sarr = self.sview, self.sarr
        plain_hdr = _PLAIN_VNET
        masks, source, path_mtu = fwd._masks(), fwd.source, fwd.path_mtu
        for _ in range(_BATCH):
            try:
                n = readv(tun, [rview]) - udpgso.VNET_HDR_LEN
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return False
                log.debug("udp: tun read: %s", exc)
                break
            if n < 20:
                drops[Drop.MALFORMED] += 1
                continue
            flags, gso_type, _, mss, cstart, coff = udpgso.parse_vnet(rbuf)
            h = 0
            if gso_type != udpgso.GSO_NONE:
                h = udpgso.tcp_header_len(parr, n) if (
                    gso_type & ~udpgso.GSO_ECN) == udpgso.GSO_TCPV4 else 0
                if h == 0 or mss == 0:
                    drops[Drop.MALFORMED] += 1
                    continue
            elif flags & udpgso.F_NEEDS_CSUM and not udpgso.complete_csum(
                    parr, n, cstart, coff):
                drops[Drop.MALFORMED] += 1
                continue
            addr = _lookup(masks, int.from_bytes(pkt[16:20], "big"))
            # a super-packet is judged by its first segment (each is h + mss long)
            reason, answer = egress(pkt, min(n, h + mss) if h else n, addr is not None,
                                    path_mtu, source)
            if reason is not None or addr is None:
                drops[reason or Drop.NO_ROUTE] += 1
                if answer is not None:
                    try:
                        writev(tun, [plain_hdr, answer])
                        self.icmp += 1
                    except OSError as exc:
                        log.debug("udp: tun write (icmp): %s", exc)
                continue
            if not h:
                batch.add(crypto.seal(pkt[:n], addr[0]) if crypto is not None
                          else pkt[:n], n, addr)
                continue
            whole = udpgso.VNET_HDR_LEN + n
            if addr[0] in fwd.chunk_peers and udpgso.chunk_count(
                    whole + (OVERHEAD if crypto else 0), path_mtu):  # no segmenting
                self.ident = ident = (self.ident + 1) & 0xFFFFFFFF
                if crypto is None:
                    size = udpgso.chunk(rarr, whole, path_mtu, ident, sarr)
                else:  # one seal for the whole super-packet, opened whole
                    sealed = crypto.seal(rview[:whole], addr[0])
                    size = udpgso.chunk(np.frombuffer(sealed, dtype=np.uint8), len(sealed),
                                        path_mtu, ident, sarr)
                batch.send_run(sview[:size], path_mtu, -(-size // path_mtu), n, addr)
                self.chunked += 1
                continue
            self.segmented += 1
            k = udpgso.segment(parr, n, mss, sarr)
            width, total = h + mss, n + (k - 1) * h
            if crypto is None:
                batch.send_run(sview[:total], width, k, total, addr)
                continue
            for o in range(0, total, width):
                seg = sview[o:min(o + width, total)]
                batch.add(crypto.seal(seg, addr[0]), len(seg), addr)
        batch.flush()
        return True


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
            offload = os.environ.get("WEFT_UDP_OFFLOAD", "1") != "0"
            try:
                self._tun = open_tun(self.device, vnet=offload)
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
            if offload:
                try:
                    sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                except OSError as exc:  # kernels before 5.0
                    log.info("udp: no UDP GRO (%s); one datagram per receive", exc)
            self._sock = sock
            self._fwd = Forwarder(self._tun, sock, self.mtu, offload=offload, crypto=crypto,
                                  vnet=offload, key_files=self.config.key_files)
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
        data = {"Encryption": SUITE} if self.config.key_files else {}
        return {**data, "Chunks": udpgso.CHUNKS} if self._fwd.vnet else data

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
            self._fwd.chunk_peers = chunk_peers(peers) if self._fwd.vnet else frozenset()
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

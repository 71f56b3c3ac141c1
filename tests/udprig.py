"""A loopback rig for the udp forwarder (tests only): a datagram socketpair stands in
for the TUN (``tun_app`` is the kernel's side), ``sock`` is the forwarder's UDP socket
and ``peer`` a remote host's, both on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Rig:
    tun_app: socket.socket
    tun_fwd: socket.socket
    sock: socket.socket
    peer: socket.socket

    @property
    def peer_port(self) -> int:
        port: int = self.peer.getsockname()[1]
        return port


@contextlib.contextmanager
def loopback_rig(gro: bool = False) -> Iterator[Rig]:
    """The four sockets (forwarder's sides non-blocking, test's sides with a 5 s
    timeout; ``gro``: UDP_GRO on the forwarder's socket, as prepare() sets it), closed
    on exit."""
    tun_app, tun_fwd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (sock, peer):
            s.bind(("127.0.0.1", 0))
        if gro:
            sock.setsockopt(17, 104, 1)  # IPPROTO_UDP, UDP_GRO
        peer.settimeout(5)
        tun_app.settimeout(5)
        sock.setblocking(False)
        tun_fwd.setblocking(False)
        yield Rig(tun_app, tun_fwd, sock, peer)
    finally:
        for s in (tun_app, tun_fwd, sock, peer):
            s.close()

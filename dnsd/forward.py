"""Opt-in recursion: relay out-of-zone queries to upstream nameservers for allowed clients.

Off unless ``-nameservers`` is given. Even then only clients inside the
``-forward-allow`` networks (default loopback) are relayed, so dnsd is never an
open resolver. Upstreams are tried in order starting at ``id mod n`` (SkyDNS's
rotation); a SERVFAIL or a timeout moves to the next; when every upstream fails
the client gets SERVFAIL. Blocking sockets: the server runs this in worker
threads so the answer loop never waits on an upstream.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW = "127.0.0.0/8,::1/128"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or bare ``v6`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        num = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= num <= 65535:
        raise ValueError(f"{text!r}: port {num} out of range")
    return host, num


def parse_networks(text: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(p.strip(), strict=False)
                     for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(f"-forward-allow: {exc}") from None


@dataclass(frozen=True, slots=True)
class Forwarder:
    upstreams: tuple[tuple[str, int], ...]
    allow: tuple[Network, ...]
    timeout: float = 2.0

    def allowed(self, client_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(client_ip.split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.allow)

    def relay(self, query: bytes, tcp: bool,
              tried: Callable[[str], None] | None = None) -> bytes | None:
        """The first good upstream reply, or None when all failed. ``tried`` is told
        each upstream (``ip:port``, ``[ip6]:port``) a query is sent to."""
        if len(query) < 12:
            return None
        ident = struct.unpack_from("!H", query)[0]
        n = len(self.upstreams)
        for i in range(n):
            host, port = self.upstreams[(ident + i) % n]
            if tried is not None:
                tried(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            try:
                reply = _tcp(host, port, query, self.timeout) if tcp else \
                    _udp(host, port, query, ident, self.timeout)
            except OSError as exc:
                log.debug("upstream %s:%s failed: %s", host, port, exc)
                continue
            if reply is not None and len(reply) >= 4 and reply[3] & 0xF != 2:
                return reply
        return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp(host: str, port: int, query: bytes, ident: int, timeout: float) -> bytes | None:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(query)
        while True:
            reply = s.recv(65535)
            if len(reply) >= 2 and struct.unpack_from("!H", reply)[0] == ident:
                return reply


def _tcp(host: str, port: int, query: bytes, timeout: float) -> bytes | None:
    with socket.create_connection((host, port), timeout) as s:
        s.sendall(struct.pack("!H", len(query)) + query)
        head = _read(s, 2)
        return _read(s, struct.unpack("!H", head)[0])


def _read(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        buf += chunk
    return bytes(buf)


def make_forwarder(nameservers: Sequence[str], allow: str,
                   timeout: float = 2.0) -> Forwarder | None:
    """None (forwarding off) when no nameservers are given."""
    ups = tuple(parse_hostport(ns, 53) for ns in nameservers if ns.strip())
    if not ups:
        return None
    return Forwarder(ups, parse_networks(allow), timeout)

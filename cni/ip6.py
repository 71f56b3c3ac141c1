"""IPv6 addresses and networks for the exec'd path, beside ``cni.ip4`` (no ``ipaddress``).

The same small immutable value types as ``cni.ip4`` (on its ``Address`` and
``Network`` bases: ``value``, ``packed``, ``+ int``, ordering,
``Net6.parse(strict=False)``, ``in``), with the text form
Go's ``net.IP.String`` and Python's ``ipaddress`` both produce (RFC 5952:
lowercase, no leading zeros, the first longest run of two or more zero groups
as ``::``). host-local names its store files with that form, so a file written
by either plugin is found by the other. A unit test checks both against
``ipaddress``.

``parse_ip``/``parse_net``/``parse_iface`` pick the family from the text (a
``:`` means IPv6), for the parts of the plugin that handle both.
"""

from __future__ import annotations

from cni.ip4 import Address, IPv4, Net4, Network, parse_interface

_HEX = frozenset("0123456789abcdefABCDEF")


def _groups(part: str, text: str) -> list[int]:
    if not part:
        return []
    out = []
    for g in part.split(":"):
        if not g or len(g) > 4 or not set(g) <= _HEX:
            raise ValueError(f"{text!r} is not an IPv6 address")
        out.append(int(g, 16))
    return out


def _parse(text: str) -> int:
    if not text or "%" in text or not text.isascii():
        raise ValueError(f"{text!r} is not an IPv6 address")
    body, tail = text, 0
    last = text.rpartition(":")[2]
    if "." in last:  # embedded IPv4 in the last 32 bits (::ffff:10.1.2.3)
        tail = IPv4.parse(last).value
        body = text[: len(text) - len(last)]
        if not body.endswith(":"):
            raise ValueError(f"{text!r} is not an IPv6 address")
        body += "0:0"
    if body.count("::") > 1:
        raise ValueError(f"{text!r} is not an IPv6 address")
    if "::" in body:
        head, _, rest = body.partition("::")
        hi, lo = _groups(head, text), _groups(rest, text)
        if len(hi) + len(lo) > 7:
            raise ValueError(f"{text!r} is not an IPv6 address")
        groups = hi + [0] * (8 - len(hi) - len(lo)) + lo
    else:
        groups = _groups(body, text)
        if len(groups) != 8:
            raise ValueError(f"{text!r} is not an IPv6 address")
    value = 0
    for g in groups:
        value = (value << 16) | g
    if "." in last:
        value = (value & ~0xFFFFFFFF) | tail
    return value


def _format(value: int) -> str:
    groups = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best, best_len, i = -1, 1, 0
    while i < 8:  # the first longest run of zero groups, at least two long
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_len:
                best, best_len = i, j - i
            i = j
        else:
            i += 1
    if best < 0:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best])
    tail = ":".join(f"{g:x}" for g in groups[best + best_len:])
    return f"{head}::{tail}"


class IPv6(Address):
    """One IPv6 address."""

    __slots__ = ()

    BITS = 128

    @classmethod
    def parse(cls, text: str) -> IPv6:
        return cls(_parse(text.strip()))

    @property
    def is_link_local(self) -> bool:
        return self.value >> 118 == 0x3FA  # fe80::/10

    def __str__(self) -> str:
        return _format(self.value)


class Net6(Network):
    """An IPv6 network."""

    __slots__ = ()

    ADDRESS = IPv6
    network_address: IPv6

    @classmethod
    def parse(cls, text: str, strict: bool = True) -> Net6:
        addr, sep, plen = text.strip().partition("/")
        if not sep:
            return cls(IPv6.parse(addr), 128, strict)
        if not plen.isdigit() or not plen.isascii():
            raise ValueError(f"{text!r} is not an IPv6 network")
        return cls(IPv6.parse(addr), int(plen), strict)

    @property
    def broadcast_address(self) -> IPv6:
        """The last address (IPv6 has no broadcast; the name matches ``Net4``)."""
        return IPv6(self._last())

    def overlaps(self, other: Net6) -> bool:
        return other.network_address in self or self.network_address in other


def parse_interface6(text: str) -> tuple[IPv6, Net6]:
    """``"fd00::5/64"`` -> (fd00::5, fd00::/64), as ``ip_interface``."""
    addr, sep, _ = text.strip().partition("/")
    return IPv6.parse(addr), Net6.parse(text, strict=False) if sep else Net6(IPv6.parse(addr), 128)


def parse_ip(text: str) -> IPv4 | IPv6:
    """An address of either family (a ``:`` in the text means IPv6)."""
    return IPv6.parse(text) if ":" in text else IPv4.parse(text)


def parse_net(text: str, strict: bool = True) -> Net4 | Net6:
    return Net6.parse(text, strict) if ":" in text else Net4.parse(text, strict)


def parse_iface(text: str) -> tuple[IPv4 | IPv6, Net4 | Net6]:
    """``address/len`` of either family -> (address, its network)."""
    return parse_interface6(text) if ":" in text else parse_interface(text)


def family_of(ip: IPv4 | IPv6 | Net4 | Net6) -> int:
    """4 or 6."""
    return 6 if isinstance(ip, IPv6 | Net6) else 4

"""IPv4 addresses and networks for the exec'd path: the ``ipaddress`` subset weft uses.

``import ipaddress`` (with the functools/collections it drags in) costs ~4 ms
of CPU per plugin exec, a fifth of the ADD budget, for a module of which the
plugin needs a dozen operations. These two small immutable value types cover
them with the same text forms and semantics (``Net4.parse(strict=False)``
masks host bits like ``ip_network(..., strict=False)``); a unit test checks
them against ``ipaddress``.
"""

from __future__ import annotations

_FULL = 0xFFFFFFFF


def _parse_quad(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"{text!r} is not an IPv4 address")
    value = 0
    for p in parts:
        if not p.isdigit() or not p.isascii() or len(p) > 3 or (len(p) > 1 and p[0] == "0"):
            raise ValueError(f"{text!r} is not an IPv4 address")
        octet = int(p)
        if octet > 255:
            raise ValueError(f"{text!r} is not an IPv4 address")
        value = (value << 8) | octet
    return value


class IPv4:
    """One IPv4 address; ordered, hashable, ``+ int`` moves along the address space."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        if not 0 <= value <= _FULL:
            raise ValueError(f"{value} is outside the IPv4 address space")
        self.value = value

    @classmethod
    def parse(cls, text: str) -> IPv4:
        return cls(_parse_quad(text.strip()))

    @classmethod
    def from_packed(cls, data: bytes) -> IPv4:
        return cls(int.from_bytes(data, "big"))

    @property
    def packed(self) -> bytes:
        return self.value.to_bytes(4, "big")

    def __str__(self) -> str:
        v = self.value
        return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"

    def __repr__(self) -> str:
        return f"IPv4('{self}')"

    def __int__(self) -> int:
        return self.value

    def __add__(self, n: int) -> IPv4:
        return IPv4(self.value + n)

    def __sub__(self, n: int) -> IPv4:
        return IPv4(self.value - n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IPv4) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("IPv4", self.value))

    def __lt__(self, other: IPv4) -> bool:
        return self.value < other.value

    def __le__(self, other: IPv4) -> bool:
        return self.value <= other.value

    def __gt__(self, other: IPv4) -> bool:
        return self.value > other.value

    def __ge__(self, other: IPv4) -> bool:
        return self.value >= other.value


class Net4:
    """An IPv4 network ``address/prefixlen`` (host bits always zero)."""

    __slots__ = ("network_address", "prefixlen")

    def __init__(self, address: IPv4, prefixlen: int, strict: bool = True) -> None:
        if not 0 <= prefixlen <= 32:
            raise ValueError(f"prefix length {prefixlen} is not in 0..32")
        mask = (_FULL << (32 - prefixlen)) & _FULL
        if strict and address.value & ~mask & _FULL:
            raise ValueError(f"{address}/{prefixlen} has host bits set")
        self.network_address = IPv4(address.value & mask)
        self.prefixlen = prefixlen

    @classmethod
    def parse(cls, text: str, strict: bool = True) -> Net4:
        addr, sep, plen = text.strip().partition("/")
        if not sep:
            return cls(IPv4.parse(addr), 32, strict)
        if not plen.isdigit() or not plen.isascii():
            raise ValueError(f"{text!r} is not an IPv4 network")
        return cls(IPv4.parse(addr), int(plen), strict)

    @property
    def mask(self) -> int:
        return (_FULL << (32 - self.prefixlen)) & _FULL

    @property
    def broadcast_address(self) -> IPv4:
        return IPv4(self.network_address.value | (~self.mask & _FULL))

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4) and (ip.value & self.mask) == self.network_address.value

    def __str__(self) -> str:
        return f"{self.network_address}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Net4('{self}')"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Net4) and other.network_address == self.network_address
                and other.prefixlen == self.prefixlen)

    def __hash__(self) -> int:
        return hash(("Net4", self.network_address.value, self.prefixlen))


def parse_interface(text: str) -> tuple[IPv4, Net4]:
    """``"10.1.2.3/24"`` -> (10.1.2.3, 10.1.2.0/24), as ``ip_interface``."""
    addr, sep, _ = text.strip().partition("/")
    return IPv4.parse(addr), Net4.parse(text, strict=False) if sep else Net4(IPv4.parse(addr), 32)

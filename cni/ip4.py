"""IPv4 addresses and networks for the exec'd path: the ``ipaddress`` subset weft uses.

``import ipaddress`` (with the functools/collections it drags in) costs ~4 ms
of CPU per plugin exec, a fifth of the ADD budget, for a module of which the
plugin needs a dozen operations. These two small immutable value types (on the
``Address``/``Network`` bases that ``cni.ip6`` shares) cover them with the
same text forms and semantics (``Net4.parse(strict=False)``
masks host bits like ``ip_network(..., strict=False)``); a unit test checks
them against ``ipaddress``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self


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


class Address:
    """One address of a family (``IPv4``, ``cni.ip6.IPv6``): ordered (within its family),
    hashable, ``+ int`` moves along the address space; subclasses give ``BITS`` and
    the text form (``parse``, ``__str__``)."""

    __slots__ = ("value",)

    BITS = 0

    def __init__(self, value: int) -> None:
        if not 0 <= value < 1 << self.BITS:
            raise ValueError(f"{value} is outside the IPv{4 if self.BITS == 32 else 6} "
                             "address space")
        self.value = value

    @classmethod
    def from_packed(cls, data: bytes) -> Self:
        return cls(int.from_bytes(data, "big"))

    @property
    def packed(self) -> bytes:
        return self.value.to_bytes(self.BITS // 8, "big")

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self}')"

    def __int__(self) -> int:
        return self.value

    def __add__(self, n: int) -> Self:
        return type(self)(self.value + n)

    def __sub__(self, n: int) -> Self:
        return type(self)(self.value - n)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((self.BITS, self.value))

    def __lt__(self, other: Self) -> bool:
        return self.value < other.value

    def __le__(self, other: Self) -> bool:
        return self.value <= other.value

    def __gt__(self, other: Self) -> bool:
        return self.value > other.value

    def __ge__(self, other: Self) -> bool:
        return self.value >= other.value


class IPv4(Address):
    """One IPv4 address."""

    __slots__ = ()

    BITS = 32

    @classmethod
    def parse(cls, text: str) -> IPv4:
        return cls(_parse_quad(text.strip()))

    def __str__(self) -> str:
        v = self.value
        return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


class Network:
    """A network ``address/prefixlen`` of a family (host bits always zero); subclasses
    give ``ADDRESS`` (the address class) and ``parse``."""

    __slots__ = ("network_address", "prefixlen")

    ADDRESS: type[Address] = Address

    def __init__(self, address: Address, prefixlen: int, strict: bool = True) -> None:
        bits = self.ADDRESS.BITS
        if not 0 <= prefixlen <= bits:
            raise ValueError(f"prefix length {prefixlen} is not in 0..{bits}")
        mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
        if strict and address.value & ~mask:
            raise ValueError(f"{address}/{prefixlen} has host bits set")
        self.network_address = self.ADDRESS(address.value & mask)
        self.prefixlen = prefixlen

    @property
    def mask(self) -> int:
        bits = self.ADDRESS.BITS
        return ((1 << bits) - 1) ^ ((1 << (bits - self.prefixlen)) - 1)

    def _last(self) -> int:
        """The value of the network's last address (subclasses' ``broadcast_address``)."""
        return self.network_address.value | ((1 << (self.ADDRESS.BITS - self.prefixlen)) - 1)

    def __contains__(self, ip: object) -> bool:
        return (type(ip) is self.ADDRESS
                and (ip.value & self.mask) == self.network_address.value)

    def __str__(self) -> str:
        return f"{self.network_address}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self}')"

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self)
                and other.network_address == self.network_address
                and other.prefixlen == self.prefixlen)

    def __hash__(self) -> int:
        return hash((self.ADDRESS.BITS, self.network_address.value, self.prefixlen))


class Net4(Network):
    """An IPv4 network."""

    __slots__ = ()

    ADDRESS = IPv4
    network_address: IPv4

    @classmethod
    def parse(cls, text: str, strict: bool = True) -> Net4:
        addr, sep, plen = text.strip().partition("/")
        if not sep:
            return cls(IPv4.parse(addr), 32, strict)
        if not plen.isdigit() or not plen.isascii():
            raise ValueError(f"{text!r} is not an IPv4 network")
        return cls(IPv4.parse(addr), int(plen), strict)

    @property
    def broadcast_address(self) -> IPv4:
        return IPv4(self._last())


def parse_interface(text: str) -> tuple[IPv4, Net4]:
    """``"10.1.2.3/24"`` -> (10.1.2.3, 10.1.2.0/24), as ``ip_interface``."""
    addr, sep, _ = text.strip().partition("/")
    return IPv4.parse(addr), Net4.parse(text, strict=False) if sep else Net4(IPv4.parse(addr), 32)

"""DNS message values shared by the engine and the wire codec: types, rcodes, RRs, answers.

Plain frozen data, no I/O. Names are absolute, lower-case, dotted strings
(``web.skydns.local.``); the wire codec replaces any name equal to the query
name with a pointer to the question, which is how owner names keep the query's
original case without the engine knowing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .records import IPAddress


class RType(enum.IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    HINFO = 13
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    AXFR = 252
    ANY = 255


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16


CLASS_IN = 1
CLASS_ANY = 255


def type_name(qtype: int) -> str:
    try:
        return RType(qtype).name
    except ValueError:
        return f"TYPE{qtype}"


@dataclass(frozen=True, slots=True)
class MX:
    preference: int
    exchange: str


@dataclass(frozen=True, slots=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class HINFO:
    cpu: str
    os: str


# A/AAAA: an address; CNAME/NS/PTR: a name; TXT: the character strings.
RData = IPAddress | str | MX | SRV | SOA | HINFO | tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RR:
    name: str
    rtype: RType
    ttl: int
    rdata: RData

    def __str__(self) -> str:
        data = self.rdata
        if isinstance(data, tuple):
            shown = " ".join('"' + s.decode("latin-1") + '"' for s in data)
        elif isinstance(data, MX | SRV | SOA | HINFO):
            shown = " ".join(str(getattr(data, f)) for f in data.__slots__)
        else:
            shown = str(data)
        return f"{self.name} {self.ttl} {self.rtype.name} {shown}"


@dataclass(frozen=True, slots=True)
class Question:
    """What the engine answers: reversed-order-free labels in written order, lower-case."""

    labels: tuple[str, ...]
    qtype: int
    qclass: int = CLASS_IN

    @property
    def name(self) -> str:
        return ".".join(self.labels) + "." if self.labels else "."


@dataclass(frozen=True, slots=True)
class Answer:
    """The engine's verdict. ``forward``: out of zone, the shell may recurse.

    ``leased``: some TTL came from a lease, so the answer ages with the clock and
    a cache may keep it only briefly.
    """

    rcode: Rcode
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    aa: bool = True
    forward: bool = False
    leased: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)

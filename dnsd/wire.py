"""The DNS wire format for dnsd: strict query parsing, answer encoding, truncation, and
precomputed answers for the fast path.

Theory of operation. Every response dnsd sends is ``header + question + records``
where the question bytes are copied from the query and every record whose owner
is the query name starts with a compression pointer to offset 12 (the question
name). So the bytes after the question do not depend on the query's ID, its RD
bit or the case of its name: they can be built once per (lower-case name, type,
class, EDNS shape) and reused. ``Prepared`` holds those bytes per record;
``Prepared.render`` trims them to the client's buffer (additional section first,
then authority, then answers, with TC set); ``fast_key`` with ``CachedAnswer`` /
``ExactAnswer`` let the server's fast path answer with nothing but slicing and
concatenation.

Parsing is strict: every length is bounds-checked; compression pointers are
refused in the question (they can only point into the header) and followed
nowhere; anything malformed raises ``FormError`` (answer FORMERR) when the
header was readable, ``DropError`` (send nothing) when it was not or when the
packet is itself a response.

Errors (the server's boundary maps each to its reply)::

    WireError
    ├── DropError      unanswerable: no header, or QR set      -> no reply
    ├── FormError      .ident .flags .reason .rcode .edns       -> FORMERR/NOTIMP/BADVERS
    └── EncodeError    an answer record cannot be encoded       -> SERVFAIL

(``records.RecordError`` and ``keys.BadNameError`` cover stored values and names.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import cycle, repeat

from overlay.errors import DnsError

from .message import HINFO, MX, RR, SOA, SRV, Answer, Question, Rcode, RType
from .stub import STUB_DATA, STUB_OPTION

QNAME_POINTER = b"\xc0\x0c"
MAX_UDP = 1232  # what dnsd advertises in its own OPT record (DNS flag day 2020)
TCP_LIMIT = 65535


class WireError(DnsError):
    """Base of wire-format failures."""


class DropError(WireError):
    """Not worth an answer: shorter than a header, or a response (QR set)."""


class FormError(WireError):
    """Malformed query with a readable header: answer FORMERR (``id``, ``flags``)."""

    def __init__(self, ident: int, flags: int, reason: str, rcode: Rcode = Rcode.FORMERR,
                 edns: bool = False) -> None:
        super().__init__(reason)
        self.ident = ident
        self.flags = flags
        self.reason = reason
        self.rcode = rcode
        self.edns = edns


class EncodeError(WireError):
    """A record could not be encoded (a name too long, say): answer SERVFAIL."""


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool
    stub: bool = False  # carries SkyDNS's stub-loop option (stub.STUB_OPTION = 01)


@dataclass(frozen=True, slots=True)
class Query:
    ident: int
    flags: int
    question: Question
    question_wire: bytes  # qname as sent (original case) + qtype + qclass
    edns: Edns | None

    @property
    def shape(self) -> bytes:
        """The EDNS shape byte of the cache key: none, OPT, OPT with DO."""
        if self.edns is None:
            return b"\x00"
        return b"\x02" if self.edns.do else b"\x01"

    @property
    def cache_key(self) -> bytes:
        qname = self.question_wire[:-4]
        return qname.lower() + self.question_wire[-4:] + self.shape


def _skip_name(data: bytes, off: int) -> int:
    """Offset after a (possibly compressed) name; pointers are not followed."""
    n = len(data)
    total = 0
    while True:
        if off >= n:
            raise ValueError("name runs past the end")
        length = data[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise ValueError("truncated pointer")
            return off + 2
        if length & 0xC0:
            raise ValueError("bad label type")
        off += 1 + length
        total += length + 1
        if total > 255:
            raise ValueError("name longer than 255 bytes")


def parse_query(data: bytes) -> Query:
    """Parse a query strictly. ``DropError``/``FormError`` on bad input."""
    n = len(data)
    if n < 12:
        raise DropError("shorter than a header")
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & 0x8000:
        raise DropError("a response, not a query")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise FormError(ident, flags, f"opcode {opcode}", Rcode.NOTIMP)
    if qd != 1:
        raise FormError(ident, flags, f"{qd} questions")
    off = 12
    labels: list[str] = []
    total = 0
    while True:
        if off >= n:
            raise FormError(ident, flags, "question name runs past the end")
        length = data[off]
        if length == 0:
            off += 1
            break
        if length & 0xC0:
            raise FormError(ident, flags, "compressed or extended label in the question")
        if off + 1 + length > n:
            raise FormError(ident, flags, "label runs past the end")
        labels.append(data[off + 1: off + 1 + length].lower().decode("latin-1"))
        total += length + 1
        if total > 254:
            raise FormError(ident, flags, "question name longer than 255 bytes")
        off += 1 + length
    if off + 4 > n:
        raise FormError(ident, flags, "question type/class missing")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    qend = off + 4
    question_wire = data[12:qend]
    off = qend
    edns: Edns | None = None
    try:
        for _ in range(an + ns):
            off = _skip_name(data, off)
            if off + 10 > n:
                raise ValueError("record header runs past the end")
            rdlen = struct.unpack_from("!H", data, off + 8)[0]
            off += 10 + rdlen
            if off > n:
                raise ValueError("rdata runs past the end")
        for _ in range(ar):
            start = off
            off = _skip_name(data, off)
            if off + 10 > n:
                raise ValueError("record header runs past the end")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
            off += 10 + rdlen
            if off > n:
                raise ValueError("rdata runs past the end")
            if rtype == RType.OPT:
                if edns is not None:
                    raise ValueError("more than one OPT record")
                if data[start] != 0:
                    raise ValueError("OPT owner is not the root")
                stub = _check_options(data, off - rdlen, off)
                edns = Edns(max(512, rclass), (ttl >> 16) & 0xFF, bool(ttl & 0x8000), stub)
    except ValueError as exc:
        raise FormError(ident, flags, str(exc), edns=edns is not None) from None
    if off != n:
        raise FormError(ident, flags, f"{n - off} trailing bytes", edns=edns is not None)
    if edns is not None and edns.version != 0:
        raise FormError(ident, flags, f"EDNS version {edns.version}", Rcode.BADVERS, edns=True)
    return Query(ident, flags, Question(tuple(labels), qtype, qclass), question_wire, edns)


def _check_options(data: bytes, off: int, end: int) -> bool:
    """Validate the OPT options; True when SkyDNS's stub-loop option is among them."""
    stub = False
    while off < end:
        if off + 4 > end:
            raise ValueError("EDNS option header runs past the OPT record")
        code, olen = struct.unpack_from("!HH", data, off)
        if code == STUB_OPTION and data[off + 4:off + 4 + olen] == STUB_DATA:
            stub = True
        off += 4 + olen
        if off > end:
            raise ValueError("EDNS option runs past the OPT record")
    return stub


# -- encoding ------------------------------------------------------------------------


_name_cache: dict[str, bytes] = {}


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of an absolute dotted name."""
    wire = _name_cache.get(name)
    if wire is not None:
        return wire
    out = bytearray()
    text = name.rstrip(".")
    if text:
        for label in text.split("."):
            raw = label.encode("latin-1", "replace")
            if not 0 < len(raw) < 64:
                raise EncodeError(f"bad label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > 255:
        raise EncodeError(f"name {name[:40]!r}... longer than 255 bytes")
    wire = bytes(out)
    if len(_name_cache) < 100_000:
        _name_cache[name] = wire
    return wire


def _rdata(rr: RR) -> bytes:
    data = rr.rdata
    rtype = rr.rtype
    if rtype in (RType.A, RType.AAAA):
        assert not isinstance(data, str | tuple | MX | SRV | SOA | HINFO)
        return data.packed
    if rtype in (RType.CNAME, RType.NS, RType.PTR):
        assert isinstance(data, str)
        return encode_name(data)
    if isinstance(data, MX):
        return struct.pack("!H", data.preference) + encode_name(data.exchange)
    if isinstance(data, SRV):
        return struct.pack("!HHH", data.priority, data.weight, data.port) + \
            encode_name(data.target)
    if isinstance(data, SOA):
        return encode_name(data.mname) + encode_name(data.rname) + struct.pack(
            "!IIIII", data.serial, data.refresh, data.retry, data.expire, data.minimum)
    if isinstance(data, HINFO):
        return _strings((data.cpu.encode(), data.os.encode()))
    if isinstance(data, tuple):
        return _strings(data)
    raise EncodeError(f"cannot encode {rtype.name}")


def _strings(items: Sequence[bytes]) -> bytes:
    out = bytearray()
    for item in items:
        if len(item) > 255:
            raise EncodeError("character string longer than 255 bytes")
        out.append(len(item))
        out += item
    return bytes(out)


def encode_rr(rr: RR, qname: str) -> bytes:
    owner = QNAME_POINTER if rr.name == qname else encode_name(rr.name)
    rdata = _rdata(rr)
    return owner + struct.pack("!HHIH", rr.rtype, 1, max(0, rr.ttl), len(rdata)) + rdata


def opt_record(do: bool, ext_rcode: int = 0) -> bytes:
    return b"\x00" + struct.pack("!HHBBHH", RType.OPT, MAX_UDP, ext_rcode, 0,
                                 0x8000 if do else 0, 0)


@dataclass(frozen=True, slots=True)
class Prepared:
    """An answer encoded record by record, independent of the query's ID/case/RD."""

    flags: int  # QR, AA, RA and rcode bits; TC, RD and the ID come per query
    answer: tuple[bytes, ...]
    authority: tuple[bytes, ...]
    additional: tuple[bytes, ...]
    opt: bytes  # b"" when the query had no EDNS

    @property
    def size_after_question(self) -> int:
        return sum(map(len, self.answer)) + sum(map(len, self.authority)) + \
            sum(map(len, self.additional)) + len(self.opt)

    def header10(self, rd: int, tc: bool = False, an: int | None = None,
                 ns: int | None = None, ar: int | None = None) -> bytes:
        flags = self.flags | (0x0100 if rd else 0) | (0x0200 if tc else 0)
        return struct.pack(
            "!HHHHH", flags, 1,
            len(self.answer) if an is None else an,
            len(self.authority) if ns is None else ns,
            (len(self.additional) if ar is None else ar) + (1 if self.opt else 0))

    def render(self, ident: bytes, rd: int, question_wire: bytes, limit: int) -> bytes:
        """The full response, trimmed to ``limit`` bytes (TC set) if needed."""
        head = 12 + len(question_wire)
        if head + self.size_after_question <= limit:
            return ident + self.header10(rd) + question_wire + b"".join(
                (*self.answer, *self.authority, *self.additional, self.opt))
        budget = limit - head - len(self.opt)
        sections = [list(self.answer), list(self.authority), list(self.additional)]
        size = sum(len(c) for sec in sections for c in sec)
        for sec in (2, 1, 0):
            while sections[sec] and size > budget:
                size -= len(sections[sec].pop())
        an, ns, ar = (len(s) for s in sections)
        return ident + self.header10(rd, True, an, ns, ar) + question_wire + b"".join(
            (*sections[0], *sections[1], *sections[2], self.opt))


def prepare(answer: Answer, query: Query, ra: bool) -> Prepared:
    """Encode an engine answer for ``query``. ``EncodeError`` if a record cannot be."""
    qname = query.question.name
    rcode = int(answer.rcode)
    flags = 0x8000 | (0x0400 if answer.aa else 0) | (0x0080 if ra else 0) | (rcode & 0xF)
    opt = b""
    if query.edns is not None:
        opt = opt_record(query.edns.do, rcode >> 4)
    return Prepared(
        flags,
        tuple(encode_rr(rr, qname) for rr in answer.answer),
        tuple(encode_rr(rr, qname) for rr in answer.authority),
        tuple(encode_rr(rr, qname) for rr in answer.additional),
        opt,
    )


def error_response(err: FormError, ra: bool) -> bytes:
    """FORMERR/NOTIMP/BADVERS: header only (plus OPT when the query had EDNS)."""
    rcode = int(err.rcode)
    flags = 0x8000 | (err.flags & 0x7900) | (0x0080 if ra else 0) | (rcode & 0xF)
    opt = opt_record(False, rcode >> 4) if err.edns else b""
    return struct.pack("!HHHHHH", err.ident, flags, 0, 0, 0, 1 if opt else 0) + opt


def plain_response(query: Query, rcode: Rcode, ra: bool) -> bytes:
    """An empty answer with ``rcode`` that echoes the question (REFUSED, SERVFAIL)."""
    prepared = prepare(Answer(rcode, aa=False), query, ra)
    return prepared.render(struct.pack("!H", query.ident), query.flags & 0x0100,
                           query.question_wire, TCP_LIMIT)


def udp_limit(query: Query) -> int:
    return 512 if query.edns is None else min(max(512, query.edns.udp_size), 65535)


# -- the fast path -------------------------------------------------------------------


def rotations(prepared: Prepared, count: int) -> list[Prepared]:
    """Round robin: up to ``count`` rotations of a plain A/AAAA answer set.

    Only answers made entirely of same-type address records rotate (SkyDNS keeps
    CNAME chains in order).
    """
    chunks = prepared.answer
    if len(chunks) < 2:
        return [prepared]
    types = {c[2:4] for c in chunks}
    if not all(c[:2] == QNAME_POINTER for c in chunks) or \
            types not in ({b"\x00\x01"}, {b"\x00\x1c"}):
        return [prepared]
    out = []
    for i in range(min(count, len(chunks))):
        out.append(Prepared(prepared.flags, chunks[i:] + chunks[:i], prepared.authority,
                            prepared.additional, prepared.opt))
    return out


class CachedAnswer:
    """Everything the fast path needs for one cache key."""

    __slots__ = ("expires", "hdr", "hits", "limit_needed", "rcode", "rtype", "tail_list",
                 "tails")

    def __init__(self, variants: Sequence[Prepared], expires: float, rtype: int,
                 rcode: int, question_len: int) -> None:
        first = variants[0]
        self.hdr = (first.header10(0), first.header10(1))
        self.limit_needed = 12 + question_len + first.size_after_question
        tails = [b"".join((*p.answer, *p.authority, *p.additional, p.opt)) for p in variants]
        self.tail_list = tails
        self.tails: Iterator[bytes] = cycle(tails)
        self.hits = 0
        self.expires = expires
        self.rtype = rtype
        self.rcode = rcode


class ExactAnswer:
    """A whole response minus the ID, for a byte-identical repeat of a query."""

    __slots__ = ("hits", "rcode", "responses", "rtype")

    def __init__(self, responses: Sequence[bytes], rtype: int, rcode: int) -> None:
        self.responses: Iterator[bytes] = cycle(responses) if len(responses) > 1 \
            else repeat(responses[0])
        self.rtype = rtype
        self.rcode = rcode
        self.hits = 0


def fast_key(data: bytes) -> tuple[bytes, int, int, int] | None:
    """(cache key, question end, udp limit, qtype) for a plain query, else None.

    Accepts only the common shape: one question, no answer/authority records,
    at most an OPT record (version 0) in the additional section. Everything
    else goes to the strict parser.
    """
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    end = data.find(0, 12)
    if end < 0:
        return None
    qend = end + 5
    ar = data[10:12]
    if ar == b"\x00\x00":
        if n != qend:
            return None
        shape = b"\x00"
        limit = 512
    elif ar == b"\x00\x01":
        if n < qend + 11 or data[qend] != 0 or data[qend + 1:qend + 3] != b"\x00\x29" \
                or data[qend + 6] != 0:  # version 0 only
            return None
        if n != qend + 11 + (data[qend + 9] << 8 | data[qend + 10]):
            return None
        limit = data[qend + 3] << 8 | data[qend + 4]
        if limit < 512:
            limit = 512
        shape = b"\x02" if data[qend + 7] & 0x80 else b"\x01"
    else:
        return None
    return data[12:end + 1].lower() + data[end + 1:qend] + shape, qend, limit, \
        data[end + 1] << 8 | data[end + 2]

"""The DNS wire format for dnsd: strict query parsing, answer packing (dnslib, every
name compressed), truncation, and precomputed answers for the fast path.

Theory of operation. Every response dnsd sends is ``header + question + records``.
dnslib packs the records once per answer, compressing every name (RFC 1035
4.1.4: owners, CNAME/NS/PTR/MX targets, SOA names; an SRV target is written in
full, as RFC 2782 asks, and later names still point into it) against a question
placed at offset 12. The question's length does not depend on the case of the
client's name, so the packed records do not depend on the query's ID, its RD bit
or its case: they are built once per (lower-case name, type, class, EDNS shape)
and reused, and a name pointing into the question takes the client's case.
``Prepared`` holds those bytes with the end of every record; ``Prepared.render``
cuts them to the client's buffer at a record boundary (additional section first,
then authority, then answers, with TC set), which keeps every pointer valid since
pointers only point backwards; ``fast_key`` with ``CachedAnswer`` /
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

import bisect
import dataclasses
import ipaddress
import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dnslib
import dnslib.buffer

from overlay.errors import DnsError
from overlay.metrics import Histogram

from .message import CLASS_IN, HINFO, MX, RR, SOA, SRV, Answer, Question, Rcode, RType
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


class _Packer(dnslib.DNSBuffer):  # type: ignore[misc]  # dnslib has no type hints
    """dnslib's compressing buffer, minus names placed where a pointer cannot reach.

    A compression pointer has 14 bits, so a name written past offset 16383 can never
    be pointed to; dnslib would remember it anyway and later emit a pointer with its
    high bits cut off (a TCP answer bigger than 16 KiB would point into garbage).
    """

    def encode_name(self, name: dnslib.DNSLabel) -> None:
        before = len(self.names)
        super().encode_name(name)
        added = len(self.names) - before
        if added and self.offset > 0x3FFF:
            late = [k for k, off in itertools.islice(reversed(self.names.items()), added)
                    if off > 0x3FFF]
            for k in late:
                del self.names[k]


class _SrvData(dnslib.SRV):  # type: ignore[misc]  # dnslib has no type hints
    """dnslib's SRV, whose target later names may point into.

    RFC 2782: the target itself is never compressed; but like CoreDNS (miekg/dns)
    dnsd lets later names (the target's glue in the additional section) point to
    it, which dnslib alone does not.
    """

    def pack(self, buffer: _Packer) -> None:
        start = buffer.offset + 6
        super().pack(buffer)
        labels = self.target.label
        for i in range(len(labels)):
            if start > 0x3FFF:
                break
            buffer.names.setdefault(labels[i:], start)
            start += 1 + len(labels[i])


class _Labels:
    """Dotted names -> dnslib labels, byte for byte (latin-1, no IDNA), checked."""

    __slots__ = ("_known",)

    def __init__(self, qname: str, qlabel: dnslib.DNSLabel) -> None:
        # the query name maps to the question's own labels, so a label holding a dot
        # (legal on the wire) still compresses to the question
        self._known: dict[str, dnslib.DNSLabel] = {qname: qlabel}

    def __call__(self, name: str) -> dnslib.DNSLabel:
        label = self._known.get(name)
        if label is None:
            text = name.rstrip(".")
            parts = tuple(p.encode("latin-1", "replace") for p in text.split(".")) \
                if text else ()
            if any(not 0 < len(p) < 64 for p in parts):
                raise EncodeError(f"bad label in {name!r}")
            if sum(len(p) + 1 for p in parts) + 1 > 255:
                raise EncodeError(f"name {name[:40]!r}... longer than 255 bytes")
            label = self._known[name] = dnslib.DNSLabel(parts)
        return label


def _rdata(rr: RR, label: _Labels) -> object:
    """The dnslib rdata of ``rr`` (dnslib packs it, compressing the names it may)."""
    data = rr.rdata
    if isinstance(data, ipaddress.IPv4Address):
        return dnslib.A(tuple(data.packed))
    if isinstance(data, ipaddress.IPv6Address):
        return dnslib.AAAA(tuple(data.packed))
    if isinstance(data, str):
        kind = {RType.CNAME: dnslib.CNAME, RType.NS: dnslib.NS, RType.PTR: dnslib.PTR}
        if rr.rtype not in kind:
            raise EncodeError(f"cannot encode {rr.rtype.name} with a name as data")
        return kind[rr.rtype](label(data))
    if isinstance(data, MX):
        return dnslib.MX(label(data.exchange), data.preference)
    if isinstance(data, SRV):
        return _SrvData(data.priority, data.weight, data.port, label(data.target))
    if isinstance(data, SOA):
        return dnslib.SOA(label(data.mname), label(data.rname), (
            data.serial, data.refresh, data.retry, data.expire, data.minimum))
    if isinstance(data, HINFO):  # two character-strings, the same wire form as TXT's
        return dnslib.TXT([data.cpu.encode(), data.os.encode()])
    return dnslib.TXT(list(data))


def opt_record(do: bool, ext_rcode: int = 0) -> bytes:
    """dnsd's own OPT record (kept apart: it must survive truncation, and it is fixed)."""
    return b"\x00" + struct.pack("!HHBBHH", RType.OPT, MAX_UDP, ext_rcode, 0,
                                 0x8000 if do else 0, 0)


@dataclass(frozen=True, slots=True)
class Prepared:
    """An answer packed once, independent of the query's ID, name case and RD bit.

    ``records`` are the answer, authority and additional records as they follow
    the question in the message (compression pointers assume the question at offset
    12, which holds whatever the case of the client's name); ``ends[i]`` is where
    record ``i`` ends in it; ``counts`` gives the records per section. Pointers only
    point backwards, so any prefix of whole records is itself a valid packing: that
    is how an answer is truncated. ``complete`` is False when records that could not
    fit even a TCP message were left unpacked.
    """

    flags: int  # QR, AA, RA and rcode bits; TC, RD and the ID come per query
    records: bytes
    ends: tuple[int, ...]
    counts: tuple[int, int, int]
    opt: bytes  # b"" when the query had no EDNS
    complete: bool = True

    @property
    def size_after_question(self) -> int:
        """Bytes after the question; beyond any TCP message when not ``complete``."""
        size = len(self.records) + len(self.opt)
        return size if self.complete else TCP_LIMIT + 1

    def header10(self, rd: int, tc: bool = False,
                 counts: tuple[int, int, int] | None = None) -> bytes:
        flags = self.flags | (0x0100 if rd else 0) | (0x0200 if tc else 0)
        an, ns, ar = self.counts if counts is None else counts
        return struct.pack("!HHHHH", flags, 1, an, ns, ar + (1 if self.opt else 0))

    def render(self, ident: bytes, rd: int, question_wire: bytes, limit: int) -> bytes:
        """The full response, cut to whole records within ``limit`` bytes (TC set) if needed.

        Records go from the end: the additional section first, then authority, then
        answers, as a prefix of the packing keeps every pointer valid. dnsd's OPT
        record always stays.
        """
        head = 12 + len(question_wire)
        if head + self.size_after_question <= limit:
            return ident + self.header10(rd) + question_wire + self.records + self.opt
        kept = bisect.bisect_right(self.ends, limit - head - len(self.opt))
        an, ns, _ = self.counts
        k_an = min(an, kept)
        k_ns = min(ns, kept - k_an)
        cut = self.ends[kept - 1] if kept else 0
        return ident + self.header10(rd, True, (k_an, k_ns, kept - k_an - k_ns)) + \
            question_wire + self.records[:cut] + self.opt


def prepare(answer: Answer, query: Query, ra: bool) -> Prepared:
    """Pack an engine answer for ``query`` with dnslib (every name compressed).

    ``EncodeError`` if a record cannot be encoded.
    """
    q = query.question
    rcode = int(answer.rcode)
    flags = 0x8000 | (0x0400 if answer.aa else 0) | (0x0080 if ra else 0) | (rcode & 0xF)
    opt = opt_record(query.edns.do, rcode >> 4) if query.edns is not None else b""
    qlabel = dnslib.DNSLabel(tuple(lab.encode("latin-1") for lab in q.labels))
    label = _Labels(q.name, qlabel)
    buf = _Packer()
    buf.append(bytes(12))  # the header is per query; only its length matters here
    ends: list[int] = []
    counts = [0, 0, 0]
    complete = True
    try:
        dnslib.DNSQuestion(qlabel, q.qtype, q.qclass).pack(buf)
        start = buf.offset
        for section, rrs in enumerate((answer.answer, answer.authority, answer.additional)):
            for rr in rrs:
                if buf.offset - start > TCP_LIMIT:  # can never be sent: stop packing
                    complete = False
                    break
                dnslib.RR(label(rr.name), int(rr.rtype), CLASS_IN, max(0, rr.ttl),
                          _rdata(rr, label)).pack(buf)
                ends.append(buf.offset - start)
                counts[section] += 1
    except (dnslib.DNSError, dnslib.DNSLabelError, dnslib.buffer.BufferError, struct.error,
            ValueError) as exc:
        raise EncodeError(str(exc)) from None
    return Prepared(flags, bytes(buf.data[start:]), tuple(ends),
                    (counts[0], counts[1], counts[2]), opt, complete)


def error_response(err: FormError, ra: bool) -> bytes:
    """FORMERR/NOTIMP/BADVERS: header only (plus OPT when the query had EDNS)."""
    rcode = int(err.rcode)
    flags = 0x8000 | (err.flags & 0x7900) | (0x0080 if ra else 0) | (rcode & 0xF)
    opt = opt_record(False, rcode >> 4) if err.edns else b""
    return struct.pack("!HHHHHH", err.ident, flags, 0, 0, 0, 1 if opt else 0) + opt


def plain_response(query: Query, rcode: Rcode, ra: bool) -> bytes:
    """An empty answer with ``rcode`` that echoes the question (REFUSED, SERVFAIL)."""
    code = int(rcode)
    flags = 0x8000 | (query.flags & 0x0100) | (0x0080 if ra else 0) | (code & 0xF)
    opt = opt_record(query.edns.do, code >> 4) if query.edns is not None else b""
    return struct.pack("!HHHHHH", query.ident, flags, 1, 0, 0, 1 if opt else 0) + \
        query.question_wire + opt


def udp_limit(query: Query) -> int:
    return 512 if query.edns is None else min(max(512, query.edns.udp_size), 65535)


# -- the fast path -------------------------------------------------------------------


def rotations(prepared: Prepared, count: int) -> list[Prepared]:
    """Round robin: up to ``count`` rotations of a plain A/AAAA answer set.

    Only answers made entirely of same-type address records owned by the query
    name rotate (SkyDNS keeps CNAME chains in order). Such records hold no name a
    later pointer could refer to and are all the same length, so swapping them
    moves nothing any pointer depends on.
    """
    an = prepared.counts[0]
    if an < 2:
        return [prepared]
    bounds = (0, *prepared.ends[:an])
    chunks = [prepared.records[bounds[i]:bounds[i + 1]] for i in range(an)]
    types = {c[2:4] for c in chunks}
    if not all(c[:2] == QNAME_POINTER for c in chunks) or \
            types not in ({b"\x00\x01"}, {b"\x00\x1c"}):
        return [prepared]
    rest = prepared.records[bounds[an]:]
    return [dataclasses.replace(prepared, records=b"".join(chunks[i:] + chunks[:i]) + rest)
            for i in range(min(count, an))]


class CachedAnswer:
    """Everything the fast path needs for one cache key (and the packing to cut it).

    ``zone`` and ``latency`` are what the metrics file its hits under: the zone
    label and the duration histogram of its (zone, type).
    """

    __slots__ = ("denial", "expires", "hdr", "hits", "latency", "limit_needed", "rcode",
                 "rtype", "tail_list", "tails", "variants", "zone")

    def __init__(self, variants: Sequence[Prepared], expires: float, rtype: int,
                 rcode: int, question_len: int, zone: str, latency: Histogram) -> None:
        first = variants[0]
        self.hdr = (first.header10(0), first.header10(1))
        self.limit_needed = 12 + question_len + first.size_after_question
        tails = [p.records + p.opt for p in variants]
        self.tail_list = tails
        self.tails: Iterator[bytes] = itertools.cycle(tails)
        self.variants: Iterator[Prepared] = itertools.cycle(variants)
        self.hits = 0
        self.expires = expires
        self.rtype = rtype
        self.rcode = rcode
        self.denial = rcode != Rcode.NOERROR or first.counts[0] == 0  # NXDOMAIN/NODATA
        self.zone = zone
        self.latency = latency

    def render(self, ident: bytes, rd: int, question_wire: bytes, limit: int) -> bytes:
        """The response for a client that takes ``limit`` bytes (cut, TC set, if needed)."""
        if self.limit_needed <= limit:
            return ident + self.hdr[1 if rd else 0] + question_wire + next(self.tails)
        return next(self.variants).render(ident, rd, question_wire, limit)


class ExactAnswer:
    """A whole response minus the ID, for a byte-identical repeat of a query."""

    __slots__ = ("denial", "hits", "latency", "rcode", "responses", "rtype", "zone")

    def __init__(self, responses: Sequence[bytes], entry: CachedAnswer) -> None:
        self.responses: Iterator[bytes] = itertools.cycle(responses) \
            if len(responses) > 1 else itertools.repeat(responses[0])
        self.rtype = entry.rtype
        self.rcode = entry.rcode
        self.denial = entry.denial
        self.zone = entry.zone
        self.latency = entry.latency
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

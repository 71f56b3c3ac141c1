"""Wire codec: strict parsing (FORMERR/NOTIMP/BADVERS/drop), case-preserving answers,
record-by-record truncation, and the fast-path key agreeing with the strict parser."""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import struct

import dnslib
import pytest
from dnslib import QTYPE

from dnsd.engine import Engine, EngineConfig
from dnsd.index import Index
from dnsd.message import RR, SRV, Answer, Rcode, RType
from dnsd.wire import (
    TCP_LIMIT,
    DropError,
    EncodeError,
    FormError,
    Prepared,
    Query,
    fast_key,
    parse_query,
    prepare,
    rotations,
    udp_limit,
)
from overlay.store.api import KeyValue, Listing


def _q(name: str, qtype: str = "A", edns: int | None = None, do: bool = False,
       ident: int = 0x1234) -> bytes:
    rec = dnslib.DNSRecord.question(name, qtype)
    rec.header.id = ident
    if edns is not None:
        rec.add_ar(dnslib.EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(rec.pack())


HDR = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
QEND = b"\x01a\x06skydns\x05local\x00\x00\x01\x00\x01"

BAD = [
    ("empty", b"", None),
    ("short-header", b"\x00\x01\x02", None),
    ("a-response", struct.pack("!HHHHHH", 7, 0x8000, 1, 0, 0, 0) + QEND, None),
    ("no-question", struct.pack("!HHHHHH", 7, 0, 0, 0, 0, 0), Rcode.FORMERR),
    ("two-questions", struct.pack("!HHHHHH", 7, 0, 2, 0, 0, 0) + QEND + QEND, Rcode.FORMERR),
    ("opcode-notify", struct.pack("!HHHHHH", 7, 4 << 11, 1, 0, 0, 0) + QEND, Rcode.NOTIMP),
    ("name-past-end", HDR + b"\x05ab", Rcode.FORMERR),
    ("pointer-in-question", HDR + b"\xc0\x0c\x00\x01\x00\x01", Rcode.FORMERR),
    ("pointer-loop", HDR + b"\x01a\xc0\x0c\x00\x01\x00\x01", Rcode.FORMERR),
    ("extended-label", HDR + b"\x41a\x00\x00\x01\x00\x01", Rcode.FORMERR),
    ("no-type-class", HDR + b"\x01a\x00\x00", Rcode.FORMERR),
    ("trailing-bytes", HDR + QEND + b"\xff", Rcode.FORMERR),
    ("name-over-255", HDR + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", Rcode.FORMERR),
    ("bogus-arcount", struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 9) + QEND, Rcode.FORMERR),
    ("bogus-ancount", struct.pack("!HHHHHH", 7, 0, 1, 5, 0, 0) + QEND, Rcode.FORMERR),
    ("opt-not-root", struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 1) + QEND
     + b"\x01x\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00", Rcode.FORMERR),
    ("two-opts", struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 2) + QEND
     + (b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00") * 2, Rcode.FORMERR),
    ("opt-option-overrun", struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 1) + QEND
     + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x09", Rcode.FORMERR),
    ("edns-version-1", struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 1) + QEND
     + b"\x00\x00\x29\x10\x00\x00\x01\x00\x00\x00\x00", Rcode.BADVERS),
]


@pytest.mark.parametrize(("data", "rcode"), [(d, r) for _, d, r in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_queries(data: bytes, rcode: Rcode | None) -> None:
    if rcode is None:
        with pytest.raises(DropError):
            parse_query(data)
    else:
        with pytest.raises(FormError) as info:
            parse_query(data)
        assert info.value.rcode == rcode
        assert info.value.ident == 7


def test_parse_keeps_case_and_edns() -> None:
    q = parse_query(_q("WeB.SkyDNS.local", "SRV", edns=4096, do=True))
    assert q.question.labels == ("web", "skydns", "local")
    assert q.question.qtype == RType.SRV
    assert q.question_wire.startswith(b"\x03WeB\x06SkyDNS")
    assert q.edns is not None and q.edns.udp_size == 4096 and q.edns.do


def _index(records: dict[str, str]) -> Index:
    idx = Index()
    items = tuple(KeyValue(k.encode(), v.encode(), i + 1, i + 1, 1)
                  for i, (k, v) in enumerate(records.items()))
    idx.load(Listing(items, 10))
    return idx


def test_owner_keeps_query_case_and_id() -> None:
    idx = _index({"/skydns/local/skydns/web/1": '{"host":"10.0.0.1"}'})
    query = parse_query(_q("wEb.SKYDNS.local", ident=0xBEEF))
    ans = Engine(EngineConfig()).resolve(idx, query.question, 0.0)
    out = prepare(ans, query, ra=False).render(b"\xbe\xef", 1, query.question_wire, 512)
    reply = dnslib.DNSRecord.parse(out)
    assert reply.header.id == 0xBEEF and reply.header.rd == 1 and reply.header.aa == 1
    assert str(reply.rr[0].rname) == "wEb.SKYDNS.local."
    assert str(reply.rr[0].rdata) == "10.0.0.1"


def test_truncation_drops_additional_first_and_sets_tc() -> None:
    query = parse_query(_q("big.skydns.local", "SRV"))
    answer = tuple(RR("big.skydns.local.", RType.SRV, 60,
                      SRV(10, 10, 80, f"t{i}.big.skydns.local.")) for i in range(20))
    extra = tuple(RR(f"t{i}.big.skydns.local.", RType.A, 60, ipaddress.ip_address(f"10.0.0.{i}"))
                  for i in range(20))
    prepared = prepare(Answer(Rcode.NOERROR, answer, (), extra), query, ra=False)
    full = prepared.render(b"\x00\x01", 0, query.question_wire, 65535)
    assert not dnslib.DNSRecord.parse(full).header.tc
    cut = prepared.render(b"\x00\x01", 0, query.question_wire, 512)
    assert len(cut) <= 512
    msg = dnslib.DNSRecord.parse(cut)
    assert msg.header.tc == 1
    assert len(msg.ar) == 0 and 0 < len(msg.rr) < 20  # additional went first, then answers


def test_truncation_keeps_answers_when_only_additional_overflows() -> None:
    query = parse_query(_q("big.skydns.local", "A"))
    answer = (RR("big.skydns.local.", RType.A, 60, ipaddress.ip_address("10.0.0.1")),)
    extra = tuple(RR(f"pad{i}.big.skydns.local.", RType.TXT, 60, (b"x" * 200,))
                  for i in range(5))
    cut = prepare(Answer(Rcode.NOERROR, answer, (), extra), query, False).render(
        b"\x00\x01", 0, query.question_wire, 512)
    msg = dnslib.DNSRecord.parse(cut)
    assert msg.header.tc == 1 and len(msg.rr) == 1 and len(msg.ar) < 5


@pytest.mark.parametrize("seed", range(5))
def test_fast_key_agrees_with_parser(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        name = ".".join(rng.choice(["a", "Web", "x-1", "SKY", "dns"]) for _ in range(3))
        qtype = rng.choice(["A", "AAAA", "SRV", "TXT", "MX"])
        edns = rng.choice([None, 512, 1232, 4096])
        data = _q(name + ".skydns.local", qtype, edns, do=rng.random() < 0.3,
                  ident=rng.randrange(65536))
        fk = fast_key(data)
        q = parse_query(data)
        assert fk is not None and fk[0] == q.cache_key
        assert data[12:fk[1]] == q.question_wire


def test_fast_key_refuses_odd_shapes() -> None:
    assert fast_key(_q("a.skydns.local")[:-1]) is None
    assert fast_key(struct.pack("!HHHHHH", 7, 0, 1, 1, 0, 0) + QEND) is None
    assert fast_key(struct.pack("!HHHHHH", 7, 0x8000, 1, 0, 0, 0) + QEND) is None


# -- packing: every name compressed (RFC 1035 4.1.4), then truncation at record bounds

# CoreDNS's cname test layout: seven CNAMEs, then an A record (zone skydns.test.)
CHAIN7 = {
    "a.server1.dev.region1.skydns.test": "cname1.region2.skydns.test",
    **{f"cname{i}.region2.skydns.test": f"cname{i + 1}.region2.skydns.test"
       for i in range(1, 6)},
    "cname6.region2.skydns.test": "endpoint.region2.skydns.test",
    "endpoint.region2.skydns.test": "10.240.0.1",
}


def _answer_for(store: dict[str, str], wire_query: bytes,
                domain: str = "skydns.test.") -> tuple[Query, Prepared]:
    idx = _index({"/skydns/" + "/".join(reversed(name.split("."))): json.dumps({"host": host})
                  for name, host in store.items()})
    query = parse_query(wire_query)
    ans = Engine(EngineConfig.from_domains([domain])).resolve(idx, query.question, 0.0)
    return query, prepare(ans, query, ra=False)


@pytest.mark.parametrize("qtype", ["A", "SRV"])
def test_chain_of_seven_cnames_fits_one_512_byte_reply(qtype: str) -> None:
    query, prepared = _answer_for(CHAIN7, _q("a.server1.dev.region1.skydns.test", qtype))
    out = prepared.render(b"\x00\x01", 1, query.question_wire, udp_limit(query))
    assert udp_limit(query) == 512 and len(out) <= 512
    msg = dnslib.DNSRecord.parse(out)
    assert not msg.header.tc
    chain = [(str(r.rname), QTYPE[r.rtype], str(r.rdata)) for r in [*msg.rr, *msg.ar]]
    hops = [f"cname{i}.region2.skydns.test." for i in range(1, 7)] + \
        ["endpoint.region2.skydns.test."]
    expected = [(a, "CNAME", b) for a, b in itertools.pairwise(hops)] + \
        [("endpoint.region2.skydns.test.", "A", "10.240.0.1")]
    if qtype == "A":
        assert chain == [("a.server1.dev.region1.skydns.test.", "CNAME", hops[0]), *expected]
    else:
        assert chain == [("a.server1.dev.region1.skydns.test.", "SRV",
                          "10 100 0 cname1.region2.skydns.test."), *expected]
    # each name written once; an SRV target is never compressed itself (RFC 2782), but
    # the glue after it points into it
    assert out.count(b"\x07region2") == 1
    assert out.count(b"\x04test") == (1 if qtype == "A" else 2)


def test_compressed_names_keep_the_query_case() -> None:
    query, prepared = _answer_for(CHAIN7, _q("A.Server1.DEV.region1.SkyDNS.Test", "A"))
    msg = dnslib.DNSRecord.parse(prepared.render(b"\x00\x01", 0, query.question_wire, 512))
    assert str(msg.rr[0].rname) == "A.Server1.DEV.region1.SkyDNS.Test."
    assert [str(r.rname).lower() for r in msg.rr[1:]] == \
        [f"cname{i}.region2.skydns.test." for i in range(1, 7)] + ["endpoint.region2.skydns.test."]


def _srv_farm(n: int) -> tuple[Query, Prepared]:
    query = parse_query(_q("big.skydns.local", "SRV"))
    answer = tuple(RR("big.skydns.local.", RType.SRV, 60,
                      SRV(10, 10, 80, f"target-{i}.big.skydns.local.")) for i in range(n))
    extra = tuple(RR(f"target-{i}.big.skydns.local.", RType.A, 60,
                     ipaddress.ip_address(0x0A000000 + i)) for i in range(n))
    return query, prepare(Answer(Rcode.NOERROR, answer, (), extra), query, ra=False)


def test_truncated_compressed_answer_still_decodes() -> None:
    query, prepared = _srv_farm(40)
    cut = prepared.render(b"\x00\x01", 0, query.question_wire, 512)
    msg = dnslib.DNSRecord.parse(cut)
    assert msg.header.tc and len(cut) <= 512 and not msg.ar
    assert [str(r.rdata.target) for r in msg.rr] == \
        [f"target-{i}.big.skydns.local." for i in range(len(msg.rr))]


def test_names_past_16k_are_not_pointed_to() -> None:
    # a pointer has 14 bits: a name written past offset 16383 must be written in full
    query, prepared = _srv_farm(600)
    out = prepared.render(b"\x00\x01", 0, query.question_wire, TCP_LIMIT)
    assert len(out) > 0x4000
    msg = dnslib.DNSRecord.parse(out)
    assert not msg.header.tc
    assert [str(r.rname) for r in msg.ar] == [f"target-{i}.big.skydns.local." for i in range(600)]
    assert [str(r.rdata) for r in msg.ar] == [str(ipaddress.ip_address(0x0A000000 + i))
                                             for i in range(600)]


def test_answer_beyond_a_tcp_message_is_cut_with_tc() -> None:
    query = parse_query(_q("huge.skydns.local", "TXT"))
    answer = tuple(RR("huge.skydns.local.", RType.TXT, 60, (b"%05d" % i + b"x" * 200,))
                   for i in range(400))
    prepared = prepare(Answer(Rcode.NOERROR, answer), query, ra=False)
    assert not prepared.complete and prepared.size_after_question > TCP_LIMIT
    out = prepared.render(b"\x00\x01", 0, query.question_wire, TCP_LIMIT)
    msg = dnslib.DNSRecord.parse(out)
    assert msg.header.tc and len(out) <= TCP_LIMIT and 250 < len(msg.rr) < 400


@pytest.mark.parametrize(("name", "target"), [
    ("a..skydns.local.", "x.skydns.local."),
    ("a.skydns.local.", "x" * 64 + ".skydns.local."),
    ("a.skydns.local.", ("x" * 60 + ".") * 5),
])
def test_unencodable_names_are_encode_errors(name: str, target: str) -> None:
    query = parse_query(_q("a.skydns.local"))
    with pytest.raises(EncodeError):
        prepare(Answer(Rcode.NOERROR, (RR(name, RType.CNAME, 60, target),)), query, False)


def test_round_robin_rotates_address_answers_only() -> None:
    query = parse_query(_q("r.skydns.local"))
    addrs = tuple(RR("r.skydns.local.", RType.A, 60, ipaddress.ip_address(f"10.0.0.{i}"))
                  for i in range(3))
    variants = rotations(prepare(Answer(Rcode.NOERROR, addrs), query, False), 8)

    def firsts(ps: list[Prepared]) -> list[str]:
        return [str(dnslib.DNSRecord.parse(p.render(b"\x00\x01", 0, query.question_wire,
                                                    512)).rr[0].rdata) for p in ps]

    assert firsts(variants) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    chain = (RR("r.skydns.local.", RType.CNAME, 60, "s.skydns.local."),
             RR("s.skydns.local.", RType.A, 60, ipaddress.ip_address("10.0.0.9")), *addrs)
    assert len(rotations(prepare(Answer(Rcode.NOERROR, chain), query, False), 8)) == 1

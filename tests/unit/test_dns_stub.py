"""Stub zones, the pure parts: the table built from an index, lookups, the loop option."""

from __future__ import annotations

import struct

import dnslib
import pytest

from dnsd.index import Index
from dnsd.server import _requery
from dnsd.stub import STUB_OPTION, StubProblem, StubTable, build
from dnsd.wire import parse_query
from overlay.store.api import KeyValue, Listing

SERVED = (("skydns", "local"),)
STUB = "/skydns/local/skydns/dns/stub"


def _index(records: dict[str, bytes]) -> Index:
    index = Index("/skydns")
    items = tuple(KeyValue(k.encode(), v, i + 1, i + 1, 1)
                  for i, (k, v) in enumerate(records.items()))
    index.load(Listing(items, len(items)))
    return index


def _build(records: dict[str, bytes]) -> tuple[StubTable, tuple[StubProblem, ...]]:
    return build(_index(records), SERVED)


@pytest.mark.parametrize(("records", "zones", "bad"), [
    ({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.53","port":5353}'},
     {("example", "com"): (("198.18.0.53", 5353),)}, []),
    ({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.53"}'},
     {("example", "com"): (("198.18.0.53", 53),)}, []),
    ({f"{STUB}/com/example/ns1": b'{"host":"ns1.example.net"}'},
     {}, [f"{STUB}/com/example/ns1"]),
    ({f"{STUB}/com/example/ns1": b'{"port":53}'}, {}, [f"{STUB}/com/example/ns1"]),
    ({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.53","port":70000}'}, {}, []),
    ({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.53"}',
      f"{STUB}/com/example/ns2": b'{"host":"2001:db8::53","port":5300}',
      f"{STUB}/com/example/ns3": b'{"host":"198.18.0.53"}'},
     {("example", "com"): (("198.18.0.53", 53), ("2001:db8::53", 5300))}, []),
    ({f"{STUB}/ns1": b'{"host":"198.18.0.53"}'}, {}, [f"{STUB}/ns1"]),
    ({f"{STUB}/local/ns1": b'{"host":"198.18.0.53"}',
      f"{STUB}/local/skydns/ns1": b'{"host":"198.18.0.53"}'},
     {}, [f"{STUB}/local/ns1", f"{STUB}/local/skydns/ns1"]),
    ({"/skydns/local/skydns/web": b'{"host":"10.0.0.1"}',
      "/skydns/local/other/dns/stub/com/example/ns1": b'{"host":"198.18.0.53"}'}, {}, []),
], ids=["valid", "missing-port", "name-host", "no-host", "port-out-of-range",
        "several-servers", "no-zone-label", "own-zone", "not-a-stub"])
def test_build(records: dict[str, bytes], zones: dict[tuple[str, ...], object],
               bad: list[str]) -> None:
    table, problems = _build(records)
    assert dict(table.zones) == zones
    assert [p.key for p in problems] == bad
    assert all(p.reason for p in problems)


def test_nested_zones_longest_suffix_wins() -> None:
    table, _ = _build({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.1"}',
                       f"{STUB}/com/example/sub/ns1": b'{"host":"198.18.0.2"}'})
    assert table.lookup(("www", "sub", "example", "com")) == \
        (("sub", "example", "com"), (("198.18.0.2", 53),))
    assert table.lookup(("sub", "example", "com"))[0] == ("sub", "example", "com")  # type: ignore[index]
    assert table.lookup(("www", "example", "com")) == \
        (("example", "com"), (("198.18.0.1", 53),))


@pytest.mark.parametrize(("labels", "zone"), [
    (("example", "com"), ("example", "com")),
    (("a", "b", "example", "com"), ("example", "com")),
    (("notexample", "com"), None),
    (("com",), None),
    (("example", "com", "evil"), None),
    ((), None),
    (("web", "skydns", "local"), None),
], ids=["apex", "deep", "label-suffix-only", "parent", "zone-not-a-suffix", "root",
        "served-zone"])
def test_lookup(labels: tuple[str, ...], zone: tuple[str, ...] | None) -> None:
    table, _ = _build({f"{STUB}/com/example/ns1": b'{"host":"198.18.0.1"}'})
    hit = table.lookup(labels)
    assert (hit[0] if hit else None) == zone


def test_empty_table() -> None:
    assert StubTable().lookup(("www", "example", "com")) is None


def _with_options(*options: tuple[int, bytes]) -> bytes:
    q = dnslib.DNSRecord.question("www.example.com", "A")
    q.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(c, d) for c, d in options]))
    return bytes(q.pack())


@pytest.mark.parametrize(("options", "marked"), [
    ((), False),
    (((STUB_OPTION, b"\x01"),), True),
    (((10, b"12345678"), (STUB_OPTION, b"\x01")), True),
    (((STUB_OPTION, b"\x00"),), False),
    (((STUB_OPTION, b"\x01\x01"),), False),
    (((STUB_OPTION - 1, b"\x01"),), False),
], ids=["none", "marked", "after-cookie", "data-0", "data-long", "other-code"])
def test_loop_option_detection(options: tuple[tuple[int, bytes], ...], marked: bool) -> None:
    edns = parse_query(_with_options(*options)).edns
    assert edns is not None and edns.stub is marked


def test_no_edns_is_not_marked() -> None:
    assert parse_query(bytes(dnslib.DNSRecord.question("a.example.com").pack())).edns is None


@pytest.mark.parametrize("client_edns", [None, 4096], ids=["no-edns", "edns"])
def test_relayed_stub_query_carries_the_option(client_edns: int | None) -> None:
    q = dnslib.DNSRecord.question("www.example.com", "A")
    if client_edns is not None:
        q.add_ar(dnslib.EDNS0(udp_len=client_edns))
    query = parse_query(bytes(q.pack()))
    relayed = parse_query(_requery(query, stub=True))
    assert relayed.edns is not None and relayed.edns.stub
    assert relayed.edns.udp_size == (512 if client_edns is None else 1232)
    assert relayed.ident == query.ident and relayed.question == query.question
    plain = _requery(query)
    assert struct.pack("!H", STUB_OPTION) not in plain[len(plain) - 16:]
    assert (parse_query(plain).edns is None) is (client_edns is None)


@pytest.mark.parametrize(("argv", "environ", "on"), [
    ([], {}, False),
    (["-stubzones"], {}, True),
    ([], {"SKYDNS_STUBZONES": "true"}, True),
    (["-stubzones=false"], {"SKYDNS_STUBZONES": "true"}, False),
], ids=["default-off", "flag", "env", "flag-beats-env"])
def test_stubzones_flag(argv: list[str], environ: dict[str, str], on: bool) -> None:
    from dnsd.config import parse_config

    assert parse_config(argv, environ).stubzones is on

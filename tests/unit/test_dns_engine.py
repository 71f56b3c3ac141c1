"""The SkyDNS answer rules, as a table: store contents | question | expected answer.

Pure: the index is loaded from a listing and the engine is called directly with a
fixed clock value. Names in expectations are lower-case (the wire codec restores
the query's case; see test_dns_wire.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from dnsd.engine import Engine, EngineConfig
from dnsd.index import Index
from dnsd.keys import name_to_key, split_name
from dnsd.message import CLASS_IN, Question, Rcode, RType
from overlay.store.api import KeyValue, Listing

NOW = 5000.0
REV = 7
Z = "skydns.local."
NEG = f"{Z} 60 SOA ns.dns.{Z} hostmaster.{Z} {REV} 28800 7200 604800 60"

Store = dict[str, object]  # name (or "/raw/key") -> JSON object, raw bytes, or (json, lease)


@dataclass(frozen=True)
class Case:
    id: str
    store: Store
    qname: str
    qtype: RType | int
    rcode: Rcode = Rcode.NOERROR
    answer: list[str] = field(default_factory=list)
    authority: list[str] | None = None  # None: [] for positive answers, [NEG] for negative
    additional: list[str] = field(default_factory=list)
    aa: bool = True
    forward: bool = False
    leases: dict[int, float] = field(default_factory=dict)  # lease -> remaining seconds
    domains: tuple[str, ...] = (Z,)
    ttl: int = 3600
    sort: bool = False  # compare answer sets regardless of order


def _listing(store: Store) -> Listing:
    items = []
    for i, (name, spec) in enumerate(store.items()):
        key = name if name.startswith("/") else name_to_key(name)
        lease = 0
        if isinstance(spec, tuple):
            spec, lease = spec
        raw = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
        items.append(KeyValue(key.encode(), raw, i + 1, i + 1, 1, lease))
    return Listing(tuple(items), REV)


RAILS: Store = {
    "1.rails.production.east.skydns.local.": {"host": "10.0.0.1", "port": 8080},
    "2.rails.production.east.skydns.local.": {"host": "10.0.0.2", "port": 8080},
    "4.rails.staging.east.skydns.local.": {"host": "10.0.1.4", "port": 8080},
    "a.ipv6.west.skydns.local.": {"host": "2001::8:8:8:8", "port": 53},
    "web.skydns.local.": {"host": "rails.production.east.skydns.local"},
}

# CoreDNS's cname test layout (plugin/etcd cname tests): seven CNAMEs, then an A record
CHAIN7: Store = {
    "a.server1.dev.region1.skydns.test.": {"host": "cname1.region2.skydns.test"},
    **{f"cname{i}.region2.skydns.test.": {"host": f"cname{i + 1}.region2.skydns.test"}
       for i in range(1, 6)},
    "cname6.region2.skydns.test.": {"host": "endpoint.region2.skydns.test"},
    "endpoint.region2.skydns.test.": {"host": "10.240.0.1"},
}
CHAIN7_RRS = ["a.server1.dev.region1.skydns.test. 3600 CNAME cname1.region2.skydns.test."] + [
    f"cname{i}.region2.skydns.test. 3600 CNAME cname{i + 1}.region2.skydns.test."
    for i in range(1, 6)] + [
    "cname6.region2.skydns.test. 3600 CNAME endpoint.region2.skydns.test.",
    "endpoint.region2.skydns.test. 3600 A 10.240.0.1"]
TXT_CHAIN: Store = {"t.skydns.local.": {"host": "u.skydns.local"},
                    "u.skydns.local.": {"host": "v.skydns.local"},
                    "v.skydns.local.": {"text": "hello"}}
APEX: Store = {"a.skydns.local.": {"host": "10.0.0.1"},
               "x.apex.dns.skydns.local.": {"host": "10.0.0.53"},
               "y.apex.dns.skydns.local.": {"host": "2001::53"}}

CASES = [
    # --- A/AAAA and the subtree rule
    Case("a-single", RAILS, "1.rails.production.east.skydns.local.", RType.A,
         answer=["1.rails.production.east.skydns.local. 3600 A 10.0.0.1"]),
    Case("a-subtree-collects-children", RAILS, "rails.production.east.skydns.local.", RType.A,
         answer=["rails.production.east.skydns.local. 3600 A 10.0.0.1",
                 "rails.production.east.skydns.local. 3600 A 10.0.0.2"]),
    Case("a-subtree-deeper", RAILS, "east.skydns.local.", RType.A, sort=True,
         answer=["east.skydns.local. 3600 A 10.0.0.1", "east.skydns.local. 3600 A 10.0.0.2",
                 "east.skydns.local. 3600 A 10.0.1.4"]),
    Case("aaaa-v6-host", RAILS, "a.ipv6.west.skydns.local.", RType.AAAA,
         answer=["a.ipv6.west.skydns.local. 3600 AAAA 2001::8:8:8:8"]),
    Case("a-on-v6-only-is-nodata", RAILS, "a.ipv6.west.skydns.local.", RType.A),
    Case("aaaa-on-v4-only-is-nodata", RAILS, "1.rails.production.east.skydns.local.",
         RType.AAAA),
    # SkyDNS/CoreDNS take a host by net.ParseIP(host).To4(): an IPv4-mapped IPv6 address
    # (::ffff:a.b.c.d) is an A record, never an AAAA
    Case("v4-mapped-host-is-an-a-record", {"m.skydns.local.": {"host": "::ffff:10.0.0.7"}},
         "m.skydns.local.", RType.A, answer=["m.skydns.local. 3600 A 10.0.0.7"]),
    Case("v4-mapped-host-has-no-aaaa", {"m.skydns.local.": {"host": "::ffff:10.0.0.7"}},
         "m.skydns.local.", RType.AAAA),
    Case("a-duplicate-ips-collapsed",
         {"x.dup.skydns.local.": {"host": "10.1.1.1"},
          "y.dup.skydns.local.": {"host": "10.1.1.1"}},
         "dup.skydns.local.", RType.A, answer=["dup.skydns.local. 3600 A 10.1.1.1"]),
    Case("nxdomain-with-soa", RAILS, "nothing.skydns.local.", RType.A, Rcode.NXDOMAIN),
    Case("prefix-boundary-east-not-eastern",
         {"x.eastern.skydns.local.": {"host": "10.2.2.2"}}, "east.skydns.local.", RType.A,
         Rcode.NXDOMAIN),
    Case("key-and-children-coexist",
         {"svc.skydns.local.": {"host": "10.3.0.1"},
          "a.svc.skydns.local.": {"host": "10.3.0.2"}},
         "svc.skydns.local.", RType.A,
         answer=["svc.skydns.local. 3600 A 10.3.0.1", "svc.skydns.local. 3600 A 10.3.0.2"]),
    Case("nodata-for-missing-type", RAILS, "1.rails.production.east.skydns.local.", RType.MX),
    Case("nodata-for-unknown-type", RAILS, "1.rails.production.east.skydns.local.", 99),
    Case("empty-host-txt-entry-gives-no-a",
         {"t.skydns.local.": {"text": "hello"}}, "t.skydns.local.", RType.A),
    Case("bad-json-key-exists-so-nodata",
         {"bad.skydns.local.": b"{not json", "/skydns/local/skydns/ok": {"host": "10.4.0.1"}},
         "bad.skydns.local.", RType.A),
    # --- CNAME chains
    Case("cname-chain-in-zone", RAILS, "web.skydns.local.", RType.A,
         answer=["web.skydns.local. 3600 CNAME rails.production.east.skydns.local.",
                 "rails.production.east.skydns.local. 3600 A 10.0.0.1",
                 "rails.production.east.skydns.local. 3600 A 10.0.0.2"]),
    Case("cname-two-hops",
         {"a.skydns.local.": {"host": "b.skydns.local"},
          "b.skydns.local.": {"host": "c.skydns.local"},
          "c.skydns.local.": {"host": "10.5.0.1"}},
         "a.skydns.local.", RType.A,
         answer=["a.skydns.local. 3600 CNAME b.skydns.local.",
                 "b.skydns.local. 3600 CNAME c.skydns.local.", "c.skydns.local. 3600 A 10.5.0.1"]),
    Case("cname-loop-is-nodata",
         {"a.skydns.local.": {"host": "b.skydns.local"},
          "b.skydns.local.": {"host": "a.skydns.local"}},
         "a.skydns.local.", RType.A),
    Case("cname-dead-end-is-nodata", {"a.skydns.local.": {"host": "gone.skydns.local"}},
         "a.skydns.local.", RType.A),
    Case("cname-self-is-nodata", {"a.skydns.local.": {"host": "a.skydns.local"}},
         "a.skydns.local.", RType.A),
    Case("cname-chain-of-8-resolves",
         {**{f"h{i}.skydns.local.": {"host": f"h{i + 1}.skydns.local"} for i in range(8)},
          "h8.skydns.local.": {"host": "10.6.0.8"}},
         "h0.skydns.local.", RType.A,
         answer=[f"h{i}.skydns.local. 3600 CNAME h{i + 1}.skydns.local." for i in range(8)]
         + ["h8.skydns.local. 3600 A 10.6.0.8"]),
    Case("cname-chain-of-9-is-nodata",
         {**{f"h{i}.skydns.local.": {"host": f"h{i + 1}.skydns.local"} for i in range(9)},
          "h9.skydns.local.": {"host": "10.6.0.9"}},
         "h0.skydns.local.", RType.A),
    Case("cname-out-of-zone-is-bare", {"ext.skydns.local.": {"host": "www.example.com"}},
         "ext.skydns.local.", RType.A, answer=["ext.skydns.local. 3600 CNAME www.example.com."]),
    Case("cname-query-exact-name-host", RAILS, "web.skydns.local.", RType.CNAME,
         answer=["web.skydns.local. 3600 CNAME rails.production.east.skydns.local."]),
    Case("cname-query-ip-host-nodata", RAILS, "1.rails.production.east.skydns.local.",
         RType.CNAME),
    Case("cname-query-no-subtree", RAILS, "skydns.local.", RType.CNAME),
    Case("host-and-text-entry-gives-no-cname",
         {"reg.skydns.local.": {"host": "other.example.com", "text": "heritage=external-dns"}},
         "reg.skydns.local.", RType.A),
    # --- SRV
    Case("srv-ip-hosts-key-derived-targets-and-glue", RAILS,
         "rails.production.east.skydns.local.", RType.SRV,
         answer=["rails.production.east.skydns.local. 3600 SRV 10 50 8080 "
                 "1.rails.production.east.skydns.local.",
                 "rails.production.east.skydns.local. 3600 SRV 10 50 8080 "
                 "2.rails.production.east.skydns.local."],
         additional=["1.rails.production.east.skydns.local. 3600 A 10.0.0.1",
                     "2.rails.production.east.skydns.local. 3600 A 10.0.0.2"]),
    Case("srv-weights-130-80-150",
         {"a.w.skydns.local.": {"host": "10.7.0.1", "weight": 130},
          "b.w.skydns.local.": {"host": "10.7.0.2", "weight": 80},
          "c.w.skydns.local.": {"host": "10.7.0.3", "weight": 150}},
         "w.skydns.local.", RType.SRV,
         answer=["w.skydns.local. 3600 SRV 10 36 0 a.w.skydns.local.",
                 "w.skydns.local. 3600 SRV 10 22 0 b.w.skydns.local.",
                 "w.skydns.local. 3600 SRV 10 41 0 c.w.skydns.local."],
         additional=["a.w.skydns.local. 3600 A 10.7.0.1", "b.w.skydns.local. 3600 A 10.7.0.2",
                     "c.w.skydns.local. 3600 A 10.7.0.3"]),
    Case("srv-weight-per-priority",
         {"a.p.skydns.local.": {"host": "10.8.0.1", "priority": 5, "weight": 10},
          "b.p.skydns.local.": {"host": "10.8.0.2", "priority": 5, "weight": 30},
          "c.p.skydns.local.": {"host": "10.8.0.3", "port": 1}},
         "p.skydns.local.", RType.SRV,
         answer=["p.skydns.local. 3600 SRV 5 25 0 a.p.skydns.local.",
                 "p.skydns.local. 3600 SRV 5 75 0 b.p.skydns.local.",
                 "p.skydns.local. 3600 SRV 10 100 1 c.p.skydns.local."],
         additional=["a.p.skydns.local. 3600 A 10.8.0.1", "b.p.skydns.local. 3600 A 10.8.0.2",
                     "c.p.skydns.local. 3600 A 10.8.0.3"]),
    Case("srv-targetstrip",
         {"x1.db.skydns.local.": {"host": "10.9.0.1", "port": 5432, "targetstrip": 1}},
         "db.skydns.local.", RType.SRV,
         answer=["db.skydns.local. 3600 SRV 10 100 5432 db.skydns.local."],
         additional=["db.skydns.local. 3600 A 10.9.0.1"]),
    Case("srv-targetstrip-overshoot-keeps-name",
         {"x1.db.skydns.local.": {"host": "10.9.0.1", "port": 5432, "targetstrip": 9}},
         "db.skydns.local.", RType.SRV,
         answer=["db.skydns.local. 3600 SRV 10 100 5432 x1.db.skydns.local."],
         additional=["x1.db.skydns.local. 3600 A 10.9.0.1"]),
    Case("srv-name-host-in-zone-glue", {**RAILS, "x.api.skydns.local.": {
        "host": "1.rails.production.east.skydns.local", "port": 443}},
         "api.skydns.local.", RType.SRV,
         answer=["api.skydns.local. 3600 SRV 10 100 443 1.rails.production.east.skydns.local."],
         additional=["1.rails.production.east.skydns.local. 3600 A 10.0.0.1"]),
    Case("srv-name-host-out-of-zone-no-glue",
         {"x.ext.skydns.local.": {"host": "www.example.com", "port": 80}},
         "ext.skydns.local.", RType.SRV,
         answer=["ext.skydns.local. 3600 SRV 10 100 80 www.example.com."]),
    Case("srv-dedup-target-and-port",
         {"a.d.skydns.local.": {"host": "www.example.com", "port": 80},
          "b.d.skydns.local.": {"host": "www.example.com", "port": 80}},
         "d.skydns.local.", RType.SRV,
         answer=["d.skydns.local. 3600 SRV 10 50 80 www.example.com."]),
    Case("srv-skips-txt-only-entries",
         {"a.s.skydns.local.": {"text": "x"}, "b.s.skydns.local.": {"host": "10.1.0.1"}},
         "s.skydns.local.", RType.SRV,
         answer=["s.skydns.local. 3600 SRV 10 100 0 b.s.skydns.local."],
         additional=["b.s.skydns.local. 3600 A 10.1.0.1"]),
    # --- TXT, MX, PTR
    Case("txt-from-text", {"a.t.skydns.local.": {"text": "one"},
                           "b.t.skydns.local.": {"host": "10.0.9.9"}},
         "t.skydns.local.", RType.TXT, answer=['t.skydns.local. 3600 TXT "one"']),
    Case("txt-split-255", {"t.skydns.local.": {"text": "x" * 300}}, "t.skydns.local.", RType.TXT,
         answer=[f't.skydns.local. 3600 TXT "{"x" * 255}" "{"x" * 45}"']),
    Case("txt-host-and-text-entry", {"reg.skydns.local.": {"host": "o.example.com", "text": "hi"}},
         "reg.skydns.local.", RType.TXT, answer=['reg.skydns.local. 3600 TXT "hi"']),
    Case("mx-mail-entries",
         {"m1.mail.skydns.local.": {"host": "10.2.0.1", "mail": True, "priority": 20},
          "m2.mail.skydns.local.": {"host": "10.2.0.2"}},
         "mail.skydns.local.", RType.MX,
         answer=["mail.skydns.local. 3600 MX 20 m1.mail.skydns.local."],
         additional=["m1.mail.skydns.local. 3600 A 10.2.0.1"]),
    Case("mx-none-is-nodata", RAILS, "rails.production.east.skydns.local.", RType.MX),
    Case("ptr-from-arpa", {"/skydns/arpa/in-addr/10/0/0/1": {"host": "reverse.example.com"}},
         "1.0.0.10.in-addr.arpa.", RType.PTR,
         answer=["1.0.0.10.in-addr.arpa. 3600 PTR reverse.example.com."], aa=False),
    Case("ptr-missing-is-refused-for-forwarding", {}, "2.0.0.10.in-addr.arpa.", RType.PTR,
         Rcode.REFUSED, authority=[], aa=False, forward=True),
    # --- apex: SOA, NS, whole zone
    Case("soa-at-apex", RAILS, "skydns.local.", RType.SOA,
         answer=[NEG.replace(" 60 SOA", " 3600 SOA")]),
    Case("soa-below-apex-is-nodata", RAILS, "web.skydns.local.", RType.SOA),
    Case("ns-at-apex-with-glue",
         {"ns1.ns.dns.skydns.local.": {"host": "192.0.2.53"},
          "ns2.ns.dns.skydns.local.": {"host": "ns.example.com"}},
         "skydns.local.", RType.NS, answer=["skydns.local. 3600 NS ns1.ns.dns.skydns.local."],
         additional=["ns1.ns.dns.skydns.local. 3600 A 192.0.2.53"]),
    Case("ns-below-apex-is-nodata", RAILS, "web.skydns.local.", RType.NS),
    Case("ns-below-apex-missing-is-nxdomain", RAILS, "zzz.skydns.local.", RType.NS,
         Rcode.NXDOMAIN),
    Case("apex-a-is-whole-zone", {"a.skydns.local.": {"host": "10.0.0.1"},
                                   "b.c.skydns.local.": {"host": "10.0.0.2"}},
         "skydns.local.", RType.A,
         answer=["skydns.local. 3600 A 10.0.0.1", "skydns.local. 3600 A 10.0.0.2"]),
    Case("empty-zone-apex-is-nodata", {}, "skydns.local.", RType.A),
    # --- wildcards in queries
    Case("wildcard-star-label", RAILS, "*.production.east.skydns.local.", RType.A,
         answer=["*.production.east.skydns.local. 3600 A 10.0.0.1",
                 "*.production.east.skydns.local. 3600 A 10.0.0.2"]),
    Case("wildcard-any-in-the-middle", RAILS, "rails.any.east.skydns.local.", RType.A,
         sort=True, answer=["rails.any.east.skydns.local. 3600 A 10.0.0.1",
                            "rails.any.east.skydns.local. 3600 A 10.0.0.2",
                            "rails.any.east.skydns.local. 3600 A 10.0.1.4"]),
    Case("wildcard-several-labels", RAILS, "4.rails.*.*.skydns.local.", RType.A,
         answer=["4.rails.*.*.skydns.local. 3600 A 10.0.1.4"]),
    Case("wildcard-no-match-is-nxdomain", RAILS, "*.nowhere.skydns.local.", RType.A,
         Rcode.NXDOMAIN),
    Case("zone-label-any-is-literal",
         {"a.any.local.": {"host": "10.0.0.1"}, "a.other.local.": {"host": "10.0.0.2"}},
         "*.any.local.", RType.A, answer=["*.any.local. 3600 A 10.0.0.1"],
         domains=("any.local.",)),
    # --- groups
    Case("group-of-shallowest-entry",
         {"g.skydns.local.": {"host": "10.0.0.10", "group": "g1"},
          "a.g.skydns.local.": {"host": "10.0.0.11", "group": "g1"},
          "b.g.skydns.local.": {"host": "10.0.0.12", "group": "g2"},
          "c.g.skydns.local.": {"host": "10.0.0.13"}},
         "g.skydns.local.", RType.A,
         answer=["g.skydns.local. 3600 A 10.0.0.10", "g.skydns.local. 3600 A 10.0.0.11",
                 "g.skydns.local. 3600 A 10.0.0.13"]),
    Case("groups-disagree-nothing-filtered",
         {"a.g.skydns.local.": {"host": "10.0.0.11", "group": "g1"},
          "b.g.skydns.local.": {"host": "10.0.0.12", "group": "g2"}},
         "g.skydns.local.", RType.A,
         answer=["g.skydns.local. 3600 A 10.0.0.11", "g.skydns.local. 3600 A 10.0.0.12"]),
    # --- TTLs
    Case("ttl-from-record", {"t.skydns.local.": {"host": "10.0.0.1", "ttl": 30}},
         "t.skydns.local.", RType.A, answer=["t.skydns.local. 30 A 10.0.0.1"]),
    Case("ttl-min-of-record-and-lease",
         {"t.skydns.local.": ({"host": "10.0.0.1", "ttl": 30}, 77)},
         "t.skydns.local.", RType.A, answer=["t.skydns.local. 12 A 10.0.0.1"], leases={77: 12.5}),
    Case("ttl-record-smaller-than-lease",
         {"t.skydns.local.": ({"host": "10.0.0.1", "ttl": 30}, 77)},
         "t.skydns.local.", RType.A, answer=["t.skydns.local. 30 A 10.0.0.1"], leases={77: 500}),
    Case("ttl-from-lease-alone-not-lease-id", {"t.skydns.local.": ({"host": "10.0.0.1"}, 0x7A)},
         "t.skydns.local.", RType.A, answer=["t.skydns.local. 90 A 10.0.0.1"],
         leases={0x7A: 90}),
    Case("ttl-one-per-rrset",
         {"a.r.skydns.local.": {"host": "10.0.0.1", "ttl": 30},
          "b.r.skydns.local.": {"host": "10.0.0.2"}},
         "r.skydns.local.", RType.A,
         answer=["r.skydns.local. 30 A 10.0.0.1", "r.skydns.local. 30 A 10.0.0.2"]),
    Case("ttl-default-from-config", {"t.skydns.local.": {"host": "10.0.0.1"}},
         "t.skydns.local.", RType.A, answer=["t.skydns.local. 300 A 10.0.0.1"], ttl=300),
    # --- zones, forwarding, ANY, classes
    Case("out-of-zone-refused-forward", RAILS, "www.example.com.", RType.A, Rcode.REFUSED,
         authority=[], aa=False, forward=True),
    Case("any-minimal-rfc8482", RAILS, "web.skydns.local.", RType.ANY,
         answer=["web.skydns.local. 3600 HINFO RFC8482 "]),
    Case("any-missing-nxdomain", RAILS, "zz.skydns.local.", RType.ANY, Rcode.NXDOMAIN),
    Case("second-zone", {"a.svc.cluster.": {"host": "10.11.0.1"}}, "a.svc.cluster.", RType.A,
         answer=["a.svc.cluster. 3600 A 10.11.0.1"], domains=(Z, "svc.cluster.")),
    Case("nested-zone-soa-owner", {}, "x.inner.skydns.local.", RType.A, Rcode.NXDOMAIN,
         authority=["inner.skydns.local. 60 SOA ns.dns.inner.skydns.local. "
                    f"hostmaster.inner.skydns.local. {REV} 28800 7200 604800 60"],
         domains=(Z, "inner.skydns.local.")),
    Case("aaaa-through-cname-chain",
         {"v6web.skydns.local.": {"host": "a.ipv6.west.skydns.local"},
          "a.ipv6.west.skydns.local.": {"host": "2001::1"}},
         "v6web.skydns.local.", RType.AAAA,
         answer=["v6web.skydns.local. 3600 CNAME a.ipv6.west.skydns.local.",
                 "a.ipv6.west.skydns.local. 3600 AAAA 2001::1"]),
    Case("srv-v6-glue", RAILS, "ipv6.west.skydns.local.", RType.SRV,
         answer=["ipv6.west.skydns.local. 3600 SRV 10 100 53 a.ipv6.west.skydns.local."],
         additional=["a.ipv6.west.skydns.local. 3600 AAAA 2001::8:8:8:8"]),
    Case("ptr-v6-from-arpa",
         {"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.2.ip6.arpa.":
          {"host": "v6.example.com"}},  # key /skydns/arpa/ip6/2/0/0/1/0/...
         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.2.ip6.arpa.", RType.PTR,
         answer=["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.2.ip6.arpa. "
                 "3600 PTR v6.example.com."], aa=False),
    Case("mx-name-host-in-zone-glue",
         {**RAILS, "mx.m.skydns.local.": {"host": "1.rails.production.east.skydns.local",
                                          "mail": True}},
         "m.skydns.local.", RType.MX,
         answer=["m.skydns.local. 3600 MX 10 1.rails.production.east.skydns.local."],
         additional=["1.rails.production.east.skydns.local. 3600 A 10.0.0.1"]),
    Case("txt-through-wildcard", {"a.t.skydns.local.": {"text": "one"},
                                  "b.u.skydns.local.": {"text": "two"}},
         "a.*.skydns.local.", RType.TXT, answer=['a.*.skydns.local. 3600 TXT "one"']),
    Case("any-at-apex", {}, "skydns.local.", RType.ANY,
         answer=["skydns.local. 3600 HINFO RFC8482 "]),
    # --- CNAME chains for every type that follows them, and in glue (CoreDNS)
    Case("cname-chain-of-7-coredns-layout", CHAIN7, "a.server1.dev.region1.skydns.test.",
         RType.A, answer=CHAIN7_RRS, domains=("skydns.test.",)),
    Case("srv-glue-follows-cname-chain", CHAIN7, "a.server1.dev.region1.skydns.test.",
         RType.SRV, domains=("skydns.test.",),
         answer=["a.server1.dev.region1.skydns.test. 3600 SRV 10 100 0 "
                 "cname1.region2.skydns.test."], additional=CHAIN7_RRS[1:]),
    Case("txt-through-cname-chain", TXT_CHAIN, "t.skydns.local.", RType.TXT,
         answer=["t.skydns.local. 3600 CNAME u.skydns.local.",
                 "u.skydns.local. 3600 CNAME v.skydns.local.", 'v.skydns.local. 3600 TXT "hello"']),
    Case("txt-chain-dead-end-is-nodata", {"t.skydns.local.": {"host": "u.skydns.local"},
                                          "u.skydns.local.": {"host": "10.0.0.1"}},
         "t.skydns.local.", RType.TXT),
    Case("txt-chain-out-of-zone-is-bare", {"t.skydns.local.": {"host": "www.example.com"}},
         "t.skydns.local.", RType.TXT, answer=["t.skydns.local. 3600 CNAME www.example.com."]),
    Case("txt-identical-texts-collapse", {"a.t.skydns.local.": {"text": "same"},
                                          "b.t.skydns.local.": {"text": "same"}},
         "t.skydns.local.", RType.TXT, answer=['t.skydns.local. 3600 TXT "same"']),
    # --- CoreDNS dns/apex: A/AAAA at the apex from <zone>/dns/apex when present
    Case("apex-a-from-dns-apex", APEX, "skydns.local.", RType.A,
         answer=["skydns.local. 3600 A 10.0.0.53"]),
    Case("apex-aaaa-from-dns-apex", APEX, "skydns.local.", RType.AAAA,
         answer=["skydns.local. 3600 AAAA 2001::53"]),
    Case("apex-dns-apex-without-a-is-nodata",
         {"a.skydns.local.": {"host": "10.0.0.1"},
          "y.apex.dns.skydns.local.": {"host": "2001::53"}},
         "skydns.local.", RType.A),
    Case("apex-dns-apex-name-host-chains",
         {"apex.dns.skydns.local.": {"host": "web.skydns.local"},
          "web.skydns.local.": {"host": "10.0.0.80"}},
         "skydns.local.", RType.A, answer=["skydns.local. 3600 CNAME web.skydns.local.",
                                          "web.skydns.local. 3600 A 10.0.0.80"]),
    Case("cname-to-apex-uses-dns-apex", {**APEX, "www.skydns.local.": {"host": "skydns.local"}},
         "www.skydns.local.", RType.A, answer=["www.skydns.local. 3600 CNAME skydns.local.",
                                               "skydns.local. 3600 A 10.0.0.53"]),
    Case("apex-dns-apex-in-second-zone",
         {"a.svc.cluster.": {"host": "10.11.0.1"},
          "x.apex.dns.svc.cluster.": {"host": "10.11.0.53"}},
         "svc.cluster.", RType.A, answer=["svc.cluster. 3600 A 10.11.0.53"],
         domains=(Z, "svc.cluster.")),
    Case("below-apex-ignores-dns-apex", APEX, "a.skydns.local.", RType.A,
         answer=["a.skydns.local. 3600 A 10.0.0.1"]),
    Case("axfr-refused", RAILS, "skydns.local.", RType.AXFR, Rcode.REFUSED, authority=[],
         aa=False),
]


def _run(case: Case) -> tuple[list[str], list[str], list[str], object]:
    index = Index("/skydns")
    index.load(_listing(case.store))
    for lease, remaining in case.leases.items():
        index.set_lease(lease, remaining, NOW)
    engine = Engine(EngineConfig.from_domains(case.domains, ttl=case.ttl, min_ttl=60))
    q = Question(split_name(case.qname), int(case.qtype), CLASS_IN)
    ans = engine.resolve(index, q, NOW, serial=index.revision)
    return ([str(r) for r in ans.answer], [str(r) for r in ans.authority],
            [str(r) for r in ans.additional], ans)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_engine(case: Case) -> None:
    answer, authority, additional, ans = _run(case)
    assert ans.rcode == case.rcode  # type: ignore[attr-defined]
    if case.sort:
        assert sorted(answer) == sorted(case.answer)
    else:
        assert answer == case.answer
    expected_auth = case.authority
    if expected_auth is None:
        expected_auth = [] if case.answer else [NEG]
    assert authority == expected_auth
    assert additional == case.additional
    assert ans.aa == case.aa  # type: ignore[attr-defined]
    assert ans.forward == case.forward  # type: ignore[attr-defined]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


def test_leased_answers_are_marked() -> None:
    case = next(c for c in CASES if c.id == "ttl-from-lease-alone-not-lease-id")
    assert _run(case)[3].leased  # type: ignore[attr-defined]


def test_non_in_class_refused() -> None:
    index = Index()
    ans = Engine(EngineConfig()).resolve(index, Question(("a", "skydns", "local"), 1, 3), NOW)
    assert ans.rcode == Rcode.REFUSED

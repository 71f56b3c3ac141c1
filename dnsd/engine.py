"""The SkyDNS answer rules: (question, index, now) -> Answer. Pure: no sockets, no clock.

Theory of operation. A question is mapped to a path of reversed labels; the zone
it falls in (longest of the configured zones) decides authority. Inside a zone:

* records come from the *subtree* at the name (or from a wildcard scan when a
  query label is ``*``/``any``), then the *group* filter keeps the group of the
  shallowest grouped entry plus group-less entries;
* A/AAAA: IP hosts of the right family (duplicates collapsed); name hosts become
  ``owner CNAME target`` followed by the target's records when the target is
  in-zone and yields records (chain limit 8; loops and dead ends yield nothing).
  An out-of-zone target gives a bare CNAME for the client's resolver to follow.
  At a zone apex the records come from ``<zone>/dns/apex`` when anything exists
  there (CoreDNS), else from the whole zone (SkyDNS);
* TXT from ``text``, through CNAME chains exactly as A/AAAA (CoreDNS): an entry
  whose host is a name and that has no text is a CNAME to follow;
* SRV/MX: one record per service, weights per priority as floor(100*w/sum(w))
  with 0 counted as 100, IP hosts get a key-derived target (minus
  ``targetstrip`` labels) and glue, name hosts get in-zone glue: the target's
  A and AAAA answers, CNAME chain included (CoreDNS);
* PTR/CNAME from the exact key only, NS/SOA synthesised at the apex from
  ``ns.dns.<zone>`` entries;
* NXDOMAIN only when nothing exists at or below the name, otherwise NODATA; both
  carry the synthesised SOA with TTL ``min_ttl``;
* TTL: the smaller of the record's ``ttl`` and the lease's remaining seconds, the
  default ``ttl`` when neither is set; then every RRset gets its smallest TTL.

Outside every zone: PTR questions under in-addr.arpa/ip6.arpa are answered from
exact keys when present (non-authoritative, as SkyDNS); anything else is
``REFUSED`` with ``forward=True`` so the shell may recurse for allowed clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .index import WILDCARDS, Entry, Index
from .keys import Labels, split_name
from .message import (
    CLASS_ANY,
    CLASS_IN,
    HINFO,
    MX,
    RR,
    SOA,
    SRV,
    Answer,
    Question,
    Rcode,
    RType,
)

CHAIN_LIMIT = 8
REVERSE_ZONES = (("in-addr", "arpa"), ("ip6", "arpa"))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Answer policy. ``zones`` are lower-case label tuples in written order."""

    zones: tuple[tuple[str, ...], ...] = (("skydns", "local"),)
    ttl: int = 3600
    min_ttl: int = 60
    priority: int = 10  # SRV/MX priority used when a record says 0

    @classmethod
    def from_domains(cls, domains: Sequence[str], ttl: int = 3600,
                     min_ttl: int = 60) -> EngineConfig:
        zones = tuple(dict.fromkeys(split_name(d) for d in domains))
        if not zones or any(not z for z in zones):
            raise ValueError("-domain: need at least one non-root zone")
        return cls(zones=zones, ttl=ttl, min_ttl=min_ttl)


@dataclass(slots=True)
class _Ctx:
    index: Index
    now: float
    zone: tuple[str, ...]
    leased: bool = False
    notes: list[str] = field(default_factory=list)


def _dotted(labels: Sequence[str]) -> str:
    return ".".join(labels) + "." if labels else "."


def _ends_with(labels: Sequence[str], suffix: Sequence[str]) -> bool:
    n = len(suffix)
    return len(labels) >= n and tuple(labels[len(labels) - n:]) == tuple(suffix)


class Engine:
    """Answers questions from an ``Index`` by the SkyDNS rules."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        # longest zone first so nested zones win
        self._zones = sorted(config.zones, key=len, reverse=True)

    def zone_of(self, labels: Sequence[str]) -> tuple[str, ...] | None:
        for zone in self._zones:
            if _ends_with(labels, zone):
                return zone
        return None

    # -- entry point -------------------------------------------------------------

    def resolve(self, index: Index, q: Question, now: float, serial: int = 0) -> Answer:
        """The answer to ``q`` from ``index`` at monotonic time ``now``.

        ``serial`` goes into the synthesised SOA (the server passes the index's
        store revision, so the serial changes exactly when the data does).
        """
        labels = q.labels
        if q.qclass not in (CLASS_IN, CLASS_ANY):
            return Answer(Rcode.REFUSED, aa=False)
        if q.qtype in (RType.AXFR, 251):  # zone transfers are not offered
            return Answer(Rcode.REFUSED, aa=False)
        zone = self.zone_of(labels)
        if zone is None:
            return self._outside(index, q, now)
        ctx = _Ctx(index, now, zone)
        answer = self._inside(ctx, q, serial)
        return Answer(answer.rcode, answer.answer, answer.authority, answer.additional,
                      aa=True, leased=ctx.leased, notes=tuple(ctx.notes))

    def _outside(self, index: Index, q: Question, now: float) -> Answer:
        if q.qtype == RType.PTR and any(_ends_with(q.labels, z) for z in REVERSE_ZONES):
            entry = index.exact(tuple(reversed(q.labels)))
            if entry is not None and entry.service.host and entry.service.ip is None:
                ctx = _Ctx(index, now, ())
                rr = RR(q.name, RType.PTR, self._ttl(ctx, entry), entry.service.host + ".")
                return Answer(Rcode.NOERROR, (rr,), aa=False, leased=ctx.leased)
        return Answer(Rcode.REFUSED, aa=False, forward=True)

    def _inside(self, ctx: _Ctx, q: Question, serial: int) -> Answer:
        labels = q.labels
        owner = q.name
        path: Labels = tuple(reversed(labels))
        apex = len(labels) == len(ctx.zone)
        qtype = q.qtype
        wild = any(lab in WILDCARDS for lab in labels[: len(labels) - len(ctx.zone)])
        if wild:
            entries, found = ctx.index.match(path, literal=len(ctx.zone))
        else:
            entries = ctx.index.subtree(path)
            found = bool(entries) or ctx.index.exists(path)
        found = found or apex
        soa_neg = self._soa(ctx.zone, serial, self.config.min_ttl)
        if not found:
            return Answer(Rcode.NXDOMAIN, authority=(soa_neg,))
        entries = group_filter(entries)
        records: list[RR] = []
        extra: list[RR] = []
        if qtype == RType.ANY:
            records = [RR(owner, RType.HINFO, self.config.ttl, HINFO("RFC8482", ""))]
        elif qtype == RType.SOA:
            if apex:
                records = [self._soa(ctx.zone, serial, self.config.ttl)]
        elif qtype == RType.NS:
            if apex:
                records, extra = self._ns(ctx)
        elif qtype in (RType.A, RType.AAAA):
            if apex:
                entries = self._apex(ctx, ctx.zone, entries)
            records = self._chain(ctx, owner, entries, RType(qtype), 0, frozenset({owner}))
        elif qtype == RType.CNAME:
            entry = None if wild else ctx.index.exact(path)
            if entry is not None and entry.service.host and entry.service.ip is None \
                    and not entry.service.text:
                records = [RR(owner, RType.CNAME, self._ttl(ctx, entry),
                              entry.service.host + ".")]
        elif qtype == RType.SRV:
            records, extra = self._srv(ctx, owner, entries)
        elif qtype == RType.MX:
            records, extra = self._mx(ctx, owner, entries)
        elif qtype == RType.TXT:
            records = self._chain(ctx, owner, entries, RType.TXT, 0, frozenset({owner}))
        elif qtype == RType.PTR:
            entry = None if wild else ctx.index.exact(path)
            if entry is not None and entry.service.host and entry.service.ip is None:
                records = [RR(owner, RType.PTR, self._ttl(ctx, entry),
                              entry.service.host + ".")]
        if not records:
            return Answer(Rcode.NOERROR, authority=(soa_neg,))
        return Answer(Rcode.NOERROR, tuple(_uniform_ttl(records)), (),
                      tuple(_uniform_ttl(_dedup(extra))))

    # -- pieces ------------------------------------------------------------------

    def _ttl(self, ctx: _Ctx, entry: Entry) -> int:
        ttl = entry.service.ttl
        if entry.lease:
            ctx.leased = True
            left = ctx.index.lease_remaining(entry.lease, ctx.now)
            if left is not None:
                secs = max(1, int(left))
                ttl = min(ttl, secs) if ttl else secs
        return ttl or self.config.ttl

    def _soa(self, zone: tuple[str, ...], serial: int, ttl: int) -> RR:
        return RR(_dotted(zone), RType.SOA, ttl, SOA(
            mname=_dotted(("ns", "dns", *zone)), rname=_dotted(("hostmaster", *zone)),
            serial=serial & 0xFFFFFFFF, refresh=28800, retry=7200, expire=604800,
            minimum=self.config.min_ttl))

    def _lookup(self, ctx: _Ctx, labels: Sequence[str], qtype: RType) -> list[Entry]:
        """The group-filtered records at and below the name ``labels`` (written order)
        that answer ``qtype`` there (a zone apex answers A/AAAA from ``dns/apex``)."""
        entries = group_filter(ctx.index.subtree(tuple(reversed(labels))))
        zone = self.zone_of(labels)
        if qtype in (RType.A, RType.AAAA) and zone == tuple(labels):
            return self._apex(ctx, zone, entries)
        return entries

    def _apex(self, ctx: _Ctx, zone: tuple[str, ...], zone_entries: list[Entry]) -> list[Entry]:
        """CoreDNS's apex rule: A/AAAA at a zone apex come from ``<zone>/dns/apex``
        when anything exists there, else (SkyDNS, older layouts) from the whole zone."""
        path = (*reversed(zone), "dns", "apex")
        if not ctx.index.exists(path):
            return zone_entries
        return group_filter(ctx.index.subtree(path))

    def _leaf(self, ctx: _Ctx, owner: str, entry: Entry, qtype: RType) -> RR | None:
        """The record of type ``qtype`` that ``entry`` itself gives at ``owner``, if any."""
        svc = entry.service
        if qtype == RType.TXT:
            return RR(owner, qtype, self._ttl(ctx, entry), _txt(svc.text)) \
                if svc.text else None
        want = 4 if qtype == RType.A else 6
        if svc.ip is not None and svc.ip.version == want:
            return RR(owner, qtype, self._ttl(ctx, entry), svc.ip)
        return None

    def _chain(self, ctx: _Ctx, owner: str, entries: Sequence[Entry], qtype: RType,
               depth: int, seen: frozenset[str]) -> list[RR]:
        """A/AAAA/TXT records at ``owner``: each entry's own record, or for an entry
        whose host is a name (and that has no text) ``owner CNAME host`` followed by
        the host's records, when the host is in a zone and yields any (else nothing;
        out of every zone: the bare CNAME, for the client's resolver to follow)."""
        out: list[RR] = []
        have: set[object] = set()  # identical records collapse (duplicate IPs, texts)
        for entry in entries:
            svc = entry.service
            if svc.ip is not None or svc.text or not svc.host:
                rr = self._leaf(ctx, owner, entry, qtype)
                if rr is not None and rr.rdata not in have:
                    have.add(rr.rdata)
                    out.append(rr)
                continue
            target = svc.host + "."
            if target in seen or depth + 1 > CHAIN_LIMIT:
                ctx.notes.append(f"chain stops at {target}")
                continue
            tlabels = tuple(svc.host.split("."))
            if self.zone_of(tlabels) is None:
                out.append(RR(owner, RType.CNAME, self._ttl(ctx, entry), target))
                continue
            sub = self._lookup(ctx, tlabels, qtype)
            chained = self._chain(ctx, target, sub, qtype, depth + 1, seen | {target})
            if chained:
                out.append(RR(owner, RType.CNAME, self._ttl(ctx, entry), target))
                out.extend(chained)
        return out

    def _glue(self, ctx: _Ctx, target: str) -> list[RR]:
        """The additional records for an SRV/MX target in a zone: its A and AAAA
        answers, CNAME chains included (as CoreDNS gives them), so the client need
        not ask again."""
        labels = tuple(target.rstrip(".").split("."))
        if self.zone_of(labels) is None:
            return []
        out: list[RR] = []
        for qtype in (RType.A, RType.AAAA):
            out.extend(self._chain(ctx, target, self._lookup(ctx, labels, qtype), qtype, 1,
                                   frozenset({target})))
        return out

    def _target(self, ctx: _Ctx, entry: Entry) -> tuple[str, list[RR]]:
        """SRV/MX target for an entry and its glue."""
        svc = entry.service
        if svc.ip is None:
            target = svc.host + "."
            return target, self._glue(ctx, target)
        name = tuple(reversed(entry.path))
        if 0 < svc.targetstrip < len(name):
            name = name[svc.targetstrip:]
        target = _dotted(name)
        rtype = RType.A if svc.ip.version == 4 else RType.AAAA
        return target, [RR(target, rtype, self._ttl(ctx, entry), svc.ip)]

    def _srv(self, ctx: _Ctx, owner: str, entries: Sequence[Entry]) -> tuple[list[RR], list[RR]]:
        usable = [e for e in entries if e.service.host]
        totals: dict[int, int] = {}
        for e in usable:
            prio = e.service.priority or self.config.priority
            totals[prio] = totals.get(prio, 0) + (e.service.weight or 100)
        out: list[RR] = []
        extra: list[RR] = []
        done: set[tuple[str, int]] = set()
        for e in usable:
            svc = e.service
            prio = svc.priority or self.config.priority
            weight = (100 * (svc.weight or 100)) // totals[prio]
            target, glue = self._target(ctx, e)
            if (target, svc.port) in done:
                continue
            done.add((target, svc.port))
            out.append(RR(owner, RType.SRV, self._ttl(ctx, e),
                          SRV(prio, weight, svc.port, target)))
            extra.extend(glue)
        return out, extra

    def _mx(self, ctx: _Ctx, owner: str, entries: Sequence[Entry]) -> tuple[list[RR], list[RR]]:
        out: list[RR] = []
        extra: list[RR] = []
        done: set[str] = set()
        for e in entries:
            if not e.service.mail or not e.service.host:
                continue
            target, glue = self._target(ctx, e)
            if target in done:
                continue
            done.add(target)
            out.append(RR(owner, RType.MX, self._ttl(ctx, e),
                          MX(e.service.priority or self.config.priority, target)))
            extra.extend(glue)
        return out, extra

    def _ns(self, ctx: _Ctx) -> tuple[list[RR], list[RR]]:
        owner = _dotted(ctx.zone)
        ns_path = (*reversed(ctx.zone), "dns", "ns")
        out: list[RR] = []
        extra: list[RR] = []
        for e in ctx.index.subtree(ns_path):
            if e.service.ip is None:
                ctx.notes.append(f"NS entry {e.service.key} has a name host; skipped")
                continue
            target, glue = self._target(ctx, e)
            out.append(RR(owner, RType.NS, self._ttl(ctx, e), target))
            extra.extend(glue)
        return out, extra


def group_filter(entries: Sequence[Entry]) -> list[Entry]:
    """SkyDNS groups: keep the shallowest grouped entry's group plus group-less entries.

    When entries at that shallowest depth disagree on the group, nothing is filtered.
    """
    grouped = [e for e in entries if e.service.group]
    if not grouped:
        return list(entries)
    depth = min(len(e.path) for e in grouped)
    groups = {e.service.group for e in grouped if len(e.path) == depth}
    if len(groups) > 1:
        return list(entries)
    (group,) = groups
    return [e for e in entries if not e.service.group or e.service.group == group]


def _txt(text: str) -> tuple[bytes, ...]:
    raw = text.encode()
    return tuple(raw[i:i + 255] for i in range(0, len(raw), 255)) or (b"",)


def _uniform_ttl(rrs: Sequence[RR]) -> list[RR]:
    """One TTL per RRset (RFC 2181 5.2, as SkyDNS does): the smallest of the set."""
    low: dict[tuple[str, RType], int] = {}
    for rr in rrs:
        key = (rr.name, rr.rtype)
        low[key] = min(low.get(key, rr.ttl), rr.ttl)
    return [rr if rr.ttl == low[(rr.name, rr.rtype)] else
            RR(rr.name, rr.rtype, low[(rr.name, rr.rtype)], rr.rdata) for rr in rrs]


def _dedup(rrs: Sequence[RR]) -> list[RR]:
    seen: set[tuple[str, RType, object]] = set()
    out: list[RR] = []
    for rr in rrs:
        key = (rr.name, rr.rtype, rr.rdata)
        if key not in seen:
            seen.add(key)
            out.append(rr)
    return out

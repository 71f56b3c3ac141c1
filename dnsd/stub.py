"""SkyDNS stub zones (``-stubzones``): the table of zone -> nameservers, built from the index.

Records under ``<domain>/dns/stub/<zone reversed>/<name>`` (key
``/skydns/local/skydns/dns/stub/com/example/ns1``, value
``{"host": "198.18.0.53", "port": 5353}``) say that names in ``example.com.`` are
forwarded to those nameservers. The last key label only tells the nameservers
apart; the port defaults to 53; the host must be an IP (SkyDNS skips names too).

Pure: the shell rebuilds the table from the index after every applied change
(no second watch) and swaps it into the server; a lookup is at most one dict
probe per label of the question. Loop prevention is SkyDNS's EDNS0 option
``STUB_OPTION`` with data ``01``: dnsd adds it to every stub query it relays and
never relays a stub query that already carries it (see ``wire.Edns.stub``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .index import Index
from .keys import Labels

# miekg/dns EDNS0LOCALSTART (0xFDE9) + 10, as SkyDNS's and CoreDNS's etcd stub code
STUB_OPTION = 65011
STUB_DATA = b"\x01"
DEFAULT_PORT = 53

Zone = tuple[str, ...]  # lower-case labels in written order: ("example", "com")
Server = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StubProblem:
    """A stub record that was skipped: its store ``key`` and why."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class StubTable:
    """Stub zones and their nameservers, in key order."""

    zones: Mapping[Zone, tuple[Server, ...]] = field(default_factory=dict)

    def lookup(self, labels: Sequence[str]) -> tuple[Zone, tuple[Server, ...]] | None:
        """The longest stub zone at or above the name ``labels`` and its servers."""
        zones = self.zones
        if not zones:
            return None
        names = tuple(labels)
        for i in range(len(names)):
            servers = zones.get(names[i:])
            if servers is not None:
                return names[i:], servers
        return None


def stub_path(zone: Zone) -> Labels:
    """The index path of ``dns/stub`` under a served zone."""
    return (*reversed(zone), "dns", "stub")


def build(index: Index, served: Iterable[Zone]) -> tuple[StubTable, tuple[StubProblem, ...]]:
    """The stub table for the served zones' ``dns/stub`` subtrees, and the skipped records.

    A stub zone equal to, or above, a served zone is skipped: it would forward
    dnsd's own zone (and its stub records) away; SkyDNS skips its own domain too.
    """
    served = tuple(served)
    zones: dict[Zone, list[Server]] = {}
    problems: list[StubProblem] = []
    for own in served:
        base = stub_path(own)
        for entry in index.subtree(base):
            svc = entry.service
            rel = entry.path[len(base):]
            if len(rel) < 2:
                problems.append(StubProblem(svc.key, "no zone in the key: want "
                                            "dns/stub/<zone reversed>/<name>"))
                continue
            if svc.ip is None:
                problems.append(StubProblem(
                    svc.key, f"host {svc.host!r} is not an IP address" if svc.host
                    else "no host"))
                continue
            zone = tuple(reversed(rel[:-1]))
            if any(s[len(s) - len(zone):] == zone for s in served):
                problems.append(StubProblem(svc.key, f"zone {'.'.join(zone)}. is or "
                                            "encloses a zone dnsd serves"))
                continue
            server = (str(svc.ip), svc.port or DEFAULT_PORT)
            servers = zones.setdefault(zone, [])
            if server not in servers:
                servers.append(server)
    return StubTable({z: tuple(s) for z, s in zones.items()}), tuple(problems)

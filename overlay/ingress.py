"""Members-only ingress: only hosts that hold a lease may send into the data path.

flannel accepts VXLAN (8472) and udp (8285) datagrams from anyone who can reach
the port, so any machine on the underlay can inject packets into the overlay.
weft keeps an nftables set of the PublicIPs that hold a lease (fed from the
lease watch: the peers the backend is about to program) and drops, and counts,
datagrams to its backend's port from any other source. Its own table,
``inet weft_ingress`` (the masquerade tables are replaced whole by
``overlay.masq``, so they never share one), with one set per family so that a
dual-stack cluster's VXLAN over IPv6 (flannel-v6.<VNI>) is guarded as its IPv4 is:

    table inet weft_ingress {
        counter dropped { }
        set members { type ipv4_addr; elements = { <PublicIP>, ... } }
        set members6 { type ipv6_addr; elements = { <PublicIPv6>, ... } }
        chain prerouting {
            type filter hook prerouting priority raw; policy accept;
            udp dport <port> ip saddr != @members counter name "dropped" drop
            udp dport <port> ip6 saddr != @members6 counter name "dropped" drop
        }
    }

(Releases before dual-stack used ``ip weft_ingress``; installing the table, and
``remove``, delete that one too.)

Ordering (the daemon's reconcile): the set is replaced *before* the backend
programs the peers, in one ``nft -f`` transaction (``flush set`` + ``add
element``), so a joining peer is accepted no later than its routes exist and a
departed one is dropped no later than its routes go, and there is never a moment
with an empty set. The counter survives set updates; ``ensure`` re-creates the
table if someone deleted it. ``remove`` deletes the table (flanneld exiting,
``-vxlan-ingress-members-only=false``).

Limits: the match is on the outer source address, so a peer whose datagrams
leave from an address other than its lease's PublicIP (``-public-ip`` behind
NAT) is dropped: turn the guard off there. It stops off-cluster injection, not a
member spoofing another member (encryption does that, for udp).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from overlay import metrics
from overlay.masq import run_nft

log = logging.getLogger(__name__)

FAMILY = "inet"
LEGACY_FAMILY = "ip"  # the IPv4-only table of earlier releases
TABLE = "weft_ingress"
_COUNTER = re.compile(r"packets (\d+) bytes (\d+)")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (version, set name, nft type, the match on the packet's source) per family
_SETS = ((4, "members", "ipv4_addr", "ip saddr"), (6, "members6", "ipv6_addr", "ip6 saddr"))


def _elements(members: Iterable[Address], version: int) -> str:
    return ", ".join(str(a) for a in sorted(a for a in set(members) if a.version == version))


def render(port: int, members: Iterable[Address], table: str = TABLE) -> str:
    """The nft script that replaces table ``inet <table>`` (counter reset to zero)."""
    members = list(members)
    lines = [f"table {fam} {table} {{}}\ndelete table {fam} {table}"
             for fam in (LEGACY_FAMILY, FAMILY)]
    lines += [f"table {FAMILY} {table} {{", "\tcounter dropped {", "\t}"]
    for version, name, kind, _ in _SETS:
        lines += [f"\tset {name} {{", f"\t\ttype {kind}"]
        if elements := _elements(members, version):
            lines.append(f"\t\telements = {{ {elements} }}")
        lines.append("\t}")
    lines += ["\tchain prerouting {",
              "\t\ttype filter hook prerouting priority raw; policy accept;"]
    lines += [f'\t\tudp dport {port} {match} != @{name} counter name "dropped" drop'
              for _, name, _, match in _SETS]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def render_members(members: Iterable[Address], table: str = TABLE) -> str:
    """The nft script that replaces both member sets in one transaction."""
    members = list(members)
    lines = []
    for version, name, _, _ in _SETS:
        lines.append(f"flush set {FAMILY} {table} {name}")
        if elements := _elements(members, version):
            lines.append(f"add element {FAMILY} {table} {name} {{ {elements} }}")
    return "\n".join(lines) + "\n"

def parse_counter(listing: str) -> tuple[int, int]:
    """(packets, bytes) from ``nft list counter`` output; (0, 0) if absent."""
    m = _COUNTER.search(listing)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass
class MembersOnly:
    """The guard for one backend (``backend`` names it in metrics) on UDP ``port``.

    ``nft`` is the command prefix (``("ip", "netns", "exec", NS, "nft")`` in tests).
    """

    backend: str
    port: int
    nft: Sequence[str] = ("nft",)
    table: str = TABLE
    dropped_packets: int = 0  # as last read by ``poll``
    dropped_bytes: int = 0
    _base: tuple[int, int] = (0, 0)  # counts of tables since re-created
    _members: frozenset[Address] | None = field(default=None, repr=False)

    async def update(self, members: Iterable[Address]) -> bool:
        """Make the set exactly ``members`` (creating the table if needed); True if changed."""
        want = frozenset(members)
        if want == self._members:
            return False
        # One nft run per join/leave (it sits on the join path before the routes): the
        # sets are replaced directly; only when that fails (the table is gone) is the
        # whole table written again.
        if self._members is not None:
            rc, _ = await run_nft(self.nft, ["-f", "-"], render_members(want, self.table),
                                  check=False)
            if rc == 0:
                log.debug("ingress: members now %s", ", ".join(map(str, sorted(want))))
                self._members = want
                return True
        self._base = (self.dropped_packets, self.dropped_bytes)
        await run_nft(self.nft, ["-f", "-"], render(self.port, want, self.table))
        log.info("ingress: only %d lease holders may send to udp port %d (table %s %s)",
                 len(want), self.port, FAMILY, self.table)
        self._members = want
        return True

    async def _exists(self) -> bool:
        rc, _ = await run_nft(self.nft, ["list", "set", FAMILY, self.table, "members6"],
                              check=False)
        return rc == 0

    async def ensure(self) -> bool:
        """Re-create the table if it vanished (members as last set); True if it did."""
        if self._members is None or await self._exists():
            return False
        members, self._members = self._members, None
        await self.update(members)
        log.warning("ingress table %s %s was missing; restored", FAMILY, self.table)
        return True

    async def poll(self) -> tuple[int, int]:
        """Read the drop counter into ``dropped_packets``/``dropped_bytes``."""
        rc, out = await run_nft(self.nft, ["list", "counter", FAMILY, self.table, "dropped"],
                                check=False)
        if rc == 0:  # a re-created table restarts at zero: add what the old ones counted
            packets, nbytes = parse_counter(out)
            self.dropped_packets = self._base[0] + packets
            self.dropped_bytes = self._base[1] + nbytes
        return self.dropped_packets, self.dropped_bytes

    async def refresh(self) -> None:
        """The periodic check: restore a vanished table, read the drop counter."""
        await self.ensure()
        await self.poll()

    def families(self) -> list[metrics.Family]:
        """Drops (as last read) and the member count, labelled with the backend."""
        key = (self.backend,)
        return [
            metrics.counter("weft_ingress_dropped_total",
                            "Datagrams to the backend's port from addresses holding no lease, "
                            "dropped (read from nftables every -iptables-resync seconds).",
                            {key: self.dropped_packets}, labels=("backend",)),
            metrics.counter("weft_ingress_dropped_bytes_total",
                            "Bytes of those dropped datagrams.",
                            {key: self.dropped_bytes}, labels=("backend",)),
            metrics.gauge("weft_ingress_members", "PublicIPs allowed to send to the port.",
                          {key: len(self._members or ())}, labels=("backend",)),
        ]

    async def remove(self) -> bool:
        """Delete the table; True if there was one."""
        self._members = None
        removed = False
        for family in (FAMILY, LEGACY_FAMILY):
            rc, _ = await run_nft(self.nft, ["list", "table", family, self.table], check=False)
            if rc == 0:
                await run_nft(self.nft, ["delete", "table", family, self.table])
                log.info("ingress table %s %s removed", family, self.table)
                removed = True
        return removed

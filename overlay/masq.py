"""IP masquerade and forward-accept rules for the cluster network, as nftables tables.

weft owns one table per family, ``ip weft`` (IPv4) and ``ip6 weft`` (IPv6, as
flannel's ``flannel-ipv6``), and nothing else: it never edits other tables, so it
coexists with iptables-nft, Docker and kube-proxy. The rules
carry flannel's masquerade semantics (its ``FLANNEL-POSTRTG`` chain, in order):

1. packets marked by kube-proxy (``0x4000/0x4000``) are left alone;
2. this host's pods talking to the cluster network: no masquerade;
3. the cluster network talking to this host's pods: no masquerade;
4. the outside talking to this host's pods: no masquerade;
5. the cluster network going anywhere but multicast (224.0.0.0/4; IPv6:
   ff00::/8): masquerade;
6. the outside going into the cluster network: masquerade.

plus a ``forward`` chain accepting everything from and to the cluster network
(Docker sets the FORWARD policy to drop).

The IPv6 table carries the same rules over ``IPv6Network`` and the own IPv6
subnet. ``for_lease`` builds the set for a lease: a table for each family the
network enables and the lease holds, and the removal of the other family's
table (a network that turned IPv6 off leaves no ``ip6 weft`` behind).

``render`` is pure. ``apply`` replaces the whole table in one ``nft -f -``
transaction (create, delete, re-create), so there is never a moment without
rules and never a half-written table. ``ensure`` compares the live table with
what weft last installed and re-applies it when it is missing or differs (the
daemon calls it periodically); ``remove`` deletes the table (network change,
``-ip-masq`` turned off).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from overlay.backend.base import BackendError
from overlay.lease.model import Lease, has_ipv4
from overlay.lease.network import NetworkConfig

log = logging.getLogger(__name__)

TABLE = "weft"
FAMILY = "ip"
FAMILY6 = "ip6"
KUBE_PROXY_MARK = 0x4000
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
MULTICAST6 = ipaddress.IPv6Network("ff00::/8")
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def family_of(network: Net) -> str:
    """The nft family (and address keyword) of ``network``: ``ip`` or ``ip6``."""
    return FAMILY if network.version == 4 else FAMILY6


class MasqError(BackendError):
    """``nft`` failed; carries the command's exit status and stderr."""

    def __init__(self, what: str, returncode: int, stderr: str) -> None:
        super().__init__(f"nft {what} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def render(network: Net, subnet: Net, *, fully_random: bool = True, table: str = TABLE) -> str:
    """The nft script that replaces table ``ip <table>`` (``ip6 <table>`` for IPv6
    networks) with weft's rules."""
    if network.version != subnet.version:
        raise ValueError(f"network {network} and subnet {subnet} are of different families")
    masq = "masquerade fully-random" if fully_random else "masquerade"
    net, pod = str(network), str(subnet)
    fam = family_of(network)
    multicast = MULTICAST if network.version == 4 else MULTICAST6
    return "\n".join([
        f"table {fam} {table} {{}}",
        f"delete table {fam} {table}",
        f"table {fam} {table} {{",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tmeta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return",
        f"\t\t{fam} saddr {pod} {fam} daddr {net} return",
        f"\t\t{fam} saddr {net} {fam} daddr {pod} return",
        f"\t\t{fam} saddr != {net} {fam} daddr {pod} return",
        f"\t\t{fam} saddr {net} {fam} daddr != {multicast} {masq}",
        f"\t\t{fam} saddr != {net} {fam} daddr {net} {masq}",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\t{fam} saddr {net} accept",
        f"\t\t{fam} daddr {net} accept",
        "\t}",
        "}",
        "",
    ])


async def run_nft(nft: Sequence[str], args: Sequence[str], stdin: str | None = None,
                  check: bool = True) -> tuple[int, str]:
    """Run ``nft`` (a command prefix) with ``args``: (exit status, stdout); raises
    ``MasqError`` when it cannot run or, with ``check``, fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *nft, *args, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:  # nft not installed, not executable
        raise MasqError(" ".join(args), -1, f"cannot run {nft[0]}: {exc}") from None
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    rc = proc.returncode or 0
    if check and rc != 0:
        raise MasqError(" ".join(args), rc, err.decode(errors="replace"))
    return rc, out.decode(errors="replace")


@dataclass
class Masquerade:
    """weft's nftables table for one (network, own subnet), applied with ``nft``;
    the family (``ip``/``ip6``) follows the network's.

    ``nft`` is the command prefix (e.g. ``("ip", "netns", "exec", NS, "nft")``
    in tests); it runs in the caller's network namespace by default.
    """

    network: Net
    subnet: Net
    fully_random: bool = True
    nft: Sequence[str] = ("nft",)
    table: str = TABLE
    _installed: str | None = None  # the live listing right after our last apply

    @property
    def family(self) -> str:
        return family_of(self.network)

    def render(self) -> str:
        return render(self.network, self.subnet, fully_random=self.fully_random,
                      table=self.table)

    async def _nft(self, args: Sequence[str], stdin: str | None = None,
                   check: bool = True) -> tuple[int, str]:
        return await run_nft(self.nft, args, stdin, check)

    async def listing(self) -> str | None:
        """The live table as ``nft list`` prints it; None when it does not exist."""
        rc, out = await self._nft(["list", "table", self.family, self.table], check=False)
        return out if rc == 0 else None

    async def apply(self) -> None:
        """Replace the table with the rendered rules in one transaction."""
        await self._nft(["-f", "-"], stdin=self.render())
        self._installed = await self.listing()

    async def ensure(self) -> bool:
        """Apply if the table is missing or differs from what weft installed; True if it did."""
        before = await self.listing()
        if self._installed is not None and before == self._installed:
            return False
        await self.apply()
        changed = before != self._installed
        if changed:
            if before is None:
                log.info("masquerade rules for %s (pods %s) installed in table %s %s",
                         self.network, self.subnet, self.family, self.table)
            else:
                log.info("masquerade table %s %s differed; restored", self.family, self.table)
        return changed

    async def remove(self) -> bool:
        """Delete weft's table; True if there was one."""
        self._installed = None
        if await self.listing() is None:
            return False
        await self._nft(["delete", "table", self.family, self.table])
        log.info("masquerade table %s %s removed", self.family, self.table)
        return True


@dataclass
class MasqueradeSet:
    """The tables of every family at once (the daemon's ``Masquerade``): ``wanted``
    are ensured, ``unwanted`` (the other family's, same table name) removed."""

    wanted: Sequence[Masquerade]
    unwanted: Sequence[Masquerade] = ()
    _cleaned: bool = field(default=False, repr=False)

    async def ensure(self) -> bool:
        changed = False
        if not self._cleaned:  # once: an ip6 table left by an earlier dual-stack run
            for m in self.unwanted:
                changed |= await m.remove()
            self._cleaned = True
        for m in self.wanted:
            changed |= await m.ensure()
        return changed

    async def remove(self) -> bool:
        removed = False
        for m in (*self.wanted, *self.unwanted):
            removed |= await m.remove()
        return removed


V4_STUB = ipaddress.IPv4Network("0.0.0.0/32")  # stands for "the ip table" in unwanted
V6_STUB = ipaddress.IPv6Network("::/128")


def for_lease(config: NetworkConfig, own: Lease, *, fully_random: bool = True,
              nft: Sequence[str] = ("nft",), table: str = TABLE) -> MasqueradeSet:
    """The masquerade tables for ``own`` in ``config``: IPv4 when the network enables
    it (not over an IPv6-only lease's 0.0.0.0/0), IPv6 when it enables IPv6 and the
    lease has its half; the other family's table is to be removed."""
    wanted: list[Masquerade] = []
    unwanted: list[Masquerade] = []
    if config.enable_ipv4 and has_ipv4(own):
        wanted.append(Masquerade(config.network, own.subnet, fully_random, nft, table))
    else:
        unwanted.append(Masquerade(V4_STUB, V4_STUB, fully_random, nft, table))
    if (config.enable_ipv6 and config.ipv6_network is not None
            and own.ipv6_subnet is not None):
        wanted.append(Masquerade(config.ipv6_network, own.ipv6_subnet, fully_random, nft,
                                 table))
    else:
        unwanted.append(Masquerade(V6_STUB, V6_STUB, fully_random, nft, table))
    return MasqueradeSet(wanted, unwanted)

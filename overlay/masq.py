"""IP masquerade and forward-accept rules for the cluster network, as an nftables table.

weft owns one table, ``ip weft``, and nothing else: it never edits other
tables, so it coexists with iptables-nft, Docker and kube-proxy. The rules
carry flannel's masquerade semantics (its ``FLANNEL-POSTRTG`` chain, in order):

1. packets marked by kube-proxy (``0x4000/0x4000``) are left alone;
2. this host's pods talking to the cluster network: no masquerade;
3. the cluster network talking to this host's pods: no masquerade;
4. the outside talking to this host's pods: no masquerade;
5. the cluster network going anywhere but multicast (224.0.0.0/4): masquerade;
6. the outside going into the cluster network: masquerade.

plus a ``forward`` chain accepting everything from and to the cluster network
(Docker sets the FORWARD policy to drop).

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
from dataclasses import dataclass

from overlay.backend.base import BackendError

log = logging.getLogger(__name__)

TABLE = "weft"
FAMILY = "ip"
KUBE_PROXY_MARK = 0x4000
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


class MasqError(BackendError):
    """``nft`` failed; carries the command's exit status and stderr."""

    def __init__(self, what: str, returncode: int, stderr: str) -> None:
        super().__init__(f"nft {what} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def render(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network,
           *, fully_random: bool = True, table: str = TABLE) -> str:
    """The nft script that replaces table ``ip <table>`` with weft's rules."""
    masq = "masquerade fully-random" if fully_random else "masquerade"
    net, pod = str(network), str(subnet)
    return "\n".join([
        f"table {FAMILY} {table} {{}}",
        f"delete table {FAMILY} {table}",
        f"table {FAMILY} {table} {{",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tmeta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return",
        f"\t\tip saddr {pod} ip daddr {net} return",
        f"\t\tip saddr {net} ip daddr {pod} return",
        f"\t\tip saddr != {net} ip daddr {pod} return",
        f"\t\tip saddr {net} ip daddr != {MULTICAST} {masq}",
        f"\t\tip saddr != {net} ip daddr {net} {masq}",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\tip saddr {net} accept",
        f"\t\tip daddr {net} accept",
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
    """weft's nftables table for one (network, own subnet), applied with ``nft``.

    ``nft`` is the command prefix (e.g. ``("ip", "netns", "exec", NS, "nft")``
    in tests); it runs in the caller's network namespace by default.
    """

    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    fully_random: bool = True
    nft: Sequence[str] = ("nft",)
    table: str = TABLE
    _installed: str | None = None  # the live listing right after our last apply

    def render(self) -> str:
        return render(self.network, self.subnet, fully_random=self.fully_random,
                      table=self.table)

    async def _nft(self, args: Sequence[str], stdin: str | None = None,
                   check: bool = True) -> tuple[int, str]:
        return await run_nft(self.nft, args, stdin, check)

    async def listing(self) -> str | None:
        """The live table as ``nft list`` prints it; None when it does not exist."""
        rc, out = await self._nft(["list", "table", FAMILY, self.table], check=False)
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
                         self.network, self.subnet, FAMILY, self.table)
            else:
                log.info("masquerade table %s %s differed; restored", FAMILY, self.table)
        return changed

    async def remove(self) -> bool:
        """Delete weft's table; True if there was one."""
        self._installed = None
        if await self.listing() is None:
            return False
        await self._nft(["delete", "table", FAMILY, self.table])
        log.info("masquerade table %s %s removed", FAMILY, self.table)
        return True

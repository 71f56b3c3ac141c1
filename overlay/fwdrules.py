"""flannel's ``-iptables-forward-rules``: accept the cluster network in iptables' FORWARD chain.

Docker (1.13 and later) sets the ``filter`` table's FORWARD policy to DROP. nftables
evaluates every base chain on a hook and a packet must be accepted by all of them,
so the accept in weft's own nft table (overlay.masq) cannot override that drop: the
accept has to be in the chain that drops. flannel solves it with a chain of its own,
and weft writes the same rules, so a host moved from flannel to weft (or back) ends
up with one copy, not two::

    -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
    -A FLANNEL-FWD -s <Network> -m comment --comment "flanneld forward" -j ACCEPT
    -A FLANNEL-FWD -d <Network> -m comment --comment "flanneld forward" -j ACCEPT

(and the same with ``ip6tables`` for ``IPv6Network``). ``rules`` is pure; the shell
runs ``iptables -w`` (whichever of iptables-nft or -legacy the host selected, as
Docker does). ``ensure`` re-creates the rules when ``-S`` shows them missing or
altered (the daemon calls it every ``-iptables-resync`` seconds); ``remove`` takes
them away on exit, or at start-up with the flag off. A host without the iptables
tools has no iptables FORWARD chain to fix: that is logged once, not an error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from overlay.backend.base import BackendError

log = logging.getLogger(__name__)

CHAIN = "FLANNEL-FWD"
COMMENT = "flanneld forward"
_MATCH = ("-m", "comment", "--comment", COMMENT)
JUMP: tuple[str, ...] = (*_MATCH, "-j", CHAIN)


class ForwardRulesError(BackendError):
    """An iptables command failed; carries its arguments, exit status and stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def chain_rules(network: ipaddress.IPv4Network | ipaddress.IPv6Network
                ) -> tuple[tuple[str, ...], ...]:
    """The FLANNEL-FWD chain's rules for ``network``, as ``-A`` arguments after the chain."""
    return tuple((flag, str(network), *_MATCH, "-j", "ACCEPT") for flag in ("-s", "-d"))


def listing(args: Sequence[str]) -> str:
    """One rule as ``iptables -S`` prints it (the comment quoted as iptables quotes it)."""
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def expected_chain(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """What ``iptables -S FLANNEL-FWD`` prints when the chain is exactly weft's."""
    return [f"-N {CHAIN}"] + [listing(("-A", CHAIN, *r)) for r in chain_rules(network)]


def has_jump(forward_listing: str) -> bool:
    """Whether ``iptables -S FORWARD`` output holds the jump to FLANNEL-FWD."""
    want = listing(("-A", "FORWARD", *JUMP))
    return any(line.strip() == want for line in forward_listing.splitlines())


@dataclass
class ForwardRules:
    """The FORWARD accept rules for one network, in one family's iptables.

    ``command`` is the tool prefix (``("iptables",)``, ``("ip6tables",)``, or e.g.
    ``("ip", "netns", "exec", NS, "iptables")`` in tests).
    """

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    command: Sequence[str] = field(default=())
    _missing_logged: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            self.command = ("ip6tables",) if self.network.version == 6 else ("iptables",)

    @property
    def tool(self) -> str:
        """The iptables program ``command`` runs (its last word behind ``ip netns exec``)."""
        return self.command[-1] if self.command[0] == "ip" else self.command[0]

    async def _run(self, *args: str, check: bool = True) -> tuple[int, str]:
        argv = (*self.command, "-w", "5", *args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise ForwardRulesError(argv, -1, f"cannot run {argv[0]}: {exc}") from None
        out, err = await proc.communicate()
        rc = proc.returncode or 0
        if check and rc != 0:
            raise ForwardRulesError(argv, rc, err.decode(errors="replace"))
        return rc, out.decode(errors="replace")

    def available(self) -> bool:
        """False (logged once) when the host has no iptables tool to run."""
        if shutil.which(self.tool) is not None:
            return True
        if not self._missing_logged:
            log.info("no %s on this host: no FORWARD accept rules needed or written", self.tool)
            self._missing_logged = True
        return False

    async def intact(self) -> bool:
        rc, chain = await self._run("-S", CHAIN, check=False)
        if rc != 0 or [ln for ln in chain.splitlines() if ln.strip()] != expected_chain(
                self.network):
            return False
        _, forward = await self._run("-S", "FORWARD")
        return has_jump(forward)

    async def ensure(self) -> bool:
        """Write the rules if they are missing or altered; True when it had to."""
        if not self.available() or await self.intact():
            return False
        await self._run("-N", CHAIN, check=False)  # exists already: fine
        await self._run("-F", CHAIN)
        for rule in chain_rules(self.network):
            await self._run("-A", CHAIN, *rule)
        if (await self._run("-C", "FORWARD", *JUMP, check=False))[0] != 0:
            await self._run("-A", "FORWARD", *JUMP)
        log.info("%s: FORWARD accepts %s (chain %s)", self.tool, self.network, CHAIN)
        return True

    async def remove(self) -> bool:
        """Take the jump and the chain away; True if there was something to remove."""
        if not self.available():
            return False
        removed = False
        while (await self._run("-D", "FORWARD", *JUMP, check=False))[0] == 0:
            removed = True
        if (await self._run("-F", CHAIN, check=False))[0] == 0:
            await self._run("-X", CHAIN, check=False)
            removed = True
        return removed
